"""The per-run metrics log (JSON lines and CSV) and the table printed at the end."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from multitask_deeplab.engine.checkpoint import atomic_write


class MetricsLog:
    """Appends one row per evaluation to ``metrics.jsonl`` and rewrites ``metrics.csv`` with every column seen.

    Args:
        output_dir: The run folder.
        enabled: False on processes other than rank 0.
    """

    def __init__(self, output_dir: Path, *, enabled: bool = True) -> None:
        self.jsonl = output_dir / "metrics.jsonl"
        self.csv = output_dir / "metrics.csv"
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        if enabled and self.jsonl.is_file():
            self.rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]

    def append(self, row: dict[str, Any]) -> None:
        """Adds a row (replacing any later rows from an interrupted run that is being resumed)."""
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r.get("step", -1) < row.get("step", 0)] + [row]
        atomic_write(self.jsonl, lambda temp: temp.write_text("".join(json.dumps(r) + "\n" for r in self.rows)))
        columns = list(dict.fromkeys(key for r in self.rows for key in r))

        def write_csv(temp: Path) -> None:
            with open(temp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.csv, write_csv)


def format_table(metrics: dict[str, float], *, skip_per_class: bool = True) -> str:
    """A two-column text table of ``{"task.metric": value}``; per-class IoUs left out unless asked."""
    rows = [(k, v) for k, v in metrics.items() if not (skip_per_class and "/" in k)]
    if not rows:
        return "(no metrics)"
    width = max(len(k) for k, _ in rows)
    return "\n".join(f"  {k:<{width}}  {v:10.4f}" for k, v in rows)

"""The per-run metrics log (JSON lines and CSV) and the table printed at the end."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any

from multitask_deeplab.runtime.files import atomic_write


class MetricsLog:
    """Appends one row per evaluation to ``metrics.jsonl`` and rewrites ``metrics.csv`` with every column seen.

    Opening the log drops the rows after ``step``, the step the run starts from (like :class:`StepLog`): those an
    interrupted run wrote after its last checkpoint, or all of them when starting afresh.

    Args:
        output_dir: The run folder.
        step: The step training starts from.
        enabled: False on processes other than rank 0.
    """

    def __init__(self, output_dir: Path, *, step: int = 0, enabled: bool = True) -> None:
        self.jsonl = output_dir / "metrics.jsonl"
        self.csv = output_dir / "metrics.csv"
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        if enabled and self.jsonl.is_file():
            lines = self.jsonl.read_text().splitlines()
            self.rows = [json.loads(line) for line in lines if _step_of(line) <= step]
            if len(self.rows) < len(lines):
                self._write()

    def append(self, row: dict[str, Any]) -> None:
        """Adds a row."""
        if not self.enabled:
            return
        self.rows = [r for r in self.rows if r.get("step", -1) < row.get("step", 0)] + [row]
        self._write()

    def _write(self) -> None:
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


class StepLog:
    """Each step's task losses (averaged over processes) as JSON lines in ``steps.jsonl``, written by rank 0.

    Rows are buffered and appended at each checkpoint. Opening the log drops the rows after ``step``, the step
    the run starts from: those of an interrupted run being resumed, or all of them when starting afresh.

    Args:
        path: The ``steps.jsonl`` file.
        step: The step training starts from.
        enabled: False on processes other than rank 0.
    """

    def __init__(self, path: Path, *, step: int, enabled: bool) -> None:
        self.path = path
        self.enabled = enabled
        self.rows: list[dict[str, Any]] = []
        if enabled and path.is_file():
            kept = [line for line in path.read_text().splitlines() if _step_of(line) <= step]
            atomic_write(path, lambda temp: temp.write_text("".join(f"{line}\n" for line in kept)))

    def append(self, row: dict[str, Any]) -> None:
        """Buffers one step's row."""
        if self.enabled:
            self.rows.append(row)

    def flush(self) -> None:
        """Appends the buffered rows to the file."""
        if self.rows:
            with open(self.path, "a") as handle:
                handle.write("".join(json.dumps(row) + "\n" for row in self.rows))
            self.rows.clear()


def _step_of(line: str) -> float:
    """The step of a ``steps.jsonl`` line; infinite for a line cut short by a crash, so it is dropped."""
    try:
        return json.loads(line)["step"]
    except (ValueError, KeyError, TypeError):
        return math.inf

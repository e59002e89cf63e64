"""The per-run logs: metrics (JSON lines, the record; CSV), per-step losses, TensorBoard; the table printed at the end."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from multitask_deeplab.runtime.files import atomic_write


class MetricsLog:
    """Appends one row per evaluation to ``metrics.jsonl`` and rewrites ``metrics.csv`` with every column seen.

    Opening the log drops the rows after ``step``, the step the run starts from (like :class:`StepLog`): those an
    interrupted run wrote after its last checkpoint, or all of them when starting afresh.

    Args:
        output_dir: The run folder.
        step: The step training starts from.
        enabled: False on processes other than rank 0.
        csv: Also write ``metrics.csv``.
    """

    def __init__(self, output_dir: Path, *, step: int = 0, enabled: bool = True, csv: bool = True) -> None:
        self.jsonl = output_dir / "metrics.jsonl"
        self.csv = output_dir / "metrics.csv" if csv else None
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
        if self.csv is None:
            return
        columns = list(dict.fromkeys(key for r in self.rows for key in r))

        def write_csv(temp: Path) -> None:
            with open(temp, "w", newline="") as handle:
                writer = csv.DictWriter(handle, fieldnames=columns)
                writer.writeheader()
                writer.writerows(self.rows)

        atomic_write(self.csv, write_csv)


class TensorBoardLog:
    """The run's scalars and pictures as TensorBoard event files, through ``torch.utils.tensorboard``.

    A ``{"val.seg.miou": 0.8}`` row becomes the scalar ``val/seg.miou`` (the first dot becomes the group separator).
    Events an interrupted run wrote after ``start_step`` are hidden from TensorBoard (``purge_step``), so a resumed run
    shows each step once; starting afresh in a used folder hides all earlier events.

    Args:
        folder: Where the event files go (``<output_dir>/tensorboard``).
        start_step: The step training starts from.
    """

    def __init__(self, folder: Path, *, start_step: int) -> None:
        require_tensorboard()
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(str(folder), purge_step=start_step)

    def scalars(self, values: Mapping[str, float], step: int) -> None:
        """Adds every finite value of ``values`` at ``step``."""
        for key, value in values.items():
            if math.isfinite(value):
                self.writer.add_scalar(key.replace(".", "/", 1), value, step)

    def picture(self, tag: str, picture: np.ndarray, step: int) -> None:
        """Adds an ``H x W x 3`` uint8 picture at ``step``."""
        self.writer.add_image(tag, picture, step, dataformats="HWC")

    def flush(self) -> None:
        """Writes what is buffered to the event file."""
        self.writer.flush()

    def close(self) -> None:
        """Flushes and closes the event file."""
        self.writer.close()


def require_tensorboard(loggers: Sequence[str] = ("tensorboard",)) -> None:
    """Raises a one-line ``ValueError`` that says what to install when ``loggers`` asks for TensorBoard without it."""
    if "tensorboard" in loggers and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(
            'train.loggers: tensorboard needs the tensorboard package: pip install -e ".[tensorboard]" (or pip install tensorboard)'
        )


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

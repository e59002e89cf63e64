"""How closely one way of running a model follows another (bf16 or int8 against float32), task by task."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch

from multitask_deeplab.tasks import TASKS, TaskKind

if TYPE_CHECKING:
    from multitask_deeplab.inference.predictor import Predictor

MEASURES = {"segmentation": "agreement", "depth": "rel_difference", "normals": "angle_deg"}
"""What is measured for each task kind: the share of pixels given the same class; the mean relative difference
``|candidate - reference| / reference``; the mean angle between the two normals, in degrees."""


class Agreement:
    """Accumulates, over a split, how far candidate predictions lie from reference predictions.

    Both are the :meth:`Predictor.predict_batch <multitask_deeplab.inference.predictor.Predictor.predict_batch>`
    outputs for the same batch (segmentation probabilities or logits, depth in metres, unit normals). Every pixel
    counts, whatever the ground truth says there. Results are keyed ``"task.measure"`` (see ``MEASURES``).

    Args:
        tasks: ``{task name: TaskKind}`` (or a kind's registered name); a kind derived from a built-in one is measured
            as that one.
    """

    def __init__(self, tasks: Mapping[str, TaskKind | str]) -> None:
        tasks = {name: kind_name(task) for name, task in tasks.items()}
        unknown = {name: kind for name, kind in tasks.items() if kind not in MEASURES}
        if unknown:
            raise ValueError(f"no agreement measure for the task kinds {unknown}; measured kinds are {', '.join(MEASURES)}")
        self.tasks = dict(tasks)
        self.sums = dict.fromkeys(tasks, 0.0)
        self.counts = dict.fromkeys(tasks, 0)

    @torch.no_grad()
    def update(self, reference: Mapping[str, torch.Tensor], candidate: Mapping[str, torch.Tensor]) -> None:
        """Adds one batch: ``{task: B x C_t x H x W}`` from each."""
        for name, kind in self.tasks.items():
            ref, cand = reference[name].double(), candidate[name].double()
            if ref.shape != cand.shape:
                raise ValueError(f"task {name!r}: reference {tuple(ref.shape)} and candidate {tuple(cand.shape)} differ in shape")
            if kind == "segmentation":
                per_pixel = (ref.argmax(1) == cand.argmax(1)).double()
            elif kind == "depth":
                per_pixel = (cand - ref).abs() / ref.clamp_min(1e-6)
            else:
                per_pixel = torch.rad2deg(torch.acos((ref * cand).sum(1).clamp(-1.0, 1.0)))
            self.sums[name] += float(per_pixel.sum())
            self.counts[name] += per_pixel.numel()

    def compute(self) -> dict[str, float]:
        """``{"task.measure": value}``; NaN for a task that saw no pixel."""
        return {
            f"{name}.{MEASURES[kind]}": self.sums[name] / self.counts[name] if self.counts[name] else float("nan")
            for name, kind in self.tasks.items()
        }


def kind_name(task: TaskKind | str) -> str:
    """The registered name of a task's kind (of the nearest registered class it derives from)."""
    return task if isinstance(task, str) else TASKS.name_of(type(task))


def compare_predictors(reference: Predictor, candidate: Predictor, batches: Iterable[torch.Tensor]) -> dict[str, float]:
    """:class:`Agreement` of ``candidate`` with ``reference`` (the same model run two ways) over ``B x C x H x W``
    batches in [0, 1]."""
    agreement = Agreement(reference.tasks)
    for batch in batches:
        agreement.update(reference.predict_batch(batch.to(reference.device)), candidate.predict_batch(batch.to(candidate.device)))
    return agreement.compute()


def describe(results: Mapping[str, float]) -> str:
    """:meth:`Agreement.compute`'s results as one line: ``"seg 99.31 % of pixels agree, depth 0.41 % mean relative
    difference"``."""
    formats = {
        "agreement": "{task} {percent:.2f} % of pixels agree",
        "rel_difference": "{task} {percent:.2f} % mean relative difference",
        "angle_deg": "{task} {value:.2f}° mean angle",
    }
    parts = []
    for key, value in results.items():
        task, _, measure = key.rpartition(".")
        parts.append(formats[measure].format(task=task, value=value, percent=100 * value))
    return ", ".join(parts)

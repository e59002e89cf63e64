"""How closely one way of running a model follows another (bf16 or int8 against float32), task by task."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING

import torch

from multitask_deeplab.tasks import TaskKind

if TYPE_CHECKING:
    from multitask_deeplab.inference.predictor import Predictor

PHRASES = {
    "agreement": "{task} {percent:.2f} % of pixels agree",
    "rel_difference": "{task} {percent:.2f} % mean relative difference",
    "angle_deg": "{task} {value:.2f}° mean angle",
}
"""How :func:`describe` phrases the built-in kinds' comparisons; any other reads ``"<task> <comparison> <value>"``."""


class Agreement:
    """Accumulates, over a split, how far candidate predictions lie from reference predictions.

    Both are the :meth:`Predictor.predict_batch <multitask_deeplab.inference.predictor.Predictor.predict_batch>`
    outputs for the same batch (segmentation probabilities or logits, depth in metres, unit normals). Every pixel
    counts, whatever the ground truth says there. Each task's kind measures (:meth:`TaskKind.compare
    <multitask_deeplab.tasks.TaskKind.compare>`): segmentation the share of pixels given the same class, depth the mean
    relative difference, normals the mean angle in degrees. Results are keyed ``"task.<kind's comparison>"``.

    Args:
        tasks: ``{task name: TaskKind}``.
    """

    def __init__(self, tasks: Mapping[str, TaskKind]) -> None:
        self.tasks = dict(tasks)
        self.sums = dict.fromkeys(tasks, 0.0)
        self.counts = dict.fromkeys(tasks, 0)

    @torch.no_grad()
    def update(self, reference: Mapping[str, torch.Tensor], candidate: Mapping[str, torch.Tensor]) -> None:
        """Adds one batch: ``{task: B x C_t x H x W}`` from each."""
        for name, task in self.tasks.items():
            ref, cand = reference[name].double(), candidate[name].double()
            if ref.shape != cand.shape:
                raise ValueError(f"task {name!r}: reference {tuple(ref.shape)} and candidate {tuple(cand.shape)} differ in shape")
            per_pixel = task.compare(ref, cand)
            self.sums[name] += float(per_pixel.sum())
            self.counts[name] += per_pixel.numel()

    def compute(self) -> dict[str, float]:
        """``{"task.measure": value}``; NaN for a task that saw no pixel."""
        return {
            f"{name}.{task.comparison}": self.sums[name] / self.counts[name] if self.counts[name] else float("nan")
            for name, task in self.tasks.items()
        }


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
    parts = []
    for key, value in results.items():
        task, _, measure = key.rpartition(".")
        parts.append(PHRASES.get(measure, "{task} {measure} {value:.4g}").format(task=task, measure=measure, value=value, percent=100 * value))
    return ", ".join(parts)

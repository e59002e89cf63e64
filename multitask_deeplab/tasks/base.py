"""The task-kind base class and its registry: what a kind of dense task means to every part of the framework.

A recipe task names its kind (``kind: segmentation``); the kind's class is built with the task's own keys (e.g.
``num_classes``), and that object answers every question the framework asks about the task: which batch key holds its
target and in what layout, what an unknown pixel looks like, how augmentation changes the target's values, how many
channels the head outputs and which activation turns them into predictions, the default loss, the metrics (with the
primary one and each one's direction), how predictions and targets are coloured, how ``mtdl predict`` writes them, and
how a horizontally flipped prediction is flipped back. The trainer, evaluation, predictor, Δm and pictures are loops
over the tasks' kinds; nothing else branches on a kind's name.

Register a new kind with ``@TASKS.register("name")`` on a :class:`TaskKind` subclass; see ``examples/boundary_task.py``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn

from multitask_deeplab import visualize
from multitask_deeplab.metrics.base import Metrics
from multitask_deeplab.registry import Registry


class TaskKind:
    """Base class of task kinds; one instance per task of a recipe, built from the task's kind-specific keys.

    Class attributes a kind sets:
        default_target: The batch key the task reads unless the recipe's ``target:`` names another.
        default_loss: The loss config used when the recipe gives none, e.g. ``{"type": "cross_entropy"}``.
        primary_metric: The metric that ranks checkpoints (``best.pt``) by default.
        delta_m_metrics: The metrics Δm averages by default.
        target_channels: Channels of the target, or ``None`` for an ``H x W`` map of integer ids.
        target_dtype: The target's dtype.
        classification: Whether the loss is a classification likelihood (softmax or Bernoulli), which the uncertainty
            weighting of Kendall et al. treats differently from a regression one.
        comparison: The name of what :meth:`compare` measures (how closely bf16 or int8 predictions follow float32's).

    Subclasses implement :attr:`out_channels` and :meth:`metrics`, and override the hooks whose default does not fit.
    They take their own keyword arguments and pass the rest on: ``super().__init__(**base)``.

    Args:
        target: The batch key this task reads; ``default_target`` when ``None``.
    """

    default_target: ClassVar[str]
    default_loss: ClassVar[Mapping[str, Any]]
    primary_metric: ClassVar[str]
    delta_m_metrics: ClassVar[tuple[str, ...]]
    target_channels: ClassVar[int | None] = 1
    target_dtype: ClassVar[torch.dtype] = torch.float32
    classification: ClassVar[bool] = False
    comparison: ClassVar[str] = "mean_abs_difference"

    def __init__(self, *, target: str | None = None) -> None:
        if target is not None and (not isinstance(target, str) or not target or target == "image"):
            raise ValueError(f"target must name a batch key other than 'image', got {target!r}")
        self.target = target or self.default_target

    # ------------------------------------------------------------------------------------------------ the model
    @property
    def out_channels(self) -> int:
        """Output channels of the task's head."""
        raise NotImplementedError

    def activation(self) -> nn.Module | None:
        """The module that turns the head's upsampled raw output into the prediction (``None``: the raw output)."""
        return None

    def loss_defaults(self) -> dict[str, Any]:
        """Keyword arguments offered to the task's loss (each loss takes those it accepts), e.g. ``ignore_index``."""
        return {}

    # --------------------------------------------------------------------------------------------- the target
    @property
    def invalid_value(self) -> float:
        """The target value of a pixel whose label is unknown (also used for augmentation padding)."""
        return 0.0

    def prepare_target(self, target: Tensor) -> Tensor:
        """The batch's target as the loss and the metrics take it (the identity unless the kind derives its target,
        e.g. boundaries from a label map)."""
        return target

    def invalid_target(self, height: int, width: int) -> Tensor:
        """A fully unknown target for a sample that lacks this task's label."""
        shape = (height, width) if self.target_channels is None else (self.target_channels, height, width)
        return torch.full(shape, self.invalid_value, dtype=self.target_dtype)

    def example_target(self, batch: int, height: int, width: int, generator: torch.Generator) -> Tensor:
        """A random valid batch of targets, to try the loss and the metrics on before training starts."""
        channels = 1 if self.target_channels is None else self.target_channels
        return torch.rand(batch, channels, height, width, generator=generator).to(self.target_dtype)

    def check_target(self, target: Tensor, source: str) -> tuple[Tensor, Counter]:
        """Checks (and cleans) one sample's target as a dataset loaded it; returns it with counts of what was fixed.

        Raises:
            ValueError: naming ``source`` (the file) when the target cannot be used.
        """
        expected = 2 if self.target_channels is None else 3
        if target.dim() != expected or (self.target_channels is not None and target.shape[0] != self.target_channels):
            layout = "H x W" if self.target_channels is None else f"{self.target_channels} x H x W"
            raise ValueError(f"{source}: expected a {layout} target, got shape {tuple(target.shape)}")
        return target, Counter()

    def accepts(self, provided: TaskKind) -> str | None:
        """Why this task cannot read a target the dataset describes as ``provided``, or ``None`` when it can."""
        if isinstance(provided, type(self)) or isinstance(self, type(provided)):
            return None
        return f"the dataset's {provided.target!r} holds {TASKS.name_of(type(provided))} targets"

    def transform_values(self, target: Tensor, linear: Tensor) -> Tensor:
        """The target's values after a geometric transform whose 2 x 2 linear part (per sample, ``B x 2 x 2``, a zoom
        times a rotation or reflection) moved its pixels; the pixels themselves are already moved. Augmentation and
        test-time flipping (``linear = diag(-1, 1)``) both use it. The identity by default."""
        return target

    # --------------------------------------------------------------------------------------------- predictions
    def prediction(self, output: Tensor) -> Tensor:
        """The model's output as a prediction that can be averaged (e.g. softmax probabilities); ``B x C x H x W``."""
        return output

    def compare(self, reference: Tensor, candidate: Tensor) -> Tensor:
        """Per pixel, how far a candidate prediction lies from a reference one (two :meth:`prediction` batches of the
        same images, ``B x C x H x W``), as ``comparison`` names it: by default the mean absolute difference over the
        channels. Returns ``B x H x W``."""
        return (candidate - reference).abs().mean(1)

    def finish_average(self, mean: Tensor) -> Tensor:
        """An average of predictions made valid again (e.g. normals back to unit length); the identity by default."""
        return mean

    def to_numpy(self, prediction: Tensor, *, probabilities: bool = False) -> dict[str, np.ndarray]:
        """One image's ``C x H x W`` prediction as arrays keyed by suffix: ``""`` is the main result (``H x W`` for one
        channel), other suffixes are extras (e.g. ``"_probs"``)."""
        array = prediction.float().cpu().numpy()
        return {"": array[0] if array.shape[0] == 1 else array}

    def colorize(self, value: Tensor | np.ndarray, *, reference: Tensor | np.ndarray | None = None, options: visualize.PictureOptions | None = None) -> np.ndarray:
        """A picture (``H x W x 3`` uint8) of one prediction (a ``C x H x W`` output or a :meth:`to_numpy` result) or
        target; ``reference`` is the target the picture is compared with (e.g. for a shared colour scale)."""
        raise NotImplementedError

    def write_prediction(self, folder: Path, stem: str, prediction: np.ndarray, image: np.ndarray, *, options: visualize.PictureOptions) -> np.ndarray:
        """Writes one image's prediction files as ``mtdl predict`` does (``<stem>.png`` and friends) and returns the
        picture for the summary sheet. ``prediction`` is :meth:`to_numpy`'s main array, ``image`` the input as uint8 RGB."""
        picture = self.colorize(prediction, options=options)
        visualize.save_png(picture, folder / f"{stem}.png")
        return picture

    # --------------------------------------------------------------------------------------------- metrics
    def metrics(self) -> Metrics:
        """A fresh accumulator of the task's metrics over a split.

        A kind whose metrics can follow different evaluation protocols takes them as keyword arguments with
        defaults; a recipe sets them per task in ``eval.protocol`` (checked against this signature)."""
        raise NotImplementedError

    def higher_is_better(self, metric: str) -> bool:
        """Whether a larger value of ``metric`` (a name the metrics return) is better."""
        return self.metrics().higher_is_better(metric)

    def describe(self) -> str:
        """A few words for messages, e.g. ``"segmentation (5 classes)"``."""
        return TASKS.name_of(type(self))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(target={self.target!r})"


TASKS: Registry[TaskKind] = Registry("task kind", TaskKind)
"""Every registered task kind, by the name recipes give as ``kind:``."""

"""MultiTaskModel: one shared backbone, one head per task, every prediction at the input size."""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from multitask_deeplab.models.backbone import TimmBackbone, checkpoint
from multitask_deeplab.models.heads import HEADS, SharedTrunk
from multitask_deeplab.models.pretrained import save_pretrained

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MultiTaskModel(nn.Module):
    """A shared backbone feeding a ``ModuleDict`` of heads keyed by task name.

    The model takes images in [0, 1] and normalises them itself, so that training, inference and exported
    models apply the same normalisation.

    Args:
        backbone: The shared feature extractor.
        heads: One head per task, each mapping the feature list to a map at feature resolution.
        activations: Per task, the module that turns its head's upsampled output into the prediction (a task kind's
            :meth:`~multitask_deeplab.tasks.TaskKind.activation`, e.g. a positive depth); tasks without one output the
            raw maps (e.g. segmentation logits).
        trunk: Optional module shared by the heads (e.g. a :class:`~multitask_deeplab.models.heads.SharedTrunk`),
            run once on the feature list; its output is appended to the list as the last level.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
        config: The resolved recipe the model was built from (a plain dict), which :meth:`save_pretrained` writes;
            set by :func:`~multitask_deeplab.engine.build.build_model`.

    Attributes:
        loader: Loads a model for :meth:`from_pretrained`. Building a model from a recipe is the engine's job, a layer
            above the models, so :mod:`multitask_deeplab.engine.restore` installs it (importing the package does).
    """

    loader: ClassVar[Callable[..., MultiTaskModel] | None] = None

    def __init__(
        self,
        backbone: TimmBackbone,
        heads: Mapping[str, nn.Module],
        *,
        activations: Mapping[str, nn.Module | None] | None = None,
        trunk: nn.Module | None = None,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.config = None if config is None else dict(config)
        if not heads:
            raise ValueError("a MultiTaskModel needs at least one head")
        if not len(mean) == len(std) == backbone.in_chans:
            raise ValueError(
                f"mean and std need one value per input channel ({backbone.in_chans}), got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        self.backbone = backbone
        self.trunk = trunk
        self.heads = nn.ModuleDict(heads)
        activations = {task: module for task, module in (activations or {}).items() if module is not None}
        if unknown := sorted(set(activations) - set(heads)):
            raise ValueError(f"activations for {', '.join(unknown)}, which have no head; give one activation per task at most")
        self.activations = nn.ModuleDict(activations)
        self.grad_checkpointing = False
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def task_names(self) -> list[str]:
        """The tasks, in the order their heads were given."""
        return list(self.heads.keys())

    def shared_parameters(self) -> list[nn.Parameter]:
        """The trainable parameters every task depends on: the backbone's and the shared trunk's."""
        shared = [self.backbone] if self.trunk is None else [self.backbone, self.trunk]
        return [p for module in shared for p in module.parameters() if p.requires_grad]

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recomputes activations in the backward pass instead of keeping them: the backbone's segments (see
        :meth:`TimmBackbone.set_grad_checkpointing`), the shared trunk and each head, one at a time."""
        self.backbone.set_grad_checkpointing(enable)
        self.grad_checkpointing = enable

    def forward(
        self, image: torch.Tensor, *, feature_hook: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None
    ) -> dict[str, torch.Tensor]:
        """Predicts every task.

        Args:
            image: ``B x C x H x W`` in [0, 1]; any H and W.
            feature_hook: Called with the shared features (the backbone's levels, then the shared trunk's output);
                the heads read the list it returns instead. Representation-level weighting uses it to give the
                heads detached copies (see :func:`multitask_deeplab.engine.features.forward_with_shared_features`).

        Returns:
            ``{task: B x C_t x H x W}`` at the input size.
        """
        features = self.backbone((image - self.mean) / self.std)
        if self.trunk is not None:
            features = [*features, self._run(self.trunk, features)]
        read = features if feature_hook is None else feature_hook(features)
        return {task: self._decode(task, head, read, image.shape[-2:]) for task, head in self.heads.items()}

    def _run(self, module: nn.Module, features: list[torch.Tensor]) -> torch.Tensor:
        if self.grad_checkpointing and self.training and torch.is_grad_enabled():
            return checkpoint(module, features)
        return module(features)

    def _decode(self, task: str, head: nn.Module, features: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        output = F.interpolate(self._run(head, features), size=size, mode="bilinear", align_corners=False)
        return self.activations[task](output) if task in self.activations else output

    def save_pretrained(
        self, folder: str | os.PathLike, *, metrics: Mapping[str, float] | None = None, delta_m: float | None = None, repo_id: str | None = None
    ) -> Path:
        """Writes the recipe, the weights (safetensors) and a model card into ``folder``, as the Hugging Face Hub keeps
        models (see :mod:`multitask_deeplab.models.pretrained`); ``mtdl push`` uploads such a folder.

        Args:
            folder: Where to write (created).
            metrics: Val metrics for the model card, e.g. a checkpoint's ``metrics``.
            delta_m: Δm in percent against single-task baselines, for the card.
            repo_id: The Hub repo the folder is meant for, shown in the card's loading code.
        """
        if self.config is None:
            raise ValueError("save_pretrained needs the recipe the model was built from: build it with create_model or build_model")
        return save_pretrained(self, folder, config=self.config, metrics=metrics, delta_m=delta_m, repo_id=repo_id)

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, *, revision: str | None = None, device: str | torch.device = "cpu") -> MultiTaskModel:
        """Loads a model saved by :meth:`save_pretrained`: from a folder, a Hugging Face Hub repo id (``org/name``,
        from the local cache when it has it and always under ``HF_HUB_OFFLINE=1``) or a training checkpoint.

        Args:
            source: The folder, repo id (``org/name`` or ``org/name@revision``) or checkpoint file.
            revision: The Hub branch, tag or commit (default: the main branch).
            device: Where the model goes; it is returned in eval mode.
        """
        if cls.loader is None:
            raise RuntimeError("import multitask_deeplab (it installs the loader) before calling from_pretrained")
        return cls.loader(source, revision=revision, device=device)

    def predict(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode forward under ``torch.inference_mode``; the training mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return self(image)
        finally:
            self.train(was_training)


def build_head(
    backbone: TimmBackbone, cfg: Mapping[str, Any], out_channels: int, trunk: SharedTrunk | None = None, *, where: str | None = None
) -> nn.Module:
    """Builds a registered head from ``{"type": name, **kwargs}``, sized to the feature levels it will read: the
    backbone's real channels, plus the shared trunk's output as the last level when there is one."""
    channels, reductions = list(backbone.channels), list(backbone.reductions)
    if trunk is not None:
        channels.append(trunk.channels)
        reductions.append(trunk.reduction)
    return HEADS.build(cfg, where=where, in_channels=channels, reductions=reductions, out_channels=out_channels)


def build_trunk(backbone: TimmBackbone, cfg: Mapping[str, Any] | None) -> SharedTrunk | None:
    """The :class:`SharedTrunk` that ``model.shared_trunk`` describes (``None``: no shared trunk)."""
    if cfg is None:
        return None
    allowed = [name for name in inspect.signature(SharedTrunk).parameters if name not in ("in_channels", "reductions")]
    unknown = sorted(set(cfg) - set(allowed))
    if unknown:
        raise ValueError(f"model.shared_trunk: unknown key {unknown[0]!r}; it takes {', '.join(allowed)}")
    return SharedTrunk(backbone.channels, backbone.reductions, **cfg)

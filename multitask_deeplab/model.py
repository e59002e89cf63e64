"""MultiTaskModel: one shared backbone, one head per task, every prediction at the input size."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

from multitask_deeplab.backbone import TimmBackbone
from multitask_deeplab.heads import HEADS, DenseHead
from multitask_deeplab.tasks import head_channels

if TYPE_CHECKING:
    from multitask_deeplab.recipe import Recipe

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class MultiTaskModel(nn.Module):
    """A shared backbone feeding a ``ModuleDict`` of heads keyed by task name.

    The model takes images in [0, 1] and normalises them itself, so that training, inference and exported
    models apply the same normalisation.

    Args:
        backbone: The shared feature extractor.
        heads: One head per task, each mapping the feature list to a map at feature resolution.
        mean: Per-channel normalisation mean.
        std: Per-channel normalisation standard deviation.
    """

    def __init__(
        self,
        backbone: TimmBackbone,
        heads: Mapping[str, nn.Module],
        *,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
    ) -> None:
        super().__init__()
        if not heads:
            raise ValueError("a MultiTaskModel needs at least one head")
        if not len(mean) == len(std) == backbone.in_chans:
            raise ValueError(
                f"mean and std need one value per input channel ({backbone.in_chans}), got {len(mean)} and {len(std)}"
            )
        if any(s <= 0 for s in std):
            raise ValueError(f"std values must be positive, got {list(std)}")
        self.backbone = backbone
        self.heads = nn.ModuleDict(heads)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    @property
    def task_names(self) -> list[str]:
        """The tasks, in the order their heads were given."""
        return list(self.heads.keys())

    def forward(self, image: torch.Tensor, *, return_features: bool = False) -> Any:
        """Predicts every task.

        Args:
            image: ``B x C x H x W`` in [0, 1]; any H and W.
            return_features: Also return the backbone's feature list (the shared representation).

        Returns:
            ``{task: B x C_t x H x W}``, and the features when ``return_features``.
        """
        features = self.backbone((image - self.mean) / self.std)
        outputs = {task: self._decode(head, features, image.shape[-2:]) for task, head in self.heads.items()}
        return (outputs, features) if return_features else outputs

    @staticmethod
    def _decode(head: nn.Module, features: list[torch.Tensor], size: torch.Size) -> torch.Tensor:
        output = F.interpolate(head(features), size=size, mode="bilinear", align_corners=False)
        return head.finalize(output) if isinstance(head, DenseHead) else output

    def predict(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Eval-mode forward under ``torch.inference_mode``; the training mode is restored afterwards."""
        was_training = self.training
        self.eval()
        try:
            with torch.inference_mode():
                return self(image)
        finally:
            self.train(was_training)


def build_head(backbone: TimmBackbone, cfg: Mapping[str, Any], out_channels: int) -> nn.Module:
    """Builds a registered head from ``{"type": name, **kwargs}``, sized to the backbone's real channels."""
    return HEADS.build(cfg, in_channels=backbone.channels, reductions=backbone.reductions, out_channels=out_channels)


def create_model(
    backbone: str,
    *,
    heads: Mapping[str, Mapping[str, Any]],
    output_stride: int = 16,
    pretrained: bool | str = False,
    in_chans: int = 3,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
) -> MultiTaskModel:
    """Builds a model in one call from Python.

    Example:
        >>> model = create_model("resnet50", output_stride=8, heads={
        ...     "seg": {"type": "deeplabv3", "out_channels": 21},
        ...     "depth": {"type": "depth", "out_channels": 1},
        ... })

    Args:
        backbone: timm model name.
        heads: ``{task: {"type": head name, "out_channels": n, **head kwargs}}``.
        output_stride, pretrained, in_chans: As for :class:`TimmBackbone`.
        mean, std: Input normalisation.
    """
    body = TimmBackbone(backbone, output_stride=output_stride, pretrained=pretrained, in_chans=in_chans)
    built = {}
    for task, cfg in heads.items():
        if "out_channels" not in cfg:
            raise ValueError(f"head of task {task!r} needs out_channels (e.g. the number of classes)")
        built[task] = build_head(body, {k: v for k, v in cfg.items() if k != "out_channels"}, cfg["out_channels"])
    return MultiTaskModel(body, built, mean=mean, std=std)


def build_model(recipe: Recipe) -> MultiTaskModel:
    """Builds the model a recipe describes (weights from ``model.init_from`` are loaded too)."""
    cfg = recipe.model
    backbone = TimmBackbone(
        cfg.backbone,
        output_stride=cfg.output_stride,
        pretrained=cfg.pretrained,
        in_chans=cfg.in_chans,
        out_indices=cfg.out_indices,
    )
    heads = {name: build_head(backbone, task.head, head_channels(task.kind, task.num_classes)) for name, task in recipe.tasks.items()}
    model = MultiTaskModel(backbone, heads, mean=cfg.mean, std=cfg.std)
    if cfg.init_from:
        from multitask_deeplab.convert import init_from

        init_from(model, cfg.init_from)
    return model

"""The shared atrous backbone: a timm model in feature-extraction mode at output stride 8, 16 or 32."""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import timm
import torch
import torch.utils.checkpoint
from timm.models import FeatureDictNet
from timm.models._hub import load_state_dict_from_path
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from multitask_deeplab.runtime.hub import hub_errors, is_repo_id, split_revision

OUTPUT_STRIDES = (8, 16, 32)
_PROBE_SIZE = 64
_DILATABLE_EXAMPLES = "resnet50, resnet18, mobilenetv3_large_100, efficientnet_b0, convnext_tiny"


class TimmBackbone(nn.Module):
    """A timm model returning a list of feature maps, dilated to reach ``output_stride``.

    Args:
        name: timm model name, e.g. ``"resnet50"``.
        output_stride: 8 or 16 (dilated), or 32 (timm's native striding; no dilation requested).
        pretrained: ``False``; ``True`` for timm's default weights; ``"hf-hub:<org>/<name>"`` for the weights of a
            Hub repo (e.g. ``hf-hub:timm/resnet50.a1_in1k``); a local ``.safetensors``/``.pth`` file; or a folder
            holding ``model.safetensors`` or ``pytorch_model.bin`` (as ``timm.models.save_for_hf`` or ``hf download
            --local-dir`` write it). Hub weights come from huggingface_hub's cache when it has them, and only from
            there under ``HF_HUB_OFFLINE=1``. Keys and shapes of a file, folder or repo are checked against the model.
        in_chans: Number of input channels (e.g. 4 for RGB-D).
        out_indices: timm feature levels to return; ``None`` means all of them.
        timm_args: Further keyword arguments of ``timm.create_model`` (e.g. ``{"feature_location": ""}``: HRNet's
            raw branches instead of its classification neck's features).

    Attributes:
        channels: Channel count of each returned feature map, measured on a real tensor.
        reductions: Spatial reduction of each returned feature map, measured on a real tensor.
    """

    def __init__(
        self,
        name: str,
        *,
        output_stride: int = 16,
        pretrained: bool | str | os.PathLike = False,
        in_chans: int = 3,
        out_indices: Sequence[int] | None = None,
        timm_args: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        if output_stride not in OUTPUT_STRIDES:
            raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride!r}")
        if in_chans < 1:
            raise ValueError(f"in_chans must be >= 1, got {in_chans}")
        self.name = name
        self.output_stride = output_stride
        taken = sorted(set(timm_args or {}) & {"features_only", "in_chans", "out_indices", "output_stride", "pretrained", "pretrained_cfg_overlay"})
        if taken:
            raise ValueError(f"backbone_args may not set {', '.join(taken)}: the model section sets them (output_stride, in_chans, out_indices, pretrained)")
        kwargs: dict = {**(timm_args or {}), "features_only": True, "in_chans": in_chans}
        if out_indices is not None:
            kwargs["out_indices"] = tuple(out_indices)
        source = _weights_source(name, pretrained)
        with source.errors():
            if source.read is not None:
                _check_weights(name, source.read(), source.label, output_stride=output_stride, **kwargs)
            if source.overlay:
                kwargs["pretrained_cfg_overlay"] = source.overlay
            self.body = _create(name, pretrained=bool(pretrained), output_stride=output_stride, source=source.label, **kwargs)
        self.in_chans = in_chans
        self.grad_checkpointing = False
        try:
            self.channels, self.reductions = self._measure()
        except (AssertionError, RuntimeError, ValueError) as error:  # e.g. ViT, Swin: "Input height (64) doesn't match model (224)"
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"backbone {name!r} cannot run on images of any size (timm: {first_line}): dense prediction needs a "
                f"backbone that takes any input size, such as {_DILATABLE_EXAMPLES}"
            ) from error
        if output_stride != 32 and max(self.reductions) != output_stride:
            raise ValueError(
                f"backbone {name!r} reached output stride {max(self.reductions)}, not the {output_stride} asked for; "
                f"use output_stride={max(self.reductions)} or a dilatable family ({_DILATABLE_EXAMPLES})"
            )

    def forward(self, image: torch.Tensor) -> list[torch.Tensor]:
        """Returns one feature map per level, from shallow to deep."""
        if self.grad_checkpointing and self.training and torch.is_grad_enabled() and isinstance(self.body, FeatureDictNet):
            return self._checkpointed_forward(image)
        return list(self.body(image))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Recomputes the backbone's activations in the backward pass instead of keeping them (saves memory).

        The layers between two returned feature levels form one segment; a segment keeps only its input and
        runs again, one segment at a time, in the backward pass. Batch-norm running statistics are updated
        once per step, not again by the recomputation. Families whose timm feature wrapper is not a module
        sequence use timm's own mechanism.
        """
        self.grad_checkpointing = enable
        if not isinstance(self.body, FeatureDictNet):
            self.body.set_grad_checkpointing(enable)

    def _checkpointed_forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """``FeatureDictNet``'s forward, each segment ending at a returned level run under checkpointing."""
        features, segment = [], []
        for name, module in self.body.items():
            segment.append(module)
            if name not in self.body.return_layers:
                continue
            # A leading in-place layer (e.g. a ReLU) would overwrite the segment input kept for recomputation.
            while len(segment) > 1 and getattr(segment[0], "inplace", False) is True:
                x = segment.pop(0)(x)
            x = checkpoint(nn.Sequential(*segment), x)
            segment = []
            if isinstance(x, (tuple, list)):
                features.append(torch.cat(x, 1) if self.body.concat else x[0])
            else:
                features.append(x)
        return features

    @torch.no_grad()
    def _measure(self) -> tuple[list[int], list[int]]:
        """Channels and reductions from one small dummy forward (timm's feature_info is not always right)."""
        was_training = self.training
        self.eval()
        probe = torch.zeros(1, self.in_chans, _PROBE_SIZE, _PROBE_SIZE)
        features = self.forward(probe)
        self.train(was_training)
        channels = [f.shape[1] for f in features]
        reductions = [round(_PROBE_SIZE / f.shape[-1]) for f in features]
        return channels, reductions


def checkpoint(module: nn.Module, *args: Any) -> Any:
    """``module(*args)`` without keeping its activations: they are recomputed in the backward pass.

    The recomputation leaves batch-norm running statistics (and their batch counters) as the forward pass
    left them, so each training step updates them exactly once; under ``torch.compile``, which cannot trace that
    guard, they are updated a second time by the recomputation, as with timm's checkpointing.
    """
    if torch.compiler.is_compiling():
        return torch.utils.checkpoint.checkpoint(module, *args, use_reentrant=False)
    return torch.utils.checkpoint.checkpoint(
        module, *args, use_reentrant=False, context_fn=lambda: (contextlib.nullcontext(), _FrozenNormStats(module))
    )


class _FrozenNormStats:
    """Batch norms in ``module`` normalise with batch statistics but do not update their running ones.

    Re-enterable: a checkpointed module is recomputed once per backward pass through it, and gradient-level
    weightings take one backward pass per task.
    """

    def __init__(self, module: nn.Module) -> None:
        self.module = module
        self.saved: list[list[tuple[_BatchNorm, float | None, torch.Tensor]]] = []

    def __enter__(self) -> None:
        norms = [m for m in self.module.modules() if isinstance(m, _BatchNorm) and m.training and m.track_running_stats]
        self.saved.append([(m, m.momentum, m.num_batches_tracked.clone()) for m in norms])
        for m in norms:
            m.momentum = 0.0

    def __exit__(self, *exc_info: object) -> None:
        for m, momentum, count in self.saved.pop():
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


HF_HUB_PREFIX = "hf-hub:"
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


@dataclasses.dataclass(frozen=True)
class WeightsSource:
    """Where ``pretrained`` weights come from, in timm's terms.

    Attributes:
        label: The source in messages.
        overlay: timm's ``pretrained_cfg_overlay`` that points it there (empty: timm's default weights or none).
        read: Reads the state dict, to check its keys before timm loads it (None: not checked).
        repo_id: The Hub repo the weights come from, if any (for the cache and offline messages).
    """

    label: str
    overlay: dict[str, str] = dataclasses.field(default_factory=dict)
    read: Callable[[], dict[str, torch.Tensor]] | None = None
    repo_id: str | None = None

    def errors(self) -> contextlib.AbstractContextManager[None]:
        """Turns Hub failures (not cached offline, no such repo) into one-line errors naming the weights."""
        return hub_errors("backbone weights", self.repo_id) if self.repo_id else contextlib.nullcontext()


def _weights_source(name: str, pretrained: bool | str | os.PathLike) -> WeightsSource:
    """What ``pretrained`` names: nothing, timm's default weights, an ``hf-hub:`` repo, a folder or a file."""
    if pretrained is False:
        return WeightsSource("no weights")
    if pretrained is True:
        repo_id = timm.get_pretrained_cfg_value(name, "hf_hub_id") if timm.is_model(timm.models.split_model_name_tag(name)[0]) else None
        return WeightsSource("timm's default weights", repo_id=repo_id)
    text = str(pretrained)
    if text.startswith(HF_HUB_PREFIX):
        repo = text.removeprefix(HF_HUB_PREFIX)
        if not is_repo_id(repo):
            raise ValueError(f"pretrained {text!r}: expected hf-hub:<org>/<name>[@revision], e.g. hf-hub:timm/resnet50.a1_in1k")
        overlay = {"source": "hf-hub", "hf_hub_id": repo}
        return WeightsSource(text, overlay, lambda: timm.models.load_state_dict_from_hf(repo), split_revision(repo)[0])
    path = Path(pretrained)
    if path.is_dir():
        return WeightsSource(str(path), {"source": "local-dir", "file": str(path)}, lambda: load_state_dict_from_path(path))
    if not path.is_file():
        raise ValueError(
            f"pretrained weights not found: {path} (give a .safetensors/.pth file, a folder holding model.safetensors or "
            "pytorch_model.bin, hf-hub:<org>/<name>, or true/false)"
        )
    if path.suffix not in WEIGHT_SUFFIXES:
        raise ValueError(f"pretrained weights file {path} must be .safetensors or .pth, got {path.suffix!r}")
    return WeightsSource(str(path), {"file": str(path)}, lambda: timm.models.load_state_dict(str(path)))


def _create(name: str, *, pretrained: bool, output_stride: int, source: str, **kwargs) -> nn.Module:
    """``timm.create_model`` with its errors turned into ones that say what to change."""
    if not timm.is_model(timm.models.split_model_name_tag(name)[0]):
        close = difflib.get_close_matches(name, timm.list_models(), n=3)
        hint = f"; did you mean {', '.join(close)}?" if close else "; `mtdl list backbones` lists them"
        raise ValueError(f"unknown timm backbone {name!r}{hint}")
    if output_stride != 32:
        kwargs["output_stride"] = output_stride
    try:
        return timm.create_model(name, pretrained=pretrained, **kwargs)
    except (AssertionError, TypeError) as error:
        given = [key for key in kwargs if key not in ("features_only", "in_chans", "out_indices", "output_stride", "pretrained_cfg_overlay")]
        if "unexpected keyword argument" in str(error) and any(f"'{key}'" in str(error) for key in given):
            raise ValueError(f"backbone {name!r} does not take an argument it was given ({error}); check model.backbone_args") from error
        if output_stride == 32:
            raise ValueError(f"backbone {name!r} cannot be used as a feature extractor: {error}") from error
        raise ValueError(
            f"backbone {name!r} cannot run at output_stride {output_stride} (timm cannot dilate this family); "
            f"use output_stride=32 to run it at its native strides if `mtdl list backbones --output-stride 32 --filter {name}` "
            f"lists it (HRNet keeps a stride-4 branch: pair it with the hrnet head), or a dilatable backbone such as "
            f"{_DILATABLE_EXAMPLES}"
        ) from error
    except RuntimeError as error:
        first_line = str(error).strip().splitlines()[0]
        raise ValueError(f"could not load pretrained weights {source} into backbone {name!r}: {first_line}") from error


def _check_weights(name: str, file_state: dict[str, torch.Tensor], source: str, *, output_stride: int, **kwargs) -> None:
    """Fails when weights do not fit the model (timm's load with ``features_only`` is not strict).

    Compares keys and shapes against the model built on the meta device, before anything is loaded.
    """
    with torch.device("meta"):
        full = timm.create_model(name, in_chans=kwargs["in_chans"]).state_dict()
        features = _create(name, pretrained=False, output_stride=output_stride, source="no weights", **kwargs).state_dict()
    input_conv = _input_conv_weight(name)
    problems = {
        "missing": sorted(set(features) - set(file_state)),
        "unexpected": sorted(set(file_state) - set(full)),
        "mismatched": sorted(
            k for k in set(features) & set(file_state) if k != input_conv and features[k].shape != file_state[k].shape
        ),
    }
    if any(problems.values()):
        detail = "; ".join(
            f"{label} keys {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''} ({len(keys)} in all)"
            for label, keys in problems.items()
            if keys
        )
        raise ValueError(f"weights {source} do not fit backbone {name!r}: {detail}; is it another architecture?")


def _input_conv_weight(name: str) -> str | None:
    """The key of the input conv's weight, whose channel count timm adapts when ``in_chans`` differs."""
    first_conv = timm.get_pretrained_cfg_value(name, "first_conv")
    return f"{first_conv}.weight" if first_conv else None

"""Which timm backbones can run at a given output stride, found by trying them (cached per process)."""

from __future__ import annotations

import functools
import warnings

import timm
import torch

_FAMILIES = "resnet*", "resnext*", "seresnet*", "regnet*", "efficientnet*", "mobilenetv*", "convnext*", "xception*", "cspresnet*", "rexnet*", "nf_resnet*"


@functools.cache
def _accepts(name: str, output_stride: int) -> bool:
    kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            timm.create_model(name, features_only=True, **kwargs)
    except Exception:
        return False
    return True


def dilatable_backbones(output_stride: int, pattern: str = "*") -> list[str]:
    """timm model names matching ``pattern`` (within families known to dilate, unless stride 32) that build at ``output_stride``."""
    patterns = [pattern] if pattern != "*" else list(_FAMILIES)
    names = sorted(set(timm.list_models(patterns)))
    return [name for name in names if _accepts(name, output_stride)]

"""Which timm backbones can run at a given output stride, found by trying them (cached per process)."""

from __future__ import annotations

import functools
import sys
import warnings

import timm
import torch
from tqdm import tqdm

from multitask_deeplab.models.backbone import TimmBackbone

_FAMILIES = "resnet*", "resnext*", "seresnet*", "regnet*", "efficientnet*", "mobilenetv*", "convnext*", "xception*", "cspresnet*", "rexnet*", "nf_resnet*"


@functools.cache
def _accepts(name: str, output_stride: int) -> bool:
    """Whether :class:`TimmBackbone` builds ``name`` at ``output_stride`` and runs it (on the meta device: no memory)."""
    try:
        with torch.device("meta"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            TimmBackbone(name, output_stride=output_stride)
    except Exception:
        return False
    return True


def dilatable_backbones(output_stride: int, pattern: str = "*", *, show_progress: bool = False) -> list[str]:
    """timm model names matching ``pattern`` (within families known to dilate, unless a pattern is given) that build
    and run at ``output_stride``; ``show_progress`` shows a progress bar on stderr (building them all takes a while)."""
    patterns = [pattern] if pattern != "*" else list(_FAMILIES)
    names = sorted(set(timm.list_models(patterns)))
    checking = tqdm(names, desc=f"trying timm models at output stride {output_stride}", unit="model", file=sys.stderr,
                    disable=not show_progress, leave=False)
    return [name for name in checking if _accepts(name, output_stride)]

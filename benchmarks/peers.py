"""The headline comparison: this project's models against the peers, in two regimes.

Peers, all on the same ResNet (``Settings.encoder``: ResNet-50, or ResNet-18 in quick runs; timm's, through smp's
``tu-`` encoders, and torchvision's own, which exists for ResNet-50 only), with random weights (speed does not depend
on them) and 21 classes:

- **seg only, DeepLabV3 at output stride 8**: torchvision ``deeplabv3_resnet50`` and segmentation_models_pytorch
  ``DeepLabV3(encoder_name="tu-resnet50")`` (its default stride is 8), against ours with a ``deeplabv3`` head;
- **seg only, DeepLabV3+ at output stride 16**: smp ``DeepLabV3Plus(encoder_name="tu-resnet50")`` (stride 16 and
  separable convolutions by default), against ours with a separable ``deeplabv3plus`` head;
- **seg + depth**: two torchvision models and two smp DeepLabV3 models (segmentation, and depth from a 1-channel
  head made positive), against one of ours with two heads on one backbone.

Regimes: **as shipped**, each model the way its README runs it (the peers in eval mode, float32, contiguous; ours
through the ``Predictor``'s default backend and precision), and **same options**, every model with the same
generic options: batch norm folded (:func:`~multitask_deeplab.models.fuse.fold_batchnorm` works on any module),
channels-last, and bf16 autocast where the device computes bf16 natively. In that regime ours is also run at every
precision and backend it has (bf16, ONNX Runtime float32 and int8); whether bf16 and int8 are accurate enough is
the precision section's measurement, not this one's. Each figure is the ratio to the fastest peer of the same group
in the same regime and batch.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn

from benchmarks.inference import (
    DEEPEST,
    NUM_CLASSES,
    SEG_TASK,
    Normalized,
    PeerPair,
    forward_call,
    multitask_model,
    torchvision_deeplabv3,
    two_torchvision_models,
)
from benchmarks.measure import count_flops, time_interleaved
from benchmarks.settings import Settings
from multitask_deeplab import create_model
from multitask_deeplab.inference.backends import BACKENDS, Backend, BackendOptions, prepare_for_inference, resolve_precision
from multitask_deeplab.inference.predictor import DEFAULT_PRECISION
from multitask_deeplab.runtime.precision import native_bf16

SHIPPED, SAME = "as shipped", "same options"
SEG_V3, SEG_V3PLUS, SEG_DEPTH = "seg only, DeepLabV3 (stride 8)", "seg only, DeepLabV3+ (stride 16)", "seg + depth"
GROUPS = (SEG_V3, SEG_V3PLUS, SEG_DEPTH)
MULTITASK_VARIANT = "full ASPP depth head"
"""Ours in the seg + depth group: the two peer models' heads (DeepLabV3 ASPP) on one shared backbone."""
OURS = "ours"
CALIBRATION = 2
"""Random images that calibrate the int8 models timed here (ranges do not change int8 speed; accuracy is measured
on a trained model in the precision section)."""


def smp_model(architecture: str, classes: int, encoder: str) -> nn.Module:
    """segmentation_models_pytorch's model with its defaults and a timm encoder, without weights."""
    try:
        import segmentation_models_pytorch as smp
    except ImportError as error:
        raise ValueError('the peers section needs segmentation_models_pytorch: pip install -e ".[bench]"') from error
    return Normalized(getattr(smp, architecture)(encoder_name=f"tu-{encoder}", encoder_weights=None, classes=classes), key=None)


def peers(group: str, encoder: str) -> dict[str, Callable[[], nn.Module]]:
    """The peer models of a group, by name (built when called)."""
    torchvision = encoder == "resnet50"
    if group == SEG_V3:
        return {
            **({"torchvision DeepLabV3": lambda: Normalized(torchvision_deeplabv3(NUM_CLASSES))} if torchvision else {}),
            "smp DeepLabV3": lambda: smp_model("DeepLabV3", NUM_CLASSES, encoder),
        }
    if group == SEG_V3PLUS:
        return {"smp DeepLabV3+": lambda: smp_model("DeepLabV3Plus", NUM_CLASSES, encoder)}
    return {
        **({"two torchvision models": two_torchvision_models} if torchvision else {}),
        "two smp DeepLabV3 models": lambda: PeerPair(lambda classes: smp_model("DeepLabV3", classes, encoder)),
    }


def ours(group: str, encoder: str) -> nn.Module:
    """This project's model for a group."""
    if group == SEG_V3:
        return create_model(encoder, output_stride=8, tasks={"seg": SEG_TASK}, out_indices=DEEPEST)
    if group == SEG_V3PLUS:
        seg = {**SEG_TASK, "head": {"type": "deeplabv3plus", "separable": True}}
        return create_model(encoder, output_stride=16, tasks={"seg": seg}, out_indices=(1, 4))
    return multitask_model(MULTITASK_VARIANT, encoder)


def our_precisions(device: torch.device) -> dict[str, tuple[str, str]]:
    """Ours in the same-options regime: row name -> (backend, precision); int8 on the CPU only."""
    rows = {f"{OURS} fp32": ("torch", "fp32")}
    if native_bf16(device):
        rows[f"{OURS} bf16"] = ("torch", "bf16")
    rows[f"{OURS} onnxruntime fp32"] = ("onnxruntime", "fp32")
    if device.type == "cpu":
        rows[f"{OURS} onnxruntime int8"] = ("onnxruntime", "int8")
    return rows


def _backend(model: nn.Module, backend: str, precision: str, settings: Settings) -> Backend:
    """Our model on a backend with the Predictor's default options (BN folded, channels-last)."""
    calibration = ()
    if precision == "int8":
        generator = torch.Generator().manual_seed(1)
        calibration = [torch.rand(3, settings.size, settings.size, generator=generator) for _ in range(CALIBRATION)]
    return BACKENDS.get(backend)(model, BackendOptions(device=settings.device, precision=precision, calibration=calibration))


def _call(work: Callable[[torch.Tensor], Any], image: torch.Tensor) -> Callable[[], Any]:
    def run() -> Any:
        with torch.inference_mode():
            return work(image)

    return run




def _our_rows(device: torch.device) -> dict[str, tuple[str, str]]:
    """Every row of ours: as shipped (the Predictor's default backend and precision), then the same-options ones."""
    return {OURS: ("torch", resolve_precision(DEFAULT_PRECISION, device, "torch")), **our_precisions(device)}


def _our_backends(model: nn.Module, settings: Settings) -> dict[str, Backend]:
    """One backend per row of ours (rows with the same backend and precision share one)."""
    built: dict[tuple[str, str], Backend] = {}
    for spec in _our_rows(settings.device).values():
        if spec not in built:
            built[spec] = _backend(model, *spec, settings)
    return {name: built[spec] for name, spec in _our_rows(settings.device).items()}


def run_peers(settings: Settings) -> dict[str, Any]:
    """Times every group in both regimes at each batch size; ratios to the fastest peer of the group."""
    device = settings.device
    bf16 = native_bf16(device)
    rows = _our_rows(device)
    result: dict[str, Any] = {
        "bf16_native": bf16, "options": "fold BN, channels-last" + (", bf16 autocast" if bf16 else ""), "ours": rows, "groups": {},
    }
    for group in GROUPS:
        torch.manual_seed(0)
        peer_models = {name: build().to(device).eval() for name, build in peers(group, settings.encoder).items()}
        same_peers = {name: prepare_for_inference(m, fold_bn=True, channels_last=True) for name, m in peer_models.items()}
        model = ours(group, settings.encoder).to(device).eval()
        backends = _our_backends(model, settings)
        probe = torch.rand(1, 3, settings.size, settings.size, device=device)
        flops = {name: count_flops(forward_call(m, probe, {})) for name, m in {**peer_models, OURS: model}.items()}
        regimes: dict[str, dict[str, Any]] = {SHIPPED: {}, SAME: {}}
        for batch in settings.batches:
            image = torch.rand(batch, 3, settings.size, settings.size, generator=torch.Generator().manual_seed(0)).to(device)
            calls = {
                SHIPPED: {**{name: forward_call(m, image, {}) for name, m in peer_models.items()}, OURS: _call(backends[OURS], image)},
                SAME: {
                    **{name: forward_call(m, image, {"channels_last": True, "bf16": bf16}) for name, m in same_peers.items()},
                    **{name: _call(backend, image) for name, backend in backends.items() if name != OURS},
                },
            }
            for regime, candidates in calls.items():
                timings = time_interleaved(candidates, device=device, warmup=settings.warmup, repeats=settings.repeats)
                regimes[regime][str(batch)] = _with_ratios(timings, list(peer_models))
        result["groups"][group] = {"peers": list(peer_models), "flops_per_image": flops, "regimes": regimes}
        del peer_models, same_peers, model, backends, calls
    return result


def _with_ratios(timings: Mapping[str, dict[str, Any]], peer_names: list[str]) -> dict[str, Any]:
    """Adds each row's ratio to the fastest peer (by median, and of minimums) and names that peer."""
    best = min(peer_names, key=lambda name: timings[name]["median_s"])
    rows = {name: dict(timing) for name, timing in timings.items()}
    for row in rows.values():
        row["ratio_to_best_peer"] = row["median_s"] / timings[best]["median_s"]
        row["ratio_of_minimums"] = row["min_s"] / min(timings[name]["min_s"] for name in peer_names)
    return {"best_peer": best, "rows": rows}

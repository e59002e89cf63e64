"""Inference: this project's models against torchvision's DeepLabV3, FLOP rates against matrix-multiply throughput.

Section 1 times the seg-only model (timm ResNet-50, stride 8, ``deeplabv3`` head, weights converted from a
torchvision model so that both compute the same function) against ``deeplabv3_resnet50``, with each inference
option added in turn. Section 2 times seg + depth models (one backbone, two heads; several depth heads) against
two separate torchvision-style models, and measures peak memory, each in a fresh process. Every model gets the
same [0, 1] image; torchvision's models get it normalised, as ours normalise internally.
"""

from __future__ import annotations

import contextlib
import statistics
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from benchmarks.measure import MiB, count_flops, in_fresh_process, time_interleaved
from benchmarks.settings import Settings
from multitask_deeplab import create_model
from multitask_deeplab.inference.backends import prepare_for_inference, resolve_precision
from multitask_deeplab.inference.predictor import DEFAULT_PRECISION
from multitask_deeplab.models.convert import load_torchvision_deeplabv3
from multitask_deeplab.models.model import IMAGENET_MEAN, IMAGENET_STD, MultiTaskModel
from multitask_deeplab.runtime.precision import native_bf16

NUM_CLASSES = 21
EQUALITY_TOLERANCE = 1e-4
SEG_TASK = {"kind": "segmentation", "num_classes": NUM_CLASSES, "head": {"type": "deeplabv3"}}
LIGHT_SEG_TASK = {**SEG_TASK, "head": {"type": "deeplabv3", "trunk": "light"}}
DEPTH_HEADS: dict[str, dict[str, Any]] = {
    "full ASPP depth head": {"depth": {"type": "deeplabv3"}},
    "separable-ASPP depth head": {"depth": {"type": "deeplabv3", "separable": True}},
    "conv depth head": {"depth": {"type": "deeplabv3", "trunk": "conv"}},
    "depth head on layer3": {"depth": {"type": "deeplabv3", "in_index": -2}, "out_indices": (3, 4)},
    "shared trunk, light heads": {"shared_trunk": {}, "depth": {"type": "deeplabv3", "trunk": "light"}, "seg": LIGHT_SEG_TASK},
    "shared separable trunk, light heads": {
        "shared_trunk": {"separable": True}, "depth": {"type": "deeplabv3", "trunk": "light"}, "seg": LIGHT_SEG_TASK,
    },
}
"""The seg + depth variants: depth head (and, for the shared trunk, the seg head) of each, and the backbone levels
they read (by default the deepest only: the model then keeps no other level alive)."""
DEEPEST = (4,)


class Normalized(nn.Module):
    """A peer segmentation model fed [0, 1] images, normalised as this project's models do.

    Args:
        model: The peer model.
        key: The key of its output in the dict it returns (torchvision's ``"out"``); ``None`` for a tensor (smp).
    """

    def __init__(self, model: nn.Module, key: str | None = "out") -> None:
        super().__init__()
        self.model, self.key = model, key
        self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, -1, 1, 1))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        output = self.model((image - self.mean) / self.std)
        return output if self.key is None else output[self.key]


class PeerPair(nn.Module):
    """Two single-task peer models: segmentation, and depth (one channel made positive: softplus + 1e-3).

    Args:
        build: Builds one peer model for a number of output channels.
    """

    def __init__(self, build: Callable[[int], nn.Module]) -> None:
        super().__init__()
        self.seg, self.depth = build(NUM_CLASSES), build(1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"seg": self.seg(image), "depth": 1e-3 + F.softplus(self.depth(image))}


def two_torchvision_models() -> PeerPair:
    """The seg + depth baseline of section 2: two torchvision DeepLabV3 models."""
    return PeerPair(lambda classes: Normalized(torchvision_deeplabv3(classes)))


def torchvision_deeplabv3(num_classes: int) -> nn.Module:
    """``deeplabv3_resnet50`` without the auxiliary head and without downloaded weights."""
    return torchvision.models.segmentation.deeplabv3_resnet50(
        weights=None, weights_backbone=None, num_classes=num_classes, aux_loss=False
    )


def randomise_batch_norm(model: nn.Module, generator: torch.Generator) -> None:
    """Non-trivial batch-norm statistics, so the equality check and BN folding are tested on real numbers."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.copy_(torch.rand(module.num_features, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(module.num_features, generator=generator) + 0.5)


def multitask_model(variant: str, backbone: str = "resnet50") -> MultiTaskModel:
    """This project's seg + depth model with the named depth-head variant (see ``DEPTH_HEADS``)."""
    spec = DEPTH_HEADS[variant]
    tasks = {"seg": spec.get("seg", SEG_TASK), "depth": {"kind": "depth", "head": spec["depth"]}}
    return create_model(
        backbone, output_stride=8, tasks=tasks, shared_trunk=spec.get("shared_trunk"), out_indices=spec.get("out_indices", DEEPEST)
    )


# ------------------------------------------------------------------------------------------- inference options


def inference_options(settings: Settings) -> dict[str, dict[str, bool]]:
    """Option sets measured for this project's models, each adding one option to the previous; ``torch.compile``
    is added to the set the ``Predictor`` uses by default (see ``fast_option``)."""
    options = {
        "eager": {},
        "+ fold BN": {"fold_bn": True},
        "+ channels_last": {"fold_bn": True, "channels_last": True},
    }
    if native_bf16(settings.device):
        options["+ bf16 autocast"] = {**options["+ channels_last"], "bf16": True}
    if settings.compile:
        options["default + torch.compile"] = {**options[fast_option(settings)], "compile": True}
    return options


def fast_option(settings: Settings) -> str:
    """The option set the ``Predictor`` uses by default: BN folding and channels_last, plus bf16 autocast where its
    default precision resolves to bf16 on this device."""
    default = resolve_precision(DEFAULT_PRECISION, settings.device, "torch")
    return "+ bf16 autocast" if default == "bf16" and native_bf16(settings.device) else "+ channels_last"


def prepare(model: nn.Module, options: Mapping[str, bool], *, inplace: bool = False) -> nn.Module:
    """The model in eval mode with the inference options applied (BN folding, channels_last, compile), as the
    :class:`~multitask_deeplab.inference.predictor.Predictor` applies them."""
    return prepare_for_inference(
        model,
        fold_bn=options.get("fold_bn", False),
        channels_last=options.get("channels_last", False),
        compile=options.get("compile", False),
        inplace=inplace,
    )


def forward_call(model: nn.Module, image: torch.Tensor, options: Mapping[str, bool]) -> Callable[[], Any]:
    """One inference forward pass, under ``torch.inference_mode`` and the options' autocast."""
    if options.get("channels_last"):
        image = image.contiguous(memory_format=torch.channels_last)
    amp = torch.autocast(image.device.type, dtype=torch.bfloat16) if options.get("bf16") else contextlib.nullcontext()

    def run() -> Any:
        with torch.inference_mode(), amp:
            return model(image)

    return run


def _image(batch: int, size: int, device: torch.device) -> torch.Tensor:
    return torch.rand(batch, 3, size, size, generator=torch.Generator().manual_seed(0)).to(device)


# --------------------------------------------------------------------------------------- section 1: seg only


def converted_pair(device: torch.device) -> tuple[nn.Module, MultiTaskModel, float]:
    """torchvision's DeepLabV3 and this project's model with its converted weights, and their largest difference."""
    generator = torch.Generator().manual_seed(0)
    torch.manual_seed(0)
    reference = torchvision_deeplabv3(NUM_CLASSES)
    randomise_batch_norm(reference, generator)
    ours = create_model("resnet50", output_stride=8, tasks={"seg": SEG_TASK}, out_indices=DEEPEST)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "deeplabv3_resnet50.pth"
        torch.save(reference.state_dict(), path)
        load_torchvision_deeplabv3(ours, path)
    reference, ours = Normalized(reference).to(device).eval(), ours.to(device).eval()
    image = torch.rand(2, 3, 67, 83, generator=generator).to(device)
    with torch.inference_mode():
        difference = float((ours(image)["seg"] - reference(image)).abs().max())
    if difference > EQUALITY_TOLERANCE:
        raise AssertionError(f"converted model differs from torchvision's by {difference:.2e} > {EQUALITY_TOLERANCE}")
    return reference, ours, difference


def matmul_rate(matmul: Mapping[str, float], options: Mapping[str, bool]) -> float:
    """The matrix-multiply FLOP/s in the dtype the options compute in."""
    return matmul["bf16" if options.get("bf16") else "fp32"]


def run_seg_only(settings: Settings, matmul: Mapping[str, float]) -> dict[str, Any]:
    """Section 1 (and the FLOP rates of section 3): seg-only inference, ours / torchvision, per batch size."""
    device = settings.device
    reference, ours, difference = converted_pair(device)
    options = inference_options(settings)
    models = {name: prepare(ours, opts) for name, opts in options.items()}
    flops = count_flops(forward_call(ours, _image(1, settings.size, device), {}))
    fused = models["+ fold BN"]
    result: dict[str, Any] = {"max_abs_difference": difference, "flops_per_image": flops, "fast": fast_option(settings), "batches": {}}
    result["batchnorm_layers"] = {"before": _count(ours, nn.BatchNorm2d), "after folding": _count(fused, nn.BatchNorm2d)}
    for batch in settings.batches:
        image = _image(batch, settings.size, device)
        names = list(options) if batch == settings.batches[0] else [fast_option(settings)]
        calls = {"torchvision": forward_call(reference, image, {})}
        calls.update({name: forward_call(models[name], image, options[name]) for name in names})
        timings = time_interleaved(calls, device=device, warmup=settings.warmup, repeats=settings.repeats)
        base = timings["torchvision"]
        for name, timing in timings.items():
            timing["ratio_to_torchvision"] = timing["median_s"] / base["median_s"]
            timing["ratio_of_minimums"] = timing["min_s"] / base["min_s"]
            rate = matmul_rate(matmul, options.get(name, {}))
            timing["flop_utilisation"] = flops * batch / timing["median_s"] / rate
        result["batches"][str(batch)] = timings
    return result


def _count(model: nn.Module, kind: type) -> int:
    return sum(isinstance(m, kind) for m in model.modules())


# ----------------------------------------------------------------------------------- section 2: seg + depth


def _inference_peak(
    variant: str, backbone: str, options: dict[str, bool], batch: int, size: int, device_type: str, threads: int
) -> dict:
    """Runs in a fresh process: builds one configuration and runs two forward passes (see ``in_fresh_process``)."""
    torch.set_num_threads(threads)
    device = torch.device(device_type)
    model = two_torchvision_models() if variant == "two torchvision models" else multitask_model(variant, backbone)
    model = prepare(model.to(device), options, inplace=True)
    run = forward_call(model, _image(batch, size, device), options)
    for _ in range(2):
        run()
    return {}


def run_multitask(settings: Settings, matmul: Mapping[str, float]) -> dict[str, Any]:
    """Section 2: seg + depth in one model (several depth heads) against two separate torchvision models."""
    device, batch = settings.device, settings.multitask_batch
    fast = inference_options(settings)[fast_option(settings)]
    torch.manual_seed(0)
    baseline = two_torchvision_models().to(device).eval()
    variants = {name: multitask_model(name, settings.encoder).to(device).eval() for name in DEPTH_HEADS}
    flops = {"two torchvision models": count_flops(forward_call(baseline, _image(1, settings.size, device), {}))}
    flops.update({name: count_flops(forward_call(m, _image(1, settings.size, device), {})) for name, m in variants.items()})
    image = _image(batch, settings.size, device)
    calls = {"two torchvision models": forward_call(baseline, image, {})}
    calls.update({name: forward_call(prepare(m, fast), image, fast) for name, m in variants.items()})
    timings = time_interleaved(calls, device=device, warmup=settings.warmup, repeats=settings.repeats)
    del baseline, variants, calls
    rows: dict[str, Any] = {}
    for name, timing in timings.items():
        options = {} if name == "two torchvision models" else fast
        args = (_inference_peak, name, settings.encoder, options, batch, settings.size, device.type, settings.threads)
        peaks = [in_fresh_process(*args, device=device)["peak_bytes"] / MiB for _ in range(settings.memory_repeats)]
        rows[name] = {**timing, "flops_per_image": flops[name], "peak_mib": statistics.median(peaks), "peaks_mib": peaks}
    base = rows["two torchvision models"]
    for name, row in rows.items():
        row["time_ratio"] = row["median_s"] / base["median_s"]
        row["ratio_of_minimums"] = row["min_s"] / base["min_s"]
        row["memory_ratio"] = row["peak_mib"] / base["peak_mib"]
        rate = matmul_rate(matmul, {} if name == "two torchvision models" else fast)
        row["flop_utilisation"] = row["flops_per_image"] * batch / row["median_s"] / rate
    return {"batch": batch, "options": ", ".join(name for name, on in fast.items() if on), "models": rows}

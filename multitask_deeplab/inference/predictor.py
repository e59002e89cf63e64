"""Inference for users: a checkpoint in, per-image numpy predictions out, for images of any size.

Example::

    predictor = Predictor.from_checkpoint("runs/x/best.pt", tta_flip=True)
    result = predictor(Image.open("street.jpg"))
    result["seg"]    # H x W int64 class ids
    result["depth"]  # H x W float32 metres
"""

from __future__ import annotations

import functools
import os
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from multitask_deeplab.inference.backends import BACKENDS, Backend, BackendOptions, TorchBackend, resolve_precision
from multitask_deeplab.runtime.device import resolve_device
from multitask_deeplab.tasks import TASKS, TaskKind

if TYPE_CHECKING:
    from multitask_deeplab.config.recipe import Recipe
    from multitask_deeplab.engine.restore import Restored

ImageLike = Image.Image | np.ndarray | torch.Tensor
"""A PIL image, an ``H x W x C`` (or ``H x W``) numpy array, or a ``C x H x W`` (or ``H x W``) tensor."""

DEFAULT_PRECISION = "auto"
"""The precision a predictor runs when none is asked for: bf16 autocast where the device computes bf16 natively,
else float32. It is the default because bf16 passes the bars that ``python -m benchmarks.run --sections precision``
checks on the default recipe's trained model (the README's precision table); ``precision="fp32"`` gives float32."""

# Tolerance on the [0, 1] range of float inputs (resampling and colour conversions overshoot slightly).
_RANGE_SLACK = 1e-3


class Predictor:
    """Runs a multi-task model on images of any size and returns numpy arrays at each image's own size.

    Results are keyed by task name (``predictor.tasks`` maps each name to its task kind, which shapes the result, see
    :meth:`~multitask_deeplab.tasks.TaskKind.to_numpy`):

    - segmentation task ``t``: ``t`` is the ``H x W`` int64 class map; with ``probabilities=True`` also
      ``t + "_probs"``, the ``num_classes x H x W`` float32 softmax probabilities.
    - depth task: ``H x W`` float32 metres.
    - normals task: ``3 x H x W`` float32 unit vectors (camera frame: x right, y down, z forward).

    Each image is padded on the bottom and right to a multiple of ``stride`` (edge replication, which works for
    any image size) and the predictions are cropped back. Images of equal size are batched together.

    A backend runs the model (see :mod:`multitask_deeplab.inference.backends`): by default PyTorch under
    ``torch.inference_mode`` with eval-mode batch norm folded into its convolutions and in channels-last memory
    layout (the same function, less time), in float32; on CUDA with cuDNN's benchmark mode on (each new input size
    is tuned once). ``precision`` trades exactness for speed: ``bf16`` autocast (native on CPUs with AVX512-BF16 or
    AMX and on GPUs from Ampere on), ``int8`` on the ``onnxruntime`` backend (CPU), ``auto`` for bf16 where native.

    Args:
        model: Maps a ``B x C x H x W`` batch in [0, 1] to ``{task: B x C_t x H x W}`` (a ``MultiTaskModel``);
            it is moved to ``device`` and put in eval mode.
        tasks: ``{task name: TaskKind}`` (a kind's registered name is built with its defaults, e.g. ``"depth"``).
        stride: The model's output stride; inputs are padded to a multiple of it.
        in_chans: Channels the model takes. For 3, grayscale inputs are repeated and an alpha channel dropped.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"``, a ``torch.device``, or ``None``/``"auto"`` (CUDA when available).
        tta_flip: Also predict the horizontally flipped image and average, each prediction flipped back by its kind
            (probabilities and depth as they are, normals with their x component mirrored and renormalised).
        window: Sliding-window tile size in pixels for large images; tiles overlap by a third and are averaged.
            ``None`` runs whole images.
        scales: Multi-scale inference: the image is resized by each factor (bilinear), predicted (with the flip and
            the window), and each prediction is resized back and averaged, its values mapped back by the task's
            kind as for a zoom by ``1 / scale`` (depth times the scale, the convention augmentation's zoom teaches
            a model; probabilities and normals as they are).
        batch_size: Most images (or tiles' images) per forward pass.
        recipe: The recipe the model was built from, kept as ``predictor.recipe`` (class names, class counts).
        fold_bn: Fold eval-mode batch norms into the convolutions before them (into a copy: ``model`` itself is
            left as it is).
        channels_last: Run the model and its inputs in channels-last memory layout (``torch`` backend).
        compile: Wrap the model in ``torch.compile`` (``torch`` backend; the first batch of each size is slow).
        precision: ``"fp32"``, ``"bf16"`` (autocast), ``"int8"`` (``onnxruntime`` backend, CPU) or ``"auto"``:
            bf16 where the device computes it natively and the backend runs it, else float32.
        backend: A name registered in :data:`~multitask_deeplab.inference.backends.BACKENDS`: ``"torch"`` or
            ``"onnxruntime"`` (the exported ONNX model; needs the ``export`` extra).
        calibration: Images (as for :meth:`__call__`) that set the int8 activation ranges: a few training images.
        exported: A file exported from ``model`` for the backend to run instead of converting ``model`` itself
            (``onnxruntime``: an ``.onnx`` from ``mtdl export``, float32 or, with precision int8, ``--int8``).

    Attributes:
        precision: The precision the backend runs (``auto`` resolved).
        backend: The :class:`~multitask_deeplab.inference.backends.Backend` that runs the model.
    """

    def __init__(
        self,
        model: nn.Module,
        tasks: Mapping[str, str],
        *,
        stride: int,
        in_chans: int = 3,
        device: str | torch.device | None = None,
        tta_flip: bool = False,
        window: int | None = None,
        scales: Sequence[float] = (1.0,),
        batch_size: int = 8,
        recipe: Recipe | None = None,
        fold_bn: bool = True,
        channels_last: bool = True,
        compile: bool = False,
        precision: str = DEFAULT_PRECISION,
        backend: str = "torch",
        calibration: Sequence[ImageLike] | None = None,
        exported: str | os.PathLike | None = None,
    ) -> None:
        if window is not None and window < stride:
            raise ValueError(f"window must be at least the output stride ({stride}) pixels, got {window}")
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if not scales or any(isinstance(s, bool) or not isinstance(s, (int, float)) or not s > 0 for s in scales):
            raise ValueError(f"scales must be positive factors such as 0.75 1 1.25, got {list(scales)}")
        self.device = resolve_device(device)
        self.precision = resolve_precision(precision, self.device, backend)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        self.tasks = {name: TASKS.build({"type": task}, where=f"task {name!r}") if isinstance(task, str) else task for name, task in tasks.items()}
        for name, task in self.tasks.items():
            if not isinstance(task, TaskKind):
                raise ValueError(f"task {name!r} must be a TaskKind or a task kind's name, got {type(task).__name__}")
        options = BackendOptions(
            device=self.device,
            precision=self.precision,
            fold_bn=fold_bn,
            channels_last=channels_last,
            compile=compile,
            calibration=[to_tensor(image, in_chans) for image in calibration or ()],
            exported=exported,
        )
        self.backend: Backend = BACKENDS.get(backend)(model, options)
        self.stride = stride
        self.in_chans = in_chans
        self.tta_flip = tta_flip
        self.window = window
        self.scales = tuple(float(s) for s in scales)
        self.batch_size = batch_size
        self.recipe = recipe

    @classmethod
    def from_checkpoint(
        cls,
        path: str | os.PathLike,
        device: str | torch.device | None = None,
        *,
        tta_flip: bool = False,
        window: int | None = None,
        scales: Sequence[float] = (1.0,),
        batch_size: int = 8,
        ema: bool = True,
        **options: Any,
    ) -> Predictor:
        """Rebuilds the model from the recipe stored in a checkpoint written by ``mtdl train``.

        No recipe file, pretrained weights or network are needed. A recipe naming a custom head needs the
        module that registers it imported first.

        Args:
            path: The checkpoint (``best.pt``, ``last.pt``).
            device, tta_flip, window, scales, batch_size: As for :class:`Predictor`.
            ema: Predict with the moving average of the weights when the checkpoint has one (``train.ema``).
            options: ``fold_bn``, ``channels_last``, ``compile``, ``precision``, ``backend``, ``calibration``,
                ``exported``, as for :class:`Predictor`; int8 without ``calibration`` or ``exported`` is calibrated
                on images spread over the recipe's train split.
        """
        from multitask_deeplab.engine.restore import model_from_checkpoint

        load = functools.partial(model_from_checkpoint, path, ema=ema)
        return cls._from_restored(load, device, tta_flip=tta_flip, window=window, scales=scales, batch_size=batch_size, **options)

    @classmethod
    def from_pretrained(
        cls,
        source: str | os.PathLike,
        device: str | torch.device | None = None,
        *,
        revision: str | None = None,
        tta_flip: bool = False,
        window: int | None = None,
        scales: Sequence[float] = (1.0,),
        batch_size: int = 8,
        ema: bool = True,
        **options: Any,
    ) -> Predictor:
        """A predictor for a folder written by ``save_pretrained``, a Hugging Face Hub repo id (``org/name``, from
        the local cache when it has it and always under ``HF_HUB_OFFLINE=1``) or a checkpoint.

        Args:
            source: The folder, repo id (``org/name[@revision]``) or checkpoint.
            revision: For repo ids: the branch, tag or commit.
            device, tta_flip, window, scales, batch_size, ema, options: As for :meth:`from_checkpoint`.
        """
        from multitask_deeplab.engine.restore import restore

        load = functools.partial(restore, source, ema=ema, revision=revision)
        return cls._from_restored(load, device, tta_flip=tta_flip, window=window, scales=scales, batch_size=batch_size, **options)

    @classmethod
    def _from_restored(cls, load: Callable[[], Restored], device: str | torch.device | None, **options: Any) -> Predictor:
        """Checks the precision and backend, then loads the model (and calibrates int8 on its recipe's images)."""
        from multitask_deeplab.inference.quantize import sample_images

        precision = resolve_precision(options.get("precision", DEFAULT_PRECISION), resolve_device(device), options.get("backend", "torch"))
        model, recipe, tasks, _ = load()
        if precision == "int8" and options.get("calibration") is None and options.get("exported") is None:
            options["calibration"] = sample_images(recipe)
        stride = max(model.backbone.reductions)
        return cls(model, tasks, stride=stride, in_chans=recipe.model.in_chans, device=device, recipe=recipe, **options)

    def __call__(
        self, images: ImageLike | Sequence[ImageLike], *, probabilities: bool = False
    ) -> dict[str, np.ndarray] | list[dict[str, np.ndarray]]:
        """Predicts every task for one image (returns one dict) or a list of images (returns a list of dicts).

        A ``B x C x H x W`` tensor counts as a list of B images. Float inputs must be in [0, 1] and uint8 ones in
        [0, 255]; do not normalise them, the model does.
        """
        single = not isinstance(images, (list, tuple)) and not (isinstance(images, torch.Tensor) and images.dim() == 4)
        tensors = [to_tensor(image, self.in_chans) for image in ([images] if single else images)]
        results: list[dict[str, np.ndarray]] = [{} for _ in tensors]
        by_size: dict[tuple[int, int], list[int]] = defaultdict(list)
        for index, tensor in enumerate(tensors):
            by_size[tuple(tensor.shape[-2:])].append(index)
        for indices in by_size.values():
            for start in range(0, len(indices), self.batch_size):
                chunk = indices[start : start + self.batch_size]
                outputs = self.predict_batch(torch.stack([tensors[i] for i in chunk]).to(self.device))
                for row, index in enumerate(chunk):
                    results[index] = self._to_numpy(outputs, row, probabilities)
        return results[0] if single else results

    @property
    def model(self) -> nn.Module:
        """The module the ``torch`` backend runs (batch norm folded, channels-last, compiled, as asked)."""
        if not isinstance(self.backend, TorchBackend):
            raise AttributeError(f"the {type(self.backend).__name__} runs no PyTorch module; use predictor.backend")
        return self.backend.model

    @torch.inference_mode()
    def predict_batch(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions for a ``B x C x H x W`` batch in [0, 1] on the predictor's device.

        Returns:
            ``{task: B x C_t x H x W}`` float32, each task's :meth:`~multitask_deeplab.tasks.TaskKind.prediction`
            (softmax probabilities for segmentation, metres for depth, unit vectors for normals), with test-time
            flipping, the scales and the sliding window applied.
        """
        if self.scales == (1.0,):
            return self._predict_tiled(image)
        height, width = image.shape[-2:]
        sums: dict[str, torch.Tensor] = {}
        for scale in self.scales:
            size = (max(1, round(height * scale)), max(1, round(width * scale)))
            resized = image if size == (height, width) else F.interpolate(image, size=size, mode="bilinear", align_corners=False, antialias=scale < 1)
            back = torch.diag(torch.tensor([width / size[1], height / size[0]], device=image.device)).expand(image.shape[0], 2, 2)
            for name, value in self._predict_tiled(resized).items():
                if size != (height, width):
                    value = F.interpolate(value, size=(height, width), mode="bilinear", align_corners=False)
                value = self.tasks[name].transform_values(value, back)
                sums[name] = sums[name] + value if name in sums else value
        return {name: self.tasks[name].finish_average(total / len(self.scales)) for name, total in sums.items()}

    def _predict_tiled(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        """Predictions at the image's own scale: whole, or tile by tile with the sliding window."""
        height, width = image.shape[-2:]
        if self.window is None or (height <= self.window and width <= self.window):
            return self._predict_whole(image)
        tile_h, tile_w = min(self.window, height), min(self.window, width)
        sums: dict[str, torch.Tensor] = {}
        count = torch.zeros(1, 1, height, width, device=image.device)
        for top in _tile_starts(height, tile_h):
            for left in _tile_starts(width, tile_w):
                tile = self._predict_whole(image[..., top : top + tile_h, left : left + tile_w])
                for name, value in tile.items():
                    if name not in sums:  # not setdefault: that would allocate a whole-image tensor per tile
                        sums[name] = image.new_zeros(value.shape[:2] + (height, width))
                    sums[name][..., top : top + tile_h, left : left + tile_w] += value
                count[..., top : top + tile_h, left : left + tile_w] += 1
        return {name: self.tasks[name].finish_average(total / count) for name, total in sums.items()}

    def _predict_whole(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        height, width = image.shape[-2:]
        padded = pad_to_multiple(image, self.stride)
        views = torch.cat([padded, padded.flip(-1)]) if self.tta_flip else padded
        outputs = self.backend(views)
        mirror = torch.tensor([[-1.0, 0.0], [0.0, 1.0]], device=image.device).expand(image.shape[0], 2, 2)
        predictions = {}
        for name, task in self.tasks.items():
            value = task.prediction(outputs[name].float())
            if self.tta_flip:
                plain, flipped = value.chunk(2)
                value = task.finish_average((plain + task.transform_values(flipped.flip(-1), mirror)) / 2)
            predictions[name] = value[..., :height, :width]
        return predictions

    def _to_numpy(self, outputs: dict[str, torch.Tensor], row: int, probabilities: bool) -> dict[str, np.ndarray]:
        return {
            name + suffix: array
            for name, task in self.tasks.items()
            for suffix, array in task.to_numpy(outputs[name][row], probabilities=probabilities).items()
        }


def to_tensor(image: ImageLike, in_chans: int = 3) -> torch.Tensor:
    """An image as a ``C x H x W`` float32 tensor in [0, 1] with ``in_chans`` channels.

    For a 3-channel model, grayscale (1 channel, or 2-D) inputs are repeated to RGB and an alpha channel is dropped;
    PIL images of 8-bit modes are converted to RGB (to "L" for a 1-channel model). Any other channel count is a
    ``ValueError``. uint8 and uint16 data are scaled by 255 and 65535; float data must already be in [0, 1].
    """
    if isinstance(image, Image.Image):
        if in_chans in (1, 3) and image.mode in ("1", "L", "LA", "P", "PA", "RGB", "RGBA", "RGBX", "CMYK", "YCbCr"):
            image = image.convert("L" if in_chans == 1 else "RGB")
        image = np.asarray(image)
    if isinstance(image, np.ndarray):
        array = image[..., None] if image.ndim == 2 else image
        if array.ndim != 3:
            raise ValueError(f"a numpy image must be H x W x C or H x W, got shape {image.shape}")
        tensor = torch.from_numpy(np.array(array)).permute(2, 0, 1)  # a copy: PIL's arrays are read-only
    elif isinstance(image, torch.Tensor):
        tensor = image[None] if image.dim() == 2 else image
        if tensor.dim() != 3:
            raise ValueError(f"a tensor image must be C x H x W or H x W, got shape {tuple(image.shape)}")
        tensor = tensor.detach().cpu()
    else:
        raise ValueError(f"cannot predict on a {type(image).__name__}: give a PIL image, a numpy array or a tensor")
    tensor = _scale(tensor)
    channels = tensor.shape[0]
    if in_chans == 3 and channels in (1, 2):  # gray, gray + alpha
        tensor = tensor[:1].expand(3, -1, -1)
    elif in_chans == 3 and channels == 4:  # RGBA
        tensor = tensor[:3]
    elif channels != in_chans:
        raise ValueError(
            f"the image has {channels} channels but the model takes {in_chans}; give {in_chans}-channel images "
            f"(numpy H x W x {in_chans} or tensor {in_chans} x H x W)"
        )
    return tensor.contiguous()


def _scale(tensor: torch.Tensor) -> torch.Tensor:
    """Integer images to [0, 1] floats; float images checked to be in [0, 1]."""
    if tensor.dtype == torch.uint8:
        return tensor.float() / 255
    if tensor.dtype == torch.uint16:
        return tensor.float() / 65535
    if not tensor.is_floating_point():
        raise ValueError(f"unsupported image dtype {tensor.dtype}: use uint8, uint16 or float in [0, 1]")
    tensor = tensor.float()
    if tensor.numel() and not (-_RANGE_SLACK <= tensor.min() and tensor.max() <= 1 + _RANGE_SLACK):
        raise ValueError(
            f"float image values must be in [0, 1], got {tensor.min().item():.3g} to {tensor.max().item():.3g}; "
            "divide 0-255 images by 255 and do not normalise them (the model normalises itself)"
        )
    return tensor.clamp(0, 1)


def pad_to_multiple(image: torch.Tensor, multiple: int) -> torch.Tensor:
    """Pads a ``B x C x H x W`` batch on the bottom and right, repeating the edge, to sides that are multiples of ``multiple``."""
    height, width = image.shape[-2:]
    pad_h, pad_w = -height % multiple, -width % multiple
    if not pad_h and not pad_w:
        return image
    return F.pad(image, (0, pad_w, 0, pad_h), mode="replicate")


def _tile_starts(size: int, tile: int) -> list[int]:
    """Tile offsets covering ``size`` with tiles of ``tile`` overlapping by a third; the last one ends at the edge."""
    if size <= tile:
        return [0]
    step = tile - tile // 3
    return list(range(0, size - tile, step)) + [size - tile]


"""The ``mtdl predict``, ``mtdl export`` and ``mtdl push`` sub-commands."""

from __future__ import annotations

import argparse
import glob
import sys
import tempfile
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageOps

if TYPE_CHECKING:
    import torch

    from multitask_deeplab.inference.predictor import Predictor
    from multitask_deeplab.visualize import PictureOptions

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
SUMMARY_IMAGES = 4
SUMMARY_SIDE = 512
"""Longest side of each picture on ``summary.png`` (a 6000 x 4000 input is shrunk; the prediction files are not)."""
SOURCE_HELP = "a checkpoint written by `mtdl train`, a folder written by save_pretrained, or a Hugging Face Hub repo id (org/name[@rev])"
INT8_CHECK_IMAGES = 16
"""Val images the int8 export is compared on against float32 PyTorch."""


def add_commands(subparsers: argparse._SubParsersAction) -> None:
    """Adds ``predict``, ``export`` and ``push`` to ``mtdl``'s sub-command parsers."""
    predict = subparsers.add_parser("predict", help="predict every task for images and save pictures")
    predict.add_argument("checkpoint", metavar="model", help=SOURCE_HELP)
    predict.add_argument("inputs", nargs="+", help="image files, folders (their images) or glob patterns")
    predict.add_argument("--out", required=True, help="output folder (created)")
    predict.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    predict.add_argument("--batch-size", type=int, default=4, help="images of equal size per forward pass")
    predict.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    predict.add_argument("--window", type=int, help="sliding-window tile size in pixels for large images")
    predict.add_argument(
        "--precision",
        default=None,
        metavar="auto|fp32|bf16|int8",
        help="auto (the default, the Predictor's DEFAULT_PRECISION): bf16 where the device computes it natively, else fp32; fp32; "
        "bf16 autocast (fast where native: CPUs with AVX512-BF16 or AMX, GPUs from Ampere on); int8 with --backend onnxruntime on the CPU "
        "(calibrated on the recipe's training images)",
    )
    predict.add_argument(
        "--backend", default="torch", help="torch, or onnxruntime (the exported ONNX model; pip install -e \".[export]\")"
    )
    predict.add_argument("--compile", action="store_true", help="torch.compile the model (slow first batch per size)")
    predict.add_argument("--cmap", default="turbo", choices=("turbo", "magma"), help="depth colour map")
    predict.add_argument(
        "--depth-max", type=float, metavar="METRES",
        help="depth shown with the last colour in every picture (default: each image's 95th percentile, so colours differ between images)",
    )
    predict.add_argument("--save-npy", action="store_true", help="also save raw predictions as .npy")
    predict.add_argument("--no-progress", action="store_true", help="no progress bar")
    predict.set_defaults(run=_predict)

    export = subparsers.add_parser("export", help="export a model to ONNX, safetensors or a pretrained folder (for the Hub)")
    export.add_argument("checkpoint", metavar="model", help=SOURCE_HELP)
    export.add_argument("--format", choices=("onnx", "safetensors", "pretrained"), default="onnx")
    export.add_argument("--out", help="file or folder to write (default: the checkpoint's name with .onnx, .safetensors or -pretrained)")
    export.add_argument("--opset", type=int, default=17, help="ONNX opset version")
    export.add_argument("--int8", action="store_true", help="also quantize to int8 for ONNX Runtime on the CPU (<out>.int8.onnx)")
    export.add_argument(
        "--calibration-images", type=int, default=None, metavar="N", help="training images that calibrate int8 (default 32)"
    )
    export.set_defaults(run=_export)

    push = subparsers.add_parser("push", help="upload a model to the Hugging Face Hub as a pretrained folder")
    push.add_argument("checkpoint", metavar="model", help=SOURCE_HELP)
    push.add_argument("repo_id", help="the Hub repo to create or update, org/name")
    push.add_argument("--private", action="store_true", help="create the repo private")
    push.add_argument("--message", default="Upload with mtdl push", help="the commit message")
    push.set_defaults(run=_push)

    for sub in (predict, export, push):
        sub.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import a module that registers components")
        sub.add_argument("--no-ema", action="store_true", help="a checkpoint's trained weights, not their moving average (train.ema)")


# ----------------------------------------------------------------------------------------------------- predict


def _predict(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from multitask_deeplab import visualize
    from multitask_deeplab.inference.predictor import DEFAULT_PRECISION, Predictor

    paths, failed = collect_inputs(args.inputs)
    for pattern in failed:
        _warn(f"{pattern} matched no file")
    check_unique_stems(paths)
    out = Path(args.out)
    check_writable(out)
    predictor = Predictor.from_pretrained(
        args.checkpoint,
        args.device,
        ema=not args.no_ema,
        tta_flip=args.tta,
        window=args.window,
        batch_size=args.batch_size,
        precision=args.precision or DEFAULT_PRECISION,
        backend=args.backend,
        compile=args.compile,
    )
    if args.depth_max is not None and not args.depth_max > 0:
        raise ValueError(f"--depth-max must be a positive number of metres, got {args.depth_max}")
    options = visualize.PictureOptions(depth_cmap=args.cmap, depth_max=args.depth_max)
    batches = _batches(paths, args.batch_size, failed)
    summary: dict[int, list[np.ndarray]] = {}
    done = 0
    with tqdm(total=sum(map(len, batches)), unit="image", disable=args.no_progress, file=sys.stderr) as progress:
        for batch in batches:
            loaded = _load(batch, predictor.in_chans, failed, progress)
            if not loaded:
                continue
            results = predictor([tensor for _, _, tensor in loaded])
            for (index, path, tensor), result in zip(loaded, results):
                panels = write_outputs(out, path.stem, tensor, result, predictor, options=options, save_npy=args.save_npy)
                if index < SUMMARY_IMAGES:
                    summary[index] = summary_row(panels, result, predictor, options=options)
                done += 1
                progress.update()
    if summary:
        titles = ["image", *predictor.tasks]
        legends = [None, *(task.legend(SUMMARY_SIDE) for task in predictor.tasks.values())]
        visualize.save_png(visualize.picture_sheet([summary[i] for i in sorted(summary)], titles, legends), out / "summary.png")
    print(f"wrote predictions for {done} image{'s' * (done != 1)} to {out}")
    if failed:
        listed = ", ".join(failed[:5]) + (", ..." if len(failed) > 5 else "")
        print(f"mtdl: {len(failed)} input{'s' * (len(failed) != 1)} failed: {listed}", file=sys.stderr)
        return 1
    return 0


def check_writable(out: Path) -> None:
    """Creates the output folder and checks a file can be written there, before any work."""
    try:
        out.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as error:
        raise OSError(f"cannot write to the output folder {out}: {error.strerror or error}") from None


def collect_inputs(inputs: Sequence[str]) -> tuple[list[Path], list[str]]:
    """Image paths from files, folders (their images, sorted) and glob patterns, without repeats.

    Returns:
        The paths, and the arguments that matched nothing.

    Raises:
        ValueError: when nothing matched at all.
    """
    paths: dict[Path, None] = {}
    unmatched = []
    for item in inputs:
        matches = [Path(item)] if Path(item).exists() else [Path(p) for p in sorted(glob.glob(item, recursive=True))]
        found = []
        for match in matches:
            if match.is_dir():
                found += sorted(p for p in match.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            elif match.is_file():
                found.append(match)
        if not found:
            unmatched.append(item)
        paths.update(dict.fromkeys(found))
    if not paths:
        raise ValueError(
            f"no input images matched {' '.join(inputs)}; give image files, folders of {'/'.join(IMAGE_SUFFIXES)} images "
            "or glob patterns (quoted, e.g. 'photos/*.jpg')"
        )
    return list(paths), unmatched


def check_unique_stems(paths: Sequence[Path]) -> None:
    """Outputs are named by input stem; two inputs with one stem would overwrite each other's."""
    seen: dict[str, Path] = {}
    for path in paths:
        if path.stem in seen:
            raise ValueError(
                f"inputs {seen[path.stem]} and {path} share the name {path.stem!r}, so their outputs would overwrite "
                "each other; predict them into separate --out folders"
            )
        seen[path.stem] = path


def _batches(paths: Sequence[Path], batch_size: int, failed: list[str]) -> list[list[tuple[int, Path]]]:
    """``(input index, path)`` batches of images of one size (read from the file headers), in input order.

    Files whose header cannot be read are left out, warned about and added to ``failed``.
    """
    by_size: dict[tuple[int, int], list[tuple[int, Path]]] = defaultdict(list)
    for index, path in enumerate(paths):
        try:
            with Image.open(path) as image:
                by_size[image.size].append((index, path))
        except (OSError, Image.DecompressionBombError) as error:
            _warn(f"skipped {path}: {error}")
            failed.append(str(path))
    return [group[i : i + batch_size] for group in by_size.values() for i in range(0, len(group), batch_size)]


def _load(batch: Sequence[tuple[int, Path]], in_chans: int, failed: list[str], progress: Any) -> list[tuple[int, Path, torch.Tensor]]:
    """Reads a batch's images as model inputs (EXIF orientation applied); unreadable ones are warned about,
    added to ``failed`` and counted on the progress bar."""
    from multitask_deeplab.inference.predictor import to_tensor

    loaded = []
    for index, path in batch:
        try:
            with Image.open(path) as image:
                loaded.append((index, path, to_tensor(ImageOps.exif_transpose(image), in_chans)))
        except (OSError, ValueError, Image.DecompressionBombError) as error:
            _warn(f"skipped {path}: {error}")
            failed.append(str(path))
            progress.update()
    return loaded


def write_outputs(
    out: Path, stem: str, image: torch.Tensor, result: dict[str, np.ndarray], predictor: Predictor, *, options: PictureOptions, save_npy: bool
) -> list[np.ndarray]:
    """Writes one image's prediction files and returns its summary panels: the image, then one per task.

    Each task's kind writes ``<stem>_<task>.png`` and friends (see
    :meth:`~multitask_deeplab.tasks.TaskKind.write_prediction`: class ids and an overlay for segmentation, 16-bit
    millimetres and a colour picture for depth, RGB for normals); with ``save_npy`` also the raw array as
    ``<stem>_<task>.npy``.

    Args:
        out: The output folder.
        stem: The input's file stem.
        image: The input as the model saw it, ``C x H x W`` in [0, 1].
        result: The predictor's result for it.
        predictor: The predictor (for its tasks).
        options: How pictures are drawn.
        save_npy: Also save raw arrays.
    """
    from multitask_deeplab import visualize

    rgb = visualize.image_to_uint8(image[:3] if image.shape[0] >= 3 else image[:1].expand(3, -1, -1))
    panels = [rgb]
    for name, task in predictor.tasks.items():
        base = f"{stem}_{name}"  # not Path.with_suffix: stems may hold dots
        panels.append(task.write_prediction(out, base, result[name], rgb, options=options))
        if save_npy:
            _atomic_save(out / f"{base}.npy", lambda handle, value=result[name]: np.save(handle, value))
    return panels


def summary_row(panels: list[np.ndarray], result: dict[str, np.ndarray], predictor: Predictor, *, options: PictureOptions) -> list[np.ndarray]:
    """One image's row of ``summary.png``: its :func:`write_outputs` panels shrunk to :data:`SUMMARY_SIDE`, each
    task's with its scale key (depth: the colour scale of that picture)."""
    from multitask_deeplab import visualize

    row = [visualize.thumbnail(panels[0], SUMMARY_SIDE)]
    for (name, task), panel in zip(predictor.tasks.items(), panels[1:]):
        small = visualize.thumbnail(panel, SUMMARY_SIDE)
        row.append(visualize.with_key(small, task.scale_key(result[name], options=options, width=small.shape[1])))
    return row


def _atomic_save(path: Path, write: Any) -> None:
    """Writes through an open binary handle, atomically (a temp file renamed over ``path``)."""
    from multitask_deeplab.runtime.files import atomic_write

    def write_file(temp: Path) -> None:
        with open(temp, "wb") as handle:
            write(handle)

    atomic_write(path, write_file, durable=False)


def _warn(message: str) -> None:
    from tqdm import tqdm

    tqdm.write(f"mtdl: warning: {message}", file=sys.stderr)


# ------------------------------------------------------------------------------------------------------ export


def _export(args: argparse.Namespace) -> int:
    from multitask_deeplab.engine.restore import export_pretrained, restore

    if args.int8 and args.format != "onnx":
        raise ValueError("--int8 quantizes the ONNX export: use --format onnx")
    if args.calibration_images is not None and not args.int8:
        raise ValueError("--calibration-images sets the int8 calibration: add --int8")
    suffix = {"onnx": ".onnx", "safetensors": ".safetensors", "pretrained": "-pretrained"}[args.format]
    out = Path(args.out) if args.out else Path(args.checkpoint).with_name(Path(args.checkpoint).stem + suffix)
    if args.format == "pretrained":
        export_pretrained(args.checkpoint, out, ema=not args.no_ema)
        print(f"wrote {args.checkpoint} as a pretrained folder to {out} (recipe.yaml, model.safetensors, README.md)")
        return 0
    if args.format == "safetensors":
        from multitask_deeplab.engine.checkpoint import export_safetensors

        model = restore(args.checkpoint, ema=not args.no_ema).model
        export_safetensors(model, out)
        print(f"wrote the weights of {args.checkpoint} to {out}")
        return 0
    from multitask_deeplab.inference.export import CHECK_SHAPES, TOLERANCE, export_onnx, onnx_max_difference, require_onnx
    from multitask_deeplab.inference.quantize import CALIBRATION_IMAGES, sample_images

    require_onnx()
    model, recipe, _, _ = restore(args.checkpoint, ema=not args.no_ema)
    count = CALIBRATION_IMAGES if args.calibration_images is None else args.calibration_images
    calibration = sample_images(recipe, count) if args.int8 else []
    export_onnx(model, out, opset=args.opset)
    difference = onnx_max_difference(model, out)
    sizes = " and ".join(f"{b}x{model.backbone.in_chans}x{h}x{w}" for b, h, w in CHECK_SHAPES)
    print(f"wrote {out}: input 'image' (batch x {model.backbone.in_chans} x height x width, dynamic), outputs {', '.join(model.task_names)}")
    print(f"ONNX Runtime vs PyTorch on {sizes}: max abs difference {difference:.3g}")
    if not difference <= TOLERANCE:
        print(f"mtdl: error: the difference {difference:.3g} exceeds {TOLERANCE:g}; {out} does not reproduce the model", file=sys.stderr)
        return 1
    if args.int8:
        _export_int8(args.checkpoint, out, recipe, calibration, ema=not args.no_ema)
    return 0


def _export_int8(checkpoint: str, out: Path, recipe: Any, calibration: list[torch.Tensor], *, ema: bool) -> None:
    """Quantizes the float32 export ``out`` to ``<out>.int8.onnx`` and prints how closely it follows float32
    PyTorch on held-out (val) images."""
    from multitask_deeplab.inference.agreement import compare_predictors, describe
    from multitask_deeplab.inference.predictor import Predictor
    from multitask_deeplab.inference.quantize import quantize_onnx, sample_images

    target = out.with_suffix(".int8.onnx")
    quantize_onnx(out, target, calibration)
    print(f"wrote {target}: int8 (QDQ: int8 weights per channel, uint8 activations), calibrated on {len(calibration)} training images")
    held_out = sample_images(recipe, INT8_CHECK_IMAGES, split="val")
    reference = Predictor.from_pretrained(checkpoint, "cpu", ema=ema, precision="fp32")
    candidate = Predictor.from_pretrained(checkpoint, "cpu", ema=ema, backend="onnxruntime", precision="int8", exported=target)
    results = compare_predictors(reference, candidate, (image[None] for image in held_out))
    print(f"int8 vs float32 PyTorch on {len(held_out)} val images: {describe(results)}")


# -------------------------------------------------------------------------------------------------------- push


def _push(args: argparse.Namespace) -> int:
    from multitask_deeplab.engine.restore import export_pretrained
    from multitask_deeplab.runtime.hub import is_repo_id, upload_folder

    if not is_repo_id(args.repo_id) or "@" in args.repo_id:
        raise ValueError(f"repo id {args.repo_id!r}: expected org/name, e.g. my-name/scenes-seg-depth")
    with tempfile.TemporaryDirectory(prefix="mtdl-push-") as folder:
        export_pretrained(args.checkpoint, folder, ema=not args.no_ema, repo_id=args.repo_id)
        url = upload_folder(folder, args.repo_id, private=args.private, message=args.message)
    print(f"pushed {args.checkpoint} to {args.repo_id}: {url}")
    return 0

"""The ``mtdl`` command line: train, baselines, sweep, evaluate, predict, export, push, list, data."""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import sys
from collections.abc import Sequence
from pathlib import Path

from multitask_deeplab import __version__
from multitask_deeplab.cli.predict import add_commands

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_CANNOT_WRITE = 4
OVERRIDE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z0-9_]+)*=.*", re.DOTALL)
"""A ``dotted.key=value`` override."""
DEFAULT_SWEEP_WEIGHTINGS = ["fixed", "uncertainty", "dwa", "pcgrad", "mgda"]
"""The strategies ``mtdl sweep`` trains when neither ``--weightings`` nor ``--grid`` is given."""


def _load_checked(args: argparse.Namespace):
    """The recipe of the command line, its names and keys checked and its component defaults filled in."""
    from multitask_deeplab.config import recipe as recipe_module
    from multitask_deeplab.engine.build import check_components, resolve_recipe

    recipe = recipe_module.load(args.recipe, args.overrides)
    check_components(recipe)
    return resolve_recipe(recipe)


def _train(args: argparse.Namespace) -> int:
    from multitask_deeplab.config import recipe as recipe_module
    from multitask_deeplab.engine.trainer import Trainer

    recipe = _load_checked(args)
    if args.print_recipe:
        print(recipe_module.dump(recipe), end="")
        return 0
    Trainer(recipe, resume=args.resume, overwrite=args.overwrite, show_progress=not args.no_progress).fit()
    return 0


def _baselines(args: argparse.Namespace) -> int:
    from multitask_deeplab.engine.sweep import train_baselines

    train_baselines(_load_checked(args), overwrite=args.overwrite, resume=args.resume, show_progress=not args.no_progress)
    return 0


def _sweep(args: argparse.Namespace) -> int:
    from multitask_deeplab.engine.build import REGISTRIES, build_tasks
    from multitask_deeplab.engine.sweep import format_sweep, level_variants, parse_grid, save_sweep, sweep, sweep_points

    recipe = _load_checked(args)
    registry = REGISTRIES["weightings"]
    strategies = args.weightings if args.weightings is not None or args.grid else DEFAULT_SWEEP_WEIGHTINGS
    if strategies == ["all"]:  # every registered strategy, fixed first so the others' cost reads against it
        strategies = sorted(registry.names(), key=lambda name: name != "fixed")
    for strategy in strategies or ():
        registry.get(strategy)
    if args.gradients and not strategies:
        raise ValueError(f"--gradients {args.gradients} chooses the level of the strategies of --weightings; give --weightings too")
    if args.gradients:
        strategies, left = level_variants(strategies, args.gradients)
        if left and args.weightings != ["all"]:
            raise ValueError(f"--gradients {args.gradients}: {', '.join(left)} has no such variant; leave it out of --weightings")
        if left:
            print(f"--gradients {args.gradients}: leaving out {', '.join(left)} (loss level, or no such variant)")
    points = sweep_points(recipe, strategies, grid=args.grid, gradients=args.gradients)
    rows = sweep(recipe, points, overwrite=args.overwrite, resume=args.resume, show_progress=not args.no_progress)
    columns = [f"{name}.{task.primary_metric}" for name, task in build_tasks(recipe).items()]
    labels = [key for key, _ in parse_grid(args.grid)] + (["weighting"] if strategies else [])
    table = format_sweep(rows, columns, labels)
    print("val-split metrics of each final model (the test split is never used for selection):")
    print(table)
    name = f"sweep-{args.gradients}" if args.gradients else "sweep"
    print(f"wrote {save_sweep(Path(recipe.train.output_dir) / 'sweep', rows, table, name)}")
    return 0


COMMANDS_WITH_OVERRIDES = ("train", "baselines", "sweep", "evaluate", "data")
"""The sub-commands that take ``dotted.key=value`` overrides."""
EVALUATE_SECTIONS = ("eval.", "data.")
"""The recipe sections ``mtdl evaluate`` may override (the model and tasks are the checkpoint's)."""


def _evaluate(args: argparse.Namespace) -> int:
    import torch

    from multitask_deeplab.config import recipe as recipe_module
    from multitask_deeplab.data.loader import ShardSampler, build_dataset, build_loader, shutdown_workers
    from multitask_deeplab.engine.build import check_components
    from multitask_deeplab.engine.delta_m import recipe_delta_m
    from multitask_deeplab.engine.evaluate import evaluate, protocol_lines
    from multitask_deeplab.engine.logs import format_table
    from multitask_deeplab.engine.restore import restore
    from multitask_deeplab.inference.predictor import Predictor
    from multitask_deeplab.runtime.device import resolve_device
    from multitask_deeplab.runtime.distributed import DistInfo
    from multitask_deeplab.runtime.files import atomic_write
    from multitask_deeplab.runtime.precision import resolve_amp

    for override in args.overrides:
        if not override.startswith(EVALUATE_SECTIONS):
            raise ValueError(
                f"override {override!r}: mtdl evaluate takes eval.* and data.* overrides only (the model and tasks are "
                "the checkpoint's), e.g. eval.protocol.depth.crop=eigen"
            )
    device = resolve_device(args.device)
    model, recipe, tasks, _ = restore(args.checkpoint, device, ema=not args.no_ema)
    if args.overrides:
        recipe = recipe_module.from_dict(recipe_module.apply_overrides(recipe_module.to_dict(recipe), args.overrides))
        check_components(recipe)
    dataset = build_dataset(recipe, args.split)
    loader = build_loader(
        dataset,
        batch_size=recipe.eval_batch_size,
        sampler=ShardSampler(len(dataset), DistInfo()),
        num_workers=recipe.data.num_workers,
        train=False,
        device=device,
    )
    channels_last = recipe.train.channels_last  # the trainer's evaluation settings, so its figures come out again
    amp = resolve_amp(recipe.train.amp, device)
    inference = {"tta_flip": args.tta, "scales": args.scales or [1.0], "window": args.window}
    predict = None
    if args.tta or args.scales or args.window:
        predictor = Predictor(
            model, tasks, stride=max(model.backbone.reductions), in_chans=recipe.model.in_chans, device=device, tta_flip=args.tta,
            window=args.window, scales=args.scales or (1.0,), fold_bn=False, channels_last=channels_last,
            precision="bf16" if amp == "bf16" else "fp32",
        )  # fmt: skip
        model, predict = predictor.model, predictor.predict_batch
    elif channels_last:
        model = model.to(memory_format=torch.channels_last)
    try:
        metrics = evaluate(model, loader, tasks, device, amp=amp, channels_last=channels_last, protocols=recipe.eval.protocol, predict=predict)
    finally:
        shutdown_workers(loader)
    delta = recipe_delta_m(recipe, tasks, metrics)
    protocol = protocol_lines(tasks, recipe.eval.protocol)
    report = {
        "split": args.split, "checkpoint": str(args.checkpoint), "metrics": metrics, "delta_m": delta,
        "protocol": {**recipe_module.to_dict(recipe.eval)["protocol"], "description": [line.strip() for line in protocol]},
        "inference": inference,
    }  # fmt: skip
    source, name = Path(args.checkpoint), f"eval_{args.split}.json"  # beside a checkpoint, in a folder, or here for a repo
    out = Path(args.out) if args.out else source.with_name(name) if source.is_file() else source / name if source.is_dir() else Path(name)
    atomic_write(out, lambda temp: temp.write_text(json.dumps(report, indent=2)))
    print(f"metrics on the {args.split} split of {args.checkpoint}:")
    print(format_table(metrics))
    print("\n".join(["evaluation protocol:", *protocol, f"  inference: {describe_inference(**inference)}"]))
    if delta is not None:
        print(f"  Δm vs single-task baselines ({recipe.eval.delta_m} protocol): {delta:+.2f} %")
    print(f"saved to {out}")
    if broken := [key for key, value in metrics.items() if "/" not in key and not math.isfinite(value)]:
        print(
            f"mtdl: error: {', '.join(broken)} {'is' if len(broken) == 1 else 'are'} not finite: the model predicts NaN or "
            f"infinity, or the {args.split} split has no valid target pixel for them",
            file=sys.stderr,
        )
        return EXIT_FAILED
    return 0


def describe_inference(*, tta_flip: bool, scales: Sequence[float], window: int | None) -> str:
    """The inference options of an evaluation in a few words."""
    parts = ["whole images" if window is None else f"a sliding window of {window} px"]
    if list(scales) != [1.0]:
        parts.append("scales " + ", ".join(f"{s:g}" for s in scales))
    if tta_flip:
        parts.append("averaged with the horizontal flip")
    return ", ".join(parts)


def _list(args: argparse.Namespace) -> int:
    if args.what == "backbones":
        from multitask_deeplab.models.catalog import dilatable_backbones

        names = dilatable_backbones(args.output_stride, args.filter, show_progress=not args.no_progress)
        if not names:
            print(
                f"mtdl: no timm backbone matching {args.filter!r} runs at output stride {args.output_stride}; try another "
                "--filter (a timm wildcard such as 'resnet*') or --output-stride",
                file=sys.stderr,
            )
            return EXIT_FAILED
    else:
        from multitask_deeplab.engine.build import REGISTRIES

        names = REGISTRIES[args.what].names()
    print("\n".join(names))
    return 0


def _data(args: argparse.Namespace) -> int:
    from multitask_deeplab.data.loader import build_dataset

    recipe = _load_checked(args)
    if args.action == "sheet":
        from multitask_deeplab.data.sheet import save_sample_sheet
        from multitask_deeplab.data.targets import batch_target_kinds, declared_target_kinds
        from multitask_deeplab.engine.build import build_tasks

        dataset = build_dataset(recipe, args.split or "train")
        kinds = declared_target_kinds(dataset) or batch_target_kinds(dataset, build_tasks(recipe))
        save_sample_sheet(dataset, args.out, kinds, indices=range(min(args.count, len(dataset))))
        print(f"wrote {args.out}")
        return 0
    from multitask_deeplab.data.verify import verify_dataset

    ok, checked = True, {}
    for split in [args.split] if args.split else ["train", "val", "test"]:
        try:
            dataset = build_dataset(recipe, split)
        except ValueError as error:
            print(f"{split}: {error}")
            ok = False
            continue
        names = getattr(dataset, "names", None)
        if same := next((name for name, seen in checked.items() if names is not None and seen == names), None):
            print(f"{split}: the same samples as {same} (checked above)")
            continue
        checked[split] = names
        report = verify_dataset(dataset)
        print(f"{split}: {report}")
        ok = ok and report.ok
    return 0 if ok else 1


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``mtdl``."""
    parser = argparse.ArgumentParser(prog="mtdl", description="Multi-task dense prediction on one shared atrous backbone.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    train = commands.add_parser("train", help="train from a recipe")
    train.add_argument("recipe", help="recipe YAML file")
    train.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.epochs=3 model.backbone=resnet50")
    train.add_argument("--print-recipe", action="store_true", help="print the resolved recipe and exit")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    train.set_defaults(run=_train)

    baselines = commands.add_parser("baselines", help="train one single-task model per task (for Δm)")
    baselines.add_argument("recipe")
    baselines.add_argument("overrides", nargs="*")
    baselines.add_argument("--no-progress", action="store_true")
    baselines.set_defaults(run=_baselines)

    sweep = commands.add_parser("sweep", help="train the recipe under several weighting strategies or a grid of values, print one table")
    sweep.add_argument("recipe")
    sweep.add_argument("overrides", nargs="*")
    sweep.add_argument(
        "--weightings", nargs="+", metavar="NAME",
        help=f"strategies to train, in order ('all' for every registered one; put fixed first for the '× fixed' column); "
        f"default without --grid: {' '.join(DEFAULT_SWEEP_WEIGHTINGS)}",
    )
    sweep.add_argument(
        "--grid", nargs="+", default=[], metavar="KEY=V1,V2",
        help="recipe values to sweep, every combination once (e.g. train.lr=1e-3,2e-3 weighting.type=fixed,uncertainty); "
        "everything up to the next flag belongs to it, so give plain overrides before --grid",
    )
    sweep.add_argument(
        "--gradients", choices=("params", "features"),
        help="train every gradient-level strategy on this level (rows name@level; with 'all', fixed and the strategies that have it)",
    )
    sweep.add_argument("--no-progress", action="store_true")
    sweep.set_defaults(run=_sweep)

    evaluate = commands.add_parser("evaluate", help="evaluate a checkpoint on a split")
    evaluate.add_argument("checkpoint", metavar="model", help="a checkpoint, a folder written by save_pretrained, or a Hub repo id (org/name)")
    evaluate.add_argument("overrides", nargs="*", help="eval.* and data.* overrides, e.g. eval.protocol.depth.crop=eigen")
    evaluate.add_argument("--no-ema", action="store_true", help="a checkpoint's trained weights, not their moving average")
    evaluate.add_argument("--split", choices=("val", "test"), default="val")
    evaluate.add_argument("--device", default="auto")
    evaluate.add_argument("--out", help="metrics JSON (default: eval_<split>.json beside the checkpoint, in the folder, or here)")
    evaluate.add_argument("--tta", action="store_true", help="average with the horizontally flipped image")
    evaluate.add_argument("--scales", nargs="+", type=float, metavar="S", help="multi-scale inference, e.g. --scales 0.75 1 1.25")
    evaluate.add_argument("--window", type=int, help="sliding-window tile size in pixels")
    evaluate.set_defaults(run=_evaluate)

    listing = commands.add_parser("list", help="list registered components or dilatable backbones")
    listing.add_argument("what", choices=("tasks", "heads", "losses", "weightings", "datasets", "backbones"))
    listing.add_argument("--output-stride", type=int, default=8, choices=(8, 16, 32), help="for backbones")
    listing.add_argument("--filter", default="*", help="for backbones: a timm wildcard such as 'resnet*'")
    listing.add_argument("--no-progress", action="store_true", help="for backbones: no progress bar")
    listing.set_defaults(run=_list)

    data = commands.add_parser("data", help="look at or check a recipe's dataset")
    data.add_argument("action", choices=("sheet", "verify"))
    data.add_argument("recipe")
    data.add_argument("overrides", nargs="*")
    data.add_argument("--split", choices=("train", "val", "test"), help="the split (default: train for sheet, all for verify)")
    data.add_argument("--out", default="samples.png", help="for sheet: the PNG to write")
    data.add_argument("--count", type=int, default=4, help="for sheet: number of samples")
    data.set_defaults(run=_data)

    add_commands(commands)
    for sub in (train, baselines, sweep, evaluate, data):
        sub.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="import a module that registers components")
    for sub in (train, baselines, sweep):
        start = sub.add_mutually_exclusive_group()
        start.add_argument("--overwrite", action="store_true", help="start afresh in an output folder that already holds a run")
        if sub is train:
            start.add_argument("--resume", nargs="?", const="auto", default=None, metavar="PATH|auto", help="resume from a checkpoint")
        else:
            start.add_argument(
                "--resume", action="store_true", help="continue an interrupted call: finished trainings are read back, an unfinished one continues"
            )
    return parser


def parse_args(parser: argparse.ArgumentParser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parses the command line; ``dotted.key=value`` overrides may stand anywhere after the recipe, before or after
    the flags (``mtdl train r.yaml --plugin p.py train.steps=5``), and keep their order (a later one wins)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    # Commands with overrides set them aside first, so a flag taking several values (--scales 0.75 1) stops before them.
    grid = _values_of("--grid", argv)  # KEY=V1,V2 items look like overrides but belong to --grid
    early = [token for token in argv[1:] if OVERRIDE.fullmatch(token) and token not in grid] if argv and argv[0] in COMMANDS_WITH_OVERRIDES else []
    args, extra = parser.parse_known_args([token for token in argv if token not in early])
    overrides = early + [token for token in extra if OVERRIDE.fullmatch(token)]
    unknown = [token for token in extra if token not in overrides]
    if unknown or (overrides and not hasattr(args, "overrides")):
        hint = " (overrides are dotted.key=value)" if any("=" in token for token in unknown) else ""
        parser.error(f"unrecognized arguments: {' '.join(unknown or overrides)}{hint}")
    if overrides:
        tokens = [*args.overrides, *overrides]
        args.overrides = sorted(tokens, key=lambda token: argv.index(token))
    return args


def _values_of(flag: str, argv: Sequence[str]) -> list[str]:
    """The tokens after ``flag`` up to the next flag."""
    if flag not in argv:
        return []
    values = []
    for token in argv[list(argv).index(flag) + 1 :]:
        if token.startswith("-"):
            break
        values.append(token)
    return values


def main(argv: Sequence[str] | None = None) -> int:
    """Runs ``mtdl``; bad input, including a mistake in a plugin, prints one line and exits non-zero, without a
    traceback (``MTDL_TRACEBACK=1`` shows it for errors the program did not foresee)."""
    args = parse_args(build_parser(), argv)
    from multitask_deeplab.engine.trainer import TrainingStopped
    from multitask_deeplab.errors import describe_exception, user_code_location
    from multitask_deeplab.plugins import import_plugins
    from multitask_deeplab.runtime.files import WriteError

    try:
        import_plugins(getattr(args, "plugin", []))
        return args.run(args)
    except TrainingStopped as stop:
        print(f"mtdl: {stop}", file=sys.stderr)
        return stop.exit_code
    except BrokenPipeError:  # the reader went away (`mtdl list backbones | head`): say nothing more
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except WriteError as error:
        print(f"mtdl: {error}; free space or fix the folder's permissions, or write elsewhere", file=sys.stderr)
        return EXIT_CANNOT_WRITE
    except (ValueError, OSError) as error:
        where = user_code_location(error)
        print(f"mtdl: error: {_first_line(error)}{f' (at {where})' if where else ''}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print("mtdl: interrupted", file=sys.stderr)
        return 130
    except Exception as error:
        if os.environ.get("MTDL_TRACEBACK"):
            raise
        print(f"mtdl: error: {describe_exception(error)} (MTDL_TRACEBACK=1 shows the traceback)", file=sys.stderr)
        return EXIT_FAILED


def _first_line(error: BaseException) -> str:
    """The error's first line; for one raised in a DataLoader worker, the original message, not the worker's traceback."""
    text = str(error).strip()
    if text.startswith("Caught ") and "\nOriginal Traceback" in text:
        last = text.splitlines()[-1]  # "ValueError: <the original message>"
        return last.partition(": ")[2] or last
    return text.splitlines()[0] if text else type(error).__name__


if __name__ == "__main__":
    sys.exit(main())

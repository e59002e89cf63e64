"""Data: scene rendering, batch augmentation and the DataLoader, in samples per second."""

from __future__ import annotations

from typing import Any

from torch.utils.data import SequentialSampler, default_collate

from benchmarks.measure import time_interleaved
from benchmarks.settings import DEFAULT_RECIPE, Settings
from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.data.augment import build_augmentation
from multitask_deeplab.data.loader import build_dataset, build_loader, to_device
from multitask_deeplab.data.targets import batch_target_kinds
from multitask_deeplab.engine.build import build_tasks

LOADER_WORKERS = (0, 2)


def run_data(settings: Settings) -> dict[str, Any]:
    """Section 5: the default recipe's data at its size (quick: the quick training size)."""
    device, batch = settings.device, settings.data_batch
    size = settings.default_train.size if settings.quick else None
    overrides = [f"data.height={size}", f"data.width={size}"] if size else []
    recipe = recipe_module.load(DEFAULT_RECIPE, overrides)
    dataset = build_dataset(recipe, "train")
    augment = build_augmentation(**recipe.data.augment, targets=batch_target_kinds(dataset, build_tasks(recipe))).to(device)
    indices = iter(range(len(dataset)))  # fresh samples every call: nothing is cached
    samples = to_device({key: value for key, value in default_collate(dataset.__getitems__(list(range(batch)))).items() if key in ("image", *augment.targets)}, device)
    timings = time_interleaved(
        {
            "render": lambda: dataset.__getitems__([next(indices) for _ in range(batch)]),
            "augment": lambda: augment(samples),
        },
        device=device,
        warmup=1,
        repeats=settings.repeats,
    )
    result: dict[str, Any] = {"batch": batch, "height": dataset.height, "width": dataset.width}
    for name, timing in timings.items():
        result[name] = {**timing, "samples_per_s": batch / timing["median_s"]}
    for workers in LOADER_WORKERS:
        loader = build_loader(
            dataset, batch_size=batch, sampler=SequentialSampler(dataset), num_workers=workers, train=True, device=device
        )
        batches = iter(loader)
        next(batches)  # worker start-up is not counted
        # Warm-up drains the batches prefetched during start-up: what is timed is the steady rate.
        timing = time_interleaved(
            {"loader": lambda: next(batches)}, device=device, warmup=2 * workers, repeats=settings.repeats
        )["loader"]
        result[f"loader, {workers} workers"] = {**timing, "samples_per_s": batch / timing["median_s"]}
    return result

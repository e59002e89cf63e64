"""The training loop: one recipe in, checkpoints, metrics logs and pictures out."""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from timm.utils import ModelEmaV3
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.config.recipe import Recipe
from multitask_deeplab.data.augment import build_augmentation
from multitask_deeplab.data.loader import (
    SKIPPED_KEY,
    ResumableSampler,
    ShardSampler,
    build_dataset,
    build_loader,
    shutdown_workers,
    to_device,
)
from multitask_deeplab.data.targets import batch_target_kinds, check_tasks_fit
from multitask_deeplab.engine.backward import Accumulation, NonFiniteLoss, all_reduce_mean_, ddp_syncs, mtl_backward
from multitask_deeplab.engine.build import (
    build_losses,
    build_model,
    build_tasks,
    build_weighting,
    check_components,
    check_model_fits_tasks,
    resolve_recipe,
    unused_weights_note,
)
from multitask_deeplab.engine.checkpoint import load_checkpoint, non_finite_tensors, save_checkpoint, state_mismatch, unwrap
from multitask_deeplab.engine.delta_m import recipe_delta_m
from multitask_deeplab.engine.evaluate import evaluate, higher_is_better, protocol_lines, save_prediction_grid
from multitask_deeplab.engine.features import forward_with_shared_features
from multitask_deeplab.engine.logs import MetricsLog, StepLog, TensorBoardLog, format_table, require_tensorboard
from multitask_deeplab.engine.optim import build_optimizer, build_scheduler, parameter_groups
from multitask_deeplab.engine.stopping import EarlyStopping
from multitask_deeplab.runtime.device import resolve_device
from multitask_deeplab.runtime.distributed import (
    any_process,
    convert_sync_batchnorm,
    mean_over_processes,
    setup_distributed,
)
from multitask_deeplab.runtime.files import WriteError, remove_stale_temps
from multitask_deeplab.runtime.lock import FolderLock
from multitask_deeplab.runtime.precision import amp_note, autocast, resolve_amp
from multitask_deeplab.runtime.rng import capture_rng, restore_rng, seed_everything


class TrainingStopped(RuntimeError):
    """Training ended early after saving a checkpoint, or because it could not write one.

    Exit codes: 3 for non-finite losses under the ``stop`` policy or too many skipped steps in a row,
    4 when the output folder stops accepting writes, ``128 + signal number`` for SIGTERM (143) and SIGINT (130).

    Attributes:
        exit_code: The process exit status the CLI should use.
    """

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


RUN_FILES = ("last.pt", "best.pt", "metrics.jsonl", "metrics.csv", "steps.jsonl")
"""The files that make a folder a run folder: training refuses to start afresh over them unless told to."""

RESUME_KEYS = (
    "model", "optimizer", "scheduler", "scaler", "weighting", "epoch", "step", "step_in_epoch", "epoch_loss_sums", "best",
    "metrics", "skipped_steps", "rng", "recipe",
)
"""What a checkpoint needs for training to resume from it."""


def prepare_output_dir(path: Path) -> None:
    """Creates the output folder and proves it writable, or raises a one-line :class:`WriteError`."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_test"
        probe.write_text("ok")
        probe.unlink()
    except OSError as error:
        raise WriteError(path, f"{error.strerror or error}; set train.output_dir to a writable folder") from error


class Trainer:
    """Trains the model a recipe describes; ``fit()`` runs it.

    Everything that can fail on bad input (recipe, model, losses, data, output folder) is checked in the
    constructor, before anything is written.

    **Several processes** (``torchrun``, see :mod:`multitask_deeplab.runtime.distributed`): the model is wrapped
    in DistributedDataParallel and each process trains on its own shard of every epoch's permutation.
    ``train.batch_size`` is per process: the global batch is ``batch_size x world_size``, so scale ``train.lr``
    yourself when you change the number of processes. BatchNorm statistics are per process unless
    ``train.sync_batchnorm`` is true; with it, N processes at batch B train like one at batch N x B. Only rank 0
    writes files; a signal or a non-finite loss on any one process stops or skips on all of them together.

    **Resume** (``--resume auto`` or a path) restores the weights, optimizer, learning-rate schedule, GradScaler,
    weighting strategy (with its random generator), the epoch and the position inside it (the samples already
    seen are skipped), the running epoch losses, the best metric so far, the count of skipped steps and the
    python, numpy, torch and CUDA random generators. So on the CPU, with the same recipe and number of processes,
    a run stopped and resumed is bit-identical to one run straight through (on CUDA, up to non-deterministic
    kernels). Not restored: random state inside DataLoader workers, which are re-seeded when they start (the
    built-in augmentation runs in the training process and is restored). The recipe is the one given on the
    command line, not the checkpoint's: change only what you mean to (e.g. ``train.epochs`` to train longer).

    **Non-finite losses or gradients**: ``train.nonfinite=skip`` drops the step (no update), warns naming the step
    and the task, and counts it (``skipped_steps`` in ``metrics.jsonl``); more than ``train.max_skipped_steps``
    in a row, or any under ``train.nonfinite=stop``, saves ``last.pt`` (the state before that step) and stops
    with exit code 3.

    The skipped step leaves nothing behind: batch-norm statistics, the weighting strategy's state and every random
    generator are put back as they were before it.

    **Samples that fail to load** (a corrupt image, a label of the wrong size, class ids out of range) are left
    out of their batch with a warning naming the file, and counted (``skipped_samples`` in ``metrics.jsonl``); a
    batch with no loadable sample stops training with that error.

    **Moving average and early stopping**: with ``train.ema`` a moving average of the weights (timm's ``ModelEmaV3``)
    is updated after every optimizer step, kept in the checkpoints (``ema``) and restored on resume; evaluation,
    ``best.pt``, the pictures and, by default, ``mtdl evaluate``/``predict``/``export`` use it. With
    ``train.early_stop`` training ends (after saving ``last.pt``) once the watched val metric has not improved for
    ``patience`` evaluations; the count is kept in the checkpoint too.

    **Checkpoints** (``last.pt`` at each evaluation and every ``train.checkpoint_interval`` steps, ``best.pt``) are
    written to a temporary file and renamed, so a crash or a full disk never leaves a half-written one behind;
    SIGTERM and SIGINT save ``last.pt`` at the end of the current step (or evaluation) and exit with 128 + the
    signal number.

    **The output folder** is locked while the trainer lives (``.lock``, holding its PID): a second training there
    fails with a line naming the first one's PID. A folder that already holds a run (``last.pt``, ``best.pt``, or
    logs) is refused unless ``resume`` continues it or ``overwrite`` starts it afresh (deleting those files).
    Temporary files that a killed save left behind are deleted. ``fit()`` ends with :meth:`close`, which ends the
    DataLoader workers and releases the lock.

    Args:
        recipe: The resolved recipe.
        resume: A checkpoint to resume from, ``"auto"`` for ``<output_dir>/last.pt`` when it exists, or None.
        overwrite: Start afresh in a folder that already holds a run.
        show_progress: Show a tqdm progress bar (rank 0 only).
    """

    def __init__(self, recipe: Recipe, *, resume: str | None = None, overwrite: bool = False, show_progress: bool = True) -> None:
        check_components(recipe)
        recipe = self.recipe = resolve_recipe(recipe)
        cfg = recipe.train
        require_tensorboard(cfg.loggers)
        self.info = setup_distributed(cfg.device)
        self.device = resolve_device(cfg.device, local_rank=self.info.local_rank)
        self.amp = resolve_amp(cfg.amp, self.device)
        if self.info.is_main:
            for note in (amp_note(cfg.amp, self.device), unused_weights_note(recipe)):
                if note:
                    print(note)
        seed_everything(cfg.seed)
        self.output_dir = Path(cfg.output_dir)
        self.show_progress = show_progress and self.info.is_main

        self.tasks = build_tasks(recipe)
        self.losses = build_losses(recipe, self.tasks)
        model = build_model(recipe, self.tasks).to(self.device)
        check_model_fits_tasks(model, self.tasks, self.losses, in_chans=recipe.model.in_chans, protocols=recipe.eval.protocol)
        if cfg.channels_last:
            model = model.to(memory_format=torch.channels_last)
        if cfg.grad_checkpointing:
            model.set_grad_checkpointing(True)
        self.weighting = build_weighting(recipe, self.tasks).to(self.device)
        self.train_set = build_dataset(recipe, "train")
        self.val_set = build_dataset(recipe, "val")
        check_tasks_fit(self.train_set, self.tasks, name=recipe.data.type)
        targets = batch_target_kinds(self.train_set, self.tasks)
        self.batch_keys = ["image", *targets]
        self.augment = build_augmentation(**recipe.data.augment, targets=targets).to(self.device)
        self.best_metric = cfg.best_metric or self._default_best_metric()
        self.best_higher = higher_is_better(self.tasks, self.best_metric)
        self.early_stop = self._early_stopping()
        resume_path = self._resume_path(resume)

        batch = cfg.batch_size
        if len(self.train_set) < batch * cfg.accumulate_steps * self.info.world_size:
            raise ValueError(
                f"the train split has {len(self.train_set)} samples, fewer than one step of {batch} x {cfg.accumulate_steps} "
                f"micro-batches x {self.info.world_size} processes; lower train.batch_size or train.accumulate_steps, or add data"
            )
        self.sampler = ResumableSampler(self.train_set, info=self.info, seed=cfg.seed)
        # Worker seeds differ between ranks, so random code in a dataset does not repeat itself on every rank.
        worker_seed = cfg.seed + self.info.rank
        self.train_loader = build_loader(
            self.train_set,
            batch_size=batch,
            sampler=self.sampler,
            num_workers=recipe.data.num_workers,
            train=True,
            device=self.device,
            seed=worker_seed,
        )
        self.val_loader = build_loader(
            self.val_set,
            batch_size=recipe.eval_batch_size,
            sampler=ShardSampler(len(self.val_set), self.info),
            num_workers=recipe.data.num_workers,
            train=False,
            device=self.device,
            seed=worker_seed,
        )
        self.steps_per_epoch = len(self.sampler) // (batch * cfg.accumulate_steps)
        self.total_steps = cfg.total_steps(self.steps_per_epoch)

        self.model_params = [p for p in model.parameters() if p.requires_grad]
        groups = parameter_groups(model, cfg.weight_decay)
        if weighting_params := [p for p in self.weighting.parameters() if p.requires_grad]:
            groups.append({"params": weighting_params, "weight_decay": 0.0})
        self.optimizer = build_optimizer(cfg.optimizer, groups, lr=cfg.lr, momentum=cfg.momentum, device=self.device)
        self.scheduler = build_scheduler(
            self.optimizer, total_steps=self.total_steps, warmup_steps=cfg.warmup_steps, schedule=cfg.schedule, power=cfg.poly_power
        )
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp == "fp16")
        self.shared_params = model.shared_parameters()
        self.head_params = [p for p in model.heads.parameters() if p.requires_grad]
        self.ema = ModelEmaV3(model, decay=cfg.ema.decay, use_warmup=cfg.ema.warmup) if cfg.ema else None
        if self.info.enabled:
            if recipe.train.sync_batchnorm:
                model = convert_sync_batchnorm(model, self.device)
            model = DistributedDataParallel(model, device_ids=[self.device.index] if self.device.type == "cuda" else None)
        self.model = torch.compile(model) if cfg.compile else model

        self.epoch = self.step = self.step_in_epoch = 0
        self.train_seconds, self.timed_steps = 0.0, 0
        self.best_value: float | None = None
        self.last_metrics: dict[str, float] = {}
        self.epoch_loss_sums = torch.zeros(len(recipe.tasks), dtype=torch.float64)
        self.skipped_in_a_row = self.skipped_total = self.skipped_samples = 0
        self._stop_signal: int | None = None
        self._before_step: dict[str, Any] | None = None
        if resume_path is not None:
            self._load(resume_path)  # checks that the checkpoint fits before anything is written
        self.lock = FolderLock(self.output_dir)
        if self.info.is_main:
            self._claim_output_dir(continuing=resume is not None, overwrite=overwrite)
            with self._writing(self.output_dir / "recipe.yaml"):
                (self.output_dir / "recipe.yaml").write_text(recipe_module.dump(recipe))
        self.log = MetricsLog(self.output_dir, step=self.step, enabled=self.info.is_main, csv="csv" in cfg.loggers)
        self.step_log = StepLog(self.output_dir / "steps.jsonl", step=self.step, enabled=self.info.is_main)
        tensorboard = "tensorboard" in cfg.loggers and self.info.is_main
        self.tensorboard = TensorBoardLog(self.output_dir / "tensorboard", start_step=self.step) if tensorboard else None

    def _claim_output_dir(self, *, continuing: bool, overwrite: bool) -> None:
        """Creates and locks the output folder, refuses to start afresh over a run, deletes stale temporary files."""
        prepare_output_dir(self.output_dir)
        self.lock.acquire()
        try:
            existing = [name for name in RUN_FILES if (self.output_dir / name).exists()]
            if existing and not continuing:
                if not overwrite:
                    raise ValueError(
                        f"{self.output_dir} already holds a run ({', '.join(existing)}): continue it with --resume auto, "
                        "start it afresh with --overwrite (deletes them), or set train.output_dir to a new folder"
                    )
                for name in existing:
                    (self.output_dir / name).unlink()
            for folder in (self.output_dir, self.output_dir / "pictures"):
                if folder.is_dir():
                    remove_stale_temps(folder)
        except BaseException:
            self.lock.release()
            raise

    def close(self) -> None:
        """Ends the DataLoader workers and releases the output folder's lock; ``fit()`` calls it when it ends."""
        for loader in (self.train_loader, self.val_loader):
            shutdown_workers(loader)
        self.lock.release()

    # ----------------------------------------------------------------------------------------- set-up helpers
    def _default_best_metric(self) -> str:
        name, task = next(iter(self.tasks.items()))
        return f"{name}.{task.primary_metric}"

    def _early_stopping(self) -> EarlyStopping | None:
        cfg = self.recipe.train.early_stop
        if cfg is None:
            return None
        metric = cfg.metric or self.best_metric
        try:
            higher = higher_is_better(self.tasks, metric)
        except ValueError as error:
            raise ValueError(f"train.early_stop.metric: {error}") from error
        return EarlyStopping(metric, higher_is_better=higher, patience=cfg.patience, min_delta=cfg.min_delta)

    @property
    def evaluated_model(self) -> torch.nn.Module:
        """The model evaluation, ``best.pt`` and the pictures use: the moving average of the weights when
        ``train.ema`` is set, else the model trained."""
        return self.model if self.ema is None else self.ema.module

    def _resume_path(self, resume: str | None) -> Path | None:
        if resume is None:
            return None
        if resume == "auto":
            path = self.output_dir / "last.pt"
            if not path.is_file():
                print(f"--resume auto: no {path} yet, starting from scratch")
                return None
            return path
        return Path(resume)

    # ---------------------------------------------------------------------------------------------- the loop
    def fit(self) -> dict[str, float]:
        """Trains to the end of the schedule and returns the last evaluation's metrics; ends with :meth:`close`."""
        previous = {sig: signal.signal(sig, self._request_stop) for sig in (signal.SIGTERM, signal.SIGINT)} if _main_thread() else {}
        bar = tqdm(total=self.total_steps, initial=self.step, disable=not self.show_progress, desc="train", dynamic_ncols=True)
        start = time.perf_counter()
        if self.info.is_main:
            self._print_length()
        try:
            while self.step < self.total_steps and not (self.early_stop and self.early_stop.should_stop):
                self._run_epoch(bar)
        finally:
            bar.close()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            if self.tensorboard is not None:
                self.tensorboard.close()
            self.close()
        if self.info.is_main:
            if self.skipped_samples:
                print(f"warning: {self.skipped_samples} samples failed to load and were skipped (see the warnings above)")
            elapsed = time.perf_counter() - start
            print(f"trained {self.step} steps in {elapsed:.0f} s ({self.seconds_per_step:.3f} s per step); "
                  "metrics on the val split (used for model selection; the test split never is):")
            print(format_table(self.last_metrics))
            if lines := protocol_lines(self.tasks, self.recipe.eval.protocol):
                print("\n".join(["evaluation protocol:", *lines]))
            delta = recipe_delta_m(self.recipe, self.tasks, self.last_metrics)
            if delta is not None:
                print(f"  Δm vs single-task baselines ({self.recipe.eval.delta_m} protocol): {delta:+.2f} %")
        return self.last_metrics

    def _print_length(self) -> None:
        cfg, epochs = self.recipe.train, self.total_steps / self.steps_per_epoch
        decides = "train.steps" + ("; train.epochs is ignored while train.steps is set" if cfg.epochs is not None else "")
        if cfg.steps is None:
            decides = "train.epochs"
        print(f"training {self.total_steps} steps, {epochs:.3g} epochs of {self.steps_per_epoch} steps ({decides})")

    @property
    def seconds_per_step(self) -> float:
        """Mean wall time of the run's training steps, those before a resume included (data loading excluded)."""
        return self.train_seconds / max(1, self.timed_steps)

    def _run_epoch(self, bar: tqdm) -> None:
        micro = self.recipe.train.accumulate_steps
        self.sampler.set_epoch(self.epoch, skip=self.step_in_epoch * micro * self.recipe.train.batch_size)
        batches = iter(self.train_loader)
        for micro_batches in zip(*[batches] * micro):  # the loader's batches, accumulate_steps at a time
            self.skipped_samples += sum(len(batch.pop(SKIPPED_KEY, ())) for batch in micro_batches)
            lr = self.optimizer.param_groups[0]["lr"]  # the rate this step uses
            started = time.perf_counter()
            self._before_step = self._snapshot()
            losses = self.train_step(*micro_batches)
            self.train_seconds += time.perf_counter() - started
            self.timed_steps += 1
            self.step += 1
            self.step_in_epoch += 1
            self.step_log.append({"step": self.step, **({"losses": losses} if losses is not None else {"skipped": True})})
            if losses is not None:
                self.epoch_loss_sums += torch.tensor([losses[n] for n in self.recipe.tasks], dtype=torch.float64)
                if self.step % self.recipe.train.log_interval == 0 or self.step == 1:
                    bar.set_postfix(loss=f"{sum(losses.values()):.3f}", **{n: f"{v:.3f}" for n, v in losses.items()})
                    if self.tensorboard is not None:
                        weights = {f"step.weight.{name}": value for name, value in self.weighting.task_weights().items()}
                        self.tensorboard.scalars({**{f"step.loss.{n}": v for n, v in losses.items()}, **weights, "step.lr": lr}, self.step)
            bar.update(1)
            interval = self.recipe.train.checkpoint_interval
            if interval and self.step % interval == 0:
                self._save("last.pt")
            self._check_stop_request()
            if self.step >= self.total_steps:
                break
        if self.step_in_epoch >= self.steps_per_epoch:
            self._end_epoch()
        elif self.step >= self.total_steps:
            self._evaluate_and_save()
        self._check_stop_request()  # a signal during the evaluation

    def train_step(self, *micro_batches: dict[str, torch.Tensor]) -> dict[str, float] | None:
        """One optimizer step on one or more loader batches (``train.accumulate_steps`` micro-batches); the task
        losses (their mean over the micro-batches), or None when the step was skipped."""
        cfg = self.recipe.train
        self.optimizer.zero_grad(set_to_none=True)
        accumulation = Accumulation(len(micro_batches))
        augmented, step_losses = [], []
        for batch in micro_batches:
            batch = self.augment(to_device({key: batch[key] for key in self.batch_keys}, self.device, cfg.channels_last))
            # Whether DDP averages this backward, or the driver does (gradient level, or before the last micro-batch).
            syncs = not self.info.enabled or ddp_syncs(self.weighting, accumulation)
            with contextlib.nullcontext() if syncs else self.model.no_sync():
                with autocast(self.device, self.amp):
                    if self.weighting.needs_features:
                        outputs, features = forward_with_shared_features(self.model, batch["image"])
                    else:
                        outputs, features = self.model(batch["image"]), None
                losses = self._losses(outputs, batch)
                try:
                    mtl_backward(
                        losses,
                        weighting=self.weighting,
                        shared_parameters=self.shared_params,
                        head_parameters=self.head_params,
                        features=features,
                        scaler=self.scaler if self.scaler.is_enabled() else None,
                        accumulation=accumulation,
                    )
                except NonFiniteLoss as error:  # raised on every process together
                    self.optimizer.zero_grad(set_to_none=True)
                    return self._non_finite(str(error))
            augmented.append(batch)
            step_losses.append(torch.stack([loss.detach() for loss in losses.values()]))
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.model_params, cfg.grad_clip or math.inf)
        if not self.scaler.is_enabled() and any_process(not torch.isfinite(grad_norm), self.device):
            self.optimizer.zero_grad(set_to_none=True)
            return self._non_finite("non-finite gradients")
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        if self.ema is not None:
            self.ema.update(unwrap(self.model), step=self.step + 1)
        self.skipped_in_a_row = 0
        if self.weighting.needs_post_step_losses:
            self._post_step_losses(augmented)
        mean = torch.stack(step_losses).mean(0).tolist()
        return mean_over_processes(dict(zip(self.recipe.tasks, mean)), self.device)

    def _losses(self, outputs: dict[str, torch.Tensor], batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Each task's unweighted loss, in fp32."""
        return {name: self.losses[name](outputs[name].float(), task.prepare_target(batch[task.target])) for name, task in self.tasks.items()}

    @torch.no_grad()
    def _post_step_losses(self, batches: list[dict[str, torch.Tensor]]) -> None:
        """The step's batches' losses after the optimizer step, averaged over them and over the processes."""
        step_losses = []
        for batch in batches:
            with autocast(self.device, self.amp):
                outputs = self.model(batch["image"])
            step_losses.append(torch.stack(list(self._losses(outputs, batch).values())))
        mean = all_reduce_mean_(torch.stack(step_losses).mean(0))
        self.weighting.after_step(dict(zip(self.recipe.tasks, mean)))

    def _snapshot(self) -> dict[str, Any]:
        """What a step's forward and backward passes change besides the weights and the optimizer: the model's
        buffers (batch-norm statistics), the weighting strategy's state and the random generators."""
        return {
            "buffers": [buffer.clone() for buffer in unwrap(self.model).buffers()],
            "weighting": copy.deepcopy(self.weighting.state_dict()),
            "rng": capture_rng(),
        }

    def _roll_back(self) -> None:
        """Puts back what :meth:`_snapshot` saved before the current step."""
        if self._before_step is None:  # train_step called on its own
            return
        with torch.no_grad():
            for buffer, saved in zip(unwrap(self.model).buffers(), self._before_step["buffers"]):
                buffer.copy_(saved)
        self.weighting.load_state_dict(self._before_step["weighting"])
        restore_rng(self._before_step["rng"])

    def _non_finite(self, what: str) -> None:
        cfg = self.recipe.train
        self._roll_back()
        self.skipped_in_a_row += 1
        self.skipped_total += 1
        message = f"step {self.step + 1}: {what}"
        if cfg.nonfinite == "stop" or self.skipped_in_a_row > cfg.max_skipped_steps:
            reason = "train.nonfinite is 'stop'" if cfg.nonfinite == "stop" else f"more than {cfg.max_skipped_steps} steps in a row were skipped"
            self._save("last.pt")
            raise TrainingStopped(f"{message}; stopped because {reason} (last good state saved to {self.output_dir / 'last.pt'})", 3)
        if self.info.is_main:
            tqdm.write(f"warning: {message}; skipped this step ({self.skipped_total} skipped so far)")
        return None

    def _end_epoch(self) -> None:
        mean_losses = self.epoch_loss_sums / max(1, self.step_in_epoch)
        self.weighting.end_epoch(dict(zip(self.recipe.tasks, mean_losses.tolist())))
        self.train_losses = dict(zip(self.recipe.tasks, mean_losses.tolist()))
        self.epoch += 1
        self.step_in_epoch = 0
        self.epoch_loss_sums.zero_()
        if self.epoch % self.recipe.train.eval_interval == 0 or self.step >= self.total_steps:
            self._evaluate_and_save()

    def _evaluate_and_save(self) -> None:
        cfg = self.recipe.train
        self.last_metrics = evaluate(
            self.evaluated_model, self.val_loader, self.tasks, self.device, amp=self.amp, channels_last=cfg.channels_last,
            protocols=self.recipe.eval.protocol,
        )
        value = self.last_metrics[self.best_metric]
        improved = self.best_value is None or (value > self.best_value if self.best_higher else value < self.best_value)
        if improved:
            self.best_value = value
        if self.early_stop is not None and self.early_stop.update(self.last_metrics[self.early_stop.metric]) and self.info.is_main:
            tqdm.write(f"early stop at step {self.step}: {self.early_stop.describe()}; last.pt holds this state, best.pt the best")
        if not self.info.is_main:
            return
        row = {"epoch": self.epoch, "step": self.step, **{f"train.loss.{k}": v for k, v in getattr(self, "train_losses", {}).items()}}
        row.update({f"val.{k}": v for k, v in self.last_metrics.items()})
        row.update({f"weight.{k}": v for k, v in self.weighting.task_weights().items()})
        row["skipped_steps"] = self.skipped_total
        row["skipped_samples"] = self.skipped_samples
        with self._writing(self.output_dir):
            self.log.append(row)
            if improved:  # before last.pt: a run killed in between resumes before this evaluation and saves it again
                self._save("best.pt")
            self._save("last.pt")
            picture = self._save_pictures()
        if self.tensorboard is not None:
            self.tensorboard.scalars({key: value for key, value in row.items() if key not in ("epoch", "step")}, self.step)
            if picture is not None:
                self.tensorboard.picture("val/predictions", picture, self.step)
            self.tensorboard.flush()

    def _save_pictures(self) -> np.ndarray | None:
        count = self.recipe.eval.num_visualize
        if count <= 0:
            return None
        samples = [self.val_set[i] for i in range(min(count, len(self.val_set)))]
        batch = {key: torch.stack([s[key] for s in samples]).to(self.device) for key in samples[0]}
        (self.output_dir / "pictures").mkdir(exist_ok=True)
        path = self.output_dir / "pictures" / f"val_epoch{self.epoch:03d}.png"
        return save_prediction_grid(self.evaluated_model, batch, self.tasks, path, amp=self.amp)

    # ------------------------------------------------------------------------------------------ checkpoints
    def _save(self, name: str) -> None:
        if not self.info.is_main:
            return
        state = {
            "model": unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "weighting": self.weighting.state_dict(),
            "epoch": self.epoch,
            "step": self.step,
            "step_in_epoch": self.step_in_epoch,
            "epoch_loss_sums": self.epoch_loss_sums.clone(),
            "best": {"metric": self.best_metric, "value": self.best_value},
            "metrics": self.last_metrics,
            "skipped_steps": self.skipped_total,
            "skipped_samples": self.skipped_samples,
            "timing": {"seconds": self.train_seconds, "steps": self.timed_steps},
            "recipe": recipe_module.to_dict(self.recipe),
            "rng": capture_rng(),
        }
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        if self.early_stop is not None:
            state["early_stop"] = self.early_stop.state_dict()
        with self._writing(self.output_dir / name):
            self.step_log.flush()
            save_checkpoint(self.output_dir / name, state)

    @contextlib.contextmanager
    def _writing(self, target: Path) -> Iterator[None]:
        """Turns a failed write (full disk, lost permission) into a one-line stop that names ``target``."""
        try:
            yield
        except OSError as error:
            target = error.path if isinstance(error, WriteError) else target
            reason = error.reason if isinstance(error, WriteError) else error.strerror or error
            raise TrainingStopped(
                f"could not write {target}: {reason}; stopped at step {self.step}. Checkpoints already "
                f"in {self.output_dir} are intact: free space or fix the folder, then resume with --resume auto",
                4,
            ) from error

    def _load(self, path: Path) -> None:
        """Restores the training state from a checkpoint, or raises a one-line ``ValueError`` saying why it does
        not fit this recipe (naming the tensors and the recipe keys that differ)."""
        state = load_checkpoint(path)
        if missing := [key for key in RESUME_KEYS if key not in state]:
            raise ValueError(
                f"cannot resume from {path}: it lacks {', '.join(missing)}, so it is not a training checkpoint "
                "(resume from a last.pt or best.pt written by `mtdl train`)"
            )
        if broken := non_finite_tensors(state["model"]):
            raise ValueError(
                f"cannot resume from {path}: it holds NaN or infinite values in {len(broken)} tensors (e.g. {', '.join(broken[:3])}); "
                "resume from an earlier checkpoint, or start afresh with a lower train.lr"
            )
        model = unwrap(self.model)
        if problem := state_mismatch(model.state_dict(), state["model"]):
            changed = recipe_module.differences(state.get("recipe") or {}, recipe_module.to_dict(self.recipe), ("model", "tasks"))
            keys = f"; recipe keys that differ: {', '.join(changed[:4])}" if changed else ""
            raise ValueError(
                f"cannot resume from {path}: its model does not fit this recipe's ({problem}){keys}; resume with the "
                "recipe it was trained with (its recipe.yaml), or start afresh in another train.output_dir"
            )
        try:
            model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            if state["scaler"] and self.scaler.is_enabled():  # the fp16 loss scale; a run saved without fp16 has none
                self.scaler.load_state_dict(state["scaler"])
            self.weighting.load_state_dict(state["weighting"])
        except (KeyError, RuntimeError, ValueError, TypeError) as error:
            first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
            raise ValueError(
                f"cannot resume from {path}: its optimizer or weighting state does not fit this recipe's ({first_line}); "
                "resume with the recipe it was trained with (its recipe.yaml)"
            ) from error
        self.epoch, self.step, self.step_in_epoch = state["epoch"], state["step"], state["step_in_epoch"]
        saved_micro = state["recipe"]["train"].get("accumulate_steps", 1)
        if self.step_in_epoch and saved_micro != self.recipe.train.accumulate_steps:
            raise ValueError(
                f"{path} stopped inside an epoch with train.accumulate_steps={saved_micro}; resume with the same value "
                f"(got {self.recipe.train.accumulate_steps}), or from a checkpoint at an epoch end"
            )
        self.epoch_loss_sums = state["epoch_loss_sums"].clone()
        self.best_value = state["best"]["value"]
        self.last_metrics = state["metrics"]
        self.skipped_total = state["skipped_steps"]
        self.skipped_samples = state.get("skipped_samples", 0)
        timing = state.get("timing", {"seconds": 0.0, "steps": 0})  # checkpoints of 0.1 have none
        self.train_seconds, self.timed_steps = timing["seconds"], timing["steps"]
        restore_rng(state["rng"])
        notes = self._load_ema(state)
        if self.early_stop is not None and "early_stop" in state:
            self.early_stop.load_state_dict(state["early_stop"])
            if self.early_stop.should_stop:
                notes.append(f"it had stopped early ({self.early_stop.describe()}); raise train.early_stop.patience to go on")
        if self.info.is_main:
            print(f"resumed from {path} at epoch {self.epoch}, step {self.step}" + "".join(f"; {note}" for note in notes))

    def _load_ema(self, state: dict[str, Any]) -> list[str]:
        """Restores the moving average of a resumed run; returns notes when the checkpoint and the recipe disagree."""
        if self.ema is None:
            return ["its moving average of the weights is dropped (train.ema is not set)"] if "ema" in state else []
        if "ema" not in state:
            self.ema.module.load_state_dict(state["model"])
            return ["the moving average of the weights starts from the resumed weights (the checkpoint has none)"]
        self.ema.module.load_state_dict(state["ema"])
        return []

    # ---------------------------------------------------------------------------------------------- signals
    def _request_stop(self, signum: int, frame: Any) -> None:
        self._stop_signal = signum

    def _check_stop_request(self) -> None:
        requested = self._stop_signal is not None
        if self.info.enabled:
            requested = any_process(requested, self.device)
        if not requested:
            return
        self._save("last.pt")
        signum = self._stop_signal or signal.SIGTERM
        raise TrainingStopped(
            f"stopped by {signal.Signals(signum).name} at step {self.step}; checkpoint saved to {self.output_dir / 'last.pt'}; "
            f"resume with: mtdl train RECIPE --resume {self.output_dir / 'last.pt'}",
            128 + signum,
        )


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()

"""Tiny recipes, process launchers and a loss that goes non-finite on cue, shared by the distributed, resume
and fault tests.

Every child process runs with one thread (``OMP_NUM_THREADS=1``): on a few shared cores, OpenMP threads of
several processes spinning against each other make a step tens of times slower.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch

from multitask_deeplab.losses.depth import L1DepthLoss

TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent
TORCHRUN = Path(sys.executable).with_name("torchrun")

# 32 samples of 32 x 32 at batch 4: 8 steps per epoch. Dropout and augmentation are on, so the random number
# generators matter (resume tests); tests that compare arithmetic switch them off with NO_RANDOMNESS.
TINY_RECIPE = """\
model: {backbone: test_resnet, output_stride: 32, pretrained: false}
tasks:
  seg:
    kind: segmentation
    num_classes: 5
    head: {type: deeplabv3plus, channels: 8, low_level_channels: 8, dropout: 0.1}
    loss: {type: cross_entropy}
  depth:
    kind: depth
    head: {type: deeplabv3, trunk: conv, channels: 8}
    loss: {type: l1}
data:
  type: scenes
  height: 32
  width: 32
  num_samples: 32
  num_workers: 0
  augment: {scale: null, hflip: true, color_jitter: 0.2}
train:
  epochs: 1
  batch_size: 4
  optimizer: adamw
  lr: 1.0e-3
  device: cpu
  output_dir: runs/tiny
eval: {num_visualize: 0, batch_size: 16}
"""

NO_RANDOMNESS = ("tasks.seg.head.dropout=0.0", "data.augment.hflip=false", "data.augment.color_jitter=0.0")


def write_recipe(folder: Path) -> Path:
    """Writes :data:`TINY_RECIPE` to ``folder/tiny.yaml`` and returns its path."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(TINY_RECIPE)
    return path


@pytest.fixture
def one_thread() -> Iterator[None]:
    """Runs a test with one intra-op thread, like the child processes (and the same kernels)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def child_env(**extra: str) -> dict[str, str]:
    """The environment of a child process: offline, one thread, ``tests/`` importable (for plugins)."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(TESTS), env.get("PYTHONPATH")]))
    return {**env, **extra}


def mtdl(*args: str) -> list[str]:
    """The command line of ``python -m multitask_deeplab ARGS``."""
    return [sys.executable, "-m", "multitask_deeplab", *args]


def free_port() -> int:
    """A TCP port on 127.0.0.1 that was free a moment ago."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def torchrun(nproc: int, *args: str, timeout: float) -> subprocess.CompletedProcess:
    """Runs ``torchrun --standalone --nproc_per_node NPROC -m multitask_deeplab ARGS``, the user's multi-process
    path, to the end (killed after ``timeout`` seconds)."""
    command = [str(TORCHRUN), "--standalone", "--nproc_per_node", str(nproc), "-m", "multitask_deeplab", *args]
    return subprocess.run(command, cwd=ROOT, env=child_env(), capture_output=True, text=True, timeout=timeout)


def launch_ranks(world_size: int, *args: str) -> list[subprocess.Popen]:
    """Starts ``mtdl ARGS`` once per rank with the environment torchrun would set, so each rank's exit code
    and output can be checked on their own."""
    port = str(free_port())
    processes = []
    for rank in range(world_size):
        env = child_env(RANK=str(rank), LOCAL_RANK=str(rank), WORLD_SIZE=str(world_size), MASTER_ADDR="127.0.0.1",
                        MASTER_PORT=port)
        processes.append(
            subprocess.Popen(mtdl(*args), cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    return processes


def finish(processes: Sequence[subprocess.Popen], *, timeout: float) -> list[tuple[int, str, str]]:
    """Waits for every process, all of them together at most ``timeout`` seconds (then kills the stragglers and
    fails the test), and returns ``(exit code, stdout, stderr)`` of each."""
    deadline, results = time.monotonic() + timeout, []
    try:
        for process in processes:
            out, err = process.communicate(timeout=max(0.0, deadline - time.monotonic()))
            results.append((process.returncode, out, err))
    except subprocess.TimeoutExpired:
        for process in processes:
            if process.poll() is None:
                process.send_signal(signal.SIGKILL)
            process.communicate()
        pytest.fail(f"processes still running after {timeout} s; outputs so far: {results}")
    return results


def read_steps(run_dir: Path) -> list[dict[str, Any]]:
    """The rows of a run's per-step log ``steps.jsonl``."""
    return [json.loads(line) for line in (run_dir / "steps.jsonl").read_text().splitlines()]


def wait_for_logged_step(run_dir: Path, step: int, processes: Sequence[subprocess.Popen], *, timeout: float) -> None:
    """Waits until the step log (appended at each checkpoint) reaches ``step``, while the processes run."""
    path, deadline = run_dir / "steps.jsonl", time.monotonic() + timeout
    while (lines := path.read_text().splitlines(keepends=True) if path.is_file() else []) == [] or _last_step(lines) < step:
        ended = [p.args for p in processes if p.poll() is not None]
        assert not ended, f"training ended before step {step}: {ended}"
        assert time.monotonic() < deadline, f"no checkpoint at step {step} after {timeout} s"
        time.sleep(0.02)


def _last_step(lines: list[str]) -> int:
    complete = [line for line in lines if line.endswith("\n")]  # the writer may be midway through a line
    return json.loads(complete[-1])["step"] if complete else 0


def load(path: Path) -> dict[str, Any]:
    """A checkpoint, loaded the safe way."""
    return torch.load(path, map_location="cpu", weights_only=True)


class InfAtSteps(L1DepthLoss):
    """L1 depth loss that returns inf at the given training steps (1-based), on one rank or on all.

    Training steps are counted as calls with autograd enabled (evaluation runs under ``no_grad``).

    Args:
        steps: The steps whose loss is inf.
        rank: Only on this rank (``RANK`` in the environment); None: on every rank.
    """

    name = "inf_at_steps"

    def __init__(self, *, steps: Sequence[int], rank: int | None = None) -> None:
        super().__init__()
        self.steps = set(steps)
        self.rank = rank
        self.calls = 0

    def forward(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        loss = super().forward(pred, target)
        if not torch.is_grad_enabled():
            return loss
        self.calls += 1
        here = self.rank is None or self.rank == int(os.environ.get("RANK", "0"))
        return loss + float("inf") if here and self.calls in self.steps else loss


def write_inf_loss_plugin(folder: Path) -> Path:
    """A plugin file that registers :class:`InfAtSteps` as loss ``inf_at_steps`` in a child process (only
    there: registering it in the test process would add a loss to every registry listing)."""
    path = folder / "inf_loss_plugin.py"
    path.write_text(
        "from helpers_training import InfAtSteps\n"
        "from multitask_deeplab.losses import LOSSES\n\n"
        'LOSSES.register("inf_at_steps")(InfAtSteps)\n'
    )
    return path


def initial_parameters(recipe_path: Path, overrides: Sequence[str], folder: Path) -> dict[str, torch.Tensor]:
    """The trainable parameters a training of this recipe starts from (the trainer seeds, then builds the model),
    by state-dict name; built in ``folder``, so the run itself can use another one."""
    from multitask_deeplab.config import recipe as recipe_module
    from multitask_deeplab.engine.checkpoint import unwrap
    from multitask_deeplab.engine.trainer import Trainer

    recipe = recipe_module.load(recipe_path, [*overrides, f"train.output_dir={folder}"])
    trainer = Trainer(recipe, show_progress=False)
    trainer.close()
    return {name: p.detach().clone() for name, p in unwrap(trainer.model).named_parameters() if p.requires_grad}


def assert_trained(run_dir: Path, initial: dict[str, torch.Tensor], prefixes: Sequence[str], *, steps: int) -> None:
    """Every step of the run updated the weights (none skipped) and the parameters under each prefix moved.

    Run with ``train.weight_decay=0``: weight decay alone would move weights that get no gradient.
    """
    state = load(run_dir / "last.pt")
    assert state["skipped_steps"] == 0 and all("losses" in row for row in read_steps(run_dir)), "no step was skipped"
    counts = {float(slots["step"]) for slots in state["optimizer"]["state"].values() if "step" in slots}
    assert counts <= {float(steps)}, f"optimizer step counts {counts}"
    for prefix in prefixes:
        names = [name for name in initial if name.startswith(prefix)]
        moved = [name for name in names if not torch.equal(initial[name], state["model"][name])]
        assert names and len(moved) >= len(names) / 2, f"{len(moved)} of the {len(names)} parameters under {prefix!r} moved"

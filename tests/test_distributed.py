"""Several processes (gloo on the CPU) train exactly like one process on the whole batch."""

from __future__ import annotations

import copy
import re
import signal

import pytest
import torch
import torch.distributed as dist
from helpers_training import (  # noqa: F401
    NO_RANDOMNESS,
    finish,
    free_port,
    launch_ranks,
    load,
    one_thread,
    read_steps,
    torchrun,
    wait_for_logged_step,
    write_recipe,
)
from timm.layers import BatchNormAct2d
from torch import nn

from multitask_deeplab.cli import main
from multitask_deeplab.data.loader import ResumableSampler
from multitask_deeplab.runtime.distributed import CpuSyncBatchNorm, DistInfo, backend_for, convert_sync_batchnorm

pytestmark = pytest.mark.usefixtures("one_thread")


def test_the_shards_of_a_step_together_are_the_single_process_batch():
    """DistributedSampler deals the epoch's permutation round-robin (rank r gets perm[r::2]), so step s of
    batch B on 2 ranks takes perm[2sB : 2(s+1)B], the same samples as step s of batch 2B on one process."""
    data, batch = range(32), 4
    single = ResumableSampler(data, info=DistInfo(), seed=7)
    ranks = [ResumableSampler(data, info=DistInfo(rank, 2, rank), seed=7) for rank in range(2)]
    epochs = []
    for epoch in (0, 1):
        for sampler in (single, *ranks):
            sampler.set_epoch(epoch)
        full, shards = list(single), [list(sampler) for sampler in ranks]
        assert sorted(full) == sorted(shards[0] + shards[1]) == list(data)
        for step in range(len(data) // (2 * batch)):
            together = shards[0][step * batch : (step + 1) * batch] + shards[1][step * batch : (step + 1) * batch]
            assert sorted(together) == sorted(full[2 * step * batch : 2 * (step + 1) * batch])
        epochs.append(full)
        ranks[1].set_epoch(epoch, skip=batch)
        assert list(ranks[1]) == shards[1][batch:], "resuming skips the samples already seen"
    assert epochs[0] != epochs[1], "each epoch has its own permutation"


def test_sync_batchnorm_keeps_the_activation_of_timm_norm_act_layers():
    model = nn.Sequential(nn.Conv2d(3, 4, 1), BatchNormAct2d(4, act_layer=nn.ReLU), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4))
    model.eval()
    x = torch.randn(2, 3, 5, 5)
    expected = model(x)
    converted = convert_sync_batchnorm(model, torch.device("cpu"))
    norms = [m for m in converted.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert [type(m) for m in norms] == [CpuSyncBatchNorm, CpuSyncBatchNorm]
    assert torch.equal(converted(x), expected)


def test_cpu_sync_batchnorm_matches_batchnorm_in_forward_backward_and_running_stats():
    """One process in a gloo group: the CPU path (all-reduces and all) computes what BatchNorm does (float64,
    so rounding cannot hide a wrong formula)."""
    torch.manual_seed(0)
    plain = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4, momentum=None), nn.ReLU(), nn.Conv2d(4, 2, 1), nn.BatchNorm2d(2))
    plain.double()
    synced = convert_sync_batchnorm(copy.deepcopy(plain), torch.device("cpu"))
    x = torch.randn(3, 3, 6, 6, dtype=torch.float64, requires_grad=True)
    x_synced = x.detach().clone().requires_grad_()
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{free_port()}", rank=0, world_size=1)
    try:
        for _ in range(2):
            out, out_synced = plain(x), synced(x_synced)
            torch.testing.assert_close(out_synced, out)
            (out * torch.arange(out.numel()).view_as(out)).sum().backward()
            (out_synced * torch.arange(out.numel()).view_as(out)).sum().backward()
    finally:
        dist.destroy_process_group()
    torch.testing.assert_close(x_synced.grad, x.grad)
    for (name, a), b in zip(plain.named_parameters(), synced.parameters()):
        torch.testing.assert_close(b.grad, a.grad, msg=name)
    for (name, a), b in zip(plain.named_buffers(), synced.buffers()):
        torch.testing.assert_close(b, a, msg=name)


# Same samples per step (see the sampler test), no randomness, SGD: Adam's first steps move a parameter by about
# lr * sign(gradient), which would turn rounding noise in near-zero gradients into differences of lr. 33 samples:
# the val split shards unevenly (17 + 16), and the one left out of training is the same in both runs.
COMMON = ("train.steps=3", "train.optimizer=sgd", "train.lr=0.05", "data.num_samples=33", *NO_RANDOMNESS)


@pytest.mark.parametrize("weighting", ["fixed", "imtl"])
def test_two_processes_on_half_batches_train_like_one_on_the_whole_batch(tmp_path, weighting):
    """batch_size is per process: 2 x 4 with SyncBatchNorm over the two halves equals 1 x 8 with BatchNorm.
    ``fixed`` runs through DDP's gradient averaging, ``imtl`` (a gradient-level strategy) averages each
    task's gradient itself inside ``no_sync()``. torchrun launches one case, a bare per-rank environment
    (what a scheduler such as SLURM sets) the other."""
    recipe = write_recipe(tmp_path)
    args = ["train", str(recipe), f"weighting.type={weighting}", *COMMON]
    single, double = tmp_path / "single", tmp_path / "double"
    assert main([*args, f"train.output_dir={single}", "train.batch_size=8", "--no-progress"]) == 0
    ddp_args = [*args, f"train.output_dir={double}", "train.batch_size=4", "train.sync_batchnorm=true", "--no-progress"]
    if weighting == "fixed":
        result = torchrun(2, *ddp_args, timeout=180)
        assert result.returncode == 0, result.stderr[-3000:]
    else:
        for code, _, err in finish(launch_ranks(2, *ddp_args), timeout=180):
            assert code == 0, err[-3000:]

    a, b = load(single / "last.pt"), load(double / "last.pt")
    assert a["model"].keys() == b["model"].keys()
    for key, value in a["model"].items():
        if key.endswith(("running_mean", "running_var")):  # batch statistics: summation order, relative tolerance
            torch.testing.assert_close(value, b["model"][key], rtol=1e-5, atol=1e-5, msg=key)
        elif value.is_floating_point():  # rounding: 2e-5 at most; a per-half BatchNorm moves them by 0.08
            assert (value - b["model"][key]).abs().max() <= 1e-4, key
        else:
            assert torch.equal(value, b["model"][key]), key
    # The logged losses are the global batch's (averaged over processes), written once, by rank 0 only.
    rows_a, rows_b = read_steps(single), read_steps(double)
    assert [row["step"] for row in rows_b] == [1, 2, 3]
    for row_a, row_b in zip(rows_a, rows_b):
        assert row_b["losses"] == pytest.approx(row_a["losses"], rel=1e-5)
    # Evaluation shards the val split over the processes and sums the metric state: same metrics.
    assert b["metrics"] == pytest.approx(a["metrics"], abs=1e-3)
    assert (double / "metrics.jsonl").read_text().count("\n") == 1


def test_sigterm_to_one_rank_stops_both_at_the_same_step_with_a_checkpoint(tmp_path):
    """A signal that reaches only some processes (one node preempted) still stops all of them together."""
    recipe, run = write_recipe(tmp_path), tmp_path / "run"
    ranks = launch_ranks(2, "train", str(recipe), f"train.output_dir={run}", "train.steps=200", "train.checkpoint_interval=2",
                         "--no-progress")
    try:
        wait_for_logged_step(run, 2, ranks, timeout=120)
        ranks[1].send_signal(signal.SIGTERM)
    finally:
        results = finish(ranks, timeout=120)
    steps = set()
    for code, _, err in results:
        assert code == 128 + signal.SIGTERM, err[-2000:]
        steps.add(int(re.search(r"stopped by SIGTERM at step (\d+);", err)[1]))
    (step,) = steps
    assert load(run / "last.pt")["step"] == step and [row["step"] for row in read_steps(run)] == list(range(1, step + 1))


@pytest.mark.parametrize(
    ("device", "cuda", "backend"),
    [("cpu", True, "gloo"), ("auto", True, "nccl"), ("cuda:1", True, "nccl"), ("auto", False, "gloo"), ("cpu", False, "gloo")],
)
def test_backend_follows_the_training_device(monkeypatch, device, cuda, backend):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    assert backend_for(device) == backend

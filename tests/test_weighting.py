"""Tests of the multi-task loss weighting strategies: each one on a toy problem with a known answer."""

from __future__ import annotations

import contextlib
import copy
import io
import math

import pytest
import torch
import torch.nn.functional as F
from helpers_weighting import exact_min_norm, pcgrad_vectors, simplex_grid
from torch import Tensor, nn

from multitask_deeplab import create_model
from multitask_deeplab.engine.backward import Accumulation, all_reduce_grads_, all_reduce_mean_, ddp_syncs, mtl_backward
from multitask_deeplab.engine.features import SharedFeatures, forward_with_shared_features
from multitask_deeplab.tasks import DepthTask, NormalsTask, SegmentationTask
from multitask_deeplab.weighting import WEIGHTINGS, Weighting
from multitask_deeplab.weighting.solvers import (
    adam_step_,
    aligned_mtl_matrix,
    cagrad_weights,
    fair_coefficients,
    min_norm_coefficients,
    pcgrad_projection,
)

TASKS = ["seg", "depth"]
KINDS = {"seg": SegmentationTask(num_classes=3), "depth": DepthTask()}
GRADIENT_LEVEL = [
    "aligned_mtl", "cagrad", "config", "cr_mogm", "db_mtl", "dualproj", "excess_mtl", "fairgrad", "graddrop", "gradvac",
    "imtl", "mgda", "moco", "modo", "nash_mtl", "pcd", "pcgrad", "sdmgrad", "upgrad",
]  # fmt: skip
LOSS_LEVEL = ["dwa", "famo", "fixed", "gls", "gradnorm", "imtl_l", "rlw", "stch", "uncertainty"]
PARAMS_ONLY = ["db_mtl", "excess_mtl", "moco", "modo", "sdmgrad"]  # state per gradient coordinate, or double sampling
KEEPS_ABSENT_TASKS = ["cr_mogm", "db_mtl", "excess_mtl", "graddrop", "moco", "modo", "sdmgrad"]  # weights with memory


def build(name: str, tasks: list[str] = TASKS, **args: object) -> Weighting:
    return WEIGHTINGS.build({"type": name, **args}, task_names=tasks, task_kinds=KINDS)


class TinyNet(nn.Module):
    """A two-layer conv trunk and a segmentation + a depth head; like ``MultiTaskModel``, the heads read a
    ``feature_hook``'s list (detached leaves under ``forward_with_shared_features``)."""

    def __init__(self) -> None:
        super().__init__()
        self.trunk = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 4, 3, padding=1))
        self.heads = nn.ModuleDict({"seg": nn.Conv2d(4, 3, 1), "depth": nn.Conv2d(4, 1, 1)})

    def forward(self, image: Tensor, *, feature_hook=None):
        features = [self.trunk(image)]
        read = features if feature_hook is None else feature_hook(features)
        return {task: head(read[0]) for task, head in self.heads.items()}


def make_batch(size: int = 4, seed: int = 0, side: int = 8) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(size, 3, side, side, generator=g),
        "seg": torch.randint(0, 3, (size, side, side), generator=g),
        "depth": torch.rand(size, 1, side, side, generator=g) * 5,
    }


def task_losses(
    model: nn.Module, batch: dict[str, Tensor], *, return_features: bool = False, empty_depth: bool = False
) -> tuple[SharedFeatures | None, dict[str, Tensor]]:
    out, features = forward_with_shared_features(model, batch["image"]) if return_features else (model(batch["image"]), None)
    depth = out["depth"].sum() * 0.0 if empty_depth else F.l1_loss(out["depth"], batch["depth"])
    return features, {"seg": F.cross_entropy(out["seg"], batch["seg"]), "depth": depth}


def train_step(
    strategy: Weighting, model: nn.Module, batch: dict[str, Tensor], *, scaler=None, empty_depth=False, net=None, micro: int = 1
) -> None:
    """One optimizer step's backward over ``micro`` equal micro-batches (and FAMO's post-step hook); ``net`` runs
    the forward (a DDP wrapper of ``model``), inside ``no_sync()`` when the driver says so."""
    net = net or model
    model.zero_grad(set_to_none=True)
    accumulation = Accumulation(micro)
    size = len(batch["image"]) // micro
    for i in range(micro):
        part = {key: value[i * size : (i + 1) * size] for key, value in batch.items()}
        sync = contextlib.nullcontext() if not isinstance(net, nn.parallel.DistributedDataParallel) or ddp_syncs(strategy, accumulation) else net.no_sync()
        with sync:
            features, losses = task_losses(net, part, return_features=strategy.needs_features, empty_depth=empty_depth)
            mtl_backward(
                losses,
                weighting=strategy,
                shared_parameters=list(model.trunk.parameters()),
                head_parameters=list(model.heads.parameters()),
                features=features,
                scaler=scaler,
                accumulation=accumulation,
            )
    if strategy.needs_post_step_losses:
        with torch.no_grad():
            strategy.after_step(task_losses(net, batch, empty_depth=empty_depth)[1])


def linear_step(
    strategy: Weighting, grads: Tensor, scaler=None, mixing: Tensor | None = None
) -> tuple[Tensor, list[Tensor]]:
    """Losses ``L_t = <g_t, f> + 2 h_t + 1`` on the feature ``f = mixing @ theta`` (``theta`` without ``mixing``):
    the feature gradients are the rows of ``grads``, the shared ones the rows of ``grads @ mixing``."""
    theta = nn.Parameter(torch.zeros(grads.shape[1] if mixing is None else mixing.shape[1]))
    heads = [nn.Parameter(torch.zeros(())) for _ in grads]
    feature = theta * 1.0 if mixing is None else mixing @ theta
    shared = SharedFeatures([feature], [feature.detach().requires_grad_()])
    read = shared.leaves[0] if strategy.needs_features else feature
    losses = {f"t{i}": g @ read + 2.0 * h + 1.0 for i, (g, h) in enumerate(zip(grads, heads))}
    mtl_backward(losses, weighting=strategy, shared_parameters=[theta], head_parameters=heads, features=shared, scaler=scaler)
    return theta.grad, [h.grad for h in heads]


def names(k: int) -> list[str]:
    return [f"t{i}" for i in range(k)]


# --- every strategy -------------------------------------------------------------------------------------------


def test_registry_holds_every_strategy() -> None:
    assert WEIGHTINGS.names() == sorted(GRADIENT_LEVEL + LOSS_LEVEL)
    assert [n for n in WEIGHTINGS.names() if build(n).level == "gradient"] == sorted(GRADIENT_LEVEL)
    assert [n for n in WEIGHTINGS.names() if build(n).level == "loss"] == sorted(LOSS_LEVEL)
    assert [n for n in WEIGHTINGS.names() if build(n).needs_post_step_losses] == ["famo"]
    assert [n for n in WEIGHTINGS.names() if build(n).needs_features] == ["graddrop", "mgda"]
    assert not build("mgda", gradients="params").needs_features


@pytest.mark.parametrize("name", sorted(GRADIENT_LEVEL + LOSS_LEVEL))
def test_two_steps_give_finite_grads_even_with_an_empty_task(name: str) -> None:
    model = TinyNet()
    strategy = build(name)
    optimizer = torch.optim.SGD([*model.parameters(), *strategy.parameters()], lr=0.01)
    for step, empty in enumerate((False, True)):
        train_step(strategy, model, make_batch(seed=step), empty_depth=empty)
        for p in [*model.parameters(), *strategy.parameters()]:
            assert p.grad is not None and torch.isfinite(p.grad).all()
        assert model.heads["seg"].weight.grad.abs().sum() > 0
        optimizer.step()
        strategy.end_epoch({"seg": 1.0 + step, "depth": 2.0})
        weights = strategy.task_weights()
        assert list(weights) == TASKS and all(math.isfinite(w) for w in weights.values())
    if name in GRADIENT_LEVEL and name not in KEEPS_ABSENT_TASKS:  # the empty task is left out of the combination
        assert strategy.task_weights()["depth"] == 0.0


@pytest.mark.parametrize("name", sorted(GRADIENT_LEVEL + LOSS_LEVEL))
def test_state_dict_round_trip_gives_identical_next_step(name: str) -> None:
    model = TinyNet()
    first = build(name)
    for step in range(2):
        train_step(first, model, make_batch(seed=step))
        first.end_epoch({"seg": 1.0 + step, "depth": 2.0 - step / 2})
    buffer = io.BytesIO()
    torch.save(first.state_dict(), buffer)
    buffer.seek(0)
    second = build(name)
    second.load_state_dict(torch.load(buffer, weights_only=True))
    twin = copy.deepcopy(model)
    train_step(first, model, make_batch(seed=5))
    train_step(second, twin, make_batch(seed=5))
    assert first.task_weights() == second.task_weights()
    for a, b in zip(model.parameters(), twin.parameters()):
        assert torch.equal(a.grad, b.grad)


@pytest.mark.parametrize("name", sorted(GRADIENT_LEVEL + LOSS_LEVEL))
def test_grad_scaler_gives_the_same_gradients(name: str) -> None:
    model = TinyNet()
    twin = copy.deepcopy(model)
    plain, scaled = build(name), build(name)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10)
    optimizer = torch.optim.SGD(twin.parameters(), lr=0.1)
    for step in range(2):
        train_step(plain, model, make_batch(seed=step))
        train_step(scaled, twin, make_batch(seed=step), scaler=scaler)
        assert plain.task_weights() == pytest.approx(scaled.task_weights(), rel=1e-4)
        for a, b in zip(model.parameters(), twin.parameters()):
            torch.testing.assert_close(b.grad / scaler.get_scale(), a.grad, rtol=1e-4, atol=1e-7)
    scaler.unscale_(optimizer)
    for a, b in zip(model.parameters(), twin.parameters()):
        torch.testing.assert_close(b.grad, a.grad, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("name", ["imtl", "nash_mtl"])
def test_an_overflowing_gram_matrix_falls_back_to_the_plain_sum(name: str) -> None:
    """fp16-style overflow: the scaled gradients are finite, their Gram matrix is not. The update is the plain
    (scaled) sum, which the GradScaler's inf check then handles, and the strategy's state is left alone."""
    strategy = build(name, names(2))
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**100)
    grads = torch.tensor([[3.0, 1.0], [-1.0, 2.0]])
    shared, heads = linear_step(strategy, grads, scaler=scaler)
    assert torch.isfinite(shared).all()
    torch.testing.assert_close(shared, grads.sum(0) * 2.0**100)
    assert strategy.task_weights() == {"t0": 1.0, "t1": 1.0}
    if name == "nash_mtl":
        assert strategy.alpha.tolist() == [1.0, 1.0]


def test_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"losses must name exactly the tasks \['seg', 'depth'\]"):
        mtl_backward({"seg": torch.ones(())}, weighting=build("fixed"), shared_parameters=[], head_parameters=[])
    with pytest.raises(ValueError, match="weights must name exactly"):
        build("fixed", weights={"seg": 1.0})
    with pytest.raises(ValueError, match=r"dwa temperature must lie in \(0.0, inf\], got 0"):
        build("dwa", temperature=0)
    with pytest.raises(ValueError, match="update_weights_every must be an integer >= 1"):
        build("nash_mtl", update_weights_every=0)
    with pytest.raises(ValueError, match="gradients must be one of 'params', 'features', got 'feature': did you mean features"):
        build("pcgrad", gradients="feature")
    with pytest.raises(ValueError, match="needs the shared features"):
        model = TinyNet()
        _, losses = task_losses(model, make_batch())
        mtl_backward(losses, weighting=build("mgda"), shared_parameters=list(model.trunk.parameters()), head_parameters=[])
    with pytest.raises(ValueError, match="Bare must subclass LossWeighting or GradientWeighting"):
        type("Bare", (Weighting,), {})(task_names=TASKS)
    with pytest.raises(ValueError, match="distinct names"):
        WEIGHTINGS.build({"type": "fixed"}, task_names=["a", "a"])


# --- loss level -----------------------------------------------------------------------------------------------


def test_fixed_weights_scale_each_task() -> None:
    strategy = build("fixed", names(2), weights={"t0": 2.0, "t1": 0.5})
    _, heads = linear_step(strategy, torch.eye(2))
    assert [h.item() for h in heads] == [4.0, 1.0]
    assert strategy.task_weights() == {"t0": 2.0, "t1": 0.5}


def test_uncertainty_log_variances_reach_the_log_noise_levels() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(1024, 4, generator=g)
    noise = torch.tensor([0.5, 2.0])
    targets = x @ torch.randn(4, 2, generator=g) + noise * torch.randn(1024, 2, generator=g)
    trunk, heads = nn.Linear(4, 16), nn.Linear(16, 2)
    strategy = build("uncertainty", names(2), task_kinds={"t0": DepthTask(), "t1": NormalsTask()})
    optimizer = torch.optim.Adam([*trunk.parameters(), *heads.parameters(), *strategy.parameters()], lr=0.03)
    for _ in range(250):
        optimizer.zero_grad()
        errors = (heads(trunk(x)) - targets) ** 2
        losses = {"t0": errors[:, 0].mean(), "t1": errors[:, 1].mean()}
        mtl_backward(losses, weighting=strategy, shared_parameters=list(trunk.parameters()), head_parameters=list(heads.parameters()))
        optimizer.step()
    # regression form: the optimum is s = log L, and L -> noise variance
    torch.testing.assert_close(strategy.log_vars.detach(), torch.log(noise**2), atol=0.15, rtol=0)
    assert strategy.task_weights()["t0"] == pytest.approx(0.5 / 0.25, rel=0.2)


def test_uncertainty_uses_the_classification_form_for_segmentation() -> None:
    strategy = build("uncertainty")
    losses = {"seg": torch.tensor(2.0, requires_grad=True), "depth": torch.tensor(3.0, requires_grad=True)}
    mtl_backward(losses, weighting=strategy, shared_parameters=[], head_parameters=[])
    assert strategy.task_weights() == {"seg": 1.0, "depth": 0.5}
    assert [losses["seg"].grad.item(), losses["depth"].grad.item()] == [1.0, 0.5]
    assert strategy.log_vars.grad.tolist() == [0.5 - 2.0, 0.5 - 0.5 * 3.0]  # d/ds of factor e^-s L + s/2


def test_dwa_follows_its_formula() -> None:
    strategy = build("dwa", names(3), temperature=2.0)
    assert list(strategy.task_weights().values()) == [1.0, 1.0, 1.0]
    strategy.end_epoch({"t0": 2.0, "t1": 1.0, "t2": 4.0})
    assert list(strategy.task_weights().values()) == [1.0, 1.0, 1.0]  # still the first two epochs
    strategy.end_epoch({"t0": 1.0, "t1": 1.0, "t2": 2.0})
    strategy.end_epoch({"t0": 1.5, "t1": 0.5, "t2": 1.0})
    ratios = torch.tensor([1.5 / 1.0, 0.5 / 1.0, 1.0 / 2.0])
    expected = 3 * torch.exp(ratios / 2) / torch.exp(ratios / 2).sum()
    weights = torch.tensor(list(strategy.task_weights().values()))
    torch.testing.assert_close(weights, expected)
    assert weights.sum().item() == pytest.approx(3.0)
    _, heads = linear_step(strategy, torch.eye(3))
    torch.testing.assert_close(torch.stack(heads), 2 * expected)


def test_rlw_weights_are_random_normalised_and_reproducible() -> None:
    def draws(seed: int) -> list[list[float]]:
        strategy = build("rlw", names(3), seed=seed)
        out = []
        for _ in range(3):
            linear_step(strategy, torch.eye(3))
            out.append(list(strategy.task_weights().values()))
        return out

    first = draws(7)
    assert all(sum(w) == pytest.approx(1.0) and min(w) > 0 for w in first)
    assert first[0] != first[1] != first[2]
    assert draws(7) == first
    assert draws(8) != first


def test_gls_gradient_is_that_of_the_geometric_mean() -> None:
    values = torch.tensor([0.5, 2.0, 8.0], requires_grad=True)
    strategy = build("gls", names(3))
    mtl_backward(dict(zip(names(3), values)), weighting=strategy, shared_parameters=[], head_parameters=[])
    reference = values.detach().clone().requires_grad_()
    reference.prod().pow(1 / 3).backward()
    torch.testing.assert_close(values.grad, reference.grad)


def test_gradnorm_equalises_gradient_norms_of_very_different_tasks() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 4, generator=g)
    targets = torch.randn(64, 2, generator=g) * torch.tensor([1.0, 10.0])
    trunk, heads = nn.Linear(4, 8), nn.ModuleList([nn.Linear(8, 1), nn.Linear(8, 1)])
    strategy = build("gradnorm", names(2), lr=0.01)

    def losses() -> dict[str, Tensor]:
        features = trunk(x)
        return {f"t{i}": F.mse_loss(heads[i](features)[:, 0], targets[:, i]) for i in range(2)}

    shared, head = list(trunk.parameters()), list(heads.parameters())
    for _ in range(300):  # the network is not stepped: losses stay put, so the target is equal norms
        mtl_backward(losses(), weighting=strategy, shared_parameters=shared, head_parameters=head)
    norms = torch.stack([torch.autograd.grad(v, trunk.weight, retain_graph=True)[0].norm() for v in losses().values()])
    weighted = strategy.weights * norms
    assert norms[1] / norms[0] > 5
    assert weighted[1] / weighted[0] == pytest.approx(1.0, abs=0.1)
    assert strategy.weights.sum().item() == pytest.approx(2.0)


def test_famo_moves_weight_to_the_slowest_task_and_matches_the_reference() -> None:
    strategy = build("famo", names(2))
    logits = torch.zeros(2, requires_grad=True)  # the reference: torch.optim.Adam on autograd's softmax gradient
    reference = torch.optim.Adam([logits], lr=0.025, weight_decay=1e-3)
    loss = torch.tensor([1.0, 1.0])
    for _ in range(50):
        before = loss.clone().requires_grad_()
        mtl_backward(dict(zip(names(2), before)), weighting=strategy, shared_parameters=[], head_parameters=[])
        z = torch.softmax(logits.detach(), 0)
        torch.testing.assert_close(before.grad, z / before.detach() / (z / before.detach()).sum())
        loss = loss * torch.tensor([0.9, 0.99])  # t0 improves fast, t1 slowly
        strategy.after_step(dict(zip(names(2), loss)))
        delta = before.detach().log() - loss.log()
        logits.grad = torch.autograd.grad(torch.softmax(logits, 0), logits, grad_outputs=delta)[0]
        reference.step()
    torch.testing.assert_close(strategy.logits, logits.detach())
    z = torch.softmax(strategy.logits, 0)
    assert z[1] > 0.6


def test_adam_step_matches_torch_adam() -> None:
    param = torch.randn(3)
    ref = param.clone().requires_grad_()
    optimizer = torch.optim.Adam([ref], lr=0.05, weight_decay=0.01)
    m, v, step = torch.zeros(3), torch.zeros(3), torch.zeros(())
    for _ in range(5):
        grad = torch.randn(3)
        adam_step_(param, grad, m, v, step, lr=0.05, weight_decay=0.01)
        ref.grad = grad
        optimizer.step()
    torch.testing.assert_close(param, ref.detach())


# --- gradient level -------------------------------------------------------------------------------------------


def test_pcgrad_removes_conflicts() -> None:
    grads = torch.tensor([[1.0, 0.0, 0.0], [-1.0, 1.0, 0.0]])
    gram = (grads @ grads.T).double()
    projected = pcgrad_projection(gram, torch.Generator().manual_seed(0)) @ grads.double()
    assert projected[0] @ grads[1].double() >= -1e-12 and projected[1] @ grads[0].double() >= -1e-12
    shared, heads = linear_step(build("pcgrad", names(2)), grads)
    torch.testing.assert_close(shared, projected.sum(0).float())
    assert [h.item() for h in heads] == [2.0, 2.0]  # heads keep weight 1


def test_pcgrad_gram_form_matches_the_vector_algorithm() -> None:
    grads = torch.randn(4, 6, dtype=torch.float64)
    coef = pcgrad_projection(grads @ grads.T, torch.Generator().manual_seed(3))
    torch.testing.assert_close(coef @ grads, pcgrad_vectors(grads, torch.Generator().manual_seed(3)))


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("mode", ["params", "features"])
def test_mgda_finds_the_min_norm_point(k: int, mode: str) -> None:
    generator = torch.Generator().manual_seed(k)
    for _ in range(5):
        grads, mixing = torch.randn(k, 4, generator=generator), torch.randn(4, 6, generator=generator)
        shared, _ = linear_step(build("mgda", names(k), gradients=mode), grads, mixing=mixing)
        solved = grads if mode == "features" else grads @ mixing  # MGDA-UB solves on the feature gradients
        best = exact_min_norm((solved @ solved.T).double()).float()
        torch.testing.assert_close(shared, best @ grads @ mixing, atol=1e-5, rtol=1e-4)
        grid = simplex_grid(k, 60) @ solved.double()
        assert (best @ solved).norm() <= grid.norm(dim=1).min() + 1e-6


def test_mgda_l2_normalisation_ignores_gradient_scale() -> None:
    grads = torch.randn(3, 5)
    strategy = build("mgda", names(3), normalization="l2")
    linear_step(strategy, grads)
    unit = list(strategy.task_weights().values())
    linear_step(strategy, grads * torch.tensor([[1.0], [10.0], [0.1]]))
    assert list(strategy.task_weights().values()) == pytest.approx(unit, rel=1e-5)


@pytest.mark.parametrize("trunk", [False, True], ids=["deeplabv3plus", "shared_trunk"])
def test_mgda_features_mode_backpropagates_each_backbone_path_once(trunk: bool) -> None:
    """MGDA-UB's backbone gradients are those of ``sum_t alpha_t L_t`` (heads: of ``sum_t L_t``), even when a head
    reads two nested levels (deeplabv3plus: the stride-4 skip and the deepest level) or the heads read a shared
    trunk computed from the backbone's levels; ``alpha`` is the min-norm point of the direct partials."""
    torch.manual_seed(0)
    common = {"channels": 8, "trunk": "light"} if trunk else {"channels": 8}
    seg = {"type": "deeplabv3"} if trunk else {"type": "deeplabv3plus", "low_level_channels": 8}
    tasks = {
        "seg": {"kind": "segmentation", "num_classes": 3, "head": {**seg, **common}},
        "depth": {"kind": "depth", "head": {"type": "deeplabv3", **common}},
    }
    model = create_model("resnet18", output_stride=16, shared_trunk={"channels": 8} if trunk else None, tasks=tasks)
    model.eval()  # fixed batch norm: every forward computes the same function
    batch = make_batch(size=2, seed=3, side=32)
    shared_params, head_params = model.shared_parameters(), list(model.heads.parameters())

    strategy = build("mgda")
    shared, losses = task_losses(model, batch, return_features=True)
    mtl_backward(losses, weighting=strategy, shared_parameters=shared_params, head_parameters=head_params, features=shared)
    grads = [p.grad.clone() for p in [*shared_params, *head_params]]
    alpha = torch.tensor(list(strategy.task_weights().values()))

    shared, losses = task_losses(model, batch, return_features=True)
    partials = torch.stack([
        torch.cat([g.flatten() for g in torch.autograd.grad(loss, shared.leaves, materialize_grads=True)])
        for loss in losses.values()
    ])
    assert 0.01 < alpha[0] < 0.99  # the min-norm point lies inside the simplex: both tasks count
    torch.testing.assert_close(alpha, exact_min_norm((partials @ partials.T).double()).float(), rtol=1e-4, atol=1e-6)

    model.zero_grad(set_to_none=True)
    _, losses = task_losses(model, batch)
    torch.autograd.backward(alpha @ torch.stack(list(losses.values())), inputs=shared_params, retain_graph=True)
    torch.autograd.backward(sum(losses.values()), inputs=head_params)
    for ours, reference in zip(grads, [p.grad for p in [*shared_params, *head_params]]):
        torch.testing.assert_close(ours, reference, rtol=1e-4, atol=1e-7)


def test_min_norm_solver_matches_brute_force_on_random_problems() -> None:
    generator = torch.Generator().manual_seed(0)
    for k in (3, 4, 5):
        for _ in range(20):
            grads = torch.randn(k, 6, generator=generator, dtype=torch.float64)
            gram = grads @ grads.T
            w, best = min_norm_coefficients(gram), exact_min_norm(gram)
            assert w.sum().item() == pytest.approx(1.0) and (w >= 0).all()
            assert (w @ gram @ w).item() == pytest.approx((best @ gram @ best).item(), rel=1e-7, abs=1e-12)


def test_cagrad_without_conflict_aversion_is_the_plain_sum() -> None:
    grads = torch.randn(3, 5)
    shared, _ = linear_step(build("cagrad", names(3), c=0.0), grads)
    torch.testing.assert_close(shared, grads.sum(0))


def test_cagrad_dual_is_minimised() -> None:
    generator = torch.Generator().manual_seed(0)
    grid = simplex_grid(3, 100)
    for _ in range(10):
        grads = torch.randn(3, 5, generator=generator, dtype=torch.float64) * torch.tensor([[1.0], [5.0], [0.2]])
        gram, b = grads @ grads.T, torch.full((3,), 1 / 3, dtype=torch.float64)

        def dual(w: Tensor) -> Tensor:
            return w @ gram @ b + 0.4 * (b @ gram @ b).sqrt() * ((w @ gram) * w).sum(-1).sqrt()

        w = cagrad_weights(gram, 0.4, owner="cagrad")
        assert dual(w).item() <= dual(grid).min().item() + 1e-9


def test_cagrad_direction_follows_the_paper() -> None:
    grads = torch.randn(3, 5, dtype=torch.float64)
    shared, _ = linear_step(build("cagrad", names(3), c=0.4), grads.float())
    w = cagrad_weights(grads @ grads.T, 0.4, owner="cagrad")
    g0, gw = grads.mean(0), w @ grads
    expected = 3 * (g0 + 0.4 * g0.norm() / gw.norm() * gw) / (1 + 0.4**2)
    torch.testing.assert_close(shared, expected.float(), rtol=1e-4, atol=1e-6)


def test_imtl_gives_equal_projections_onto_unit_gradients() -> None:
    grads = torch.randn(3, 6) * torch.tensor([[1.0], [8.0], [0.3]])
    strategy = build("imtl", names(3))
    shared, heads = linear_step(strategy, grads)
    projections = (grads / grads.norm(dim=1, keepdim=True)) @ shared
    torch.testing.assert_close(projections, projections[:1].expand(3), rtol=1e-4, atol=1e-6)
    assert sum(strategy.task_weights().values()) == pytest.approx(1.0)
    assert [h.item() for h in heads] == [2.0, 2.0, 2.0]


def test_aligned_mtl_has_condition_number_one() -> None:
    grads = torch.randn(3, 6, dtype=torch.float64)
    gram = grads @ grads.T
    aligned = grads.T @ aligned_mtl_matrix(gram)  # columns: the aligned task gradients
    sigma_min = torch.linalg.eigvalsh(gram).min()
    torch.testing.assert_close(aligned.T @ aligned, sigma_min * torch.eye(3, dtype=torch.float64))
    shared, _ = linear_step(build("aligned_mtl", names(3)), grads.float())
    torch.testing.assert_close(shared, aligned.sum(1).float(), rtol=1e-4, atol=1e-6)
    dependent = torch.cat([grads[:2], grads[:1] + grads[1:2]])  # rank 2: one zero singular value is dropped
    aligned = dependent.T @ aligned_mtl_matrix(dependent @ dependent.T)
    eigenvalues = torch.linalg.eigvalsh(aligned.T @ aligned)
    assert eigenvalues[0].abs() < 1e-9 and eigenvalues[1] == pytest.approx(eigenvalues[2].item())


def test_nash_mtl_solves_its_fixed_point_and_clips() -> None:
    grads = torch.randn(3, 6) * torch.tensor([[1.0], [4.0], [0.5]])
    gram = (grads @ grads.T).double()
    strategy = build("nash_mtl", names(3), max_norm=0.0)
    shared, _ = linear_step(strategy, grads)
    alpha = torch.tensor(list(strategy.task_weights().values()), dtype=torch.float64)
    assert (alpha > 0).all()
    torch.testing.assert_close(gram @ alpha, 1 / alpha, rtol=1e-4, atol=0)
    torch.testing.assert_close(shared, alpha.float() @ grads, rtol=1e-5, atol=1e-6)
    clipped, _ = linear_step(build("nash_mtl", names(3), max_norm=0.1), grads)
    assert clipped.norm().item() == pytest.approx(0.1, rel=1e-5)
    torch.testing.assert_close(clipped, shared * 0.1 / shared.norm(), rtol=1e-5, atol=1e-7)


def test_nash_mtl_reuses_its_weights_between_updates() -> None:
    strategy = build("nash_mtl", names(2), update_weights_every=2, max_norm=0.0)
    first = torch.randn(2, 4)
    linear_step(strategy, first)
    alpha = list(strategy.task_weights().values())
    second = torch.randn(2, 4)
    shared, heads = linear_step(strategy, second)
    assert list(strategy.task_weights().values()) == alpha
    torch.testing.assert_close(shared, torch.tensor(alpha) @ second)
    assert [h.item() for h in heads] == [2.0, 2.0]
    linear_step(strategy, second)
    torch.testing.assert_close(fair_coefficients((second @ second.T).double(), owner="nash_mtl").float(), strategy.weights)


# --- torch.distributed ----------------------------------------------------------------------------------------

DDP_STRATEGIES = [  # name, arguments, micro-batches per process, micro-batches of the single-process reference
    ("imtl", {}, 1, 1),
    ("mgda", {}, 1, 1),
    ("nash_mtl", {"gradients": "features", "max_norm": 0.0}, 1, 1),  # the feature Gram's scale reaches the weights
    ("pcgrad", {}, 2, 1),
    ("upgrad", {}, 1, 1),
    ("gradvac", {}, 1, 1),
    ("graddrop", {"gradients": "params"}, 1, 1),  # the same draws on every process
    ("pcd", {}, 1, 1),
    ("moco", {}, 1, 1),
    ("db_mtl", {}, 1, 1),
    ("excess_mtl", {}, 1, 1),
    ("modo", {}, 1, 2),  # double sampling: two processes are two independent batches, like two micro-batches
    ("sdmgrad", {}, 2, 4),
    ("gradnorm", {}, 1, 1),
    ("uncertainty", {}, 2, 1),
    ("gls", {}, 1, 1),
    ("famo", {}, 1, 1),
    ("stch", {}, 1, 1),
    ("imtl_l", {}, 1, 1),
]


def _ddp_worker(rank: int, path: str) -> None:
    batch = make_batch(size=4, seed=1)
    references = {}
    for name, args, _, reference in DDP_STRATEGIES:  # single process, whole batch, before the group exists
        torch.manual_seed(0)
        model, strategy = TinyNet(), build(name, **args)
        train_step(strategy, model, batch, micro=reference)
        references[name] = ([p.grad for p in [*model.parameters(), *strategy.parameters()]], strategy.task_weights())

    torch.distributed.init_process_group("gloo", init_method=f"file://{path}", rank=rank, world_size=2)
    try:
        value = all_reduce_mean_(torch.tensor([float(rank)]))
        assert value.item() == 0.5
        params = [nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))]
        params[0].grad = torch.full((2,), rank + 1.0)
        all_reduce_grads_(params)
        assert params[0].grad.tolist() == [1.5, 1.5] and params[1].grad.tolist() == [0.0, 0.0, 0.0]

        half = {key: value[2 * rank : 2 * rank + 2] for key, value in batch.items()}
        for name, args, micro, _ in DDP_STRATEGIES:  # each process: half the batch, in ``micro`` micro-batches
            torch.manual_seed(0)
            model, strategy = TinyNet(), build(name, **args)
            train_step(strategy, model, half, net=nn.parallel.DistributedDataParallel(model), micro=micro)
            grads, weights = references[name]
            assert strategy.task_weights() == pytest.approx(weights, rel=1e-5), name
            for ours, ref in zip([p.grad for p in [*model.parameters(), *strategy.parameters()]], grads):
                torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6, msg=name)
    finally:
        torch.distributed.destroy_process_group()


def test_distributed_training_matches_single_process_on_the_whole_batch(tmp_path) -> None:
    torch.multiprocessing.spawn(_ddp_worker, args=(str(tmp_path / "rendezvous"),), nprocs=2, join=True)


@pytest.mark.parametrize("name", sorted(set(GRADIENT_LEVEL) - set(PARAMS_ONLY)))
def test_representation_level_variant_solves_on_the_feature_gradients(name: str) -> None:
    """``gradients="features"``: the strategy's direction in feature space (what it returns when the features are
    the parameters) backpropagated through the feature map ``f = M theta``, i.e. ``M^T d``."""
    generator = torch.Generator().manual_seed(7)
    grads, mixing = torch.randn(3, 4, generator=generator), torch.randn(4, 6, generator=generator)
    on_features, _ = linear_step(build(name, names(3), gradients="features"), grads, mixing=mixing)
    direction, _ = linear_step(build(name, names(3), gradients="params"), grads)
    torch.testing.assert_close(on_features, mixing.T @ direction, rtol=1e-4, atol=1e-6)
    on_params, _ = linear_step(build(name, names(3), gradients="params"), grads, mixing=mixing)
    assert not torch.allclose(on_params, on_features, rtol=1e-3), "the parameter level solves on other gradients"

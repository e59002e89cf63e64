"""The strategies that complete the catalogue (LibMTL's and torchjd's): each against its paper's formula worked on
the gradient vectors themselves, the properties such a method must have, and torchjd where it is installed.

``step`` drives a strategy through the real driver on the linear losses ``L_t = <g_t, theta> + c_t + 2 h_t`` at
``theta = 0, h = 0``: the task gradients are the rows ``g_t``, the losses the offsets ``c_t`` and every head gets 2.
"""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import Tensor, nn

from multitask_deeplab.engine.backward import Accumulation, mtl_backward
from multitask_deeplab.weighting import WEIGHTINGS, Weighting
from multitask_deeplab.weighting.solvers import project_to_simplex

pytestmark = pytest.mark.filterwarnings("error::multitask_deeplab.weighting.solvers.UnconvergedSolve")

NEW = ["config", "cr_mogm", "db_mtl", "dualproj", "excess_mtl", "fairgrad", "graddrop", "gradvac", "imtl_l", "moco", "modo", "pcd", "sdmgrad", "stch", "upgrad"]  # fmt: skip


def names(k: int) -> list[str]:
    return [f"t{i}" for i in range(k)]


def build(name: str, k: int, **args: object) -> Weighting:
    return WEIGHTINGS.build({"type": name, **args}, task_names=names(k), task_kinds={})


def step(strategy: Weighting, grads: Tensor | list[Tensor], losses: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One optimizer step (several micro-batches when ``grads`` is a list); the shared update and the heads'."""
    parts = grads if isinstance(grads, list) else [grads]
    theta = nn.Parameter(torch.zeros(parts[0].shape[1]))
    heads = [nn.Parameter(torch.zeros(())) for _ in parts[0]]
    offsets = torch.ones(len(parts[0])) if losses is None else losses
    accumulation = Accumulation(len(parts))
    for part in parts:
        feature = theta * 1.0
        task_losses = {f"t{i}": g @ feature + c + 2.0 * h for i, (g, c, h) in enumerate(zip(part, offsets, heads))}
        mtl_backward(task_losses, weighting=strategy, shared_parameters=[theta], head_parameters=heads, accumulation=accumulation)
    return theta.grad, torch.stack([h.grad for h in heads])


def weights(strategy: Weighting) -> Tensor:
    return torch.tensor(list(strategy.task_weights().values()))


def random_grads(k: int = 3, p: int = 6, seed: int = 0, spread: float = 1.0) -> Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(k, p, generator=generator) * torch.logspace(0, spread, k)[:, None]


def test_the_catalogue_is_registered_and_listed(capsys) -> None:
    from multitask_deeplab.cli import main

    assert set(NEW) <= set(WEIGHTINGS.names())
    assert main(["list", "weightings"]) == 0
    assert capsys.readouterr().out.split() == WEIGHTINGS.names()


# --- known answers from the papers' formulas -------------------------------------------------------------------


def test_upgrad_of_two_conflicting_tasks_is_the_mean_of_the_pcgrad_projections() -> None:
    """With two tasks, the dual cone's projection of g_1 / 2 is g_1 / 2 projected off g_2 when they conflict."""
    g = torch.tensor([[1.0, 0.0, 2.0], [-2.0, 1.0, 0.5]])
    expected = sum((g[i] - min(0.0, (g[i] @ g[1 - i]).item()) / (g[1 - i] @ g[1 - i]) * g[1 - i]) / 2 for i in range(2))
    shared, heads = step(build("upgrad", 2), g)
    torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-6)
    assert heads.tolist() == [2.0, 2.0]


def test_dualproj_projects_the_mean_onto_the_dual_cone() -> None:
    g = torch.tensor([[1.0, 0.0], [-2.0, 0.5]])  # mean (-0.5, 0.25) conflicts with g_1: projected to (0, 0.25)
    shared, _ = step(build("dualproj", 2), g)
    torch.testing.assert_close(shared, torch.tensor([0.0, 0.25]), rtol=1e-5, atol=1e-7)


def test_config_of_orthogonal_gradients_follows_equation_two() -> None:
    """Units e_1, e_2: g_u = (1, 1) / sqrt 2 and the length is (a + b) / sqrt 2, so the update is (a + b) / 2 (1, 1)."""
    a, b = 3.0, 0.01
    shared, _ = step(build("config", 2), torch.tensor([[a, 0.0], [0.0, b]]))
    torch.testing.assert_close(shared, torch.tensor([(a + b) / 2, (a + b) / 2]), rtol=1e-5, atol=0)


def test_config_matches_the_pseudo_inverse_on_the_vectors() -> None:
    g = random_grads(3, 5, seed=1, spread=2.0).double()
    units = g / g.norm(dim=1, keepdim=True)
    direction = torch.linalg.pinv(units) @ torch.ones(3, dtype=torch.float64)
    unit = direction / direction.norm()
    shared, _ = step(build("config", 3), g.float())
    torch.testing.assert_close(shared.double(), (g @ unit).sum() * unit, rtol=1e-4, atol=1e-6)


def gradvac_vectors(g: Tensor, targets: Tensor, beta: float) -> Tensor:
    """Wang et al.'s Algorithm 1 for two tasks (no order to draw) on the vectors; updates ``targets``."""
    out = g.clone()
    for i, j in ((0, 1), (1, 0)):
        phi = out[i] @ g[j] / (out[i].norm() * g[j].norm())
        if phi < targets[i, j]:
            t = targets[i, j]
            out[i] = out[i] + out[i].norm() * (t * (1 - phi**2).sqrt() - phi * (1 - t**2).sqrt()) / (g[j].norm() * (1 - t**2).sqrt()) * g[j]
        targets[i, j] = (1 - beta) * targets[i, j] + beta * phi
    return out.sum(0)


def test_gradvac_raises_cosines_to_their_ema_targets() -> None:
    strategy = build("gradvac", 2, beta=0.5)
    targets = torch.zeros(2, 2, dtype=torch.float64)
    for seed, g in enumerate([torch.tensor([[1.0, 0.2], [0.9, 0.4]]), torch.tensor([[1.0, 0.0], [0.3, 1.0]]), torch.tensor([[1.0, 0.0], [-0.5, 1.0]])]):
        shared, _ = step(strategy, g)
        torch.testing.assert_close(shared.double(), gradvac_vectors(g.double(), targets, 0.5), rtol=1e-5, atol=1e-6, msg=f"step {seed}")
    torch.testing.assert_close(strategy.targets, targets)


def test_graddrop_keeps_the_signs_its_purity_draw_selects() -> None:
    g = torch.tensor([[1.0, 2.0, -1.0, 0.5], [3.0, -2.0, -1.0, -1.5]])
    draw = torch.rand(4, generator=torch.Generator().manual_seed(0))
    purity = 0.5 * (1 + g.sum(0) / g.abs().sum(0))
    keep = ((purity > draw) & (g > 0)) | ((purity < draw) & (g < 0))
    shared, heads = step(build("graddrop", 2, gradients="params"), g)
    torch.testing.assert_close(shared, (g * keep).sum(0))
    assert shared[0] == 4.0 and shared[2] == -2.0  # one sign only: kept whatever the draw
    assert heads.tolist() == [2.0, 2.0]
    leaky, _ = step(build("graddrop", 2, gradients="params", leak=1.0), g)
    torch.testing.assert_close(leaky, g.sum(0))


def test_fairgrad_gives_every_task_the_fair_share_of_progress() -> None:
    g = random_grads(3, 5, seed=2, spread=2.0)
    strategy = build("fairgrad", 3, alpha=2.0)
    shared, _ = step(strategy, g)
    x = weights(strategy).double()
    progress = g.double() @ shared.double()  # <g_i, d> = (G x)_i, which must equal x_i^(-1/2)
    torch.testing.assert_close(progress, x**-0.5, rtol=1e-4, atol=0)
    nash = build("fairgrad", 3, alpha=1.0)
    step(nash, g)
    reference = build("nash_mtl", 3, max_norm=0.0)
    step(reference, g)
    torch.testing.assert_close(weights(nash), weights(reference), rtol=1e-5, atol=0)


def test_pcd_keeps_the_primary_gradient_without_conflict_and_guarantees_progress_with() -> None:
    aligned = torch.tensor([[1.0, 0.0], [0.5, 0.5]])
    shared, _ = step(build("pcd", 2), aligned)
    torch.testing.assert_close(shared, aligned[0])
    strategy = build("pcd", 2, primary="t1", tau=0.5)
    conflicting = torch.tensor([[-1.0, 0.2], [1.0, 0.0]])
    shared, _ = step(strategy, conflicting)
    scaled = conflicting / conflicting.norm(dim=1, keepdim=True)  # the EMA of |g|^2 after one step is |g|^2
    assert (scaled[0] @ shared).item() / shared.norm().item() >= 0.5 * scaled[0].norm().item() - 1e-6
    assert shared.norm().item() == pytest.approx(1.0, rel=1e-5)  # rescaled to the primary gradient's norm


def test_moco_follows_its_tracking_updates() -> None:
    strategy = build("moco", 2)
    y = torch.zeros(2, 3)
    lambd = torch.full((2,), 0.5)
    for k, (g, losses) in enumerate([(random_grads(2, 3, seed=3), torch.tensor([2.0, 0.5])), (random_grads(2, 3, seed=4), torch.tensor([1.5, 0.4]))], start=1):
        shared, _ = step(strategy, g, losses)
        target = g / g.norm(dim=1, keepdim=True) * losses[:, None]
        y = y - 0.5 / k**0.5 * (y - target)
        lambd = torch.softmax(lambd - 0.1 / k**0.5 * (y @ y.T) @ lambd, 0)
        torch.testing.assert_close(shared, lambd @ y, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(weights(strategy), lambd)


def test_modo_steps_on_the_double_sampled_gram_matrix() -> None:
    """Two micro-batches are two independent samples: the Gram estimate is the pairwise mean
    (J_1 J_2^T + J_2 J_1^T) / 2 of the per-sample gradients, and the update is lambda times their mean."""
    j1, j2 = random_grads(2, 4, seed=5), random_grads(2, 4, seed=6)
    strategy = build("modo", 2, gamma=0.2)
    shared, _ = step(strategy, [j1, j2])  # each micro-batch counts 1/2: its rows are J_m / 2
    cross = (j1 @ j2.T + j2 @ j1.T).double() / 2
    lambd = project_to_simplex(torch.full((2,), 0.5, dtype=torch.float64) - 0.2 * (cross @ torch.full((2,), 0.5, dtype=torch.float64) + 0.1 * 0.5))
    torch.testing.assert_close(weights(strategy).double(), lambd, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(shared, lambd.float() @ ((j1 + j2) / 2), rtol=1e-5, atol=1e-6)


def test_sdmgrad_runs_its_inner_sgd_from_the_last_weights() -> None:
    j1, j2 = random_grads(3, 5, seed=7), random_grads(3, 5, seed=8)
    strategy = build("sdmgrad", 3)
    w = torch.full((3,), 1 / 3, dtype=torch.float64)
    for _ in range(2):
        shared, _ = step(strategy, [j1, j2])
        cross = (j1 @ j2.T + j2 @ j1.T).double() / 2
        a = cross / cross.diagonal().clamp_min(0).sqrt().mean() ** 2
        velocity = None
        for _ in range(20):  # torch.optim.SGD(lr=5, momentum=0.5), projected after each step
            grad = a @ w + 0.3 * a.mean(1)
            velocity = grad if velocity is None else 0.5 * velocity + grad
            w = project_to_simplex(w - 5 * velocity)
        torch.testing.assert_close(shared, ((w + 0.3 / 3) / 1.3).float() @ ((j1 + j2) / 2), rtol=1e-4, atol=1e-6)


def test_db_mtl_balances_log_loss_gradients_to_the_largest_norm() -> None:
    strategy = build("db_mtl", 2)
    average = torch.zeros(2, 4)
    for seed, losses in ((9, torch.tensor([4.0, 0.1])), (10, torch.tensor([3.0, 0.2]))):
        g = random_grads(2, 4, seed=seed, spread=3.0)
        shared, heads = step(strategy, g, losses)
        log_grads = g / (losses[:, None] + 1e-8)  # the gradients of log(L + 1e-8)
        average = log_grads + 0.9 * (average - log_grads)
        norms = average.norm(dim=1)
        torch.testing.assert_close(shared, (norms.max() / norms) @ average, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(heads, 2.0 / (losses + 1e-8))  # the heads get the log-loss gradients too


def test_excess_mtl_takes_exponentiated_gradient_steps_on_the_excess_risks() -> None:
    strategy = build("excess_mtl", 2, robust_step_size=0.5)
    grads = [random_grads(2, 4, seed=s) for s in (11, 12, 13)]
    sq_sum, w, initial = torch.zeros(2, 4), torch.ones(2), None
    for g in grads:
        shared, _ = step(strategy, g)
        sq_sum = sq_sum + g**2
        excess = (g**2 / (sq_sum + 1e-7).sqrt()).sum(1)
        if initial is None:
            initial = excess  # the first step sets the baseline and keeps weight 1
        else:
            w = w * torch.exp(0.5 * excess / initial)
            w = w * 2 / w.sum()
        torch.testing.assert_close(shared, w @ g, rtol=1e-5, atol=1e-6)


def test_cr_mogm_smooths_its_weighting_by_an_ema() -> None:
    grads = [random_grads(2, 3, seed=s) for s in (14, 15)]
    smoothed, plain = build("cr_mogm", 2, alpha=0.5), build("mgda", 2, gradients="params")
    expected = None
    for g in grads:
        step(smoothed, g)
        step(plain, g)
        expected = weights(plain) if expected is None else 0.5 * expected + 0.5 * weights(plain)
        torch.testing.assert_close(weights(smoothed), expected)
    bare = build("cr_mogm", 2, alpha=0.0, weighting={"type": "imtl"})
    step(bare, grads[0])
    imtl = build("imtl", 2)
    step(imtl, grads[0])
    assert weights(bare).tolist() == pytest.approx(weights(imtl).tolist())


def test_stch_sums_log_losses_then_takes_a_smooth_maximum_from_the_nadir_point() -> None:
    strategy = build("stch", 2, mu=0.5, warmup_epoch=0)
    losses = torch.tensor([2.0, 0.5])
    step(strategy, torch.eye(2), losses)
    assert weights(strategy).tolist() == pytest.approx((1 / losses).tolist())  # d sum log L / dL
    strategy.end_epoch({"t0": 2.0, "t1": 0.5})
    later = torch.tensor([1.0, 0.4], requires_grad=True)
    objective = 2 * 0.5 * torch.logsumexp(torch.log(later / losses) / 0.5, 0)  # nadir: the epoch's mean losses
    expected = torch.autograd.grad(objective, later)[0]
    shared, _ = step(strategy, torch.eye(2), later.detach())
    torch.testing.assert_close(shared, expected, rtol=1e-5, atol=1e-7)


def test_imtl_l_learns_scales_that_equalise_the_scaled_losses() -> None:
    strategy = build("imtl_l", 2)
    losses = torch.tensor([4.0, 0.25])
    shared, _ = step(strategy, torch.eye(2), losses)
    torch.testing.assert_close(shared, torch.ones(2))  # exp(0) = 1 at the start
    torch.testing.assert_close(strategy.log_scales.grad, losses - 1)  # d/ds of exp(s) L - s
    optimizer = torch.optim.SGD(strategy.parameters(), lr=0.05)
    for _ in range(400):
        optimizer.zero_grad()
        step(strategy, torch.eye(2), losses)
        optimizer.step()
    torch.testing.assert_close(torch.exp(strategy.log_scales.detach()) * losses, torch.ones(2), rtol=1e-3, atol=0)


# --- properties -----------------------------------------------------------------------------------------------

PERMUTATION_EQUIVARIANT = ["config", "cr_mogm", "db_mtl", "dualproj", "excess_mtl", "fairgrad", "imtl_l", "moco", "modo", "sdmgrad", "stch", "upgrad"]  # fmt: skip


@pytest.mark.parametrize("name", PERMUTATION_EQUIVARIANT)
def test_permuting_the_tasks_permutes_the_weights(name: str) -> None:
    """Two steps (state included) on tasks in another order: the weights follow the tasks, the update is the same."""
    order = [2, 0, 1]
    runs = []
    for perm in ([0, 1, 2], order):
        strategy = build(name, 3)
        for seed in (16, 17):
            g = random_grads(3, 5, seed=seed, spread=1.5)
            losses = torch.tensor([1.5, 0.7, 3.0])
            shared, _ = step(strategy, [g[perm], g[perm] * 0.5] if name in ("modo", "sdmgrad") else g[perm], losses[perm])
        runs.append((shared, weights(strategy)))
    torch.testing.assert_close(runs[1][0], runs[0][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(runs[1][1], runs[0][1][order], rtol=1e-4, atol=1e-6)


def test_pcd_is_equivariant_in_its_secondary_tasks() -> None:
    g = random_grads(3, 4, seed=18)
    a, b = build("pcd", 3, tau=0.3), build("pcd", 3, tau=0.3)
    shared_a, _ = step(a, g)
    shared_b, _ = step(b, g[[0, 2, 1]])
    torch.testing.assert_close(shared_b, shared_a, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights(b), weights(a)[[0, 2, 1]], rtol=1e-5, atol=1e-7)


# Without conflict (all pairwise inner products positive) each method's stated behaviour.
def _mean(g: Tensor, shared: Tensor, strategy: Weighting) -> None:
    torch.testing.assert_close(shared, g.mean(0), rtol=1e-5, atol=1e-6)


def _sum(g: Tensor, shared: Tensor, strategy: Weighting) -> None:
    torch.testing.assert_close(shared, g.sum(0), rtol=1e-5, atol=1e-6)


def _no_task_worse(g: Tensor, shared: Tensor, strategy: Weighting) -> None:
    assert (g @ shared > 0).all()


def _equal_cosines(g: Tensor, shared: Tensor, strategy: Weighting) -> None:
    cosines = (g @ shared) / (g.norm(dim=1) * shared.norm())
    torch.testing.assert_close(cosines, cosines[:1].expand(len(g)), rtol=1e-4, atol=1e-6)


def _primary(g: Tensor, shared: Tensor, strategy: Weighting) -> None:
    torch.testing.assert_close(shared, g[0], rtol=1e-5, atol=1e-6)


def _simplex(g: Tensor, shared: Tensor, strategy: Weighting) -> None:
    w = weights(strategy)
    assert (w >= 0).all() and w.sum().item() == pytest.approx(1.0, abs=1e-5)
    _no_task_worse(g, shared, strategy)


def _balanced_norms(g: Tensor, shared: Tensor, strategy: Weighting) -> None:
    losses = torch.tensor([1.0, 2.0, 0.5])[:, None]
    scaled = weights(strategy)[:, None] * g / losses  # the log-loss gradients g / L, scaled to the largest norm
    torch.testing.assert_close(scaled.norm(dim=1), scaled.norm(dim=1).max().expand(len(g)), rtol=1e-5, atol=0)


NON_CONFLICTING = {
    "upgrad": _mean,  # every gradient lies in the dual cone already
    "dualproj": _mean,
    "config": _equal_cosines,
    "gradvac": _sum,  # cosines >= 0 = the initial targets: no correction
    "graddrop": _sum,  # one sign per coordinate: nothing dropped
    "fairgrad": _no_task_worse,
    "pcd": _primary,
    "moco": _simplex,
    "modo": _simplex,
    "sdmgrad": _no_task_worse,
    "db_mtl": _balanced_norms,
    "excess_mtl": _sum,  # the first step keeps weight 1
    "cr_mogm": _simplex,  # MGDA's weights, smoothed
}


@pytest.mark.parametrize("name", sorted(NON_CONFLICTING))
def test_without_conflict_each_method_does_what_it_states(name: str) -> None:
    g = torch.tensor([[1.0, 0.5, 0.0, 0.2], [0.1, 2.0, 0.3, 0.0], [0.0, 0.2, 0.1, 0.05]])
    assert (g @ g.T >= 0).all()
    args = {"gradients": "params"} if name == "graddrop" else {}
    strategy = build(name, 3, **args)
    shared, heads = step(strategy, g, torch.tensor([1.0, 2.0, 0.5]))
    NON_CONFLICTING[name](g, shared, strategy)
    if name != "db_mtl":
        assert heads.tolist() == [2.0, 2.0, 2.0], "heads keep weight 1"


def test_strategies_with_state_per_coordinate_refuse_the_features() -> None:
    for name in ("moco", "db_mtl", "excess_mtl", "modo", "sdmgrad"):
        with pytest.raises(ValueError, match="use gradients: params"):
            build(name, 2, gradients="features")


def test_argument_errors_name_the_fix() -> None:
    with pytest.raises(ValueError, match=r"pcd primary must be one of the tasks \['t0', 't1'\], got 'seg'"):
        build("pcd", 2, primary="seg")
    with pytest.raises(ValueError, match="does not give them: pick another weighting"):
        build("cr_mogm", 2, weighting={"type": "moco"})
    with pytest.raises(ValueError, match="without gradients"):
        build("cr_mogm", 2, weighting={"type": "mgda", "gradients": "features"})
    with pytest.raises(ValueError, match=r"fairgrad alpha must lie in \(0.0, inf\]"):
        build("fairgrad", 2, alpha=0)


# --- torchjd, where installed -----------------------------------------------------------------------------------


def _torchjd_matrices() -> list[Tensor]:
    """Gradients of similar norms: torchjd's dual-cone projector adds 1e-4 times the trace to the Gram matrix, which
    biases a task whose squared norm is a small share of the trace (our solve has no ridge; its KKT conditions are
    checked in test_solvers)."""
    return [random_grads(k, 7, seed=20 + k, spread=0.0).double() for k in (2, 3, 5)]


@pytest.mark.parametrize("jac", _torchjd_matrices(), ids=lambda j: f"T{len(j)}")
def test_upgrad_and_dualproj_agree_with_torchjd(jac: Tensor) -> None:
    pytest.importorskip("qpsolvers")
    aggregation = pytest.importorskip("torchjd.aggregation")
    for name, reference in (("upgrad", aggregation.UPGrad()), ("dualproj", aggregation.DualProj())):
        shared, _ = step(build(name, len(jac)), jac.float())
        torch.testing.assert_close(shared.double(), reference(jac), rtol=2e-3, atol=1e-4)  # torchjd adds a 1e-4 ridge


@pytest.mark.parametrize("jac", _torchjd_matrices(), ids=lambda j: f"T{len(j)}")
def test_config_pcd_and_gradvac_agree_with_torchjd(jac: Tensor) -> None:
    aggregation = pytest.importorskip("torchjd.aggregation")
    shared, _ = step(build("config", len(jac)), jac.float())
    torch.testing.assert_close(shared.double(), aggregation.ConFIG()(jac), rtol=1e-4, atol=1e-6)
    ours, theirs = build("pcd", len(jac)), aggregation.PCD()
    for scale in (1.0, 0.5, 2.0):
        shared, _ = step(ours, (jac * scale).float())
        torch.testing.assert_close(shared.double(), theirs(jac * scale), rtol=1e-4, atol=1e-6)
    if len(jac) == 2:  # with two tasks the visiting order does not matter
        ours, theirs = build("gradvac", 2, beta=0.5), aggregation.GradVac(beta=0.5)
        for sign in (1.0, -1.0, 1.0):
            flipped = jac * torch.tensor([[1.0], [sign]], dtype=torch.float64)
            shared, _ = step(ours, flipped.float())
            torch.testing.assert_close(shared.double(), theirs(flipped), rtol=1e-4, atol=1e-6)


def test_fairgrad_agrees_with_torchjd() -> None:
    pytest.importorskip("scipy")
    aggregation = pytest.importorskip("torchjd.aggregation")
    for jac, alpha in itertools.product(_torchjd_matrices(), (0.5, 1.0, 2.0)):
        shared, _ = step(build("fairgrad", len(jac), alpha=alpha), jac.float())
        torch.testing.assert_close(shared.double(), aggregation.FairGrad(alpha=alpha)(jac), rtol=1e-3, atol=1e-5)

"""The exact weighting solvers: known answers, and optimality conditions on hard random problems.

Every check here is the problem's own optimality condition (KKT, the Nash condition) evaluated by the test, or an
answer worked out by hand; never a comparison with our own earlier output. The random problems have T = 2..8
tasks whose gradient norms span up to four orders of magnitude, as a segmentation and a metric-depth loss do.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from multitask_deeplab.weighting.solvers import (
    UnconvergedSolve,
    cagrad_weights,
    dual_cone_weights,
    fair_coefficients,
    min_norm_coefficients,
    solve_qp,
)

pytestmark = pytest.mark.filterwarnings("error::multitask_deeplab.weighting.solvers.UnconvergedSolve")

# Issue 14's CAGrad case: rows are the task gradients, norms over four orders of magnitude.
B = torch.tensor([[1, -1, -3, 1, 0], [-1, 1, 3, 0, 1], [2, 3, 2, -1, 3], [-2, -3, -3, 1, -3], [2, 1, -1, -1, -1]], dtype=torch.float64)
CAGRAD_J = torch.diag(torch.tensor([0.01, 0.1, 1.0, 10.0, 100.0], dtype=torch.float64)) @ B


def hard_problems(count_per_size: int = 6, sizes=range(2, 9)) -> list[Tensor]:
    """Random task-gradient matrices (T x 40) with norms spread log-uniformly over up to 1e4."""
    generator = torch.Generator().manual_seed(14)
    out = []
    for t in sizes:
        for i in range(count_per_size):
            ratio = 10.0 ** (4.0 * (i + 1) / count_per_size)
            norms = torch.logspace(0, math.log10(ratio), t, dtype=torch.float64)[torch.randperm(t, generator=generator)]
            out.append(torch.randn(t, 40, generator=generator, dtype=torch.float64) * norms[:, None])
    return out


def test_nash_solves_the_issue_example_exactly() -> None:
    """J = diag(1, 1e-4): alpha_i (G alpha)_i = 1 gives alpha = [1, 1e4], update [1, 1] (the old ridge on the
    Frobenius-normalised Gram gave [1, 7071] and [1, 0.707])."""
    jac = torch.tensor([[1.0, 0.0], [0.0, 1e-4]], dtype=torch.float64)
    alpha = fair_coefficients(jac @ jac.T, owner="nash_mtl")
    torch.testing.assert_close(alpha, torch.tensor([1.0, 1e4], dtype=torch.float64), rtol=1e-7, atol=0)
    torch.testing.assert_close(alpha @ jac, torch.ones(2, dtype=torch.float64), rtol=1e-7, atol=0)


@pytest.mark.parametrize("ratio", [1e-3, 1e-4, 1e-5, 1e-6])
def test_nash_share_of_a_small_task_does_not_depend_on_its_scale(ratio: float) -> None:
    jac = torch.tensor([[1.0, 0.5], [0.2, 1.0]], dtype=torch.float64) * torch.tensor([[1.0], [ratio]], dtype=torch.float64)
    alpha = fair_coefficients(jac @ jac.T, owner="nash_mtl")
    unit = fair_coefficients((jac / jac.norm(dim=1, keepdim=True)) @ (jac / jac.norm(dim=1, keepdim=True)).T, owner="nash_mtl")
    torch.testing.assert_close(alpha @ jac, unit @ (jac / jac.norm(dim=1, keepdim=True)), rtol=1e-7, atol=0)


def test_cagrad_solves_the_issue_example_exactly() -> None:
    gram = CAGRAD_J @ CAGRAD_J.T
    w = cagrad_weights(gram, 0.4, owner="cagrad")
    torch.testing.assert_close(w, torch.tensor([0.0, 0.9966, 0.0, 0.0034, 0.0], dtype=torch.float64), atol=1e-4, rtol=0)
    g0 = CAGRAD_J.mean(0)
    gw = w @ CAGRAD_J
    dual = gw @ g0 + 0.4 * g0.norm() * gw.norm()
    assert dual.item() == pytest.approx(-5.85, abs=0.01)  # the projected-gradient solver stopped at 3.04
    update = 5 * (g0 + 0.4 * g0.norm() / gw.norm() * gw) / (1 + 0.4**2)
    expected = torch.tensor([94.7, 62.4, -36.7, -65.9, -110.0], dtype=torch.float64)
    torch.testing.assert_close(update, expected, atol=0.06, rtol=0)


def simplex_kkt_gap(grad: Tensor, w: Tensor) -> float:
    """The Frank-Wolfe gap ``w . grad - min(grad)``: zero exactly at a minimiser over the simplex."""
    return (w @ grad - grad.min()).item()


@pytest.mark.parametrize("jac", hard_problems(), ids=lambda j: f"T{len(j)}")
def test_min_norm_point_meets_its_kkt_conditions(jac: Tensor) -> None:
    gram = jac @ jac.T
    w = min_norm_coefficients(gram)
    assert (w >= 0).all() and w.sum().item() == pytest.approx(1.0, abs=1e-12)
    assert simplex_kkt_gap(2 * gram @ w, w) <= 1e-10 * gram.diagonal().max().item()


@pytest.mark.parametrize("jac", hard_problems(), ids=lambda j: f"T{len(j)}")
def test_cagrad_dual_meets_its_kkt_conditions(jac: Tensor) -> None:
    gram = jac @ jac.T
    c = 0.4
    w = cagrad_weights(gram, c, owner="cagrad")
    assert (w >= 0).all() and w.sum().item() == pytest.approx(1.0, abs=1e-12)
    g0 = jac.mean(0)
    gw = w @ jac
    grad = jac @ g0 + c * g0.norm() * (jac @ gw) / gw.norm()  # gradient of the dual objective
    assert simplex_kkt_gap(grad, w) <= 1e-8 * (jac.norm(dim=1).max() * g0.norm()).item()


@pytest.mark.parametrize("jac", hard_problems(), ids=lambda j: f"T{len(j)}")
@pytest.mark.parametrize("alpha", [1.0, 0.5, 2.0])
def test_fair_coefficients_meet_the_fairness_condition(jac: Tensor, alpha: float) -> None:
    """``(G x)_i = x_i^(-1/alpha)`` (Nash: ``x_i (G x)_i = 1``), (no ridge: independent gradients)."""
    gram = jac @ jac.T
    x = fair_coefficients(gram, alpha, owner="fairgrad")
    assert (x > 0).all()
    torch.testing.assert_close((gram @ x) * x ** (1 / alpha), torch.ones(len(x), dtype=torch.float64), rtol=1e-6, atol=0)


@pytest.mark.parametrize("jac", hard_problems(count_per_size=3), ids=lambda j: f"T{len(j)}")
def test_dual_cone_projection_meets_its_kkt_conditions(jac: Tensor) -> None:
    """``min v^T G v`` s.t. ``v >= u``: ``G v >= 0``, and ``(G v)_i = 0`` wherever ``v_i > u_i``; the projected
    vector ``J^T v`` then has a non-negative inner product with every task gradient (Quinton & Rey 2024, Prop. 1)."""
    gram = jac @ jac.T
    for i in range(len(jac)):
        u = torch.zeros(len(jac), dtype=torch.float64)
        u[i] = 1.0 / len(jac)
        v = dual_cone_weights(gram, u, owner="upgrad")
        products = jac @ (v @ jac) / jac.norm(dim=1)  # <g_t, J^T v> / |g_t|
        scale = products.abs().max().item()
        assert (v >= u - 1e-15).all()
        assert products.min().item() >= -1e-10 * scale
        slack = (v - u) * jac.norm(dim=1)
        assert (slack * products).abs().max().item() <= 1e-10 * scale * slack.abs().max().clamp_min(1e-300).item()


def test_dependent_gradients_are_solved_without_warnings() -> None:
    """Two identical tasks and one opposed: singular Gram matrices, still exact."""
    jac = torch.tensor([[1.0, 2.0, 0.0], [1.0, 2.0, 0.0], [-1.0, -1.0, 1.0]], dtype=torch.float64)
    gram = jac @ jac.T
    w = min_norm_coefficients(gram)
    assert simplex_kkt_gap(2 * gram @ w, w) <= 1e-12
    w = cagrad_weights(gram, 0.4, owner="cagrad")
    assert w.sum().item() == pytest.approx(1.0)
    alpha = fair_coefficients(gram, owner="nash_mtl")
    assert torch.isfinite(alpha).all()


def test_a_solver_stopped_early_warns_naming_the_strategy_and_the_residual() -> None:
    jac = hard_problems(count_per_size=1, sizes=[6])[0]
    gram = jac @ jac.T
    with pytest.warns(UnconvergedSolve, match=r"^mgda: the quadratic-program solve stopped with relative optimality residual \d"):
        solve_qp(2 * gram / gram.diagonal().max(), torch.zeros(6, dtype=torch.float64), simplex=True, owner="mgda", max_iter=1)
    with pytest.warns(UnconvergedSolve, match=r"^nash_mtl: the Newton solve stopped .* this step's task weights are approximate"):
        fair_coefficients(gram, owner="nash_mtl", max_iter=1)


def test_an_unbounded_quadratic_program_returns_none() -> None:
    h = torch.tensor([[1.0, -1.0], [-1.0, 1.0]], dtype=torch.float64)  # flat along (1, 1), where q descends
    assert solve_qp(h, torch.tensor([-1.0, -1.0], dtype=torch.float64), simplex=False, owner="pcd") is None
    assert solve_qp(h, torch.tensor([1.0, -1.0], dtype=torch.float64), simplex=False, owner="pcd").tolist() == [0.0, 1.0]

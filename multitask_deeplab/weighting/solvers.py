"""Small solvers on the K x K Gram matrix of task gradients, and a buffer-friendly Adam step.

Every gradient-level strategy here combines the task gradients linearly, so each one reduces to a function
from the Gram matrix ``M[i, j] = <g_i, g_j>`` (and the task losses) to K coefficients. These functions take
float64 CPU tensors: K is small, and CPU double precision keeps the solves exact and deterministic.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _pair_step(v1v1: float, v1v2: float, v2v2: float) -> float:
    """The ``gamma`` in [0, 1] that minimises ``|gamma * v1 + (1 - gamma) * v2|^2`` given three inner products."""
    if v1v2 >= v1v1:
        return 1.0
    if v1v2 >= v2v2:
        return 0.0
    return (v2v2 - v1v2) / (v1v1 + v2v2 - 2.0 * v1v2)


def min_norm_coefficients(gram: Tensor, *, max_iter: int = 250, tol: float = 1e-10) -> Tensor:
    """Weights of the min-norm point of the convex hull of the task gradients (Sener & Koltun 2018).

    Frank-Wolfe on ``min_{w in simplex} w^T M w``, started like the authors' ``MinNormSolver`` from the best
    pair's closed-form solution (with the exact 1/0 instead of their 0.999/0.001 clamps). The steps are
    pairwise Frank-Wolfe steps (Lacoste-Julien & Jaggi 2015): weight moves from the support vertex with the
    largest directional derivative to the vertex with the smallest, with an exact line search. Plain
    Frank-Wolfe, as in the authors' ``find_min_norm_element_FW``, converges sublinearly and stops a few
    percent above the minimum when the solution lies inside a face; the pairwise steps converge linearly.

    Args:
        gram: K x K Gram matrix of the gradients.
        max_iter: iterations at most.
        tol: stop when the Frank-Wolfe duality gap falls below ``tol`` times the current squared norm.

    Returns:
        K non-negative weights summing to 1.
    """
    k = gram.shape[0]
    sol = torch.zeros(k, dtype=gram.dtype)
    if k == 1:
        return sol + 1.0
    best = math.inf
    for i in range(k):
        for j in range(i + 1, k):
            gamma = _pair_step(gram[i, i].item(), gram[i, j].item(), gram[j, j].item())
            cost = gamma**2 * gram[i, i] + 2 * gamma * (1 - gamma) * gram[i, j] + (1 - gamma) ** 2 * gram[j, j]
            if cost.item() < best:
                best = cost.item()
                sol.zero_()
                sol[i], sol[j] = gamma, 1.0 - gamma
    for _ in range(max_iter):
        grad = gram @ sol
        value = (sol @ grad).item()
        toward = int(torch.argmin(grad))
        away = int(torch.argmax(torch.where(sol > 0, grad, -math.inf)))
        if value - grad[toward].item() <= tol * value or toward == away:
            break
        curvature = (gram[toward, toward] - 2 * gram[toward, away] + gram[away, away]).item()
        slope = (grad[away] - grad[toward]).item()
        step = min(sol[away].item(), slope / curvature) if curvature > 0 else sol[away].item()
        sol[toward] += step
        sol[away] -= step
    return sol


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` onto the probability simplex (sort-based, Duchi et al. 2008)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    ind = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / ind > 0)[-1])
    return torch.clamp(v - css[rho] / (rho + 1), min=0.0)


def cagrad_weights(gram: Tensor, c: float, *, max_iter: int = 500, tol: float = 1e-10) -> Tensor:
    """Solves CAGrad's dual ``min_{w in simplex} w^T M b + c |g_0| sqrt(w^T M w)`` with ``b = 1/K`` (Liu et al. 2021).

    The reference solves it with scipy's SLSQP; here projected gradient descent with a backtracking
    (sufficient-decrease) step size on the simplex, on ``M`` divided by its mean diagonal (the minimiser does
    not depend on that scale). The objective is convex, so this converges to the same minimiser.

    Args:
        gram: K x K Gram matrix of the task gradients.
        c: CAGrad's ``c`` (the radius of the ball around the average gradient, relative to its norm).
        max_iter: iterations at most.
        tol: stop when the weights move less than this (L1 norm).

    Returns:
        The K simplex weights ``w``.
    """
    k = gram.shape[0]
    a = gram / gram.diagonal().mean().clamp_min(torch.finfo(gram.dtype).tiny)
    b = torch.full((k,), 1.0 / k, dtype=gram.dtype)
    ab = a @ b
    radius = c * (b @ ab).clamp_min(0.0).sqrt()

    def objective(w: Tensor) -> Tensor:
        return w @ ab + radius * (w @ a @ w).clamp_min(0.0).add(1e-12).sqrt()

    w, step = b.clone(), 1.0
    for _ in range(max_iter):
        aw = a @ w
        grad = ab + radius * aw / (w @ aw).clamp_min(0.0).add(1e-12).sqrt()
        value = objective(w)
        while True:
            new = project_to_simplex(w - step * grad)
            move = new - w
            if objective(new) <= value + grad @ move + (move @ move) / (2 * step) or step < 1e-12:
                break
            step /= 2
        w = new
        if move.abs().sum().item() < tol:
            break
        step *= 2
    return w


def nash_coefficients(gram: Tensor, *, max_iter: int = 100, tol: float = 1e-20, ridge: float = 1e-8) -> Tensor:
    """The Nash bargaining solution ``alpha > 0`` of ``(M alpha)_i = 1 / alpha_i`` (Navon et al. 2022).

    The reference approximates it with a sequence of convex problems in cvxpy. The condition is exactly the
    stationarity condition of the strictly convex potential ``phi(a) = a^T M a / 2 - sum_i log a_i`` on
    ``a > 0``, so here ``phi`` is minimised by damped Newton steps (Hessian ``M + diag(1 / a^2)``) with a
    backtracking line search that keeps ``a`` positive; it converges quadratically, in a few iterations.
    As in the reference, ``M`` is first divided by its Frobenius norm ``n`` (the solution for ``M`` is the one
    for ``M / n`` divided by ``sqrt(n)``). A ridge of ``ridge * I`` on the normalised ``M`` keeps the solution
    finite when the gradients are linearly dependent.

    Args:
        gram: K x K Gram matrix of the task gradients (positive diagonal).
        max_iter: Newton iterations at most.
        tol: stop when the squared Newton decrement falls below this.
        ridge: ridge added to the normalised Gram matrix.

    Returns:
        The K positive coefficients ``alpha``.
    """
    norm = torch.linalg.matrix_norm(gram)
    m = gram / norm + ridge * torch.eye(gram.shape[0], dtype=gram.dtype)

    def potential(a: Tensor) -> Tensor:
        return 0.5 * a @ m @ a - torch.log(a).sum()

    a = m.diagonal().rsqrt()
    for _ in range(max_iter):
        grad = m @ a - 1.0 / a
        step = -torch.linalg.solve(m + torch.diag(1.0 / a**2), grad)
        decrement = -(grad @ step).item()
        if decrement < tol:
            break
        shrink = step < 0
        t = min(1.0, 0.99 * (-a[shrink] / step[shrink]).min().item()) if shrink.any() else 1.0
        value = potential(a)
        while potential(a + t * step) > value - 0.25 * t * decrement and t > 1e-12:
            t /= 2
        a = a + t * step
    return a / norm.sqrt()


def pcgrad_projection(gram: Tensor, generator: torch.Generator) -> Tensor:
    """PCGrad's projected gradients as rows of coefficients over the original gradients (Yu et al. 2020).

    For each task ``i``, the other tasks ``j`` are visited in random order and, when
    ``<g_i^PC, g_j> < 0``, ``g_i^PC -= <g_i^PC, g_j> / |g_j|^2 * g_j``. Every ``g_i^PC`` stays a linear
    combination of the original gradients, so its coefficients ``C[i]`` (``g_i^PC = sum_k C[i, k] g_k``) and
    all inner products follow from the Gram matrix alone.

    Args:
        gram: K x K Gram matrix (positive diagonal).
        generator: random source of the task orders.

    Returns:
        The K x K coefficient matrix ``C``; the PCGrad direction is ``sum_i g_i^PC``, i.e. weights ``C.sum(0)``.
    """
    k = gram.shape[0]
    coef = torch.eye(k, dtype=gram.dtype)
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            if j == i:
                continue
            dot = coef[i] @ gram[:, j]
            if dot < 0:
                coef[i, j] -= dot / gram[j, j]
    return coef


def imtl_g_coefficients(gram: Tensor) -> Tensor:
    """IMTL-G's closed form (Liu et al. 2021): weights summing to 1 whose combination ``g`` has equal
    projections ``<g, u_t>`` onto every unit gradient ``u_t = g_t / |g_t|``.

    ``alpha_{2:K} = g_1 U^T (D U^T)^{-1}`` with rows ``D_i = g_1 - g_i`` and ``U_i = u_1 - u_i``; all the inner
    products come from the Gram matrix (a pseudo-inverse covers the singular case).
    """
    if gram.shape[0] == 1:
        return torch.ones(1, dtype=gram.dtype)
    proj = gram / gram.diagonal().sqrt()[None, :]  # proj[i, j] = <g_i, u_j>
    rhs = proj[0, 0] - proj[0, 1:]
    du = proj[0, 0] - proj[0, 1:][None, :] - proj[1:, 0][:, None] + proj[1:, 1:]
    rest = rhs @ torch.linalg.pinv(du)
    return torch.cat([1.0 - rest.sum().reshape(1), rest])


def aligned_mtl_matrix(gram: Tensor, scale_mode: str = "min") -> Tensor:
    """Aligned-MTL's K x K alignment matrix ``B`` (Senushkin et al. 2023).

    With ``M = V diag(lambda) V^T`` (eigenvalues above ``max(lambda) * K * eps_float32`` kept, as in the authors'
    code), ``B = V diag(sigma / sqrt(lambda)) V^T`` where ``sigma`` is the smallest singular value
    (``scale_mode="min"``), the median one, or the root mean square one. The aligned gradients ``G B`` have
    orthogonal, equal-norm columns (condition number 1); the update is their sum, i.e. weights ``B.sum(1)``.
    """
    eigvals, eigvecs = torch.linalg.eigh(gram)
    keep = eigvals > eigvals.max() * gram.shape[0] * torch.finfo(torch.float32).eps
    eigvals, eigvecs = eigvals[keep], eigvecs[:, keep]
    sigma = {"min": eigvals.min(), "median": eigvals.median(), "rmse": eigvals.mean()}[scale_mode].sqrt()
    return eigvecs @ torch.diag(sigma / eigvals.sqrt()) @ eigvecs.T


def adam_step_(
    param: Tensor,
    grad: Tensor,
    exp_avg: Tensor,
    exp_avg_sq: Tensor,
    step: Tensor,
    *,
    lr: float,
    weight_decay: float = 0.0,
    betas: tuple[float, float] = (0.9, 0.999),
    eps: float = 1e-8,
) -> None:
    """One ``torch.optim.Adam`` step (L2 ``weight_decay`` added to the gradient) on plain tensors, in place.

    Keeping the variable and its moments as module buffers puts them in the strategy's ``state_dict`` and moves
    them with ``.to(device)``; ``step`` is a 0-d tensor so no host sync is needed.
    """
    beta1, beta2 = betas
    step.add_(1)
    if weight_decay:
        grad = grad + weight_decay * param
    exp_avg.lerp_(grad, 1.0 - beta1)
    exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1.0 - beta2)
    t = step.to(param.dtype)
    denom = exp_avg_sq.sqrt() / torch.sqrt(1.0 - beta2**t) + eps
    param.sub_(lr * exp_avg / ((1.0 - beta1**t) * denom))

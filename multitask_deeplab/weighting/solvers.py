"""Exact solvers on the T x T Gram matrix of task gradients, and a buffer-friendly Adam step.

Every gradient-level strategy that combines the task gradients linearly reduces to a function from the Gram
matrix ``M[i, j] = <g_i, g_j>`` (and the task losses) to T coefficients. These functions take float64 CPU
tensors: T is small, and CPU double precision keeps the solves exact and deterministic.

Gradient norms of dense tasks differ by orders of magnitude, so the solves are scale-free: a problem whose
solution transforms simply under ``M -> D M D`` (``D`` diagonal, positive) is solved on the unit-diagonal
``D^-1 M D^-1``, where any ridge or tolerance means the same for every task. Quadratic programs on the simplex
or the positive orthant are solved by a finite active-set method; the Newton solves converge quadratically.
Each solver checks its optimality conditions at the end and warns (:class:`UnconvergedSolve`, naming the
strategy and the residual) when they do not hold, instead of returning an approximation silently.
"""

from __future__ import annotations

import math
import warnings

import torch
from torch import Tensor

KKT_TOL = 1e-9
"""Relative optimality residual above which a solver warns."""


class UnconvergedSolve(UserWarning):
    """A weighting solver stopped before its optimality conditions held; the step's weights are approximate."""


def warn_unless_optimal(owner: str, what: str, residual: float, tol: float = KKT_TOL) -> None:
    """Warns, naming the strategy ``owner`` and the residual, when the relative ``residual`` exceeds ``tol``."""
    if not residual <= tol:
        warnings.warn(
            f"{owner}: the {what} stopped with relative optimality residual {residual:.2e} (tolerance {tol:.0e}); "
            "this step's task weights are approximate",
            UnconvergedSolve,
            stacklevel=3,
        )


def unit_diagonal(gram: Tensor) -> tuple[Tensor, Tensor]:
    """``(D^-1 M D^-1, d)`` with ``d = sqrt(diag(M))``: the Gram matrix of the unit task gradients (cosines)."""
    d = gram.diagonal().clamp_min(torch.finfo(gram.dtype).tiny).sqrt()
    return gram / torch.outer(d, d), d


# --- quadratic programs -----------------------------------------------------------------------------------------


def _face_solve(h: Tensor, q: Tensor, face: list[int], simplex: bool) -> tuple[Tensor, float]:
    """Minimiser of ``x^T h x / 2 + q^T x`` over the face's affine hull (``x_i = 0`` off the face, and
    ``sum x = 1`` on the simplex), minimum-norm when not unique; also the stationarity residual, which is
    non-zero only when the objective is unbounded below on that hull."""
    k = len(face)
    hf, qf = h[face][:, face], q[face]
    if simplex:
        kkt = torch.zeros(k + 1, k + 1, dtype=h.dtype)
        kkt[:k, :k], kkt[:k, k], kkt[k, :k] = hf, -1.0, 1.0
        rhs = torch.cat([-qf, torch.ones(1, dtype=h.dtype)])
    else:
        kkt, rhs = hf, -qf
    sol = torch.linalg.lstsq(kkt, rhs[:, None], rcond=1e-13).solution[:, 0]
    return sol[:k], (kkt @ sol - rhs).abs().max().item()


def solve_qp(h: Tensor, q: Tensor, *, simplex: bool, owner: str, max_iter: int | None = None) -> Tensor | None:
    """Minimises ``x^T h x / 2 + q^T x`` over ``x >= 0`` (and ``sum x = 1`` when ``simplex``), exactly.

    A primal active-set method (Nocedal & Wright, Algorithm 16.3): on the current face the objective is minimised
    in closed form; a minimiser with a negative entry is approached until the first entry reaches 0, which leaves
    the face; otherwise the entry off the face with the most negative multiplier joins it. The objective never
    increases and no face repeats for a strictly convex objective, so the method ends after finitely many steps;
    the KKT conditions are checked at the end (warning through :func:`warn_unless_optimal`).

    Args:
        h: Symmetric positive semi-definite n x n matrix.
        q: Linear term (n).
        simplex: Add the constraint ``sum x = 1``.
        owner: The strategy, named in a warning.
        max_iter: Face changes at most (default ``20 n + 20``).

    Returns:
        The minimiser, or ``None`` when the objective is unbounded below on the orthant.
    """
    n = q.numel()
    scale = max(h.abs().max().item(), q.abs().max().item(), torch.finfo(h.dtype).tiny)
    x = torch.zeros(n, dtype=h.dtype)
    face: list[int] = []
    if simplex:
        start = int(torch.argmin(0.5 * h.diagonal() + q))
        x[start], face = 1.0, [start]
    for _ in range(max_iter or 20 * n + 20):
        y = torch.zeros_like(x)
        if face:
            y[face], stationarity = _face_solve(h, q, face, simplex)
            if stationarity > 1e-9 * scale:
                return None
        if bool((y[face] >= 0).all()):
            x = y
            grad = h @ x + q
            multiplier = (x @ grad).item() if simplex else 0.0
            off = [i for i in range(n) if i not in face]
            if not off:
                break
            reduced = grad[off] - multiplier
            j = int(torch.argmin(reduced))
            if reduced[j].item() >= -1e-14 * scale:
                break
            face.append(off[j])
        else:
            move = y - x
            shrinking = [i for i in face if move[i] < 0]
            t = min(1.0, *(x[i].item() / -move[i].item() for i in shrinking))
            x = x + t * move
            leaving = [i for i in shrinking if x[i].item() <= 1e-15 or x[i].item() / -move[i].item() <= 1e-15]
            leaving = leaving or [min(shrinking, key=lambda i: x[i].item())]
            for i in leaving:
                x[i] = 0.0
            face = [i for i in face if i not in leaving]
    grad = h @ x + q
    multiplier = (x @ grad).item() if simplex else 0.0
    on = torch.zeros(n, dtype=torch.bool)
    on[face] = True
    residual = torch.where(on, (grad - multiplier).abs(), (multiplier - grad).clamp_min(0.0)).max().item()
    warn_unless_optimal(owner, "quadratic-program solve", residual / scale)
    return x


def min_norm_coefficients(gram: Tensor, *, owner: str = "mgda") -> Tensor:
    """Weights of the min-norm point of the convex hull of the task gradients (Sener & Koltun 2018).

    ``min_{w in simplex} w^T M w``, solved exactly by :func:`solve_qp` on ``M`` divided by its largest diagonal
    entry (the minimiser does not depend on that scale). The authors' Frank-Wolfe ``MinNormSolver`` approximates
    the same minimiser.

    Returns:
        T non-negative weights summing to 1.
    """
    if gram.shape[0] == 1:
        return torch.ones(1, dtype=gram.dtype)
    m = gram / gram.diagonal().max().clamp_min(torch.finfo(gram.dtype).tiny)
    w = solve_qp(2.0 * m, torch.zeros(m.shape[0], dtype=m.dtype), simplex=True, owner=owner)
    assert w is not None  # bounded below by 0
    return w


def dual_cone_weights(gram: Tensor, u: Tensor, *, owner: str) -> Tensor:
    """Weights ``v`` of the projection of ``J^T u`` onto the dual cone of the task gradients (Quinton & Rey 2024).

    By their Proposition 1, ``v = argmin v^T M v`` subject to ``v >= u``. With ``v = D^-1 y`` this is the same
    problem on the unit-diagonal Gram matrix with the bound ``y >= D u``, solved exactly by :func:`solve_qp`
    (torchjd and LibMTL add a ridge of 1e-4 times the trace to ``M``, which biases tasks with small gradients).

    Args:
        gram: T x T Gram matrix (positive diagonal).
        u: The weights of the vector to project (T).
        owner: The strategy, named in a warning.
    """
    g, d = unit_diagonal(gram)
    du = d * u
    z = solve_qp(2.0 * g, 2.0 * g @ du, simplex=False, owner=owner)
    assert z is not None  # the objective is a squared norm, bounded below
    return u + z / d


# --- CAGrad -------------------------------------------------------------------------------------------------


def _face_pieces(m: Tensor, a: Tensor, r: float, face: list[int]) -> tuple[Tensor, Tensor]:
    """On a face, the minimiser of ``a^T w + r/(2n) w^T m w`` over its affine hull is ``u + n v`` for every ``n``."""
    k = len(face)
    kkt = torch.zeros(k + 1, k + 1, dtype=m.dtype)
    kkt[:k, :k], kkt[:k, k], kkt[k, :k] = m[face][:, face], -1.0, 1.0
    rhs = torch.zeros(k + 1, 2, dtype=m.dtype)
    rhs[k, 0], rhs[:k, 1] = 1.0, -a[face] / r
    sol = torch.linalg.lstsq(kkt, rhs, rcond=1e-13).solution
    u, v = torch.zeros_like(a), torch.zeros_like(a)
    u[face], v[face] = sol[:k, 0], sol[:k, 1]
    return u, v


def _fixed_point_on_face(u: Tensor, v: Tensor, m: Tensor, low: float, high: float) -> float:
    """The ``n`` in ``(low, high)`` with ``n^2 = |g_{u + n v}|^2``, a quadratic equation; else ``sqrt(low high)``."""
    big_a, big_b, big_c = (u @ m @ u).item(), (u @ m @ v).item(), (v @ m @ v).item()
    lead = 1.0 - big_c  # lead n^2 - 2 B n - A = 0
    if abs(lead) <= 1e-14:
        roots = [-big_a / (2.0 * big_b)] if big_b != 0 else []
    else:
        disc = big_b * big_b + lead * big_a
        roots = [] if disc < 0 else [(big_b + s * math.sqrt(disc)) / lead for s in (1.0, -1.0)]
    inside = [z for z in roots if low < z < high]
    return inside[0] if inside else math.sqrt(low * high)


def cagrad_weights(gram: Tensor, c: float, *, owner: str = "cagrad") -> Tensor:
    """Solves CAGrad's dual ``min_{w in simplex} w^T M b + c |g_0| sqrt(w^T M w)`` with ``b = 1/T`` (Liu et al. 2021).

    Exactly, through ``sqrt(s) = min_n (s / n + n) / 2``: the dual equals ``min_n h(n)`` with
    ``h(n) = min_w a^T w + r (w^T M w / n + n) / 2`` (``a = M b``, ``r = c |g_0|``), a convex function of ``n``
    (the perspective of a quadratic) whose minimum lies where ``n = |g_w(n)|``. Each ``h(n)`` is a simplex QP
    (:func:`solve_qp`); on a fixed face its minimiser is affine in ``n``, so the fixed point on that face is the
    root of a quadratic, and a bracket on ``n`` (bisected when the root leaves it) guarantees convergence. The
    reference solves the dual with scipy's SLSQP; the minimiser does not depend on the scale of ``M``.

    Args:
        gram: T x T Gram matrix of the task gradients.
        c: CAGrad's ``c`` (the radius of the ball around the average gradient, relative to its norm).
        owner: The strategy, named in a warning.

    Returns:
        The T simplex weights ``w``.
    """
    k = gram.shape[0]
    b = torch.full((k,), 1.0 / k, dtype=gram.dtype)
    m = gram / gram.diagonal().max().clamp_min(torch.finfo(gram.dtype).tiny)
    a = m @ b
    r = c * (b @ a).clamp_min(0.0).sqrt().item()
    if k == 1 or r <= 0.0:
        return b
    low, high = 1e-12, 1.0  # |g_w| <= max |g_i| = 1 after the normalisation
    n = min(max(r / c, low), high)  # |g_0|
    w = b
    for _ in range(200):
        w = solve_qp((r / n) * m, a, simplex=True, owner=owner)
        assert w is not None
        psi = (w @ m @ w).item()
        if abs(psi - n * n) <= 1e-12 * max(n * n, psi) or high / low - 1.0 < 1e-13:
            break
        low, high = (n, high) if psi > n * n else (low, n)
        u, v = _face_pieces(m, a, r, [i for i in range(k) if w[i] > 0])
        n = _fixed_point_on_face(u, v, m, low, high)
    norm = (w @ m @ w).clamp_min(0.0).sqrt().item()
    grad = a + r * (m @ w) / max(norm, 1e-300)
    gap = (w @ grad - grad.min()).item()
    warn_unless_optimal(owner, "dual solve", gap / (a.abs().max().item() + r), tol=1e-8)
    return w


# --- Nash bargaining and alpha-fairness ---------------------------------------------------------------------------


def fair_coefficients(gram: Tensor, alpha: float = 1.0, *, owner: str, ridge: float = 1e-8, max_iter: int = 100) -> Tensor:
    """The positive solution ``x`` of ``(M x)_i = x_i^(-1/alpha)``: alpha-fair resource allocation (Ban & Ji 2024);
    ``alpha = 1`` is the Nash bargaining solution ``x_i (M x)_i = 1`` (Navon et al. 2022).

    With ``x = y / d`` (``d = sqrt(diag M)``) the condition reads ``(G y)_i = d_i^(p-1) y_i^(-p)``, ``p = 1/alpha``,
    on the unit-diagonal ``G``: for ``alpha = 1`` it is the same condition, unchanged by the scaling. It is the
    stationarity condition of the strictly convex potential ``y^T G y / 2 - sum_i c_i h(y_i)`` (``h' = y^-p``),
    minimised by damped Newton steps that keep ``y`` positive (quadratic convergence). When the gradients are
    (nearly) linearly dependent, a ridge lifts the smallest eigenvalue of ``G`` to ``ridge`` and keeps the
    solution finite; on the unit diagonal it weighs the same for every task, whatever its gradient norm (a ridge
    on ``M`` would outweigh a small task's own diagonal), and independent gradients get none. The reference
    solves Nash-MTL by a sequence of convex programs in cvxpy, FairGrad by scipy's ``least_squares``.

    Args:
        gram: T x T Gram matrix of the task gradients (positive diagonal).
        alpha: The fairness parameter (> 0).
        owner: The strategy, named in a warning.
        ridge: Smallest eigenvalue the unit-diagonal Gram matrix is lifted to.
        max_iter: Newton iterations at most.

    Returns:
        The T positive coefficients.
    """
    g, d = unit_diagonal(gram)
    g = g + max(0.0, ridge - torch.linalg.eigvalsh(g).min().item()) * torch.eye(g.shape[0], dtype=g.dtype)
    p = 1.0 / alpha
    c = d ** (p - 1.0)

    def barrier(y: Tensor) -> Tensor:
        return (c * torch.log(y)).sum() if p == 1.0 else (c * y ** (1.0 - p)).sum() / (1.0 - p)

    def potential(y: Tensor) -> Tensor:
        return 0.5 * y @ g @ y - barrier(y)

    def residual(y: Tensor) -> float:
        return ((g @ y) * y**p / c - 1.0).abs().max().item()

    y = c ** (1.0 / (1.0 + p))  # the solution for G = I
    for _ in range(max_iter):
        if residual(y) < 1e-15:
            break
        grad = g @ y - c * y**-p
        # Newton step on the Hessian G + diag(p c y^(-p-1)), preconditioned to S G S + I (S^-2 its diagonal part):
        # well conditioned from below even when y is large along nearly dependent gradients.
        s = (y ** (p + 1.0) / (p * c)).sqrt()
        step = -s * torch.linalg.solve(s[:, None] * g * s[None, :] + torch.eye(len(y), dtype=y.dtype), s * grad)
        decrement = -(grad @ step).item()
        shrink = step < 0
        t = min(1.0, 0.99 * (-y[shrink] / step[shrink]).min().item()) if shrink.any() else 1.0
        # Damped phase; once the decrease is within the potential's rounding error (y^T G y sums terms of size
        # up to (sum y)^2), the full Newton step converges quadratically and a line search could only stall.
        if decrement > 1e3 * torch.finfo(y.dtype).eps * max(1.0, y.sum().item() ** 2):
            value = potential(y)
            while potential(y + t * step) > value - 0.25 * t * decrement and t > 1e-12:
                t /= 2
        y = y + t * step
    # (G y)_i y_i^p / c_i carries a rounding error of about T eps max|y| y_i^p / c_i (large only for nearly
    # dependent gradients, where y grows like 1 / sqrt(ridge))
    attainable = 10 * len(y) * torch.finfo(y.dtype).eps * y.max().item() * (y**p / c).max().item()
    warn_unless_optimal(owner, "Newton solve", residual(y), tol=max(KKT_TOL, attainable))
    return y / d


# --- closed forms and the methods' own iterations ---------------------------------------------------------------


def pcgrad_projection(gram: Tensor, generator: torch.Generator) -> Tensor:
    """PCGrad's projected gradients as rows of coefficients over the original gradients (Yu et al. 2020).

    For each task ``i``, the other tasks ``j`` are visited in random order and, when
    ``<g_i^PC, g_j> < 0``, ``g_i^PC -= <g_i^PC, g_j> / |g_j|^2 * g_j``. Every ``g_i^PC`` stays a linear
    combination of the original gradients, so its coefficients ``C[i]`` (``g_i^PC = sum_k C[i, k] g_k``) and
    all inner products follow from the Gram matrix alone.

    Args:
        gram: T x T Gram matrix (positive diagonal).
        generator: random source of the task orders.

    Returns:
        The T x T coefficient matrix ``C``; the PCGrad direction is ``sum_i g_i^PC``, i.e. weights ``C.sum(0)``.
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

    ``alpha_{2:T} = g_1 U^T (D U^T)^{-1}`` with rows ``D_i = g_1 - g_i`` and ``U_i = u_1 - u_i``; all the inner
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
    """Aligned-MTL's T x T alignment matrix ``B`` (Senushkin et al. 2023).

    With ``M = V diag(lambda) V^T`` (eigenvalues above ``max(lambda) * T * eps_float32`` kept, as in the authors'
    code), ``B = V diag(sigma / sqrt(lambda)) V^T`` where ``sigma`` is the smallest singular value
    (``scale_mode="min"``), the median one, or the root mean square one. The aligned gradients ``G B`` have
    orthogonal, equal-norm columns (condition number 1); the update is their sum, i.e. weights ``B.sum(1)``.
    """
    eigvals, eigvecs = torch.linalg.eigh(gram)
    keep = eigvals > eigvals.max() * gram.shape[0] * torch.finfo(torch.float32).eps
    eigvals, eigvecs = eigvals[keep], eigvecs[:, keep]
    sigma = {"min": eigvals.min(), "median": eigvals.median(), "rmse": eigvals.mean()}[scale_mode].sqrt()
    return eigvecs @ torch.diag(sigma / eigvals.sqrt()) @ eigvecs.T


def gradvac_coefficients(gram: Tensor, targets: Tensor, beta: float, generator: torch.Generator) -> Tensor:
    """GradVac's corrected gradients as rows of coefficients over the original ones (Wang et al. 2021), updating
    the cosine targets ``targets`` (T x T, the EMA ``phi_hat``) in place.

    For each task ``i`` the others ``j`` are visited in random order; with ``phi`` the cosine between the corrected
    ``g_i`` and ``g_j``, when ``phi < phi_hat_ij`` the corrected gradient gains
    ``|g_i| (phi_hat sqrt(1 - phi^2) - phi sqrt(1 - phi_hat^2)) / (|g_j| sqrt(1 - phi_hat^2)) g_j``, which raises
    the cosine to ``phi_hat``; then ``phi_hat_ij <- (1 - beta) phi_hat_ij + beta phi``. Every quantity follows from
    the Gram matrix (as in torchjd); the norms and cosines need no epsilon (the driver passes active tasks only).
    """
    k = gram.shape[0]
    coef = torch.eye(k, dtype=gram.dtype)
    norms = gram.diagonal().sqrt()
    for i in range(k):
        others = [j for j in range(k) if j != i]
        for j in (others[n] for n in torch.randperm(len(others), generator=generator).tolist()):
            products = coef[i] @ gram
            norm_i = (products @ coef[i]).clamp_min(0.0).sqrt()
            phi = (products[j] / (norm_i * norms[j])).clamp(-1.0, 1.0)
            target = targets[i, j]
            if phi < target:
                sine, target_sine = (1.0 - phi**2).sqrt(), (1.0 - target**2).clamp_min(torch.finfo(gram.dtype).tiny).sqrt()
                coef[i, j] += norm_i * (target * sine - phi * target_sine) / (norms[j] * target_sine)
            targets[i, j] = (1.0 - beta) * target + beta * phi
    return coef


def config_coefficients(gram: Tensor) -> Tensor:
    """ConFIG's update as coefficients over the task gradients (Liu, Chu & Thuerey 2025, Eq. 2).

    ``g_u = U^+ 1`` (``U``: the unit gradients as rows) normalised, times ``sum_i <g_i, g_u>``. Since
    ``U^+ = U^T (U U^T)^+`` and ``U U^T`` is the unit-diagonal Gram matrix ``C``, ``g_u`` is ``J^T D^-1 C^+ 1``,
    and the whole update follows from ``M``. Eigenvalues of ``C`` below ``T eps_float32`` times the largest are
    treated as zero, like the pseudo-inverse of a float32 matrix.
    """
    cosines, d = unit_diagonal(gram)
    eigvals, eigvecs = torch.linalg.eigh(cosines)
    keep = eigvals > eigvals.max() * gram.shape[0] * torch.finfo(torch.float32).eps
    inverse = eigvecs[:, keep] @ torch.diag(1.0 / eigvals[keep]) @ eigvecs[:, keep].T
    c = (inverse @ torch.ones(len(d), dtype=gram.dtype)) / d
    return c * (gram @ c).sum() / (c @ gram @ c)


def pcd_multipliers(gram: Tensor, tau: Tensor, *, owner: str) -> Tensor | None:
    """The KKT multipliers ``mu >= 0`` of Priority-Constrained Descent's program (torchjd; "Not All Objectives Are
    Born Equal", TMLR 2026): ``min_d |d - g_1|^2 / 2`` s.t. ``<g_j, d> >= tau_j |g_j|^2`` for the secondary tasks
    ``j``, whose solution is ``d = g_1 + sum_j mu_j g_j``.

    The dual ``min_{mu >= 0} mu^T M_s mu / 2 - b^T mu`` with ``b = tau diag(M_s) - M[1:, 0]`` (``M_s`` the secondary
    block) is solved exactly by :func:`solve_qp`; None when it is unbounded, i.e. the constraints are infeasible.
    """
    block = gram[1:, 1:]
    if block.numel() == 0:
        return torch.zeros(0, dtype=gram.dtype)
    return solve_qp(block, gram[1:, 0] - tau * block.diagonal(), simplex=False, owner=owner)


def project_to_simplex(v: Tensor) -> Tensor:
    """Euclidean projection of ``v`` onto the probability simplex (sort-based, Duchi et al. 2008)."""
    u, _ = torch.sort(v, descending=True)
    css = torch.cumsum(u, 0) - 1.0
    ind = torch.arange(1, v.numel() + 1, dtype=v.dtype)
    rho = int(torch.nonzero(u - css / ind > 0)[-1])
    return torch.clamp(v - css[rho] / (rho + 1), min=0.0)


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

"""Brute-force references shared by the weighting tests: exact answers by enumeration, never by our solvers."""

from __future__ import annotations

import itertools

import torch
from torch import Tensor


def exact_min_norm(gram: Tensor) -> Tensor:
    """Brute force: the best KKT solution over every face of the simplex."""
    k, best = gram.shape[0], None
    for r in range(1, k + 1):
        for face in itertools.combinations(range(k), r):
            idx = list(face)
            kkt = torch.zeros(r + 1, r + 1, dtype=gram.dtype)
            kkt[:r, :r], kkt[:r, r], kkt[r, :r] = gram[idx][:, idx], 1.0, 1.0
            rhs = torch.zeros(r + 1, dtype=gram.dtype)
            rhs[r] = 1.0
            x = torch.linalg.lstsq(kkt, rhs).solution[:r]
            if (x < -1e-12).any():
                continue
            w = torch.zeros(k, dtype=gram.dtype)
            w[idx] = x
            if best is None or w @ gram @ w < best @ gram @ best:
                best = w
    return best


def simplex_grid(k: int, n: int) -> Tensor:
    points = [p for p in itertools.product(range(n + 1), repeat=k - 1) if sum(p) <= n]
    return torch.tensor([[*p, n - sum(p)] for p in points], dtype=torch.float64) / n


def pcgrad_vectors(grads: Tensor, generator: torch.Generator) -> Tensor:
    """PCGrad on the gradient vectors themselves (Yu et al. 2020, Algorithm 1): the projected gradients."""
    k = len(grads)
    projected = grads.clone()
    for i in range(k):
        for j in torch.randperm(k, generator=generator).tolist():
            dot = projected[i] @ grads[j]
            if j != i and dot < 0:
                projected[i] = projected[i] - dot / (grads[j] @ grads[j]) * grads[j]
    return projected

"""Boundary detection metrics of the BSDS protocol: ODS, OIS and AP of thinned, thresholded edge maps.

Each image's edge probabilities are cut at every threshold, thinned to one-pixel-wide lines (the ``thin`` operation
of MATLAB's ``bwmorph``, Guo & Hall 1989), and the thinned pixels are matched one to one with the true boundary
pixels lying within ``max_dist`` times the image diagonal. A predicted pixel is right when it is matched, a true pixel
found when it is matched; recall and precision follow from the counts (Martin et al. 2004, the BSDS benchmark):

- ``ods_f``: the F-measure at the best threshold for the whole split (optimal dataset scale), interpolated between
  neighbouring thresholds as the BSDS code does;
- ``ois_f``: the F-measure of the counts each image gives at its own best threshold (optimal image scale);
- ``ap``: average precision, ``sum over r in 0, 0.01, ..., 0.99 of max(precision at recall >= r) / 101``.

The matching is a maximum-cardinality bipartite matching (``scipy.sparse.csgraph.maximum_bipartite_matching``):
the BSDS ``correspondPixels`` solves a min-cost assignment whose outlier cost (100 times the distance limit) makes it
maximise the number of matched pairs first, so both count the same pairs. Every count is a fixed-size sum per
threshold, so the state sums over batches and processes exactly.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from multitask_deeplab.config.validation import check_number
from multitask_deeplab.metrics.base import Metrics, parse_thresholds

SCIPY_HINT = 'the edges metrics need scipy: pip install -e ".[mtl-benchmarks]"'

_NEIGHBOURS = ((0, 1), (-1, 1), (-1, 0), (-1, -1), (0, -1), (1, -1), (1, 0), (1, 1))
"""(dy, dx) of the neighbours x1 .. x8 of Guo & Hall: east first, then counter-clockwise."""


@functools.cache
def _deletion_tables() -> tuple[np.ndarray, np.ndarray]:
    """Which 8-neighbourhoods (bit k set when neighbour x_{k+1} is on) delete the centre in each sub-iteration.

    Guo & Hall's conditions: G1, exactly one 4-connected run of neighbours is broken (the crossing number is 1);
    G2, 2 <= min(n1, n2) <= 3; G3 in the first sub-iteration, G3' in the second.
    """
    codes = np.arange(256)

    def x(i: int) -> np.ndarray:
        return (codes >> ((i - 1) % 8)) & 1

    g1 = sum((1 - x(2 * i - 1)) & (x(2 * i) | x(2 * i + 1)) for i in range(1, 5)) == 1
    n1 = sum(x(2 * k - 1) | x(2 * k) for k in range(1, 5))
    n2 = sum(x(2 * k) | x(2 * k + 1) for k in range(1, 5))
    g2 = (np.minimum(n1, n2) >= 2) & (np.minimum(n1, n2) <= 3)
    g3 = ((x(2) | x(3) | (1 - x(8))) & x(1)) == 0
    g3_prime = ((x(6) | x(7) | (1 - x(4))) & x(5)) == 0
    return g1 & g2 & g3, g1 & g2 & g3_prime


def _neighbour_codes(masks: torch.Tensor) -> torch.Tensor:
    """``B x H x W`` 8-neighbourhood codes (0 .. 255) of boolean masks; pixels outside the image are off."""
    padded = F.pad(masks.to(torch.uint8), (1, 1, 1, 1))
    height, width = masks.shape[-2:]
    codes = torch.zeros_like(masks, dtype=torch.uint8)
    for bit, (dy, dx) in enumerate(_NEIGHBOURS):
        codes |= padded[..., 1 + dy : 1 + dy + height, 1 + dx : 1 + dx + width] << bit
    return codes


def thin(masks: torch.Tensor) -> torch.Tensor:
    """Morphological thinning of ``... x H x W`` boolean masks to lines one pixel wide (``bwmorph(m, 'thin', Inf)``).

    Both sub-iterations run in turn until a whole pass removes nothing from a mask; each mask of the batch gets
    exactly the result it would get alone (masks that are done leave the working set).
    """
    tables = [torch.from_numpy(table).to(masks.device) for table in _deletion_tables()]
    shape = masks.shape
    result = masks.reshape(-1, *shape[-2:]).bool().clone()
    active = torch.arange(len(result), device=masks.device)
    while len(active):
        current = before = result[active]
        for table in tables:
            current = current & ~table[_neighbour_codes(current).long()]
        result[active] = current
        active = active[(current != before).flatten(1).any(1)]
    return result.reshape(shape)


def _disk_offsets(radius: float) -> np.ndarray:
    """``K x 2`` integer (dy, dx) offsets with ``dy^2 + dx^2 <= radius^2``, as the BSDS code tests them."""
    reach = math.ceil(radius)
    steps = np.arange(-reach, reach + 1)
    dy, dx = np.meshgrid(steps, steps, indexing="ij")
    inside = dy**2 + dx**2 <= radius * radius
    return np.stack([dy[inside], dx[inside]], axis=1)


def matched_counts(predicted: np.ndarray, truth: np.ndarray, max_dist: float) -> np.ndarray:
    """Matched pixel pairs between each of ``T x H x W`` boolean predictions and one ``H x W`` boolean truth.

    Args:
        predicted: Thinned predicted boundaries, one map per threshold.
        truth: The true boundaries.
        max_dist: Largest matching distance as a share of the image diagonal.

    Returns:
        ``T`` int64 counts of the maximum one-to-one matching between predicted and true pixels at most
        ``max_dist * diagonal`` pixels apart.
    """
    try:
        from scipy.sparse import csr_matrix
        from scipy.sparse.csgraph import maximum_bipartite_matching
    except ImportError as error:
        raise ValueError(SCIPY_HINT) from error
    counts = np.zeros(len(predicted), dtype=np.int64)
    true_y, true_x = np.nonzero(truth)
    level, ys, xs = np.nonzero(predicted)
    if not len(true_y) or not len(ys):
        return counts
    height, width = truth.shape
    true_id = np.full(truth.shape, -1, dtype=np.int64)
    true_id[true_y, true_x] = np.arange(len(true_y))
    rows, cols = [], []
    for dy, dx in _disk_offsets(max_dist * math.hypot(height, width)):
        y, x = ys + dy, xs + dx
        inside = np.flatnonzero((y >= 0) & (y < height) & (x >= 0) & (x < width))
        found = true_id[y[inside], x[inside]]
        rows.append(inside[found >= 0])
        cols.append(found[found >= 0])
    rows, cols = np.concatenate(rows), np.concatenate(cols)
    starts = np.searchsorted(level, np.arange(len(predicted) + 1))  # points are sorted by threshold level
    for t in range(len(predicted)):
        if starts[t] == starts[t + 1]:
            continue
        edges = (rows >= starts[t]) & (rows < starts[t + 1])
        graph = csr_matrix(
            (np.ones(int(edges.sum()), dtype=np.int8), (rows[edges] - starts[t], cols[edges])),
            shape=(int(starts[t + 1] - starts[t]), len(true_y)),
        )
        counts[t] = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
    return counts


def f_measure(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """``2PR / (P + R)``, 0 where both are 0."""
    total = precision + recall
    return 2.0 * precision * recall / (total + (total == 0))


def _rates(matched: np.ndarray, total: np.ndarray) -> np.ndarray:
    """``matched / total``, 0 where ``total`` is 0 (the BSDS convention for recall and precision)."""
    return matched / (total + (total == 0))


class EdgeMetrics(Metrics):
    """ODS, OIS and AP of boundary maps (see the module docstring), plus the ODS threshold, precision and recall.

    A pixel is predicted at threshold ``t`` when its probability is ``>= t``. Target pixels marked ``ignore_value``
    neither count as boundaries nor let a prediction count. An image without any true boundary adds its
    predictions as false positives (at the first threshold to its OIS counts, as pyEdgeEval does).

    Args:
        max_dist: Matching distance as a share of the image diagonal: 0.0075 for BSDS and PASCAL-Context, 0.011
            for NYUD-v2 (the papers' ``maxDist``).
        thresholds: How many evenly spaced thresholds (99: 0.01 .. 0.99), or a list of them.
        thin: Thin the thresholded predictions first (the protocol does; off only for maps that are already thin).
        ignore_value: The target value of unknown pixels.
    """

    HIGHER_IS_BETTER = {
        "ods_f": True, "ods_precision": True, "ods_recall": True, "ods_threshold": True, "ois_f": True, "ap": True,
    }  # fmt: skip

    def __init__(self, *, max_dist: float = 0.0075, thresholds: int | Sequence[float] = 99, thin: bool = True,
                 ignore_value: float = 255.0) -> None:
        self.max_dist = check_number("edges metrics", "max_dist", max_dist, low=0.0, high=1.0, low_open=True)
        self.thresholds = parse_thresholds("edges metrics", thresholds)
        if not isinstance(thin, bool):
            raise ValueError(f"edges metrics thin must be true or false, got {thin!r}")
        self.thin, self.ignore_value = thin, ignore_value
        super().__init__()

    def empty_state(self) -> dict[str, torch.Tensor]:
        count = len(self.thresholds)
        per_threshold = {name: torch.zeros(count, dtype=torch.int64) for name in ("matched", "predicted", "true")}
        best = {f"best_{name}": torch.zeros((), dtype=torch.int64) for name in ("matched", "predicted", "true")}
        return {**per_threshold, **best, "images": torch.zeros((), dtype=torch.int64)}

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Adds one batch.

        Args:
            pred: ``B x 1 x H x W`` boundary probabilities.
            target: ``B x 1 x H x W`` boundaries (1), background (0) and ``ignore_value`` where unknown.
        """
        if pred.shape != target.shape or pred.dim() != 4 or pred.shape[1] != 1:
            raise ValueError(f"edges metrics need B x 1 x H x W pred and target, got {tuple(pred.shape)} and {tuple(target.shape)}")
        valid = target != self.ignore_value
        truth = (valid & (target >= 0.5))[:, 0].cpu().numpy()
        levels = torch.tensor(self.thresholds, device=pred.device, dtype=torch.float32).view(-1, 1, 1)
        for image in range(pred.shape[0]):
            probabilities = pred[image, 0].float().masked_fill(~valid[image, 0], 0.0)
            predicted = probabilities[None] >= levels
            if self.thin:
                predicted = thin(predicted)
            predicted = predicted.cpu().numpy()
            matched = matched_counts(predicted, truth[image], self.max_dist)
            counts = {
                "matched": matched,
                "predicted": predicted.reshape(len(levels), -1).sum(1),
                "true": np.full(len(levels), int(truth[image].sum())),
            }
            f = f_measure(_rates(matched, counts["predicted"]), _rates(matched, counts["true"]))
            best = int(np.argmax(f))
            self.accumulate(
                **{name: torch.from_numpy(np.asarray(value, dtype=np.int64)) for name, value in counts.items()},
                **{f"best_{name}": torch.tensor(int(value[best])) for name, value in counts.items()},
                images=torch.tensor(1),
            )

    def compute(self) -> dict[str, float]:
        if int(self.state["images"]) == 0:
            return dict.fromkeys(self.HIGHER_IS_BETTER, math.nan)
        matched, predicted, true = (self.state[name].cpu().double().numpy() for name in ("matched", "predicted", "true"))
        precision, recall = _rates(matched, predicted), _rates(matched, true)
        threshold, ods_precision, ods_recall, ods_f = _interpolated_best(np.array(self.thresholds), precision, recall)
        best = {name: float(self.state[f"best_{name}"]) for name in ("matched", "predicted", "true")}
        ois_precision = best["matched"] / (best["predicted"] + (best["predicted"] == 0))
        ois_recall = best["matched"] / (best["true"] + (best["true"] == 0))
        ap = sum(np.max(precision[recall >= r], initial=0.0) / 101 for r in np.arange(0.0, 1.0, 0.01))
        return {
            "ods_f": float(ods_f),
            "ods_precision": float(ods_precision),
            "ods_recall": float(ods_recall),
            "ods_threshold": float(threshold),
            "ois_f": float(f_measure(np.float64(ois_precision), np.float64(ois_recall))),
            "ap": float(ap),
        }

    def describe(self) -> str:
        return (
            f"BSDS boundary matching within {self.max_dist:g} x the image diagonal, {len(self.thresholds)} thresholds"
            f"{', predictions thinned' if self.thin else ', no thinning'}; ODS/OIS/AP as pyEdgeEval computes them"
        )


def _interpolated_best(thresholds: np.ndarray, precision: np.ndarray, recall: np.ndarray) -> tuple[float, float, float, float]:
    """The best (threshold, precision, recall, F) on the precision-recall curve, each segment between neighbouring
    thresholds sampled at 101 points (the BSDS ``collect_eval_bdry`` interpolation); the first best wins."""
    weight = np.linspace(0.0, 1.0, num=101)[None, :]

    def along(values: np.ndarray) -> np.ndarray:
        segments = values[1:, None] * weight + values[:-1, None] * (1 - weight)
        return np.concatenate([values[:1], segments.ravel()])

    t, p, r = along(thresholds), along(precision), along(recall)
    f = f_measure(p, r)
    best = int(np.argmax(f))
    return t[best], p[best], r[best], f[best]

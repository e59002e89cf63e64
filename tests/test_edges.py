"""Edge detection: thinning, boundary matching, ODS / OIS / AP against hand-made maps and against pyEdgeEval, the
label-map boundaries of PASCAL-Context against OpenCV + scikit-image, and the balanced BCE against the formula of
Multi-Task-Learning-PyTorch (written from logits, as there)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from multitask_deeplab.data.boundaries import label_boundaries
from multitask_deeplab.losses import LOSSES
from multitask_deeplab.metrics.edges import EdgeMetrics, matched_counts, thin
from multitask_deeplab.tasks import DepthTask, EdgesTask


def edge_maps(*lines: tuple[int, slice, float], size: int = 32) -> torch.Tensor:
    """A 1 x 1 x size x size map with value v on column c over the rows of each (c, rows, v)."""
    image = torch.zeros(1, 1, size, size)
    for column, rows, value in lines:
        image[0, 0, rows, column] = value
    return image


def result(pred: torch.Tensor, target: torch.Tensor, **options) -> dict[str, float]:
    metrics = EdgeMetrics(**options)
    metrics.update(pred, target)
    return metrics.compute()


# ------------------------------------------------------------------------------------------------- thinning
def test_thinning_makes_bars_one_pixel_wide_and_keeps_lines_and_squares():
    bar = torch.zeros(9, 12, dtype=torch.bool)
    bar[3:6, 1:11] = True  # 3 pixels thick
    thinned = thin(bar)
    assert thinned.sum(0).max() == 1 and thinned.any(0)[2:10].all(), "one pixel per column along the bar"
    line = torch.zeros(7, 7, dtype=torch.bool)
    line[3, 1:6] = True
    assert torch.equal(thin(line), line), "a one-pixel line is already thin"
    square = torch.zeros(4, 4, dtype=torch.bool)
    square[1:3, 1:3] = True
    assert thin(square).sum() >= 1, "thinning never deletes a whole component"


def test_thinning_equals_scikit_image_and_matlab_bwmorph():
    skimage = pytest.importorskip("skimage.morphology")
    rng = np.random.default_rng(0)
    masks = [rng.random((int(h), int(w))) < rng.uniform(0.2, 0.8) for h, w in rng.integers(5, 30, (40, 2))]
    for mask in masks:
        assert np.array_equal(thin(torch.from_numpy(mask)).numpy(), skimage.thin(mask))
    batch = np.stack([mask[:5, :5] for mask in masks])  # a batch gives each mask its own result
    assert np.array_equal(thin(torch.from_numpy(batch)).numpy(), np.stack([skimage.thin(m) for m in batch]))


# ------------------------------------------------------------------------------------------------- matching
def test_matching_pairs_pixels_one_to_one_within_the_distance():
    truth = np.zeros((10, 10), dtype=bool)
    truth[5, 2:8] = True  # 6 pixels
    shifted = np.roll(truth, 1, axis=0)
    two_per_truth = truth | shifted
    diagonal = np.hypot(10, 10)
    counts = matched_counts(np.stack([truth, shifted, two_per_truth]), truth, max_dist=1.0 / diagonal)
    assert counts.tolist() == [6, 6, 6], "a shift of 1 px is within 1 px; each true pixel matches once"
    assert matched_counts(shifted[None], truth, max_dist=0.99 / diagonal).tolist() == [0]


def test_matching_finds_at_least_the_pairs_of_the_bsds_matcher_and_rarely_more():
    correspond = pytest.importorskip("pyEdgeEval._lib").correspond_pixels
    rng = np.random.default_rng(1)
    ours = reference = 0
    for _ in range(40):
        height, width = rng.integers(10, 40, 2)
        pred, truth = rng.random((height, width)) < 0.15, rng.random((height, width)) < 0.15
        max_dist = rng.uniform(0.02, 0.1)
        matched_pred, matched_truth, _, _ = correspond(pred, truth, max_dist=max_dist)
        count = matched_counts(pred[None], truth, max_dist)[0]
        assert (matched_pred > 0).sum() == (matched_truth > 0).sum() <= count  # ours is a maximum matching
        ours, reference = ours + count, reference + (matched_pred > 0).sum()
    assert ours <= 1.01 * reference, "the CSA assignment of the BSDS code misses at most a few pairs in such clutter"


# ------------------------------------------------------------------------------------------------- known answers
def test_a_perfect_map_scores_one_and_ap_follows_pyedgeevals_formula():
    truth = edge_maps((10, slice(2, 30), 1.0))
    scores = result(truth * 0.9, truth, thresholds=9)
    assert scores["ods_f"] == scores["ois_f"] == 1.0
    assert scores["ap"] == pytest.approx(100 / 101)  # sum over r = 0 .. 0.99 of max precision, / 101


def test_a_half_found_line_has_f_two_thirds_at_every_threshold_it_survives():
    truth = edge_maps((10, slice(2, 30), 1.0))
    half = edge_maps((10, slice(2, 16), 0.8))  # 14 of 28 pixels, all right
    scores = result(half, truth, thresholds=9)
    assert scores["ods_precision"] == 1.0 and scores["ods_recall"] == 0.5
    assert scores["ods_f"] == pytest.approx(2 / 3) and scores["ois_f"] == pytest.approx(2 / 3)
    assert scores["ods_threshold"] <= 0.8


def test_the_localisation_tolerance_is_a_share_of_the_diagonal():
    truth = edge_maps((10, slice(2, 30), 1.0))
    shifted = edge_maps((12, slice(2, 30), 0.9))  # 2 px off; the diagonal is 45.25 px
    assert result(shifted, truth, max_dist=0.0075, thresholds=3)["ods_f"] == 0.0  # 0.34 px
    assert result(shifted, truth, max_dist=0.05, thresholds=3)["ods_f"] == 1.0  # 2.26 px


def test_ods_pools_the_split_and_ois_takes_each_images_best_threshold():
    truth_a, truth_b = edge_maps((10, slice(2, 30), 1.0)), edge_maps((20, slice(2, 22), 1.0))  # 28 and 20 pixels
    pred_a = edge_maps((10, slice(2, 30), 0.8))
    pred_b = edge_maps((5, slice(0, 32), 0.3)) + edge_maps((20, slice(2, 12), 0.2))  # 32 false, 10 right but weak
    metrics = EdgeMetrics(thresholds=[0.1, 0.25, 0.5])
    metrics.update(torch.cat([pred_a, pred_b]), torch.cat([truth_a, truth_b]))
    scores = metrics.compute()
    # pooled counts (matched, predicted, true): t = 0.1: (38, 70, 48); 0.25: (28, 60, 48); 0.5: (28, 28, 48); recall
    # stays at 28 / 48 from 0.25 to 0.5 while precision rises, so the interpolated best is the end point t = 0.5
    assert scores["ods_f"] == pytest.approx(2 * 28 / (28 + 48)) and scores["ods_threshold"] == 0.5
    # image a is perfect at 0.1; image b's best is 0.1 (10 of 20 found, 10 of 42 right): OIS pools those counts
    assert scores["ois_f"] == pytest.approx(2 * (28 + 10) / ((28 + 42) + (28 + 20)))


def test_unknown_pixels_neither_count_as_boundaries_nor_as_false_positives():
    truth = edge_maps((10, slice(2, 30), 1.0))
    truth[0, 0, :, 20:] = 255.0
    pred = edge_maps((10, slice(2, 30), 0.9)) + edge_maps((25, slice(0, 32), 0.9))  # the second line lies in unknown
    assert result(pred, truth, thresholds=3)["ods_f"] == 1.0


def test_the_state_is_fixed_size_sums_so_halves_add_up_to_the_whole():
    torch.manual_seed(0)
    pred, truth = torch.rand(4, 1, 24, 24), (torch.rand(4, 1, 24, 24) < 0.1).float()
    whole, first, second = (EdgeMetrics(thresholds=5) for _ in range(3))
    whole.update(pred, truth)
    first.update(pred[:1], truth[:1])
    second.update(pred[1:], truth[1:])
    for name in first.state:  # what all_reduce does over processes
        first.state[name] = first.state[name] + second.state[name]
    assert first.compute() == whole.compute()
    assert all(value.numel() in (1, 5) for value in whole.state.values())


def test_equals_pyedgeeval_on_soft_maps_up_to_its_thinning_and_matching():
    pytest.importorskip("cv2")  # pyEdgeEval's preprocessing imports OpenCV
    evaluate = pytest.importorskip("pyEdgeEval.common.binary_label.evaluate_boundaries").evaluate_boundaries_threshold
    calculate = pytest.importorskip("pyEdgeEval.common.binary_label.calculate_metrics").calculate_metrics
    from scipy import ndimage

    rng = np.random.default_rng(2)
    preds, truths = [], []
    for _ in range(4):
        labels = np.kron(rng.integers(0, 4, (4, 5)), np.ones((10, 10), dtype=np.int64))
        truths.append(label_boundaries(torch.from_numpy(labels)).numpy().astype(bool))
        moved = label_boundaries(torch.from_numpy(np.roll(labels, rng.integers(-2, 3, 2), (0, 1)))).numpy()
        preds.append(np.clip(ndimage.gaussian_filter(moved, 1.0) * 2.5 + rng.normal(0, 0.05, moved.shape), 0, 1).astype(np.float32))
    thresholds, max_dist = 19, 0.02
    metrics = EdgeMetrics(max_dist=max_dist, thresholds=thresholds)
    for pred, truth in zip(preds, truths):
        metrics.update(torch.from_numpy(pred)[None, None], torch.from_numpy(truth).float()[None, None])
    ours = metrics.compute()
    levels = np.linspace(1 / (thresholds + 1), 1 - 1 / (thresholds + 1), thresholds)
    samples = [{"name": str(i), "pred": p, "gt": t} for i, (p, t) in enumerate(zip(preds, truths))]
    _, _, ref = calculate(lambda s: evaluate(levels, s["pred"], s["gt"], max_dist=max_dist), thresholds, samples, nproc=1)
    for name, key in (("ods_f", "ODS_f1"), ("ois_f", "OIS_f1"), ("ap", "AP")):
        assert ours[name] == pytest.approx(float(ref[key]), abs=0.01), name


# ------------------------------------------------------------------------------------------------- label boundaries
def test_label_boundaries_are_the_thinned_laplacian_of_pascal_context():
    cv2 = pytest.importorskip("cv2")
    skimage = pytest.importorskip("skimage.morphology")
    rng = np.random.default_rng(3)
    for _ in range(5):
        labels = np.kron(rng.integers(0, 459, (5, 6)), np.ones((7, 5), dtype=np.int64)).astype(np.uint16)
        labels[rng.random(labels.shape) < 0.02] = 7
        expected = skimage.thin(np.abs(cv2.Laplacian(labels, cv2.CV_64F)) > 0)
        assert np.array_equal(label_boundaries(torch.from_numpy(labels.astype(np.int64))).numpy().astype(bool), expected)


def test_label_boundaries_of_two_halves_are_one_line():
    labels = torch.zeros(8, 10, dtype=torch.int64)
    labels[:, 5:] = 3
    edges = label_boundaries(labels)
    assert edges[:, :4].sum() == 0 and edges[:, 6:].sum() == 0, "only the two columns either side of the change"
    assert edges[:, 4:6].sum(1).max() == 1 and edges[1:-1, 4:6].sum() == 6, "thinned to one pixel a row"


# ------------------------------------------------------------------------------------------------- loss
def mtl_balanced_bce(logits: torch.Tensor, label: torch.Tensor, pos_weight: float | None) -> torch.Tensor:
    """Multi-Task-Learning-PyTorch's BalancedCrossEntropyLoss (size_average), on logits."""
    labels = (label >= 0.5).float()
    w = pos_weight if pos_weight is not None else (1 - labels).sum() / labels.numel()
    positive = (logits >= 0).float()
    loss = logits * (labels - positive) - torch.log(1 + torch.exp(logits - 2 * logits * positive))
    return (w * -(labels * loss).sum() + (1 - w) * -((1 - labels) * loss).sum()) / labels.numel()


@pytest.mark.parametrize("pos_weight", [None, 0.95])
def test_balanced_bce_is_multi_task_learning_pytorchs(pos_weight):
    logits = torch.randn(2, 1, 6, 7) * 3
    label = (torch.rand(2, 1, 6, 7) < 0.2).float()
    loss = LOSSES.build({"type": "balanced_bce", "pos_weight": pos_weight})
    assert loss(torch.sigmoid(logits), label) == pytest.approx(float(mtl_balanced_bce(logits, label, pos_weight)), rel=1e-5)


def test_balanced_bce_skips_unknown_pixels_and_is_an_exact_zero_without_any():
    loss = LOSSES.build({"type": "balanced_bce", "pos_weight": 0.9})
    pred = torch.rand(1, 1, 4, 4, requires_grad=True)
    label = (torch.rand(1, 1, 4, 4) < 0.5).float()
    known = label.clone()
    known[..., :2] = 255.0
    expected = loss(pred[..., 2:], label[..., 2:])
    assert loss(pred, known).item() == pytest.approx(expected.item())
    zero = loss(pred, torch.full_like(label, 255.0))
    zero.backward()
    assert zero.item() == 0.0 and pred.grad is not None and not pred.grad.any()


def test_edges_kind_defaults_to_the_benchmark_loss_and_refuses_non_binary_targets():
    task = EdgesTask()
    assert task.default_loss == {"type": "balanced_bce", "pos_weight": 0.95} and task.primary_metric == "ods_f"
    assert isinstance(task.activation(), torch.nn.Sigmoid) and task.invalid_value == 255.0
    with pytest.raises(ValueError, match=r"img.png: edges values must be 0, 1 or 255 \(unknown\), got 0.5"):
        task.check_target(torch.full((1, 3, 3), 0.5), "img.png")
    with pytest.raises(ValueError, match="is a loss for BinaryMapTask tasks"):
        LOSSES.build({"type": "balanced_bce"}).check_task(DepthTask())

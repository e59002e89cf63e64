"""Evaluation protocols: saliency maxF / mIoU as ASTMT and ATRC compute them, human parts over the images that have
them, segmentation mIoU over present or all classes, depth with the Eigen crop, the cap and per-image averaging; and
the recipe's ``eval.protocol`` checked against each kind's ``metrics()`` signature."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.config.validation import RecipeError
from multitask_deeplab.engine.build import check_components
from multitask_deeplab.metrics import DepthMetrics, LabelledImagesMetrics, SaliencyMetrics, SegmentationMetrics
from multitask_deeplab.metrics.saliency import ASTMT_THRESHOLDS
from multitask_deeplab.tasks import HumanPartsTask, SaliencyTask


# ------------------------------------------------------------------------------------------------- saliency
def astmt_saliency(preds: list[np.ndarray], gts: list[np.ndarray], thresholds: list[float], beta_squared: float) -> tuple[float, float]:
    """ASTMT's eval_sal (jaccard and precision_recall of evaluation/jaccard.py), with >= for the threshold."""
    jaccards, precisions, recalls = [], [], []
    for pred, gt in zip(preds, gts):
        row_j, row_p, row_r = [], [], []
        for t in thresholds:
            mask, truth = pred >= t, gt.astype(bool)
            tp, fp, fn = (mask & truth).sum(), (mask & ~truth).sum(), (~mask & truth).sum()
            row_j.append(1.0 if not truth.any() and not mask.any() else (mask & truth).sum() / (mask | truth).sum())
            row_p.append(tp / (tp + fp + 1e-12))
            row_r.append(tp / (tp + fn + 1e-12))
        jaccards.append(row_j), precisions.append(row_p), recalls.append(row_r)
    p, r = np.mean(precisions, 0), np.mean(recalls, 0)
    f = (1 + beta_squared) * p * r / (beta_squared * p + r + 1e-12)
    return float(f.max()), float(np.mean(jaccards, 0).max())


@pytest.mark.parametrize("beta_squared", [0.3, 1.0])
def test_saliency_per_image_is_astmts(beta_squared):
    rng = np.random.default_rng(0)
    gts = [(rng.random((12, 14)) < q).astype(np.float32) for q in (0.3, 0.0, 0.6)]  # the second has no salient pixel
    preds = [np.clip(g * 0.6 + rng.random(g.shape) * 0.5, 0, 1).astype(np.float32) for g in gts]
    metrics = SaliencyMetrics(beta_squared=beta_squared)
    for pred, gt in zip(preds, gts):
        metrics.update(torch.from_numpy(pred)[None, None], torch.from_numpy(gt)[None, None])
    max_f, miou = astmt_saliency(preds, gts, ASTMT_THRESHOLDS, beta_squared)
    assert metrics.compute() == pytest.approx({"max_f": max_f, "miou": miou}, rel=1e-9)


def test_saliency_over_the_split_counts_pixels_as_the_atrc_meter():
    gt = torch.zeros(1, 1, 2, 5)
    gt[0, 0, 0] = 1.0  # 5 salient pixels
    pred = torch.tensor([[[[0.9, 0.9, 0.9, 0.2, 0.2], [0.9, 0.2, 0.2, 0.2, 0.2]]]])
    metrics = SaliencyMetrics(thresholds=[0.5], average="dataset")
    metrics.update(pred, gt)
    precision, recall = 3 / 4, 3 / 5
    expected = 1.3 * precision * recall / (0.3 * precision + recall)
    assert metrics.compute() == pytest.approx({"max_f": expected, "miou": 3 / 6})
    metrics.update(pred, torch.full_like(gt, 255.0))  # an unknown image changes nothing
    assert metrics.compute() == pytest.approx({"max_f": expected, "miou": 3 / 6})


def test_saliency_kind_and_the_thresholds_check():
    task = SaliencyTask()
    assert (task.target, task.primary_metric, task.default_loss) == ("saliency", "max_f", {"type": "balanced_bce"})
    assert SaliencyMetrics(thresholds=19).thresholds == pytest.approx([0.05 * k for k in range(1, 20)])
    with pytest.raises(ValueError, match="saliency metrics thresholds must be a non-empty increasing list"):
        SaliencyMetrics(thresholds=[0.5, 0.2])


# ------------------------------------------------------------------------------------------------- segmentation, parts
def test_miou_over_all_classes_counts_absent_ones_as_zero():
    target, pred = torch.tensor([[[0, 0, 1, 1]]]), torch.tensor([[[0, 0, 1, 0]]])
    present, everything = SegmentationMetrics(4), SegmentationMetrics(4, classes="all")
    for metrics in (present, everything):
        metrics.update(pred, target)
    # IoU class 0: 2/3, class 1: 1/2; classes 2 and 3 absent
    assert present.compute()["miou"] == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert everything.compute()["miou"] == pytest.approx((2 / 3 + 1 / 2) / 4)
    assert math.isnan(everything.compute()["iou/class_3"])
    with pytest.raises(ValueError, match="classes must be one of 'present', 'all'"):
        SegmentationMetrics(4, classes="al")


def test_human_parts_are_scored_on_the_images_that_have_them():
    task = HumanPartsTask()
    assert task.num_classes == 7 and task.class_names[1] == "head" and task.target == "human_parts"
    labelled = torch.tensor([[[0, 1, 2, 2]]])
    pred = torch.tensor([[[0, 1, 2, 1]]])
    nobody = torch.full((1, 1, 4), 255)
    metrics = task.metrics(classes="all")
    assert isinstance(metrics, LabelledImagesMetrics)
    metrics.update(torch.cat([pred, torch.zeros_like(pred)]), torch.cat([labelled, nobody]))
    scores = metrics.compute()
    assert scores["images"] == 1.0, "only the image with people counts"
    assert scores["miou"] == pytest.approx((1 + 1 / 2 + 1 / 2) / 7)  # background 1, head 1/2, torso 1/2, 4 parts absent


# ------------------------------------------------------------------------------------------------- depth
def test_the_eigen_crop_keeps_rows_45_to_471_and_columns_41_to_601_of_nyu():
    target = torch.full((1, 1, 480, 640), 2.0)
    pred = torch.full_like(target, 4.0)
    pred[..., 45:471, 41:601] = 2.0  # wrong only outside the crop
    cropped, whole = DepthMetrics(crop="eigen"), DepthMetrics()
    cropped.update(pred, target), whole.update(pred, target)
    assert cropped.compute()["abs_rel"] == 0.0 and cropped.state["count"] == 426 * 560
    assert whole.compute()["abs_rel"] == pytest.approx(1 - 426 * 560 / (480 * 640))


def test_the_cap_drops_far_targets_and_clamps_predictions():
    target = torch.tensor([[[[1.0, 12.0, 5.0]]]])
    pred = torch.tensor([[[[20.0, 1.0, 5.0]]]])
    capped = DepthMetrics(max_depth=10.0)
    capped.update(pred, target)
    assert capped.state["count"] == 2 and capped.compute()["abs_err"] == pytest.approx((10.0 - 1.0) / 2)


def test_per_image_averaging_weights_every_image_alike():
    target = torch.ones(2, 1, 2, 2)
    target[1, 0, 0] = 0.0  # the second image has 2 valid pixels, the first 4
    pred = target.clone() * 1.5
    pred[0] = 1.0  # the first image is exact, the second 50 % off
    per_pixel, per_image = DepthMetrics(), DepthMetrics(average="image")
    per_pixel.update(pred, target), per_image.update(pred, target)
    assert per_pixel.compute()["abs_rel"] == pytest.approx(0.5 * 2 / 6)
    assert per_image.compute()["abs_rel"] == pytest.approx((0.0 + 0.5) / 2)
    assert per_image.compute()["rmse"] == pytest.approx((0.0 + 0.5) / 2), "the mean of the images' roots"


# ------------------------------------------------------------------------------------------------- the recipe section
BASE = """
model: {backbone: resnet18}
tasks:
  seg: {kind: segmentation, num_classes: 3, head: {type: deeplabv3}}
  depth: {kind: depth, head: {type: deeplabv3}}
"""


@pytest.mark.parametrize(
    ("protocol", "message"),
    [
        ("{depth: {crp: eigen}}", "unknown key eval.protocol.depth.crp: did you mean eval.protocol.depth.crop?"),
        ("{dept: {crop: eigen}}", "eval.protocol.dept: no task 'dept' in tasks (seg, depth): did you mean depth?"),
        ("{seg: {max_dist: 0.01}}", "unknown key eval.protocol.seg.max_dist: the metrics of task kind 'segmentation' takes classes"),
    ],
)
def test_protocol_keys_are_checked_before_anything_is_built(protocol, message):
    recipe = recipe_module.loads(BASE + f"eval: {{protocol: {protocol}}}\n")
    with pytest.raises(RecipeError) as info:
        check_components(recipe)
    assert str(info.value) == message


def test_a_valid_protocol_reaches_the_metrics():
    from multitask_deeplab.engine.build import build_tasks
    from multitask_deeplab.engine.evaluate import build_metrics, protocol_lines

    recipe = recipe_module.loads(BASE + "eval: {protocol: {depth: {crop: eigen, max_depth: 10.0, average: image}, seg: {classes: all}}}\n")
    check_components(recipe)
    tasks = build_tasks(recipe)
    metrics = build_metrics(tasks, recipe.eval.protocol)
    assert (metrics["depth"].crop, metrics["depth"].max_depth, metrics["depth"].average, metrics["seg"].classes) == ("eigen", 10.0, "image", "all")
    lines = protocol_lines(tasks, recipe.eval.protocol)
    assert any("Eigen crop" in line and "per image" in line for line in lines) and any("all 3 classes" in line for line in lines)
    with pytest.raises(ValueError, match=r"eval.protocol.depth: depth metrics crop must be one of"):
        build_metrics(tasks, {"depth": {"crop": "garg"}})

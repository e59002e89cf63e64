import math
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from multitask_deeplab.metrics import DepthMetrics, NormalsMetrics, SegmentationMetrics

NAN = float("nan")
HALF_BIN = NormalsMetrics.BIN_WIDTH / 2 + 1e-9


def normals_map(*vectors: tuple[float, float, float]) -> torch.Tensor:
    """A 1 x 3 x 1 x N normals map."""
    return torch.tensor(vectors, dtype=torch.float32).T.reshape(1, 3, 1, -1)


# target / prediction on a 2 x 3 image; the 255 pixel is ignored.
SEG_TARGET = torch.tensor([[[0, 0, 1], [1, 2, 255]]])
SEG_PRED = torch.tensor([[[0, 1, 1], [1, 1, 0]]])


def test_segmentation_hand_computed():
    metrics = SegmentationMetrics(3, class_names=["sky", "road", "car"])
    metrics.update(SEG_PRED, SEG_TARGET)
    assert metrics.confusion.tolist() == [[1, 1, 0], [0, 2, 0], [0, 1, 0]]
    # IoU: sky 1 / 2, road 2 / 4, car 0 / 1; recall: 1/2, 2/2, 0/1; 3 of 5 pixels right
    assert metrics.compute() == pytest.approx(
        {"miou": 1 / 3, "pixel_acc": 3 / 5, "mean_acc": 0.5, "iou/sky": 0.5, "iou/road": 0.5, "iou/car": 0.0}
    )


def test_segmentation_logits_match_the_class_map_and_absent_classes_leave_the_mean():
    metrics = SegmentationMetrics(4)
    metrics.update(F.one_hot(SEG_PRED, 4).permute(0, 3, 1, 2).float(), SEG_TARGET)
    result = metrics.compute()
    # class 3 is neither in the target nor predicted: NaN IoU, not part of the mean
    assert math.isnan(result.pop("iou/class_3"))
    assert result == pytest.approx({"miou": 1 / 3, "pixel_acc": 3 / 5, "mean_acc": 0.5,
                                    "iou/class_0": 0.5, "iou/class_1": 0.5, "iou/class_2": 0.0})


def test_segmentation_ignores_ignore_pixels_whatever_their_prediction():
    metrics = SegmentationMetrics(3, ignore_index=-1)
    metrics.update(torch.tensor([[0, 1, 2]]), torch.tensor([[0, -1, -1]]))
    assert metrics.confusion.sum() == 1
    assert metrics.compute()["miou"] == 1.0


def test_segmentation_two_batches_equal_their_concatenation():
    pred, target = torch.randn(4, 5, 6, 7), torch.randint(0, 5, (4, 6, 7))
    target[target == 4] = 255
    whole, parts = SegmentationMetrics(5), SegmentationMetrics(5)
    whole.update(pred, target)
    parts.update(pred[:1], target[:1])
    parts.update(pred[1:], target[1:])
    assert torch.equal(whole.confusion, parts.confusion)
    assert whole.compute() == parts.compute()
    whole.reset()
    assert whole.confusion.sum() == 0 and math.isnan(whole.compute()["miou"])


def test_segmentation_rejects_bad_arguments_and_inputs():
    with pytest.raises(ValueError, match="ignore_index outside \\[0, 3\\), got 0"):
        SegmentationMetrics(3, ignore_index=0)
    with pytest.raises(ValueError, match="num_classes >= 2, got 1"):
        SegmentationMetrics(1)
    with pytest.raises(ValueError, match="3 distinct class_names, got \\['a', 'a', 'b'\\]"):
        SegmentationMetrics(3, class_names=["a", "a", "b"])
    metrics = SegmentationMetrics(3)
    with pytest.raises(ValueError, match="target holds class 5, outside \\[0, 3\\)"):
        metrics.update(torch.tensor([[0, 1]]), torch.tensor([[5, 1]]))
    with pytest.raises(ValueError, match="expect 3 logit channels, got 4"):
        metrics.update(torch.randn(1, 4, 2, 2), torch.zeros(1, 2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="does not match target"):
        metrics.update(torch.zeros(1, 2, 3, dtype=torch.long), torch.zeros(1, 2, 2, dtype=torch.long))


def test_higher_is_better_covers_every_returned_name():
    for metrics, args in (
        (SegmentationMetrics(3, class_names=["a", "b", "c"]), (SEG_PRED, SEG_TARGET)),
        (DepthMetrics(), (torch.ones(1, 1, 2, 2), torch.ones(1, 1, 2, 2))),
        (NormalsMetrics(), (normals_map((1.0, 0.0, 0.0)), normals_map((1.0, 0.0, 0.0)))),
    ):
        metrics.update(*args)
        names = metrics.compute()
        assert all(isinstance(metrics.higher_is_better(name), bool) for name in names)
    assert SegmentationMetrics.higher_is_better("iou/road") is True
    assert DepthMetrics.higher_is_better("abs_rel") is False
    assert NormalsMetrics.higher_is_better("within_30") is True
    with pytest.raises(ValueError, match="DepthMetrics has no metric 'miou'; its metrics are abs_rel"):
        DepthMetrics.higher_is_better("miou")


def test_depth_hand_computed():
    pred = torch.tensor([1.1, 1.5, 8.0, 3.0, 3.0, 3.0]).reshape(1, 1, 2, 3)
    target = torch.tensor([1.0, 2.0, 4.0, 0.0, NAN, 1e-4]).reshape(1, 1, 2, 3)
    metrics = DepthMetrics()
    metrics.update(pred, target)
    # valid pixels (pred, target): (1.1, 1), (1.5, 2), (8, 4); errors 0.1, -0.5, 4; ratios 1.1, 4/3, 2
    log_ratio = [math.log(1.1), math.log(0.75), math.log(2.0)]
    expected = {
        "abs_rel": (0.1 + 0.25 + 1.0) / 3,
        "sq_rel": (0.01 + 0.125 + 4.0) / 3,
        "rmse": math.sqrt((0.01 + 0.25 + 16.0) / 3),
        "rmse_log": math.sqrt(sum(x * x for x in log_ratio) / 3),
        "log10": sum(abs(x) for x in log_ratio) / math.log(10) / 3,
        "delta1": 1 / 3,
        "delta2": 2 / 3,
        "delta3": 2 / 3,
        "abs_err": 4.6 / 3,
    }
    assert metrics.compute() == pytest.approx(expected)
    assert int(metrics.state["count"]) == 3


def test_depth_max_depth_excludes_far_targets_and_clamps_predictions():
    metrics = DepthMetrics(min_depth=0.5, max_depth=3.0)
    # target 4 is beyond max_depth; pred 10 is clamped to 3 and pred 0 to 0.5
    metrics.update(torch.tensor([[[[10.0, 0.0, 1.0]]]]), torch.tensor([[[[2.0, 1.0, 4.0]]]]))
    assert metrics.compute()["abs_err"] == pytest.approx((1.0 + 0.5) / 2)
    with pytest.raises(ValueError, match="max_depth must lie in \\(0.5, inf\\], got 0.1"):
        DepthMetrics(min_depth=0.5, max_depth=0.1)
    with pytest.raises(ValueError, match="min_depth must be a finite number, got nan"):
        DepthMetrics(min_depth=NAN)


def test_depth_is_pixel_weighted_over_batches():
    # image 1: one pixel off by 1; image 2: three exact pixels -> abs_err 1/4 (per-image averaging would give 1/2)
    metrics = DepthMetrics()
    metrics.update(torch.tensor([[[[2.0, 0.0]]]]), torch.tensor([[[[1.0, 0.0]]]]))
    metrics.update(torch.ones(1, 1, 1, 3), torch.ones(1, 1, 1, 3))
    assert metrics.compute()["abs_err"] == pytest.approx(0.25)
    whole, parts = DepthMetrics(), DepthMetrics()
    pred, target = torch.rand(4, 1, 5, 5) + 0.1, torch.rand(4, 1, 5, 5)
    target[target < 0.2] = 0
    whole.update(pred, target)
    parts.update(pred[:3], target[:3])
    parts.update(pred[3:], target[3:])
    assert whole.compute() == pytest.approx(parts.compute(), rel=1e-12)


def test_depth_without_valid_pixels_is_nan():
    metrics = DepthMetrics()
    metrics.update(torch.ones(1, 1, 2, 2), torch.zeros(1, 1, 2, 2))
    assert all(math.isnan(value) for value in metrics.compute().values())


def test_normals_hand_computed():
    c, s = math.cos(math.radians(20)), math.sin(math.radians(20))
    pred = normals_map((1, 0, 0), (0, 1, 0), (1, 1, 0), (2 * c, 2 * s, 0), (0, 0, 1))
    target = normals_map((1, 0, 0), (1, 0, 0), (1, 0, 0), (1, 0, 0), (0, 0, 0))
    metrics = NormalsMetrics()
    metrics.update(pred, target)
    # angles 0, 90, 45, 20; the all-zero target is invalid
    result = metrics.compute()
    assert result["median_angle"] == pytest.approx(32.5, abs=HALF_BIN)
    assert result == pytest.approx(
        {"mean_angle": 38.75, "median_angle": result["median_angle"],
         "within_11.25": 0.25, "within_22.5": 0.5, "within_30": 0.5}
    )


def test_normals_opposite_and_zero_predictions():
    metrics = NormalsMetrics()
    metrics.update(normals_map((0, 0, -1), (0, 0, 0)), normals_map((0, 0, 1), (0, 1, 0)))
    assert metrics.compute()["mean_angle"] == pytest.approx((180 + 90) / 2)


def test_normals_median_is_within_half_a_bin_and_batches_accumulate():
    pred, target = torch.randn(3, 3, 8, 9), torch.randn(3, 3, 8, 9)
    target[0, :, :4] = 0
    whole, parts = NormalsMetrics(), NormalsMetrics()
    whole.update(pred, target)
    parts.update(pred[:2], target[:2])
    parts.update(pred[2:], target[2:])
    assert torch.equal(whole.state["histogram"], parts.state["histogram"])
    assert whole.compute() == pytest.approx(parts.compute(), rel=1e-12)
    valid = target.norm(dim=1) > 0.5
    cosine = F.cosine_similarity(pred.double(), target.double(), dim=1)[valid].clamp(-1, 1)
    angles = torch.rad2deg(torch.acos(cosine)).numpy()
    assert whole.compute()["median_angle"] == pytest.approx(np.median(angles), abs=HALF_BIN)
    assert whole.compute()["mean_angle"] == pytest.approx(angles.mean(), rel=1e-9)


def test_all_reduce_is_a_no_op_without_distributed():
    metrics = SegmentationMetrics(3)
    metrics.update(SEG_PRED, SEG_TARGET)
    before = metrics.confusion.clone()
    metrics.all_reduce()
    assert torch.equal(metrics.confusion, before)


def _reduce_halves(rank: int, init_file: str, results: dict) -> None:
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        torch.manual_seed(0)
        seg_pred, seg_target = torch.randint(0, 3, (2, 4, 4)), torch.randint(0, 3, (2, 4, 4))
        depth_pred, depth_target = torch.rand(2, 1, 4, 4) + 0.1, torch.rand(2, 1, 4, 4)
        normal_pred, normal_target = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
        out = {}
        for name, metrics, pred, target in (
            ("seg", SegmentationMetrics(3), seg_pred, seg_target),
            ("depth", DepthMetrics(), depth_pred, depth_target),
            ("normals", NormalsMetrics(), normal_pred, normal_target),
        ):
            whole = type(metrics)(*([3] if name == "seg" else []))
            whole.update(pred, target)
            metrics.update(pred[rank : rank + 1], target[rank : rank + 1])
            metrics.all_reduce()
            out[name] = (metrics.compute(), whole.compute())
        results[rank] = out
    finally:
        dist.destroy_process_group()


def test_all_reduce_sums_the_state_over_processes(tmp_path):
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with mp.Manager() as manager:
        results = manager.dict()
        mp.spawn(_reduce_halves, args=(str(tmp_path / "init"), results), nprocs=2)
        results = dict(results)
    for rank in (0, 1):
        for reduced, whole in results[rank].values():
            assert reduced == pytest.approx(whole, rel=1e-12, nan_ok=True)

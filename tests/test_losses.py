import math

import pytest
import torch
import torch.nn.functional as F

from multitask_deeplab.losses import LOSSES
from multitask_deeplab.tasks import TASKS, DepthTask, NormalsTask, SegmentationTask

NAN = float("nan")


def depth_map(*values: float) -> torch.Tensor:
    """A 1 x 1 x 1 x N depth map."""
    return torch.tensor(values).reshape(1, 1, 1, -1)


def normals_map(*vectors: tuple[float, float, float]) -> torch.Tensor:
    """A 1 x 3 x 1 x N normals map."""
    return torch.tensor(vectors).T.reshape(1, 3, 1, -1)


def test_registry_holds_every_loss_with_its_kind():
    kinds = {name: [TASKS.name_of(kind) for kind in LOSSES.build({"type": name}).kinds] for name in LOSSES.names()}
    assert kinds == {
        "balanced_bce": ["BinaryMapTask"], "berhu": ["depth"], "cosine": ["normals"], "cross_entropy": ["segmentation"],
        "l1": ["depth"], "log_l1": ["depth"], "normals_l1": ["normals"], "silog": ["depth"],
    }
    assert {name: LOSSES.build({"type": name}).name for name in LOSSES.names()} == {name: name for name in LOSSES.names()}
    with pytest.raises(ValueError, match="did you mean 'silog'"):
        LOSSES.build({"type": "silogg"})


def test_cross_entropy_matches_torch_with_ignore_index():
    pred = torch.randn(2, 4, 5, 6)
    target = torch.randint(0, 4, (2, 5, 6))
    target[0, :2] = 255
    loss = LOSSES.build({"type": "cross_entropy"})
    assert torch.allclose(loss(pred, target), F.cross_entropy(pred, target, ignore_index=255))


def test_cross_entropy_matches_torch_with_weights_smoothing_and_custom_ignore():
    pred = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 4, 4))
    target[1, 1:] = -1
    loss = LOSSES.build(
        {"type": "cross_entropy", "ignore_index": -1, "class_weights": [1.0, 2.0, 0.5], "label_smoothing": 0.1}
    )
    expected = F.cross_entropy(
        pred, target, weight=torch.tensor([1.0, 2.0, 0.5]), ignore_index=-1, label_smoothing=0.1
    )
    assert torch.allclose(loss(pred, target), expected)


def test_cross_entropy_rejects_labels_outside_the_classes():
    loss = LOSSES.build({"type": "cross_entropy"})
    with pytest.raises(ValueError, match="label 7, outside \\[0, 3\\)"):
        loss(torch.randn(1, 3, 2, 2), torch.tensor([[[0, 1], [7, 255]]]))
    with pytest.raises(ValueError, match="B x C x H x W logits and a B x H x W target"):
        loss(torch.randn(1, 3, 2, 2), torch.zeros(1, 1, 2, 2, dtype=torch.long))


def test_cross_entropy_checks_its_task():
    LOSSES.build({"type": "cross_entropy"}).check_task(SegmentationTask(num_classes=2))
    with pytest.raises(ValueError, match="'cross_entropy' is a loss for segmentation tasks, not for depth"):
        LOSSES.build({"type": "cross_entropy"}).check_task(DepthTask())
    with pytest.raises(ValueError, match="2 class_weights but the task has 3 classes"):
        LOSSES.build({"type": "cross_entropy", "class_weights": [1, 2]}).check_task(SegmentationTask(num_classes=3))


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"label_smoothing": NAN}, "label_smoothing must be a finite number, got nan"),
        ({"label_smoothing": 1.5}, "label_smoothing must lie in \\[0.0, 1.0\\], got 1.5"),
        ({"class_weights": [1.0, math.inf]}, "class_weights entry must be a finite number, got inf"),
        ({"class_weights": [1.0, -1.0]}, "class_weights entry must lie in \\[0.0, inf\\], got -1.0"),
        ({"class_weights": [0, 0]}, "class_weights are all zero"),
        ({"class_weights": "1,2"}, "class_weights must be a non-empty list"),
        ({"ignore_index": 2.5}, "ignore_index must be an integer, got 2.5"),
        ({"ignore_index": True}, "ignore_index must be an integer, got True"),
    ],
)
def test_cross_entropy_rejects_bad_config(cfg, message):
    with pytest.raises(ValueError, match=message):
        LOSSES.build({"type": "cross_entropy", **cfg})


def test_l1_is_the_masked_mean():
    pred = depth_map(1.0, 2.0, 3.0, 4.0, 5.0)
    target = depth_map(2.0, 0.0, 3.5, NAN, math.inf)
    # valid: (1, 2) and (3, 3.5) -> (1 + 0.5) / 2
    assert LOSSES.build({"type": "l1"})(pred, target).item() == pytest.approx(0.75)


def test_log_l1_hand_computed_and_clamped():
    pred = depth_map(2.0, 1.0, 3.0, 0.0)
    target = depth_map(1.0, 4.0, 0.0, 2.0)
    # valid: log 2, log(1/4), and the clamped 0 -> 1e-3 against 2: log(2000)
    expected = (math.log(2) + math.log(4) + math.log(2000)) / 3
    assert LOSSES.build({"type": "log_l1"})(pred, target).item() == pytest.approx(expected, rel=1e-5)
    # a ratio error: twice too far costs as much as half as far, at any distance
    loss = LOSSES.build({"type": "log_l1"})
    assert loss(depth_map(20.0), depth_map(10.0)).item() == pytest.approx(loss(depth_map(0.5), depth_map(1.0)).item())


def test_silog_hand_computed():
    pred = depth_map(math.e, 1.0, 7.0)
    target = depth_map(1.0, 1.0, 0.0)
    # d = [1, 0]: mean(d^2) = 0.5, mean(d)^2 = 0.25
    loss = LOSSES.build({"type": "silog"})(pred, target)
    assert loss.item() == pytest.approx(10 * math.sqrt(0.5 - 0.85 * 0.25))
    rmse_log = LOSSES.build({"type": "silog", "variance_focus": 0.0, "scale": 1.0})(pred, target)
    assert rmse_log.item() == pytest.approx(math.sqrt(0.5))


def test_silog_is_scale_invariant_at_full_variance_focus_and_clamps_pred():
    target = depth_map(1.0, 2.0, 5.0)
    loss = LOSSES.build({"type": "silog", "variance_focus": 1.0})
    assert loss(3 * target, target).item() == pytest.approx(0.0, abs=1e-4)
    clamped = LOSSES.build({"type": "silog", "variance_focus": 0.0, "scale": 1.0, "min_depth": 0.5})
    # pred 0 is clamped to 0.5, so d = log(0.5 / 1) on the only pixel
    assert clamped(depth_map(0.0), depth_map(1.0)).item() == pytest.approx(math.log(2))


def test_berhu_hand_computed():
    pred = depth_map(1.5, 3.0, 9.0, 100.0)
    target = depth_map(1.0, 2.0, 4.0, 0.0)
    # errors 0.5, 1, 5 -> c = 0.2 * 5 = 1: 0.5 and 1 stay linear, 5 -> (25 + 1) / 2 = 13
    pred.requires_grad_(True)
    loss = LOSSES.build({"type": "berhu"})(pred, target)
    assert loss.item() == pytest.approx((0.5 + 1.0 + 13.0) / 3)
    loss.backward()
    # d/dx: sign(x) / 3 on the linear part, x / (c * 3) on the quadratic part, 0 on the invalid pixel
    assert torch.allclose(pred.grad.flatten(), torch.tensor([1 / 3, 1 / 3, 5 / 3, 0.0]))


@pytest.mark.parametrize("name", ["l1", "log_l1", "silog", "berhu"])
def test_depth_losses_are_zero_with_finite_gradient_for_a_perfect_prediction(name):
    target = depth_map(1.0, 2.0, 0.0, NAN)
    pred = torch.where(torch.isfinite(target) & (target > 0), target, torch.tensor(3.0)).requires_grad_(True)
    loss = LOSSES.build({"type": name})(pred, target)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-4)
    assert torch.isfinite(pred.grad).all()


def test_cosine_on_known_vectors():
    loss = LOSSES.build({"type": "cosine"})
    x, y = (1.0, 0.0, 0.0), (0.0, 1.0, 0.0)
    assert loss(normals_map(x), normals_map(x)).item() == pytest.approx(0.0)
    assert loss(normals_map(y), normals_map(x)).item() == pytest.approx(1.0)
    assert loss(normals_map((-3.0, 0.0, 0.0)), normals_map(x)).item() == pytest.approx(2.0)
    # prediction scaled by 5 (normalised first); the all-zero target pixel is skipped
    pred = normals_map((5.0, 0.0, 0.0), (0.0, 0.0, -1.0), (0.0, 1.0, 0.0))
    target = normals_map(x, y, (0.0, 0.0, 0.0))
    assert loss(pred, target).item() == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("name", "pred", "target"),
    [
        ("cross_entropy", torch.randn(1, 3, 2, 2), torch.full((1, 2, 2), 255)),
        ("l1", torch.rand(1, 1, 2, 2), torch.tensor([0.0, NAN, -1.0, 0.0]).reshape(1, 1, 2, 2)),
        ("silog", torch.rand(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)),
        ("berhu", torch.rand(1, 1, 2, 2), torch.zeros(1, 1, 2, 2)),
        ("cosine", torch.randn(1, 3, 2, 2), torch.zeros(1, 3, 2, 2)),
    ],
)
def test_no_valid_pixel_gives_an_exact_zero_that_backpropagates(name, pred, target):
    pred.requires_grad_(True)
    loss = LOSSES.build({"type": name})(pred, target)
    assert loss.item() == 0.0 and loss.requires_grad
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))


@pytest.mark.parametrize(
    ("name", "fits", "misfits"),
    [("l1", DepthTask(), NormalsTask()), ("silog", DepthTask(), SegmentationTask(num_classes=2)), ("cosine", NormalsTask(), DepthTask())],
)
def test_dense_losses_refuse_tasks_of_other_kinds(name, fits, misfits):
    loss = LOSSES.build({"type": name})
    loss.check_task(fits)
    with pytest.raises(ValueError, match=f"'{name}' is a loss for {TASKS.name_of(type(fits))} tasks, not for"):
        loss.check_task(misfits)


@pytest.mark.parametrize(
    ("cfg", "message"),
    [
        ({"type": "silog", "variance_focus": 1.2}, "silog variance_focus must lie in \\[0.0, 1.0\\], got 1.2"),
        ({"type": "silog", "scale": 0.0}, "silog scale must lie in \\(0.0, inf\\], got 0.0"),
        ({"type": "silog", "min_depth": NAN}, "silog min_depth must be a finite number, got nan"),
        ({"type": "log_l1", "min_depth": 0.0}, "log_l1 min_depth must lie in \\(0.0, inf\\], got 0.0"),
        ({"type": "silog", "scale": "10"}, "silog scale must be a finite number, got '10'"),
        ({"type": "berhu", "threshold": 0.0}, "berhu threshold must lie in \\(0.0, 1.0\\], got 0.0"),
        ({"type": "berhu", "threshold": math.inf}, "berhu threshold must be a finite number, got inf"),
    ],
)
def test_dense_losses_reject_bad_config(cfg, message):
    with pytest.raises(ValueError, match=message):
        LOSSES.build(cfg)


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="l1 needs pred and target of the same shape"):
        LOSSES.build({"type": "l1"})(torch.rand(1, 1, 2, 2), torch.rand(1, 1, 2, 3))
    with pytest.raises(ValueError, match="cosine needs B x 3 x H x W normals"):
        LOSSES.build({"type": "cosine"})(torch.rand(1, 1, 2, 2), torch.rand(1, 1, 2, 2))


def test_normals_l1_is_the_mean_absolute_error_of_the_unit_prediction_over_valid_components():
    loss = LOSSES.build({"type": "normals_l1"})
    target = normals_map((0.0, 0.0, -1.0), (0.0, 0.0, 0.0), (1.0, 0.0, 0.0))  # the middle pixel is unknown
    pred = normals_map((0.0, 0.0, -2.0), (5.0, 5.0, 5.0), (0.0, 1.0, 0.0))
    assert loss(pred, target).item() == pytest.approx((0 + 0 + 0 + 1 + 1 + 0) / 6)

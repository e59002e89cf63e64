"""Task kinds: the built-in ones, their recipe checks, what each does to targets and predictions, the check of tasks
against a dataset's targets, and checkpoints of version 0.1 (task-specific heads) loading unchanged."""

from __future__ import annotations

import math

import pytest
import torch

from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.config.validation import RecipeError
from multitask_deeplab.data.scenes import ScenesDataset
from multitask_deeplab.data.targets import batch_target_kinds, check_tasks_fit
from multitask_deeplab.engine.build import build_model, build_tasks, check_components
from multitask_deeplab.engine.checkpoint import save_checkpoint
from multitask_deeplab.engine.restore import model_from_checkpoint
from multitask_deeplab.tasks import TASKS, DepthTask, NormalsTask, SegmentationTask


def recipe(tasks: str) -> recipe_module.Recipe:
    return recipe_module.loads(f"model: {{backbone: resnet18}}\ntasks:\n{tasks}")


def test_the_built_in_kinds_are_registered_like_plugins():
    assert TASKS.names() == ["depth", "edges", "human_parts", "normals", "saliency", "segmentation"]
    assert [TASKS.get(name).registered_name for name in TASKS.names()] == TASKS.names()
    seg, depth, normals = SegmentationTask(num_classes=4), DepthTask(), NormalsTask()
    assert (seg.target, depth.target, normals.target) == ("seg", "depth", "normals")
    assert (seg.out_channels, depth.out_channels, normals.out_channels) == (4, 1, 3)
    assert [t.default_loss["type"] for t in (seg, depth, normals)] == ["cross_entropy", "l1", "cosine"]
    assert [t.primary_metric for t in (seg, depth, normals)] == ["miou", "abs_rel", "mean_angle"]
    assert seg.higher_is_better("miou") and not depth.higher_is_better("abs_rel") and normals.higher_is_better("within_30")
    assert seg.classification and not depth.classification and not normals.classification
    assert SegmentationTask(num_classes=4, target="labels").target == "labels"


@pytest.mark.parametrize(
    "task, message",
    [
        ("  t: {kind: segmentation, head: {type: deeplabv3}}", "tasks.t.num_classes: required by task kind 'segmentation'; add it"),
        ("  t: {kind: depth, num_classes: 3, head: {type: deeplabv3}}",
         "unknown key tasks.t.num_classes: task kind 'depth' takes activation, min_depth, max_depth, target"),
        ("  t: {kind: normal, head: {type: deeplabv3}}", "tasks.t.kind: unknown task kind 'normal': did you mean 'normals'?"),
        ("  t: {kind: depth, head: {type: depth}}",
         "tasks.t.head.type: unknown head 'depth': registered heads are deeplabv3, deeplabv3plus, hrnet; heads are task-neutral since "
         "0.2: use type: deeplabv3 (the depth task applies its activation itself), and move activation/min_depth/max_depth"),
    ],
)
def test_kind_keys_are_checked_against_the_kind(task, message):
    with pytest.raises(RecipeError) as info:
        check_components(recipe(task))
    assert str(info.value).startswith(message)


@pytest.mark.parametrize(
    "task, message",
    [
        ("{kind: segmentation, num_classes: 1, head: {type: deeplabv3}}", "tasks.t: num_classes must be an integer >= 2"),
        ("{kind: segmentation, num_classes: 3, class_names: [a, b], head: {type: deeplabv3}}", "tasks.t: class_names has 2 names but num_classes is 3"),
        ("{kind: segmentation, num_classes: 2, class_names: [yes, no], head: {type: deeplabv3}}", "tasks.t: class_names must be a list of strings, got [True, False]"),
        ("{kind: segmentation, num_classes: 3, ignore_index: 2, head: {type: deeplabv3}}", "tasks.t: ignore_index must be an integer outside the class ids 0..2"),
        ("{kind: depth, activation: relu, head: {type: deeplabv3}}", "tasks.t: depth activation must be one of 'softplus', 'sigmoid', got 'relu'"),
        ("{kind: depth, min_depth: 5.0, max_depth: 4.0, head: {type: deeplabv3}}", "tasks.t: depth max_depth must lie in (5.0, inf], got 4.0"),
        ("{kind: depth, target: image, head: {type: deeplabv3}}", "tasks.t: target must name a batch key other than 'image'"),
    ],
)
def test_kind_values_are_checked_when_built(task, message):
    with pytest.raises(ValueError) as info:
        build_tasks(recipe(f"  t: {task}"))
    assert str(info.value).startswith(message)


def test_depth_activation_and_normals_are_applied_by_the_task_not_the_head():
    activation = DepthTask(activation="sigmoid", min_depth=0.5, max_depth=4.0).activation()
    torch.testing.assert_close(activation(torch.tensor([-1e4, 0.0, 1e4])), torch.tensor([0.5, 2.25, 4.0]))
    torch.testing.assert_close(DepthTask(min_depth=0.1).activation()(torch.tensor([-1e4, 0.0])), torch.tensor([0.1, 0.1 + math.log(2)]))
    model = build_model(recipe("  d: {kind: depth, head: {type: deeplabv3, channels: 8}}\n  n: {kind: normals, head: {type: deeplabv3, channels: 8}}"))
    outputs = model.eval()(torch.rand(2, 3, 32, 32))
    assert (outputs["d"] > 1e-3).all()
    torch.testing.assert_close(outputs["n"].norm(dim=1), torch.ones(2, 32, 32))
    assert not hasattr(model.heads["d"], "finalize")


def test_target_values_follow_the_geometry():
    mirror = torch.tensor([[[-1.0, 0.0], [0.0, 1.0]]])
    zoom_turn = torch.tensor([[[0.0, -2.0], [2.0, 0.0]]])  # zoom 2, turned by 90 degrees
    normals = torch.tensor([0.6, 0.0, -0.8]).view(1, 3, 1, 1)
    torch.testing.assert_close(NormalsTask().transform_values(normals, mirror), torch.tensor([-0.6, 0.0, -0.8]).view(1, 3, 1, 1))
    torch.testing.assert_close(NormalsTask().transform_values(normals, zoom_turn), torch.tensor([0.0, 0.6, -0.8]).view(1, 3, 1, 1))
    depth = torch.full((1, 1, 2, 2), 3.0)
    assert torch.equal(DepthTask().transform_values(depth, mirror), depth)
    torch.testing.assert_close(DepthTask().transform_values(depth, zoom_turn), depth / 2)
    labels = torch.randint(0, 3, (1, 4, 4))
    assert torch.equal(SegmentationTask(num_classes=3).transform_values(labels, zoom_turn), labels)


def test_invalid_targets_examples_and_checks():
    seg, depth = SegmentationTask(num_classes=3, ignore_index=99), DepthTask()
    assert torch.equal(seg.invalid_target(2, 3), torch.full((2, 3), 99))
    assert torch.equal(depth.invalid_target(2, 3), torch.zeros(1, 2, 3)) and torch.equal(NormalsTask().invalid_target(2, 3), torch.zeros(3, 2, 3))
    generator = torch.Generator().manual_seed(0)
    assert seg.example_target(2, 4, 4, generator).max() < 3 and (depth.example_target(2, 4, 4, generator) >= 1).all()
    cleaned, counts = depth.check_target(torch.tensor([[[1.0, float("nan")], [-2.0, 3.0]]]), "d.png")
    assert torch.equal(cleaned, torch.tensor([[[1.0, 0.0], [0.0, 3.0]]])) and sum(counts.values()) == 2
    with pytest.raises(ValueError, match=r"^s.png: class ids 3, 7 are outside the classes 0..2 and ignore 99"):
        seg.check_target(torch.tensor([[0, 3], [7, 99]]), "s.png")
    with pytest.raises(ValueError, match=r"^n.npy: expected a 3 x H x W target, got shape \(1, 2, 2\)"):
        NormalsTask().check_target(torch.zeros(1, 2, 2), "n.npy")
    probs = torch.tensor([[[0.2]], [[0.8]]])
    arrays = SegmentationTask(num_classes=2).to_numpy(probs, probabilities=True)
    assert set(arrays) == {"", "_probs"} and arrays[""].tolist() == [[1]]
    assert DepthTask().to_numpy(torch.ones(1, 2, 3))[""].shape == (2, 3)


def test_tasks_are_checked_against_the_dataset_targets():
    dataset = ScenesDataset("val", num_samples=2, height=16, width=16)
    fine = {"seg": SegmentationTask(num_classes=5), "depth": DepthTask()}
    check_tasks_fit(dataset, fine, name="scenes")
    assert set(batch_target_kinds(dataset, fine)) == {"seg", "depth"}
    for tasks, message in [
        ({"seg": SegmentationTask(num_classes=13)}, "tasks.seg (segmentation (13 classes)) cannot read 'seg': the dataset's 'seg' has 5 classes, the task 13: set num_classes: 5"),
        ({"seg": SegmentationTask(num_classes=5, ignore_index=0 + 250)}, "the dataset marks unknown pixels of 'seg' with 255, the task with 250: set ignore_index: 255"),
        ({"d": DepthTask(target="seg")}, "tasks.d (depth) cannot read 'seg': the dataset's 'seg' holds segmentation targets"),
        ({"e": DepthTask(target="albedo")}, "tasks.e reads batch key 'albedo', which dataset 'scenes' does not provide (it has depth, edges, normals, seg); set tasks.e.target to one of them"),
        ({"e": DepthTask(target="edges")}, "tasks.e (depth) cannot read 'edges': the dataset's 'edges' holds edges targets"),
    ]:
        with pytest.raises(ValueError) as info:
            check_tasks_fit(dataset, tasks, name="scenes")
        assert message in str(info.value)


def test_a_checkpoint_of_version_0_1_with_task_specific_heads_loads_and_computes_the_same(tmp_path):
    today = recipe("  seg: {kind: segmentation, num_classes: 3, head: {type: deeplabv3, channels: 8}}\n"
                   "  depth: {kind: depth, activation: sigmoid, max_depth: 8.0, head: {type: deeplabv3plus, channels: 8, low_level_channels: 8}}")
    torch.manual_seed(0)
    model = build_model(today).eval()
    old_recipe = recipe_module.to_dict(today)
    old_recipe["tasks"] = {  # as 0.1 wrote it: a depthplus head with the activation, and seg keys in every task
        "seg": {"kind": "segmentation", "head": {"type": "deeplabv3", "channels": 8}, "loss": {"type": "cross_entropy"}, "weight": 1.0,
                "num_classes": 3, "ignore_index": 255, "class_names": None},
        "depth": {"kind": "depth", "head": {"type": "depthplus", "channels": 8, "low_level_channels": 8, "activation": "sigmoid", "max_depth": 8.0},
                  "loss": {"type": "l1"}, "weight": 1.0, "num_classes": None, "ignore_index": 255, "class_names": None},
    }
    path = tmp_path / "old.pt"
    save_checkpoint(path, {"model": model.state_dict(), "recipe": old_recipe})
    raw = torch.load(path, weights_only=True)
    torch.save({**raw, "format": "multitask_deeplab/1"}, path)
    restored, upgraded, tasks, _ = model_from_checkpoint(path)
    assert upgraded.tasks["depth"].head == {"type": "deeplabv3plus", "channels": 8, "low_level_channels": 8}
    assert tasks["depth"].activation_name == "sigmoid" and tasks["depth"].max_depth == 8.0
    image = torch.rand(1, 3, 32, 32)
    with torch.no_grad():
        for name, output in model(image).items():
            assert torch.equal(restored(image)[name], output)

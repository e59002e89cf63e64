"""Recipe loading: strict YAML, typed validation, overrides, round trips and registry keyword checks."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
from torch import nn

from multitask_deeplab.config import recipe as R
from multitask_deeplab.config.validation import RecipeError, check_component
from multitask_deeplab.registry import Registry

BASE = """\
tasks:
  seg:
    kind: segmentation
    head: {type: deeplabv3}
    loss: {type: cross_entropy}
    num_classes: 3
"""

FULL = """\
model:
  backbone: resnet18
  output_stride: 8
  pretrained: weights/r18.safetensors
  in_chans: 4
  out_indices: [1, 4]
  mean: [0.5, 0.5, 0.5, 0.5]
  std: [0.25, 0.25, 0.25, 1]
tasks:
  seg:
    kind: segmentation
    head: {type: deeplabv3, rates: [6, 12]}
    loss: {type: cross_entropy, label_smoothing: 0.1}
    num_classes: 3
    class_names: [sky, "1e5", 'no']
  depth:
    kind: depth
    head: {type: deeplabv3}
    loss: {type: l1}
    weight: 0.5
data:
  type: scenes
  height: 64
  augment: {flip: true, scale: [0.5, 2.0]}
train:
  steps: 20
  lr: 5e-4
  amp: 'off'
  grad_clip: 1
  output_dir: "2e3"
  best_metric: depth.rmse
weighting: {type: uncertainty, init: 0.0}
eval: {batch_size: 2}
"""


def loads(text: str, *overrides: str) -> R.Recipe:
    return R.loads(text, overrides)


def error(text: str, *overrides: str) -> str:
    with pytest.raises(RecipeError) as info:
        R.loads(text, overrides)
    message = str(info.value)
    assert "\n" not in message
    return message


def test_defaults_filled() -> None:
    recipe = loads(BASE)
    assert recipe.model == R.ModelConfig()
    assert recipe.model.mean == [0.485, 0.456, 0.406] and recipe.model.output_stride == 16
    assert recipe.data == R.DataConfig(type="scenes", num_workers=2, augment={}, args={})
    assert recipe.train.epochs == 10 and recipe.train.steps is None and recipe.train.lr == 1e-3
    assert recipe.train.amp == "off" and recipe.train.device == "auto" and recipe.train.nonfinite == "skip"
    assert recipe.weighting == {"type": "fixed"}
    assert recipe.eval == R.EvalConfig(batch_size=None, num_visualize=4)
    seg = recipe.tasks["seg"]
    assert (seg.kind, seg.weight, seg.args) == ("segmentation", 1.0, {"num_classes": 3})
    assert seg.kind_cfg == {"type": "segmentation", "num_classes": 3}
    assert recipe.task_names == ["seg"]
    assert recipe.eval_batch_size == 8
    assert recipe.train.total_steps(steps_per_epoch=5) == 50


def test_full_recipe_values_and_task_order() -> None:
    recipe = loads(FULL)
    assert recipe.task_names == ["seg", "depth"]
    assert recipe.model.pretrained == "weights/r18.safetensors"
    assert recipe.model.std == [0.25, 0.25, 0.25, 1.0] and isinstance(recipe.model.std[3], float)
    assert recipe.tasks["seg"].args == {"num_classes": 3, "class_names": ["sky", "1e5", "no"]}
    assert recipe.tasks["depth"].args == {}
    assert recipe.data.args == {"height": 64}
    assert recipe.data.dataset_cfg == {"type": "scenes", "height": 64}
    assert recipe.data.augment == {"flip": True, "scale": [0.5, 2.0]}
    assert recipe.train.lr == 5e-4 and isinstance(recipe.train.lr, float)
    assert recipe.train.grad_clip == 1.0 and recipe.train.output_dir == "2e3"
    assert recipe.train.total_steps(steps_per_epoch=1000) == 20
    assert recipe.eval_batch_size == 2


@pytest.mark.parametrize(
    "text, value", [("1e-3", 1e-3), ("5e-4", 5e-4), ("1E5", 1e5), ("1.5e3", 1500.0), ("-2e+2", -200.0)]
)
def test_exponent_floats_without_dot_are_floats(text: str, value: float) -> None:
    parsed = R.apply_overrides({}, [f"x={text}"])["x"]
    assert parsed == value and isinstance(parsed, float)
    assert loads(BASE + f"weighting: {{type: w, v: {text}}}\n").weighting["v"] == value


def test_unknown_keys_suggest_the_closest() -> None:
    assert error(BASE + "train: {epoch: 3}\n") == "unknown key train.epoch: did you mean train.epochs?"
    assert error(BASE + "trian: {}\n") == "unknown key trian: did you mean train?"
    assert error(BASE + "eval: {zzz: 1}\n") == "unknown key eval.zzz: valid keys are batch_size, num_visualize, baselines, delta_m, delta_m_metrics, protocol"


@pytest.mark.parametrize(
    "section, expected",
    [
        ("train: {batch_size: eight}", "train.batch_size: expected int, got 'eight' (str)"),
        ("train: {batch_size: true}", "train.batch_size: expected int, got True (bool)"),
        ("train: {batch_size: 2.0}", "train.batch_size: expected int, got 2.0 (float)"),
        ("train: {lr: false}", "train.lr: expected float, got False (bool)"),
        ("train: {lr: .inf}", "train.lr: expected a finite float, got inf"),
        ("train: {lr: '1e-3'}", "train.lr: expected float, got '1e-3' (str)"),
        ("train: {grad_clip: x}", "train.grad_clip: expected float, got 'x' (str)"),
        ("model: {mean: [0.5, a, 0.5]}", "model.mean[1]: expected float, got 'a' (str)"),
        ("model: {mean: 0.5}", "model.mean: expected list[float], got 0.5 (float)"),
        ("model: {pretrained: 3}", "model.pretrained: expected bool or str, got 3 (int)"),
        ("train: 5", "train: expected a mapping of epochs, steps, batch_size, accumulate_steps, optimizer, lr, weight_decay, momentum, "
         "schedule, poly_power, warmup_steps, amp, grad_clip, channels_last, seed, eval_interval, log_interval, "
         "output_dir, device, best_metric, nonfinite, max_skipped_steps, checkpoint_interval, grad_checkpointing, "
         "compile, sync_batchnorm, loggers, ema, early_stop, got 5"),
        ("train: {optimizer: adamww}",
         "train.optimizer: expected one of 'adamw', 'adam', 'sgd', got 'adamww' (did you mean 'adamw'?)"),
        ("data: {when: 2024-01-01}", "data.when: unsupported value datetime.date(2024, 1, 1) (date); use null, "
         "booleans, numbers, strings, lists or mappings (quote dates and other special words)"),
    ],
)
def test_wrong_types(section: str, expected: str) -> None:
    assert error(BASE + section + "\n") == expected


@pytest.mark.parametrize(
    "section, expected",
    [
        ("train: {batch_size: 0}", "train.batch_size: must be >= 1, got 0"),
        ("train: {epochs: 0}", "train.epochs: must be >= 1, got 0"),
        ("train: {lr: 0}", "train.lr: must be > 0, got 0.0"),
        ("train: {momentum: 1}", "train.momentum: must be < 1, got 1.0"),
        ("train: {epochs: null}", "train.epochs: null needs train.steps; set one of them"),
        ("train: {steps: 5, warmup_steps: 5}", "train.warmup_steps: 5 leaves no step after warm-up (train.steps is 5); "
         "make it smaller than steps"),
        ("train: {device: gpu}", "train.device: expected auto, cpu, cuda or cuda:N, got 'gpu'"),
        ("train: {best_metric: miou}", "train.best_metric: expected 'task.metric' such as 'seg.miou', got 'miou'"),
        ("train: {best_metric: sg.miou}", "train.best_metric: task 'sg' is not in tasks (seg): did you mean seg?"),
        ("model: {output_stride: 12}", "model.output_stride: expected one of 8, 16, 32, got 12"),
        ("model: {in_chans: 1}", "model.mean: has 3 values but model.in_chans is 1; give one value per input channel"),
        ("model: {std: [1, 0, 1]}", "model.std: every value must be > 0, got [1.0, 0.0, 1.0]"),
        ("model: {pretrained: 'hf-hub:'}", "model.pretrained: expected true, false, hf-hub:<org>/<name> (e.g. "
         "hf-hub:timm/resnet50.a1_in1k), a weights file (.safetensors/.pth) or a folder holding one, got 'hf-hub:'"),
        ("model: {out_indices: [1, 1]}", "model.out_indices: expected null or a non-empty list of distinct feature "
         "levels such as [1, 4], got [1, 1]"),
        ("weighting: {init: 1}", "weighting.type: required, the registered name to build (got keys init)"),
    ],
)
def test_value_checks(section: str, expected: str) -> None:
    assert error(BASE + section + "\n") == expected


@pytest.mark.parametrize(
    "task, expected",
    [
        ("{kind: 3, head: {type: h}, loss: {type: l}}", "tasks.t.kind: expected str, got 3 (int)"),
        ("{kind: depth, head: {type: h}, loss: {rates: 1}}", "tasks.t.loss.type: required, the registered name to build (got keys rates)"),
        ("{kind: depth, loss: {type: l}}", "tasks.t.head: required key is missing (a mapping with a 'type' key)"),
        ("{kind: depth, head: {rates: [1]}, loss: {type: l}}",
         "tasks.t.head.type: required, the registered name to build (got keys rates)"),
        ("{kind: depth, head: {type: h}, loss: {type: l}, weight: -1}", "tasks.t.weight: must be >= 0, got -1.0"),
    ],
)
def test_task_checks(task: str, expected: str) -> None:
    assert error(f"tasks:\n  t: {task}\n") == expected


def test_tasks_required_and_named_plainly() -> None:
    assert error("model: {}\n") == "tasks: required key is missing"
    assert error("tasks: {}\n").startswith("tasks: at least one task is required")
    assert error(BASE.replace("seg:", "'my.seg':")).startswith("tasks.my.seg: task names use letters, digits and _")


def test_duplicate_key_names_key_and_line() -> None:
    text = BASE + "train:\n  lr: 0.1\n  epochs: 2\n  lr: 0.2\n"
    assert error(text) == "<recipe>: duplicate key 'lr' at line 10 (YAML keeps only the last one)"
    assert "duplicate key 'seg'" in error(BASE + BASE[len("tasks:\n"):])


def test_anchors_aliases_and_merge_keys_are_refused_naming_the_line() -> None:
    assert error(BASE + "x_common: &common {type: fixed, a: 1}\n").startswith("<recipe>: anchor &common at line 7 is not allowed")
    assert error(BASE + "weighting: *common\n").startswith("<recipe>: alias *common at line 7 is not allowed")
    assert error(BASE + "weighting:\n  <<: {type: fixed, a: 1}\n  a: 2\n") == (
        "<recipe>: merge key '<<' at line 8 is not allowed: write the keys out"
    )


def test_tags_are_refused_without_running_anything(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    text = BASE + f"weighting: !!python/object/apply:os.system ['touch {marker}']\n"
    message = error(text)
    assert message.startswith("<recipe>: tag '!!python/object/apply:os.system' at line 7 is not allowed")
    assert not marker.exists()
    with pytest.raises(RecipeError, match="tag '!!str'"):
        loads(BASE + "train: {device: !!str cpu}\n")
    with pytest.raises(RecipeError, match="tag '!!python/name:os.system'"):
        R.apply_overrides({}, ["train.device=!!python/name:os.system"])


def test_bare_off_in_a_file_explains_the_yaml_boolean() -> None:
    assert error(BASE + "train: {amp: off}\n") == (
        "train.amp: got boolean false (YAML reads a bare off/no as false); "
        "write 'off' in quotes or use one of 'auto', 'bf16', 'fp16'"
    )
    assert error(BASE + "train: {nonfinite: yes}\n") == (
        "train.nonfinite: got boolean true (YAML reads a bare on/yes as true); use one of 'skip', 'stop'"
    )
    assert loads(BASE + "train: {amp: 'off'}\n").train.amp == "off"


def test_overrides_are_typed() -> None:
    recipe = loads(
        BASE,
        "train.lr=1e-3", "model.pretrained=false", "train.epochs=3", "model.out_indices=[1,4]",
        "tasks.seg.head.rates=[6,12]", "train.amp=off", "train.device=cuda:1", "train.grad_clip=null",
        "data.height=32", "tasks.depth.kind=depth", "tasks.depth.head={type: deeplabv3}", "tasks.depth.loss.type=l1",
        "train.output_dir=runs/a=b",
    )
    assert recipe.train.lr == 1e-3 and isinstance(recipe.train.lr, float)
    assert recipe.model.pretrained is False
    assert recipe.train.epochs == 3 and recipe.model.out_indices == [1, 4]
    assert recipe.tasks["seg"].head == {"type": "deeplabv3", "rates": [6, 12]}
    assert recipe.train.amp == "off" and recipe.train.device == "cuda:1" and recipe.train.grad_clip is None
    assert recipe.data.args == {"height": 32}
    assert recipe.task_names == ["seg", "depth"] and recipe.tasks["depth"].loss == {"type": "l1"}
    assert recipe.train.output_dir == "runs/a=b"


def test_apply_overrides_copies_and_unshares() -> None:
    shared = {"type": "deeplabv3"}
    raw = {"tasks": {"a": {"head": shared}, "b": {"head": shared}}}
    out = R.apply_overrides(raw, ["tasks.a.head.rates=[1]", "train.lr=0.5"])
    assert out == {
        "tasks": {"a": {"head": {"type": "deeplabv3", "rates": [1]}}, "b": {"head": shared}}, "train": {"lr": 0.5}
    }
    assert raw == {"tasks": {"a": {"head": {"type": "deeplabv3"}}, "b": {"head": {"type": "deeplabv3"}}}}


@pytest.mark.parametrize(
    "override, expected",
    [
        ("train.lr", "override 'train.lr': expected dotted.key=value, e.g. train.epochs=20"),
        ("train..lr=1", "override 'train..lr=1': expected dotted.key=value, e.g. train.epochs=20"),
        ("=1", "override '=1': expected dotted.key=value, e.g. train.epochs=20"),
        ("train.lr.x=1", "override 'train.lr.x=1': train.lr is 0.1, not a mapping"),
        ("train.lr=[1", "override 'train.lr=[1': not valid YAML: while parsing a flow sequence; expected ',' or ']', "
         "but got '<stream end>' at line 1, column 3"),
    ],
)
def test_override_errors(override: str, expected: str) -> None:
    with pytest.raises(RecipeError) as info:
        R.apply_overrides({"train": {"lr": 0.1}}, [override])
    assert str(info.value) == expected


def test_overrides_are_validated() -> None:
    assert error(BASE, "train.epoch=3") == "unknown key train.epoch: did you mean train.epochs?"
    assert error(BASE, "train.batch_size=eight") == "train.batch_size: expected int, got 'eight' (str)"
    assert error(BASE, "train.amp=on") == "train.amp: expected one of 'off', 'auto', 'bf16', 'fp16', got 'on'"


def test_load_file_and_file_errors(tmp_path: Path) -> None:
    path = tmp_path / "r.yaml"
    path.write_text(BASE)
    assert R.load(path, ["train.epochs=2"]).train.epochs == 2
    missing = tmp_path / "nope.yaml"
    with pytest.raises(RecipeError, match=f"^recipe file not found: {re.escape(str(missing))}$"):
        R.load(missing)
    path.write_text("tasks:\n  seg: [1\n")
    with pytest.raises(RecipeError, match=rf"^{re.escape(str(path))}: not valid YAML: .* at line 3, column 1$"):
        R.load(path)
    path.write_text("- a\n- b\n")
    with pytest.raises(RecipeError, match="the top level must be a mapping of sections .*, got a list$"):
        R.load(path)
    path.write_text("")
    with pytest.raises(RecipeError, match="got nothing"):
        R.load(path)


def test_dump_load_round_trip(tmp_path: Path) -> None:
    recipe = loads(FULL)
    text = R.dump(recipe)
    assert "amp: 'off'" in text and "output_dir: '2e3'" in text and "'1e5'" in text and "'no'" in text
    assert "mean: [0.5, 0.5, 0.5, 0.5]" in text
    path = tmp_path / "dumped.yaml"
    path.write_text(text)
    again = R.load(path)
    assert again == recipe
    assert R.dump(again) == text
    assert R.to_dict(again)["data"] == {
        "type": "scenes", "num_workers": 2, "train_split": "train", "val_split": "val", "test_split": "test",
        "augment": {"flip": True, "scale": [0.5, 2.0]}, "height": 64,
    }


def test_to_dict_is_plain_and_survives_a_weights_only_checkpoint(tmp_path: Path) -> None:
    recipe = loads(FULL)
    raw = R.to_dict(recipe)
    assert R.from_dict(raw) == recipe
    assert list(raw) == ["model", "tasks", "data", "train", "weighting", "eval"]
    raw["tasks"]["seg"]["head"]["rates"].append(18)  # a copy: the recipe is unchanged
    assert recipe.tasks["seg"].head["rates"] == [6, 12]
    torch.save({"recipe": R.to_dict(recipe)}, tmp_path / "ckpt.pt")
    assert R.from_dict(torch.load(tmp_path / "ckpt.pt", weights_only=True)["recipe"]) == recipe


def test_recipe_is_frozen() -> None:
    recipe = loads(BASE)
    with pytest.raises(AttributeError):
        recipe.train.lr = 1.0  # type: ignore[misc]


# ------------------------------------------------------------------------------------------------- check_kwargs

THINGS: Registry = Registry("head", object)
RESERVED = "set by the framework itself; remove it from the recipe"


@THINGS.register("plain")
class Plain:
    def __init__(self, in_channels: int, *, rates: tuple[int, ...] = (6, 12), width: int = 8) -> None:
        pass


@THINGS.register("needs")
def needs(*, in_channels: int, depth: int, scale: float = 1.0) -> None:
    pass


@THINGS.register("open")
def open_builder(in_channels: int, **kwargs: object) -> None:
    pass


@THINGS.register("forwarding")
class Forwarding(Plain):
    """Takes ``scale`` and passes the rest on to ``Plain``, as cooperative subclasses do."""

    def __init__(self, in_channels: int, *, scale: float = 1.0, **rest: object) -> None:
        super().__init__(in_channels, **rest)


@THINGS.register("bare")
class Bare(nn.Module):
    """No ``__init__`` of its own: ``nn.Module``'s ``*args, **kwargs`` end at ``object``, which takes none."""


def test_check_kwargs_accepts_valid_configs() -> None:
    check_component(THINGS, {"type": "plain", "rates": [1], "width": 4}, "tasks.seg.head", reserved=["in_channels"])
    check_component(THINGS, {"type": "needs", "depth": 2}, "tasks.seg.head", reserved=["in_channels"])
    check_component(THINGS, {"type": "open", "anything": 1}, "tasks.seg.head", reserved=["in_channels"])
    check_component(THINGS, {"type": "forwarding", "scale": 2, "rates": [1]}, "tasks.seg.head", reserved=["in_channels"])
    check_component(THINGS, {"type": "bare"}, "tasks.seg.head", reserved=["in_channels"])


@pytest.mark.parametrize(
    "cfg, expected",
    [
        ({"type": "plain", "rate": [1]}, "unknown key tasks.seg.head.rate: did you mean tasks.seg.head.rates?"),
        ({"type": "plain", "zzz": 1}, "unknown key tasks.seg.head.zzz: head 'plain' takes rates, width"),
        ({"type": "plain", "in_channels": 3}, f"tasks.seg.head.in_channels: {RESERVED}"),
        ({"type": "open", "in_channels": 3}, f"tasks.seg.head.in_channels: {RESERVED}"),
        ({"type": "forwarding", "rate": [1]}, "unknown key tasks.seg.head.rate: did you mean tasks.seg.head.rates?"),
        ({"type": "forwarding", "zzz": 1}, "unknown key tasks.seg.head.zzz: head 'forwarding' takes scale, rates, width"),
        ({"type": "bare", "zzz": 1}, "unknown key tasks.seg.head.zzz: head 'bare' takes no keyword arguments"),
        ({"type": "needs"}, "tasks.seg.head.depth: required by head 'needs'; add it"),
        ({"type": "plan"},
         "tasks.seg.head.type: unknown head 'plan': did you mean 'plain'? registered heads are bare, forwarding, needs, "
         "open, plain"),
        ({"rates": [1]}, "tasks.seg.head.type: required key is missing (one of bare, forwarding, needs, open, plain)"),
    ],
)
def test_check_kwargs_errors(cfg: dict, expected: str) -> None:
    with pytest.raises(RecipeError) as info:
        check_component(THINGS, cfg, "tasks.seg.head", reserved=("in_channels",))
    assert str(info.value) == expected

"""Damaged and foreign files given to evaluate, predict, export and ``train --resume``: one line naming the file,
a non-zero exit, no code from the file ever runs, and a resume writes nothing into the run folder."""

from __future__ import annotations

import pickle
import shutil

import numpy as np
import pytest
import torch
from fault_helpers import TINY_BACKBONE
from helpers_training import one_thread, write_recipe  # noqa: F401
from PIL import Image

from multitask_deeplab.cli import main
from multitask_deeplab.engine.checkpoint import load_checkpoint, save_checkpoint

pytestmark = pytest.mark.usefixtures("one_thread")


class Payload:
    """Unpickling this creates ``marker``: a stand-in for any code a malicious checkpoint would run."""

    def __init__(self, marker) -> None:
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """A good run, and one damaged or foreign file of each kind beside it."""
    folder = tmp_path_factory.mktemp("inputs")
    recipe = write_recipe(folder)
    common = ["train", str(recipe), TINY_BACKBONE, "train.steps=2"]
    assert main([*common, f"train.output_dir={folder / 'good'}", "--no-progress"]) == 0
    other = ["tasks.seg.head={type: deeplabv3, channels: 16}", "tasks.normals={kind: normals, head: {type: deeplabv3, channels: 8}}"]
    assert main([*common, *other, f"train.output_dir={folder / 'other'}", "--no-progress"]) == 0
    good = folder / "good" / "last.pt"
    state = load_checkpoint(good)
    made = {"good": good, "other recipe": folder / "other" / "last.pt", "a folder": folder / "good", "recipe": recipe, "run": folder / "good"}
    for name, data in {
        "zero bytes": b"",
        "truncated": good.read_bytes()[: good.stat().st_size // 2],
        "random bytes": np.random.default_rng(0).bytes(4096),
    }.items():
        made[name] = folder / f"{name}.pt"
        made[name].write_bytes(data)
    made["pickle payload"] = folder / "payload.pt"
    torch.save({"format": "multitask_deeplab/1", "model": {}, "payload": Payload(folder / "pwned")}, made["pickle payload"])
    assert main(["export", str(good), "--format", "safetensors", "--out", str(folder / "weights.safetensors")]) == 0
    made["safetensors"] = folder / "weights.safetensors"
    poisoned = {**state, "model": {**state["model"]}}
    name = next(key for key in poisoned["model"] if key.endswith("running_var"))
    poisoned["model"][name] = torch.full_like(poisoned["model"][name], float("nan"))
    made["NaN statistics"] = folder / "nan.pt"
    save_checkpoint(made["NaN statistics"], poisoned)
    made["no optimizer"] = folder / "weights_only.pt"
    save_checkpoint(made["no optimizer"], {key: value for key, value in state.items() if key not in ("optimizer", "scheduler")})
    made["no model"] = folder / "no_model.pt"
    save_checkpoint(made["no model"], {key: value for key, value in state.items() if key != "model"})
    Image.new("RGB", (40, 30)).save(folder / "photo.png")
    made["image"] = folder / "photo.png"
    return made


READ_ERRORS = {
    "zero bytes": "is not a readable checkpoint",
    "truncated": "is not a readable checkpoint",
    "random bytes": "is not a readable checkpoint",
    "pickle payload": "refused to load",
    "safetensors": "is a safetensors weights file (as `mtdl export` writes), not a checkpoint",
    "a folder": "holds no model.safetensors: give a folder written by save_pretrained",
    "NaN statistics": "NaN or infinite values",
}
RESUME_ERRORS = {
    **READ_ERRORS,
    "a folder": "is a folder, not a checkpoint file",
    "other recipe": "its model does not fit this recipe's",
    "no optimizer": "it lacks optimizer, scheduler, so it is not a training checkpoint",
    "no model": "it lacks model, so it is not a training checkpoint",
}
COMMANDS = {
    "evaluate": lambda files, path, tmp: ["evaluate", str(path), "--device", "cpu", "--out", str(tmp / "eval.json")],
    "predict": lambda files, path, tmp: ["predict", str(path), str(files["image"]), "--out", str(tmp / "preds"), "--no-progress"],
    "export": lambda files, path, tmp: ["export", str(path), "--format", "safetensors", "--out", str(tmp / "w.safetensors")],
}
CASES = [(command, damage) for command in COMMANDS for damage in READ_ERRORS] + [(c, "no model") for c in COMMANDS]


def assert_one_line(capsys, message: str) -> str:
    err = capsys.readouterr().err
    assert message in err and err.startswith("mtdl: error: ") and err.count("\n") == 1, err
    return err


@pytest.mark.parametrize(("command", "damage"), CASES, ids=[f"{c}-{d}" for c, d in CASES])
def test_evaluate_predict_and_export_refuse_a_bad_checkpoint_in_one_line(files, tmp_path, capsys, command, damage):
    message = READ_ERRORS.get(damage, "holds no model weights")
    assert main(COMMANDS[command](files, files[damage], tmp_path)) == 2
    err = assert_one_line(capsys, message)
    assert str(files[damage]) in err
    assert not (files["pickle payload"].parent / "pwned").exists(), "the payload never ran"
    assert not (tmp_path / "eval.json").exists() and not (tmp_path / "w.safetensors").exists()


@pytest.mark.parametrize("damage", list(RESUME_ERRORS))
def test_resume_from_a_bad_or_foreign_checkpoint_writes_nothing(files, tmp_path, capsys, damage):
    run = tmp_path / "run"
    shutil.copytree(files["run"], run)
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    args = ["train", str(files["recipe"]), TINY_BACKBONE, "train.steps=4", f"train.output_dir={run}", "--no-progress"]
    assert main([*args, "--resume", str(files[damage])]) == 2
    err = assert_one_line(capsys, RESUME_ERRORS[damage])
    assert str(files[damage]) in err
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before, "nothing written"
    assert not (files["pickle payload"].parent / "pwned").exists(), "the payload never ran"


def test_resume_from_another_recipe_names_the_recipe_keys_that_differ(files, tmp_path, capsys):
    args = ["train", str(files["recipe"]), TINY_BACKBONE, "train.steps=4", f"train.output_dir={tmp_path / 'run'}", "--no-progress"]
    assert main([*args, "--resume", str(files["other recipe"])]) == 2
    err = capsys.readouterr().err
    changed = err.split("recipe keys that differ: ")[1]
    assert changed.startswith("tasks.seg.head.type (deeplabv3 -> deeplabv3plus), tasks.seg.head.channels (16 -> 8), "), err
    assert "tasks.normals.kind (normals -> unset)" in changed
    assert not (tmp_path / "run").exists(), "not even the output folder is made"


def test_the_payload_is_live(tmp_path):
    """The probe's payload does run when unpickled unsafely, so the checks above can fail."""
    pickle.loads(pickle.dumps(Payload(tmp_path / "pwned"))).close()
    assert (tmp_path / "pwned").exists()

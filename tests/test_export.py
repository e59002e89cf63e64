"""`mtdl export`: ONNX parity with eager PyTorch at dynamic sizes, safetensors weights, the missing-extra message."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
import torch
from test_predict import RECIPE, write_checkpoint

from multitask_deeplab.cli import main
from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.engine.build import build_model
from multitask_deeplab.engine.checkpoint import load_safetensors
from multitask_deeplab.inference.export import TOLERANCE, export_onnx, onnx_max_difference, require_onnx


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    return path, write_checkpoint(path)


def test_onnx_export_matches_pytorch_at_new_sizes(trained, tmp_path, capsys):
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    path, model = trained
    out = tmp_path / "model.onnx"
    assert main(["export", str(path), "--format", "onnx", "--out", str(out)]) == 0
    report = capsys.readouterr().out
    difference = float(re.search(r"max abs difference (\S+)", report).group(1))
    assert difference <= TOLERANCE
    session = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert [i.name for i in session.get_inputs()] == ["image"]
    assert [o.name for o in session.get_outputs()] == ["seg", "depth", "normals"]
    image = torch.rand(2, 3, 45, 29)  # a size unlike the traced one and the command's own checks
    with torch.inference_mode():
        expected = model(image)
    for name, value in zip(["seg", "depth", "normals"], session.run(None, {"image": image.numpy()})):
        assert value.shape == tuple(expected[name].shape)
        np.testing.assert_allclose(value, expected[name].numpy(), atol=TOLERANCE)


def test_onnx_parity_check_catches_a_wrong_file(trained, tmp_path):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    _, model = trained
    other = build_model(recipe_module.loads(RECIPE)).eval()  # same architecture, other weights
    export_onnx(other, tmp_path / "other.onnx", opset=17)
    assert onnx_max_difference(model, tmp_path / "other.onnx") > TOLERANCE
    assert onnx_max_difference(other, tmp_path / "other.onnx") <= TOLERANCE


def test_missing_extra_says_what_to_install(trained, tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=r'needs (onnx and )?onnxruntime, which are not installed: pip install -e "\.\[export\]"'):
        require_onnx()
    assert main(["export", str(trained[0]), "--out", str(tmp_path / "m.onnx")]) == 2
    assert 'pip install -e ".[export]"' in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_safetensors_export_loads_into_a_fresh_model(trained, tmp_path):
    path, model = trained
    out = tmp_path / "weights.safetensors"
    assert main(["export", str(path), "--format", "safetensors", "--out", str(out)]) == 0
    fresh = build_model(recipe_module.loads(RECIPE))
    load_safetensors(fresh, out)
    for name, value in model.state_dict().items():
        torch.testing.assert_close(fresh.state_dict()[name], value, rtol=0, atol=0)


def test_export_of_a_truncated_checkpoint_is_one_line(trained, tmp_path, capsys):
    bad = tmp_path / "bad.pt"
    data = trained[0].read_bytes()
    bad.write_bytes(data[: len(data) // 3])
    out = tmp_path / "bad.safetensors"
    assert main(["export", str(bad), "--format", "safetensors", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert f"{bad} is not a readable checkpoint" in err and err.count("\n") == 1
    assert not out.exists()

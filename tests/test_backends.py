"""Inference backends and precisions: ONNX Runtime and int8 against the float32 PyTorch path, what `auto` picks,
the CLI flags, and one-line errors for everything a user can get wrong."""

from __future__ import annotations

import importlib.util
import re

import numpy as np
import pytest
import torch
from test_predict import KINDS, RECIPE, PixelModel, run, write_checkpoint, write_inputs

from multitask_deeplab.cli import main
from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.engine.build import build_model
from multitask_deeplab.inference import backends
from multitask_deeplab.inference.agreement import Agreement, compare_predictors, describe
from multitask_deeplab.inference.backends import BACKENDS, Backend, BackendOptions, resolve_precision
from multitask_deeplab.inference.export import TOLERANCE, export_onnx
from multitask_deeplab.inference.predictor import DEFAULT_PRECISION, Predictor
from multitask_deeplab.inference.quantize import float_tail, quantize_onnx
from multitask_deeplab.tasks import DepthTask, NormalsTask, SegmentationTask

CPU = torch.device("cpu")
INT8_SEG_AGREEMENT = 0.93
INT8_DEPTH_REL_DIFFERENCE = 0.03
INT8_NORMALS_ANGLE_DEG = 6.0
"""The int8 bounds on the fixture model, whose outputs vary across the image (``spread_outputs``). Per-channel int8
weights and calibrated uint8 activations keep about 97 % of its pixels' classes, depth within 1 % and normals
within 1°; ranges calibrated on too dark images give 78 %, 8 % and 16°, a quantized output tail 32 %, 52 % and 94°."""


@pytest.fixture
def native_bf16(monkeypatch):
    """Pretends the CPU does (True) or does not (False) compute bf16 natively."""

    def set_native(native: bool) -> None:
        monkeypatch.setattr(torch.cpu, "_is_avx512_bf16_supported", lambda: native)
        monkeypatch.setattr(torch.cpu, "_is_amx_tile_supported", lambda: False)

    return set_native


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    return path, write_checkpoint(path)


@pytest.fixture(scope="module")
def calibration():
    generator = torch.Generator().manual_seed(5)
    return [torch.rand(3, 48, 64, generator=generator) for _ in range(8)]


@pytest.fixture(scope="module")
def fp32(trained):
    return Predictor.from_checkpoint(trained[0], "cpu", precision="fp32")


@pytest.fixture(scope="module")
def onnx_fp32(trained):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    return Predictor.from_checkpoint(trained[0], "cpu", backend="onnxruntime", precision="fp32")


@pytest.fixture(scope="module")
def int8_file(trained, calibration, tmp_path_factory):
    pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    folder = tmp_path_factory.mktemp("int8")
    export_onnx(trained[1], folder / "model.onnx")
    quantize_onnx(folder / "model.onnx", folder / "model.int8.onnx", calibration)
    return folder


def test_auto_is_bf16_only_where_the_device_computes_it_and_the_backend_runs_it(native_bf16):
    native_bf16(True)
    assert resolve_precision("auto", CPU, "torch") == "bf16"
    assert resolve_precision("auto", CPU, "onnxruntime") == "fp32"  # ONNX Runtime has no bf16 here
    native_bf16(False)
    assert resolve_precision("auto", CPU, "torch") == "fp32"
    for precision in ("fp32", "bf16"):
        assert resolve_precision(precision, CPU, "torch") == precision  # explicit bf16 stays, even emulated
    assert resolve_precision("int8", CPU, "onnxruntime") == "int8"


def test_auto_predictor_runs_bf16_autocast_on_a_native_cpu(trained, fp32, native_bf16):
    native_bf16(True)
    auto = Predictor.from_checkpoint(trained[0], "cpu", precision="auto")
    assert auto.precision == "bf16"
    image = torch.rand(3, 48, 64)
    low, full = auto(image), fp32(image)
    np.testing.assert_allclose(low["depth"], full["depth"], rtol=0.1)
    assert not np.array_equal(low["depth"], full["depth"]), "auto on a bf16 CPU should run under bf16 autocast"
    assert Predictor.from_checkpoint(trained[0], "cpu").precision == "bf16", "auto is the default"
    native_bf16(False)
    assert Predictor.from_checkpoint(trained[0], "cpu", precision="auto").precision == "fp32"
    assert Predictor.from_checkpoint(trained[0], "cpu").precision == "fp32"
    assert fp32.precision == "fp32" and Predictor(PixelModel(), KINDS, stride=16, device="cpu").precision == (
        resolve_precision(DEFAULT_PRECISION, CPU, "torch")
    )


@pytest.mark.parametrize(
    ("precision", "backend", "message"),
    [
        ("int8", "torch", "the torch backend runs fp32, bf16, not int8: use the onnxruntime backend for int8"),
        ("bf16", "onnxruntime", "the onnxruntime backend runs fp32, int8, not bf16: use the torch backend for bf16"),
        ("bf61", "torch", "inference precision must be one of 'auto', 'fp32', 'bf16', 'int8', got 'bf61': did you mean bf16?"),
        ("fp32", "onnxrt", "unknown backend 'onnxrt': did you mean 'onnxruntime'?"),
    ],
)
def test_a_precision_or_backend_that_cannot_run_names_the_fix(precision, backend, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        Predictor(PixelModel(), KINDS, stride=16, device="cpu", precision=precision, backend=backend)


def test_a_users_backend_registers_and_runs_through_the_predictor():
    calls = []

    @BACKENDS.register("recording_test_backend")
    class Recording(Backend):
        precisions = ("fp32",)

        def __init__(self, model, options):
            super().__init__(model, options)
            self.model = model.eval()

        def __call__(self, image):
            calls.append(tuple(image.shape))
            return self.model(image)

    try:
        predictor = Predictor(PixelModel(), KINDS, stride=16, device="cpu", backend="recording_test_backend", tta_flip=True)
        assert isinstance(predictor.backend, Recording) and predictor.precision == "fp32"
        assert predictor(torch.rand(3, 20, 30))["seg"].shape == (20, 30)
        assert calls == [(2, 3, 32, 32)], "the backend gets the padded batch with its flipped copy"
    finally:
        del BACKENDS._entries["recording_test_backend"]


# ---------------------------------------------------------------------------------------------- onnxruntime


def test_onnxruntime_backend_equals_the_pytorch_path(fp32, onnx_fp32):
    assert onnx_fp32.precision == "fp32" and type(onnx_fp32.backend).__name__ == "OnnxRuntimeBackend"
    with pytest.raises(AttributeError, match="runs no PyTorch module"):
        _ = onnx_fp32.model
    for tta in (False, True):
        fp32.tta_flip = onnx_fp32.tta_flip = tta
        image = torch.rand(3, 37, 53)  # odd: padded to 48 x 64 by the predictor, cropped back
        a, b = fp32(image, probabilities=True), onnx_fp32(image, probabilities=True)
        for key in ("seg_probs", "depth", "normals"):
            np.testing.assert_allclose(b[key], a[key], atol=TOLERANCE, err_msg=f"{key}, tta={tta}")
    fp32.tta_flip = onnx_fp32.tta_flip = False


def test_onnxruntime_refuses_torch_only_options_and_int8_without_calibration(trained):
    pytest.importorskip("onnxruntime")
    model = trained[1]
    with pytest.raises(ValueError, match="compile is an option of the torch backend"):
        Predictor(model, KINDS, stride=16, device="cpu", backend="onnxruntime", compile=True)
    with pytest.raises(ValueError, match="int8 needs calibration images"):
        Predictor(model, KINDS, stride=16, device="cpu", backend="onnxruntime", precision="int8")
    with pytest.raises(ValueError, match="the torch backend runs the model itself"):
        Predictor(model, KINDS, stride=16, device="cpu", exported="model.onnx")


def test_onnxruntime_providers_name_the_fix_on_cuda():
    cuda = torch.device("cuda", 0)
    with pytest.raises(ValueError, match="int8 runs on the CPU"):
        backends._providers(cuda, "int8", ["CUDAExecutionProvider", "CPUExecutionProvider"])
    with pytest.raises(ValueError, match="pip install onnxruntime-gpu"):
        backends._providers(cuda, "fp32", ["CPUExecutionProvider"])
    assert backends._providers(cuda, "fp32", ["CUDAExecutionProvider"])[0] == ("CUDAExecutionProvider", {"device_id": 0})


def test_missing_onnxruntime_is_one_line_naming_the_extra(trained, tmp_path, monkeypatch, capsys):
    real_find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "onnxruntime" else real_find_spec(name, *a))
    with pytest.raises(ValueError, match=re.escape('pip install -e ".[export]"')):
        Predictor(PixelModel(), KINDS, stride=16, device="cpu", backend="onnxruntime")
    write_inputs(tmp_path / "in")
    assert run(str(trained[0]), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--backend", "onnxruntime") == 2
    err = capsys.readouterr().err
    assert 'pip install -e ".[export]"' in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------------- int8


def test_the_float_tail_is_each_outputs_last_conv_and_what_follows(trained, tmp_path):
    onnx = pytest.importorskip("onnx")
    export_onnx(trained[1], tmp_path / "m.onnx")
    graph = onnx.load(str(tmp_path / "m.onnx")).graph
    tail = set(float_tail(graph))
    weights = {node.input[1] for node in graph.node if node.op_type == "Conv" and node.name in tail}
    assert weights == {f"model.heads.{task}.classifier.weight" for task in KINDS}
    resizes = {node.name for node in graph.node if node.op_type == "Resize"}
    assert resizes and resizes <= tail, "the upsampling to the input size stays in float"
    assert {node.op_type for node in graph.node if node.name in tail} >= {"Softplus", "Div"}  # depth, normals


def test_int8_file_is_quantized_except_its_float_tail(int8_file):
    onnx = pytest.importorskip("onnx")
    graph = onnx.load(str(int8_file / "model.int8.onnx")).graph
    dequantized = {node.output[0] for node in graph.node if node.op_type == "DequantizeLinear"}
    convs = [node for node in graph.node if node.op_type == "Conv"]
    floats = {node.input[1] for node in convs if node.input[1] not in dequantized}
    assert floats == {f"model.heads.{task}.classifier.weight" for task in KINDS}, "every other conv has int8 weights"


def test_int8_follows_float32_within_the_stated_bounds(trained, fp32, calibration):
    pytest.importorskip("onnxruntime")
    int8 = Predictor(trained[1], KINDS, stride=16, device="cpu", backend="onnxruntime", precision="int8", calibration=calibration)
    assert int8.precision == "int8"
    images = torch.rand(4, 3, 48, 64, generator=torch.Generator().manual_seed(9))  # not the calibration images
    results = compare_predictors(fp32, int8, [images[:2], images[2:]])
    assert results["seg.agreement"] >= INT8_SEG_AGREEMENT
    assert results["depth.rel_difference"] <= INT8_DEPTH_REL_DIFFERENCE
    assert results["normals.angle_deg"] <= INT8_NORMALS_ANGLE_DEG
    assert results["depth.rel_difference"] > 1e-4, "int8 should round differently from float32"


def test_int8_predictor_calibrates_on_the_recipes_train_split_or_loads_an_int8_file(trained, fp32, int8_file):
    pytest.importorskip("onnxruntime")
    image = torch.rand(3, 48, 64)
    from_split = Predictor.from_checkpoint(trained[0], "cpu", backend="onnxruntime", precision="int8")
    from_file = Predictor.from_checkpoint(
        trained[0], "cpu", backend="onnxruntime", precision="int8", exported=int8_file / "model.int8.onnx"
    )
    reference = fp32(image)["depth"]
    for predictor in (from_split, from_file):
        np.testing.assert_allclose(predictor(image)["depth"], reference, rtol=0.1)
    assert not np.array_equal(from_split(image)["depth"], from_file(image)["depth"]), "other calibration, other ranges"


def test_exported_files_must_match_the_precision_and_the_tasks(trained, int8_file, tmp_path):
    pytest.importorskip("onnxruntime")
    path, model = trained
    with pytest.raises(ValueError, match="model.int8.onnx is a int8 model but precision fp32 was asked for; pass precision int8"):
        Predictor.from_checkpoint(path, "cpu", backend="onnxruntime", exported=int8_file / "model.int8.onnx")
    with pytest.raises(ValueError, match="model.onnx is a fp32 model but precision int8"):
        Predictor.from_checkpoint(path, "cpu", backend="onnxruntime", precision="int8", exported=int8_file / "model.onnx")
    seg_only = build_model(recipe_module.loads(RECIPE.split("  depth:")[0])).eval()
    export_onnx(seg_only, tmp_path / "seg.onnx")
    with pytest.raises(ValueError, match="has outputs seg but the model's tasks are seg, depth, normals; export this checkpoint again"):
        Predictor.from_checkpoint(path, "cpu", backend="onnxruntime", exported=tmp_path / "seg.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not a model")
    with pytest.raises(ValueError, match="cannot read the ONNX file"):
        Predictor.from_checkpoint(path, "cpu", backend="onnxruntime", exported=tmp_path / "bad.onnx")


# ------------------------------------------------------------------------------------------------------- CLI


def test_cli_backend_onnxruntime_writes_what_pytorch_writes(trained, tmp_path):
    pytest.importorskip("onnxruntime")
    write_inputs(tmp_path / "in")
    depth = {}
    for backend, precision in (("torch", "fp32"), ("onnxruntime", "fp32"), ("onnxruntime", "int8")):
        out = tmp_path / f"{backend}-{precision}"
        argv = ["--backend", backend, "--precision", precision, "--save-npy"]
        assert run(str(trained[0]), str(tmp_path / "in" / "rgb.png"), "--out", str(out), *argv) == 0
        depth[backend, precision] = np.load(out / "rgb_depth.npy")
    np.testing.assert_allclose(depth["onnxruntime", "fp32"], depth["torch", "fp32"], atol=TOLERANCE)
    np.testing.assert_allclose(depth["onnxruntime", "int8"], depth["torch", "fp32"], rtol=0.1)
    assert not np.allclose(depth["onnxruntime", "int8"], depth["torch", "fp32"], atol=TOLERANCE)


def test_cli_precision_errors_are_one_line_before_any_output(trained, tmp_path, capsys, monkeypatch):
    from multitask_deeplab.inference import quantize

    monkeypatch.setattr(quantize, "sample_images", lambda *a, **k: pytest.fail("calibrated before checking the precision"))
    write_inputs(tmp_path / "in")
    assert run(str(trained[0]), str(tmp_path / "in"), "--out", str(tmp_path / "out"), "--precision", "int8") == 2
    err = capsys.readouterr().err
    assert "the torch backend runs fp32, bf16, not int8: use the onnxruntime backend" in err and err.count("\n") == 1
    assert not list((tmp_path / "out").glob("*.png"))


def test_export_int8_writes_a_quantized_file_and_reports_its_agreement(trained, tmp_path, capsys):
    onnx = pytest.importorskip("onnx")
    pytest.importorskip("onnxruntime")
    out = tmp_path / "model.onnx"
    assert main(["export", str(trained[0]), "--out", str(out), "--int8", "--calibration-images", "4"]) == 0
    report = capsys.readouterr().out
    assert f"wrote {tmp_path / 'model.int8.onnx'}: int8" in report and "calibrated on 4 training images" in report
    agreement = re.search(r"int8 vs float32 PyTorch on 16 val images: seg (\S+) % of pixels agree, depth (\S+) % mean relative", report)
    assert float(agreement.group(1)) >= 100 * INT8_SEG_AGREEMENT and float(agreement.group(2)) <= 100 * INT8_DEPTH_REL_DIFFERENCE
    graph = onnx.load(str(tmp_path / "model.int8.onnx")).graph
    assert any(node.op_type == "QuantizeLinear" for node in graph.node)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--format", "safetensors", "--int8"], "--int8 quantizes the ONNX export: use --format onnx"),
        (["--calibration-images", "4"], "--calibration-images sets the int8 calibration: add --int8"),
        (["--int8", "--calibration-images", "0"], "int8 calibration needs at least 1 image, got 0"),
    ],
)
def test_export_int8_options_are_checked_before_any_file_is_written(trained, tmp_path, capsys, argv, message):
    assert main(["export", str(trained[0]), "--out", str(tmp_path / "m.onnx"), *argv]) == 2
    assert message in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


# ------------------------------------------------------------------------------------------------ agreement


def test_agreement_measures_by_hand():
    tasks = {"seg": SegmentationTask(num_classes=2), "depth": DepthTask(), "normals": NormalsTask()}
    agreement = Agreement(tasks)
    seg = torch.tensor([[0.9, 0.1], [0.2, 0.8]]).T.reshape(1, 2, 1, 2)  # classes 0 and 1
    flipped = torch.tensor([[0.9, 0.1], [0.9, 0.1]]).T.reshape(1, 2, 1, 2)  # classes 0 and 0
    depth, other = torch.tensor([[[[2.0, 4.0]]]]), torch.tensor([[[[2.2, 3.0]]]])  # 10 % and 25 % off
    normals = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1, 1).expand(1, 3, 1, 2)
    turned = torch.stack([torch.tensor([0.0, 1.0, 0.0]), torch.tensor([1.0, 0.0, 0.0])], -1).view(1, 3, 1, 2)  # 90° and 0°
    agreement.update({"seg": seg, "depth": depth, "normals": normals}, {"seg": flipped, "depth": other, "normals": turned})
    agreement.update({"seg": seg, "depth": depth, "normals": normals}, {"seg": seg, "depth": depth, "normals": normals})
    results = agreement.compute()
    assert results == pytest.approx({"seg.agreement": 0.75, "depth.rel_difference": 0.0875, "normals.angle_deg": 22.5})
    assert describe(results) == "seg 75.00 % of pixels agree, depth 8.75 % mean relative difference, normals 22.50° mean angle"
    assert describe({"x.made_up": 0.25}) == "x made_up 0.25"  # a kind of one's own: its comparison, phrased plainly


def test_backend_options_are_checked_by_the_backend():
    with pytest.raises(ValueError, match="the TorchBackend backend precision must be one of 'fp32', 'bf16', got 'int8'"):
        backends.TorchBackend(PixelModel(), BackendOptions(device=CPU, precision="int8"))

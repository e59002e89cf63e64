"""The Predictor API and `mtdl predict`: round trips against the model, sizes, TTA, sliding window, bad input."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from multitask_deeplab.cli import main
from multitask_deeplab.config import recipe as recipe_module
from multitask_deeplab.engine.build import build_model
from multitask_deeplab.engine.checkpoint import save_checkpoint
from multitask_deeplab.inference.predictor import Predictor, _tile_starts, pad_to_multiple, to_tensor
from multitask_deeplab.tasks import DepthTask, NormalsTask, SegmentationTask

RECIPE = """
model: {backbone: resnet18, output_stride: 16}
tasks:
  seg: {kind: segmentation, num_classes: 5, head: {type: deeplabv3, channels: 16}, loss: {type: cross_entropy}}
  depth: {kind: depth, head: {type: deeplabv3, channels: 16}, loss: {type: l1}}
  normals: {kind: normals, head: {type: deeplabv3, channels: 16}, loss: {type: cosine}}
"""
KINDS = {"seg": SegmentationTask(num_classes=5), "depth": DepthTask(), "normals": NormalsTask()}


def write_checkpoint(path: Path, *, head_type: str | None = None) -> nn.Module:
    """Saves a checkpoint the way the trainer does (weights + plain recipe dict); returns the model in eval mode.

    Args:
        head_type: When given, the stored recipe names this head for ``seg`` (e.g. an unregistered custom one).
    """
    torch.manual_seed(0)
    recipe = recipe_module.loads(RECIPE)
    model = build_model(recipe)
    for module in model.modules():  # non-trivial statistics, so eval mode and the weights matter
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
    spread_outputs(model.eval(), torch.rand(2, 3, 48, 64))
    stored = recipe_module.to_dict(recipe)
    if head_type:
        stored["tasks"]["seg"]["head"]["type"] = head_type
    save_checkpoint(path, {"model": model.state_dict(), "recipe": stored, "epoch": 1, "step": 10})
    return model.eval()


@torch.no_grad()
def spread_outputs(model: nn.Module, probe: torch.Tensor) -> None:
    """Standardises each head classifier's input over ``probe``, so that an untrained model's predictions vary
    across an image (several classes, a range of depths) as a trained one's do, instead of being nearly constant."""
    inputs = []
    hooks = [head.classifier.register_forward_hook(lambda m, i, o: inputs.append(i[0])) for head in model.heads.values()]
    model(probe)
    for hook in hooks:
        hook.remove()
    for head, features in zip(model.heads.values(), inputs):
        weight = head.classifier.weight[:, :, 0, 0]
        weight /= features.std((0, 2, 3)) + 1e-6
        head.classifier.bias.copy_(-(weight @ features.mean((0, 2, 3))))


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> tuple[Path, nn.Module]:
    path = tmp_path_factory.mktemp("ckpt") / "best.pt"
    return path, write_checkpoint(path)


@pytest.fixture(scope="module")
def predictor(trained) -> Predictor:
    return Predictor.from_checkpoint(trained[0], "cpu", precision="fp32")  # the exact function: bf16 (the default on bf16 CPUs) has its own tests


def reference(model: nn.Module, image: torch.Tensor) -> dict[str, torch.Tensor]:
    """The model's own forward on a B x 3 x H x W batch, padded (edge) to a multiple of 16 and cropped back."""
    height, width = image.shape[-2:]
    with torch.inference_mode():
        outputs = model(pad_to_multiple(image, 16))
    return {name: value[..., :height, :width] for name, value in outputs.items()}


class PixelModel(nn.Module):
    """Every output pixel depends on its own input pixel only: flip-equivariant, and tiling cannot change it."""

    def __init__(self) -> None:
        super().__init__()
        self.seg, self.depth, self.normals = nn.Conv2d(3, 5, 1), nn.Conv2d(3, 1, 1), nn.Conv2d(3, 3, 1)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        normals = self.normals(image)
        return {"seg": self.seg(image), "depth": F.softplus(self.depth(image)), "normals": F.normalize(normals, dim=1)}


# ------------------------------------------------------------------------------------------------ Python API


def test_predictions_equal_the_model_forward(trained, predictor):
    _, model = trained
    image = torch.rand(3, 48, 64)
    result = predictor(image, probabilities=True)
    expected = reference(model, image[None])
    assert {name: type(task) for name, task in predictor.tasks.items()} == {name: type(task) for name, task in KINDS.items()}
    assert set(result) == {"seg", "seg_probs", "depth", "normals"}
    assert result["seg"].shape == (48, 64) and result["seg"].dtype == np.int64
    assert result["depth"].shape == (48, 64) and result["depth"].dtype == np.float32
    assert result["normals"].shape == (3, 48, 64) and result["seg_probs"].shape == (5, 48, 64)
    np.testing.assert_allclose(result["seg_probs"], expected["seg"][0].softmax(0).numpy(), atol=1e-5)
    np.testing.assert_array_equal(result["seg"], expected["seg"][0].argmax(0).numpy())
    np.testing.assert_allclose(result["depth"], expected["depth"][0, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(result["normals"], expected["normals"][0].numpy(), atol=1e-5)
    assert len(np.unique(result["seg"])) > 1, "the fixture model should not predict one class everywhere"


def test_inference_options_keep_the_function_and_leave_the_model_alone(trained, predictor):
    """BN folding and channels_last (on by default) change the arithmetic's rounding only."""
    path, model = trained
    plain = Predictor.from_checkpoint(path, "cpu", fold_bn=False, channels_last=False, precision="fp32")
    assert not any(isinstance(m, nn.BatchNorm2d) for m in predictor.model.modules())
    assert any(isinstance(m, nn.BatchNorm2d) for m in plain.model.modules())
    conv = next(m for m in predictor.model.modules() if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    image = torch.rand(3, 48, 64)
    fast, exact = predictor(image, probabilities=True), plain(image, probabilities=True)
    np.testing.assert_allclose(fast["seg_probs"], exact["seg_probs"], atol=1e-4)
    np.testing.assert_allclose(fast["depth"], exact["depth"], rtol=1e-4)
    np.testing.assert_allclose(fast["normals"], exact["normals"], atol=1e-3)
    assert (fast["seg"] == exact["seg"]).mean() > 0.99  # argmax can flip where two classes tie to rounding

    user_model = write_checkpoint(path.with_name("other.pt"))
    before = {name: value.clone() for name, value in user_model.state_dict().items()}
    Predictor(user_model, KINDS, stride=16, device="cpu")
    assert any(isinstance(m, nn.BatchNorm2d) for m in user_model.modules()), "folding works on a copy"
    for name, value in user_model.state_dict().items():
        torch.testing.assert_close(value, before[name], rtol=0, atol=0, msg=name)


def test_bf16_runs_when_asked_and_stays_close(trained, predictor):
    bf16 = Predictor.from_checkpoint(trained[0], "cpu", precision="bf16")
    assert bf16.precision == "bf16"
    image = torch.rand(3, 48, 64)
    low, full = bf16(image, probabilities=True), predictor(image, probabilities=True)
    assert low["depth"].dtype == np.float32
    np.testing.assert_allclose(low["depth"], full["depth"], rtol=0.1)
    assert not np.array_equal(low["depth"], full["depth"]), "bf16 autocast should change the rounding"


def test_compiled_predictor_equals_the_eager_one():
    eager = Predictor(PixelModel(), KINDS, stride=16, device="cpu", precision="fp32")
    compiled = Predictor(eager.model, KINDS, stride=16, device="cpu", compile=True, precision="fp32")
    assert isinstance(compiled.model, torch._dynamo.eval_frame.OptimizedModule)
    image = torch.rand(3, 20, 30)
    a, b = eager(image, probabilities=True), compiled(image, probabilities=True)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-5, err_msg=key)


def test_odd_sizes_mixed_input_types_and_batching(trained, predictor):
    _, model = trained
    small = np.random.default_rng(0).integers(0, 256, (37, 53, 3), dtype=np.uint8)
    large = torch.rand(3, 50, 70)
    results = predictor([small, large, Image.fromarray(small), torch.from_numpy(small).permute(2, 0, 1)])
    assert [r["seg"].shape for r in results] == [(37, 53), (50, 70), (37, 53), (37, 53)]
    expected = reference(model, torch.from_numpy(small).permute(2, 0, 1)[None].float() / 255)
    for result in (results[0], results[2], results[3]):  # run as one batch of 3: convolutions round differently
        np.testing.assert_allclose(result["depth"], expected["depth"][0, 0].numpy(), atol=1e-4)
        np.testing.assert_allclose(result["normals"], expected["normals"][0].numpy(), atol=1e-4)
    np.testing.assert_allclose(results[1]["depth"], reference(model, large[None])["depth"][0, 0].numpy(), atol=1e-5)
    assert isinstance(predictor(large[None].expand(2, -1, -1, -1)), list), "a 4-D tensor is a batch of images"


def test_grayscale_and_rgba_are_converted(predictor):
    gray = np.random.default_rng(1).integers(0, 256, (32, 48), dtype=np.uint8)
    rgb = np.repeat(gray[..., None], 3, axis=2)
    expected = predictor(rgb)["depth"]
    rgba = np.concatenate([rgb, np.full_like(gray, 7)[..., None]], axis=2)
    for image in (gray, Image.fromarray(gray), Image.fromarray(rgba), rgba, Image.fromarray(gray).convert("LA")):
        np.testing.assert_array_equal(predictor(image)["depth"], expected)


@pytest.mark.parametrize(
    ("image", "in_chans", "message"),
    [
        (np.zeros((8, 8, 5), np.uint8), 3, "the image has 5 channels but the model takes 3"),
        (np.zeros((8, 8, 3), np.uint8), 4, "the image has 3 channels but the model takes 4"),
        (torch.full((3, 8, 8), 255.0), 3, "float image values must be in [0, 1], got 255 to 255"),
        (np.zeros((8, 8), np.int64), 3, "unsupported image dtype torch.int64"),
        ("photo.jpg", 3, "cannot predict on a str"),
    ],
)
def test_bad_images_are_refused_clearly(image, in_chans, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        to_tensor(image, in_chans)


def test_uint16_images_are_scaled():
    image = np.array([[0, 65535]], dtype=np.uint16)
    torch.testing.assert_close(to_tensor(image)[:, 0], torch.tensor([[0.0, 1.0]] * 3))


def test_flip_tta_on_a_flip_equivariant_model():
    plain = Predictor(PixelModel(), KINDS, stride=16, device="cpu", precision="fp32")
    tta = Predictor(plain.model, KINDS, stride=16, device="cpu", tta_flip=True, precision="fp32")
    image = torch.rand(3, 20, 30)
    a, b = plain(image, probabilities=True), tta(image, probabilities=True)
    for key in ("seg", "seg_probs", "depth"):
        np.testing.assert_allclose(b[key], a[key], atol=1e-6)
    # A per-pixel model predicts the same normal for the mirrored image; mirrored back, its x component flips sign,
    # so the average keeps (0, y, z), renormalised.
    expected = F.normalize(torch.from_numpy(a["normals"]) * torch.tensor([0.0, 1, 1]).view(3, 1, 1), dim=0)
    np.testing.assert_allclose(b["normals"], expected.numpy(), atol=1e-6)


def test_flip_tta_is_the_hand_computed_average(trained):
    path, model = trained
    image = torch.rand(1, 3, 48, 64)
    exact = {"fold_bn": False, "channels_last": False, "precision": "fp32"}  # the model's own arithmetic, to compare at 1e-5
    result = Predictor.from_checkpoint(path, "cpu", tta_flip=True, **exact)(image[0], probabilities=True)
    both = reference(model, torch.cat([image, image.flip(-1)]))  # one batch, as the predictor runs it
    plain, flipped = ({name: value[i : i + 1] for name, value in both.items()} for i in (0, 1))
    probs = (plain["seg"].softmax(1) + flipped["seg"].softmax(1).flip(-1)) / 2
    depth = (plain["depth"] + flipped["depth"].flip(-1)) / 2
    mirrored = flipped["normals"].flip(-1) * torch.tensor([-1.0, 1, 1]).view(1, 3, 1, 1)
    normals = F.normalize(plain["normals"] + mirrored, dim=1)
    np.testing.assert_allclose(result["seg_probs"], probs[0].numpy(), atol=1e-5)
    np.testing.assert_allclose(result["depth"], depth[0, 0].numpy(), atol=1e-5)
    np.testing.assert_allclose(result["normals"], normals[0].numpy(), atol=1e-5)


def test_tile_starts_cover_the_image_with_a_third_of_overlap():
    assert _tile_starts(100, 48) == [0, 32, 52]
    assert _tile_starts(48, 48) == [0] and _tile_starts(30, 48) == [0]
    assert _tile_starts(97, 32) == [0, 22, 44, 65]


@pytest.mark.parametrize("tta", [False, True])
def test_sliding_window_equals_whole_image_for_a_local_model(tta):
    whole = Predictor(PixelModel(), KINDS, stride=16, device="cpu", tta_flip=tta, precision="fp32")
    tiled = Predictor(whole.model, KINDS, stride=16, device="cpu", tta_flip=tta, window=32, precision="fp32")
    image = torch.rand(3, 70, 90)
    a, b = whole(image, probabilities=True), tiled(image, probabilities=True)
    for key in a:
        np.testing.assert_allclose(b[key], a[key], atol=1e-6, err_msg=key)


def test_sliding_window_on_the_real_model(trained):
    result = Predictor.from_checkpoint(trained[0], "cpu", window=32, precision="fp32")(torch.rand(3, 45, 77))
    assert result["seg"].shape == result["depth"].shape == (45, 77)
    assert (result["depth"] > 0).all()
    np.testing.assert_allclose(np.linalg.norm(result["normals"], axis=0), 1, atol=1e-5)


def test_bad_settings():
    with pytest.raises(ValueError, match="window must be at least the output stride"):
        Predictor(PixelModel(), KINDS, stride=16, device="cpu", window=8)
    with pytest.raises(ValueError, match="task 'x': unknown task kind 'edgez'"):
        Predictor(PixelModel(), {"x": "edgez"}, stride=16, device="cpu")
    with pytest.raises(ValueError, match="task 'x': task kind 'segmentation' failed to build: TypeError: .* missing 1 required keyword-only argument: 'num_classes'"):
        Predictor(PixelModel(), {"x": "segmentation"}, stride=16, device="cpu")
    assert isinstance(Predictor(PixelModel(), {"depth": "depth"}, stride=16, device="cpu").tasks["depth"], DepthTask)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device is available"):
            Predictor(PixelModel(), KINDS, stride=16, device="cuda")


# ------------------------------------------------------------------------------------------------------- CLI


def write_inputs(folder: Path) -> dict[str, tuple[int, int]]:
    """An RGB PNG, a grayscale JPEG and an RGBA PNG (two of one size, one odd size); returns stem -> (H, W)."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(folder / "rgb.png")
    Image.fromarray(rng.integers(0, 256, (37, 53), dtype=np.uint8)).save(folder / "gray.jpg")
    Image.fromarray(rng.integers(0, 256, (48, 64, 4), dtype=np.uint8), mode="RGBA").save(folder / "rgba.png")
    return {"rgb": (48, 64), "gray": (37, 53), "rgba": (48, 64)}


def run(*argv: str) -> int:
    return main(["predict", *argv, "--no-progress"])


def test_cli_writes_every_picture_and_array(trained, predictor, tmp_path):
    from multitask_deeplab.visualize import segmentation_palette

    sizes = write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert run(str(trained[0]), str(tmp_path / "in"), "--out", str(out), "--save-npy", "--batch-size", "2", "--precision", "fp32") == 0
    for stem, (height, width) in sizes.items():
        arrays = {name: np.load(out / f"{stem}_{name}.npy") for name in KINDS}
        assert arrays["seg"].shape == arrays["depth"].shape == (height, width) and arrays["normals"].shape == (3, height, width)
        assert (arrays["seg"].dtype, arrays["depth"].dtype, arrays["normals"].dtype) == (np.int64, np.float32, np.float32)
        with Image.open(tmp_path / "in" / f"{stem}.{'jpg' if stem == 'gray' else 'png'}") as image:
            np.testing.assert_allclose(arrays["depth"], predictor(image)["depth"], atol=1e-4)

        seg = Image.open(out / f"{stem}_seg.png")
        assert (seg.mode, seg.size) == ("P", (width, height))
        np.testing.assert_array_equal(np.asarray(seg), arrays["seg"])
        assert seg.getpalette()[:15] == segmentation_palette(5)[:15]

        depth = Image.open(out / f"{stem}_depth.png")
        assert depth.mode == "I;16" and depth.size == (width, height)
        np.testing.assert_allclose(np.asarray(depth) / 1000, arrays["depth"], atol=0.5e-3 + 1e-6)

        for name in ("seg_overlay", "depth_color", "normals"):
            picture = Image.open(out / f"{stem}_{name}.png")
            assert (picture.mode, picture.size) == ("RGB", (width, height)), name
    summary = Image.open(out / "summary.png")
    assert summary.mode == "RGB" and summary.size[1] >= 3 * 37
    assert not list(out.glob(".*")), "no temporary files are left behind"


def test_cli_precision_picks_bf16_or_float32(trained, predictor, tmp_path):
    write_inputs(tmp_path / "in")
    depth = {}
    for precision in ("fp32", "bf16"):
        out = tmp_path / precision
        assert run(str(trained[0]), str(tmp_path / "in" / "rgb.png"), "--out", str(out), "--save-npy", "--precision", precision) == 0
        depth[precision] = np.load(out / "rgb_depth.npy")
    with Image.open(tmp_path / "in" / "rgb.png") as image:
        np.testing.assert_allclose(depth["fp32"], predictor(image)["depth"], atol=1e-5)
    np.testing.assert_allclose(depth["bf16"], depth["fp32"], rtol=0.1)
    assert not np.array_equal(depth["bf16"], depth["fp32"])


def test_depth_png_encoding(tmp_path):
    from multitask_deeplab.tasks.depth import save_depth_png

    save_depth_png(np.array([[0.0, 0.0002, 1.2344, 70.0, np.nan, -1.0]], dtype=np.float32), tmp_path / "d.png")
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "d.png")), [[0, 1, 1234, 65535, 0, 0]])


def test_cli_skips_unreadable_images_and_exits_1(trained, tmp_path, capsys):
    folder = tmp_path / "in"
    write_inputs(folder)
    (folder / "noise.png").write_bytes(os.urandom(200))
    whole = (folder / "rgb.png").read_bytes()
    (folder / "cut.png").write_bytes(whole[: len(whole) // 2])
    out = tmp_path / "out"
    assert run(str(trained[0]), str(folder), "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "skipped" in err and "noise.png" in err and "cut.png" in err
    assert {"rgb_seg.png", "gray_depth.png", "rgba_normals.png", "summary.png"} <= {p.name for p in out.iterdir()}
    assert not list(out.glob("noise_*")) and not list(out.glob("cut_*"))


def test_cli_globs_and_files(trained, tmp_path):
    write_inputs(tmp_path / "in")
    out = tmp_path / "out"
    assert run(str(trained[0]), str(tmp_path / "in" / "*.png"), str(tmp_path / "in" / "gray.jpg"), "--out", str(out), "--tta") == 0
    assert sorted(p.name for p in out.glob("*_seg.png")) == ["gray_seg.png", "rgb_seg.png", "rgba_seg.png"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d, ckpt: [str(ckpt), str(d / "none*.png"), "--out", str(d / "o")], "no input images matched"),
        (lambda d, ckpt: [str(ckpt), str(d / "in"), "--out", str(d / "in" / "rgb.png" / "o")], "cannot write to the output folder"),
        (lambda d, ckpt: [str(d / "missing.pt"), str(d / "in"), "--out", str(d / "o")], "checkpoint not found"),
        (lambda d, ckpt: [str(ckpt), str(d / "in"), str(d / "in" / "rgb.png"), "--out", str(d / "o"), "--window", "4"], "window must be at least"),
    ],
)
def test_cli_bad_arguments_fail_with_one_line(trained, tmp_path, capsys, make, message):
    write_inputs(tmp_path / "in")
    assert run(*make(tmp_path, trained[0])) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_cli_refuses_inputs_that_share_a_name(trained, tmp_path, capsys):
    write_inputs(tmp_path / "in")
    Image.new("RGB", (8, 8)).save(tmp_path / "in" / "rgb.jpg")
    assert run(str(trained[0]), str(tmp_path / "in"), "--out", str(tmp_path / "o")) == 2
    assert "share the name 'rgb'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "damage",
    ["truncated", "random", "empty", "text"],
)
def test_cli_bad_checkpoints(trained, tmp_path, capsys, damage):
    write_inputs(tmp_path / "in")
    bad = tmp_path / "bad.pt"
    data = trained[0].read_bytes()
    payloads = {
        "truncated": data[: len(data) // 2],
        "random": np.random.default_rng(0).bytes(4096),
        "empty": b"",
        "text": b"seg: {kind: segmentation}\n",
    }
    bad.write_bytes(payloads[damage])
    assert run(str(bad), str(tmp_path / "in"), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert str(bad) in err and err.count("\n") == 1 and "Traceback" not in err
    if damage == "truncated":
        assert "is not a readable checkpoint" in err


def test_cli_custom_head_needs_its_plugin(tmp_path, capsys):
    write_inputs(tmp_path / "in")
    write_checkpoint(tmp_path / "custom.pt", head_type="my_edges")
    assert run(str(tmp_path / "custom.pt"), str(tmp_path / "in"), "--out", str(tmp_path / "o")) == 2
    err = capsys.readouterr().err
    assert "unknown head 'my_edges'" in err and "pass --plugin <the .py file or module that registers it>" in err


def test_cli_applies_exif_orientation_and_keeps_dotted_names(trained, tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown rotated by 90 degrees
    Image.new("RGB", (64, 48), (90, 120, 200)).save(folder / "phone.2024.jpg", exif=exif)
    assert run(str(trained[0]), str(folder), "--out", str(tmp_path / "out")) == 0
    assert Image.open(tmp_path / "out" / "phone.2024_depth.png").size == (48, 64)


def test_scales_must_be_positive_factors():
    with pytest.raises(ValueError, match=r"scales must be positive factors such as 0.75 1 1.25, got \[1.0, 0\]"):
        Predictor(PixelModel(), KINDS, stride=16, device="cpu", scales=[1.0, 0])

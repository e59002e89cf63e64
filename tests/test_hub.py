"""The Hugging Face Hub, offline: repos put into a huggingface_hub cache laid out as huggingface_hub writes it
(https://huggingface.co/docs/hub/local-cache), then read through the real huggingface_hub and timm code paths with
``HF_HUB_OFFLINE=1`` (set for every test in conftest.py)."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from helpers_training import load, write_recipe
from PIL import Image
from safetensors.torch import save_file

from multitask_deeplab.cli import main
from multitask_deeplab.config import recipe as R
from multitask_deeplab.engine.restore import model_from_checkpoint
from multitask_deeplab.inference.predictor import Predictor
from multitask_deeplab.models.backbone import TimmBackbone
from multitask_deeplab.models.heads import HEADS
from multitask_deeplab.models.model import MultiTaskModel

COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty huggingface_hub cache that every download of the test reads (``HF_HUB_CACHE``)."""
    cache = tmp_path / "hf-cache"
    cache.mkdir()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    assert huggingface_hub.constants.HF_HUB_OFFLINE, "conftest.py sets HF_HUB_OFFLINE=1 before huggingface_hub is imported"
    return cache


def put_in_cache(cache: Path, repo_id: str, folder: Path, *, revision: str = "main", commit: str = COMMIT) -> None:
    """Caches every file of ``folder`` as a download of ``repo_id`` at ``revision``: the content in ``blobs/<sha256>``,
    a link to it in ``snapshots/<commit>/``, and the commit in ``refs/<revision>``."""
    repo = cache / f"models--{repo_id.replace('/', '--')}"
    for file in sorted(p for p in folder.rglob("*") if p.is_file()):
        blob = repo / "blobs" / hashlib.sha256(file.read_bytes()).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(file, blob)
        link = repo / "snapshots" / commit / file.relative_to(folder)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(Path("../" * len(link.relative_to(repo / "snapshots").parts[1:]) + f"../blobs/{blob.name}"))
    (repo / "refs").mkdir(parents=True, exist_ok=True)
    (repo / "refs" / revision).write_text(commit)


def timm_weights(tmp_path: Path, name: str = "test_resnet", seed: int = 3) -> tuple[Path, dict[str, torch.Tensor]]:
    """A folder as ``timm.models.save_for_hf`` writes it (config.json, model.safetensors) with random weights."""
    torch.manual_seed(seed)
    model = timm.create_model(name)
    folder = tmp_path / f"{name}-weights"
    timm.models.save_for_hf(model, str(folder), safe_serialization=True)
    return folder, model.state_dict()


def assert_backbone_holds(backbone: TimmBackbone, state: dict[str, torch.Tensor]) -> None:
    loaded = backbone.body.state_dict()
    assert loaded.keys() <= state.keys() and len(loaded) > 10
    for key, value in loaded.items():
        assert torch.equal(value, state[key]), key


# ------------------------------------------------------------------------------------------------ backbone weights
def test_hf_hub_backbone_weights_come_from_the_cache_offline(tmp_path, hub_cache):
    folder, state = timm_weights(tmp_path)
    put_in_cache(hub_cache, "someone/test_resnet.mine", folder)
    backbone = TimmBackbone("test_resnet", output_stride=8, pretrained="hf-hub:someone/test_resnet.mine")
    assert_backbone_holds(backbone, state)


def test_pretrained_true_reads_timms_default_repo_from_the_cache_offline(tmp_path, hub_cache):
    folder, state = timm_weights(tmp_path)
    put_in_cache(hub_cache, timm.get_pretrained_cfg_value("test_resnet", "hf_hub_id"), folder)
    assert_backbone_holds(TimmBackbone("test_resnet", output_stride=16, pretrained=True), state)


def test_a_local_folder_of_timm_weights_loads(tmp_path):
    folder, state = timm_weights(tmp_path)
    assert_backbone_holds(TimmBackbone("test_resnet", output_stride=8, pretrained=str(folder)), state)
    (folder / "model.safetensors").unlink()
    save_file({k: v.contiguous() for k, v in timm.create_model("test_efficientnet").state_dict().items()}, str(folder / "model.safetensors"))
    with pytest.raises(ValueError, match=rf"weights {folder} do not fit backbone 'test_resnet': .*keys"):
        TimmBackbone("test_resnet", pretrained=str(folder))


@pytest.mark.parametrize("pretrained", ["hf-hub:someone/absent", True])
def test_backbone_weights_missing_offline_name_hf_hub_offline_and_the_cache(hub_cache, pretrained):
    with pytest.raises(ValueError) as info:
        TimmBackbone("test_resnet", pretrained=pretrained)
    message = str(info.value)
    repo = "someone/absent" if pretrained is not True else timm.get_pretrained_cfg_value("test_resnet", "hf_hub_id")
    assert message.startswith(f"backbone weights {repo} is not in the Hugging Face cache ({hub_cache})")
    assert "HF_HUB_OFFLINE=1" in message and f"hf download {repo}" in message and "\n" not in message


def test_a_malformed_hub_name_is_refused():
    with pytest.raises(ValueError, match=r"pretrained 'hf-hub:resnet50': expected hf-hub:<org>/<name>"):
        TimmBackbone("test_resnet", pretrained="hf-hub:resnet50")


# ------------------------------------------------------------------------------------- pretrained folders and repos
@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> Path:
    """A checkpoint of the tiny recipe after 2 steps, with a moving average of the weights."""
    folder = tmp_path_factory.mktemp("trained")
    recipe = write_recipe(folder)
    assert main(["train", str(recipe), "train.steps=2", "train.ema.decay=0.5", "data.num_samples=8", f"train.output_dir={folder / 'run'}", "--no-progress"]) == 0
    return folder / "run" / "last.pt"


def outputs(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        return model.eval()(torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(5)))


def assert_same_model(a: torch.nn.Module, b: torch.nn.Module) -> None:
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(value, b.state_dict()[key]) for key, value in a.state_dict().items())
    first, second = outputs(a), outputs(b)
    assert first.keys() == second.keys() and all(torch.equal(first[k], second[k]) for k in first)


def test_save_then_load_gives_the_same_model_and_a_model_card(trained, tmp_path, capsys):
    folder = tmp_path / "pretrained"
    assert main(["export", str(trained), "--format", "pretrained", "--out", str(folder)]) == 0
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "model.safetensors", "recipe.yaml"]
    original = model_from_checkpoint(trained)  # the moving average, as predict and export use by default
    assert_same_model(MultiTaskModel.from_pretrained(folder), original.model)
    assert R.load(folder / "recipe.yaml") == original.recipe

    card = (folder / "README.md").read_text()
    metadata, body = card.removeprefix("---\n").split("\n---\n", 1)
    assert "library_name: multitask_deeplab" in metadata and "- segmentation" in metadata and "- depth" in metadata
    assert "| seg | segmentation | deeplabv3plus (channels=8, low_level_channels=8, dropout=0.1) | cross_entropy | num_classes=5 |" in body
    assert "timm `test_resnet` at output stride 32" in body
    state = load(trained)
    assert f"| seg.miou | {state['metrics']['seg.miou']:.4f} |" in body and f"| depth.abs_rel | {state['metrics']['depth.abs_rel']:.4f} |" in body
    assert "Δm against single-task baselines: not measured" in body
    assert f'MultiTaskModel.from_pretrained("{folder}")' in body and R.dump(original.recipe).strip() in body


def test_a_model_without_its_recipe_cannot_be_saved(tmp_path):
    backbone = TimmBackbone("test_resnet")
    heads = {"seg": HEADS.build({"type": "deeplabv3", "channels": 8}, in_channels=backbone.channels, reductions=backbone.reductions, out_channels=3)}
    with pytest.raises(ValueError, match="save_pretrained needs the recipe the model was built from"):
        MultiTaskModel(backbone, heads).save_pretrained(tmp_path / "x")


def test_a_hub_repo_loads_from_the_cache_offline_through_huggingface_hub(trained, tmp_path, hub_cache, capsys):
    folder = model_from_checkpoint(trained).model.save_pretrained(tmp_path / "pretrained")
    put_in_cache(hub_cache, "someone/tiny-seg-depth", folder)
    put_in_cache(hub_cache, "someone/tiny-seg-depth", folder, revision="v1", commit="f" * 40)
    reference = MultiTaskModel.from_pretrained(folder)
    assert_same_model(MultiTaskModel.from_pretrained("someone/tiny-seg-depth"), reference)
    assert_same_model(MultiTaskModel.from_pretrained("someone/tiny-seg-depth@v1"), reference)
    predictor = Predictor.from_pretrained("someone/tiny-seg-depth", "cpu", fold_bn=False, channels_last=False, precision="fp32")
    image = torch.rand(3, 32, 32, generator=torch.Generator().manual_seed(1))
    result = predictor(image)
    with torch.no_grad():
        expected = reference(image[None])
    assert (result["seg"] == expected["seg"][0].argmax(0).numpy()).all()

    Image.fromarray((image.permute(1, 2, 0).numpy() * 255).astype("uint8")).save(tmp_path / "room.png")
    assert main(["predict", "someone/tiny-seg-depth", str(tmp_path / "room.png"), "--out", str(tmp_path / "preds"), "--no-progress"]) == 0
    assert (tmp_path / "preds" / "room_seg.png").is_file()


def test_evaluate_takes_a_pretrained_folder(trained, tmp_path):
    folder = tmp_path / "pretrained"
    assert main(["export", str(trained), "--format", "pretrained", "--out", str(folder)]) == 0
    assert main(["evaluate", str(folder), "--device", "cpu"]) == 0
    metrics = json.loads((folder / "eval_val.json").read_text())["metrics"]
    for key, value in load(trained)["metrics"].items():
        assert metrics[key] == pytest.approx(value, rel=1e-5, abs=1e-6, nan_ok=True), key


def test_a_repo_missing_offline_is_one_line_naming_hf_hub_offline_and_the_cache(trained, tmp_path, hub_cache, capsys):
    Image.new("RGB", (32, 32)).save(tmp_path / "room.png")
    assert main(["predict", "someone/absent", str(tmp_path / "room.png"), "--out", str(tmp_path / "preds")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "someone/absent" in error
    assert "HF_HUB_OFFLINE=1" in error and str(hub_cache) in error and "hf download someone/absent" in error
    with pytest.raises(ValueError, match="HF_HUB_OFFLINE"):
        MultiTaskModel.from_pretrained("someone/absent")


def test_a_folder_without_the_files_names_them(tmp_path):
    (tmp_path / "run").mkdir()
    with pytest.raises(ValueError, match=r"run holds no recipe\.yaml or model\.safetensors: give a folder written by save_pretrained"):
        MultiTaskModel.from_pretrained(tmp_path / "run")
    with pytest.raises(ValueError, match="is not a checkpoint file, a folder written by save_pretrained or a Hub repo id"):
        MultiTaskModel.from_pretrained(tmp_path / "runs" / "gone")
    with pytest.raises(ValueError, match="checkpoint not found"):
        MultiTaskModel.from_pretrained("runs/best.pt")  # reads as org/name too, but names a checkpoint


def test_push_uploads_the_prepared_folder_through_huggingface_hub(trained, tmp_path, monkeypatch, capsys):
    assert main(["push", str(trained), "someone/tiny-seg-depth"]) == 2, "offline (conftest): refused before any upload"
    assert "HF_HUB_OFFLINE=1 forbids it" in capsys.readouterr().err

    calls = []

    def create_repo(self, repo_id, **kwargs):
        calls.append(("create_repo", repo_id, kwargs))

    def upload_folder(self, *, repo_id, folder_path, commit_message, **kwargs):
        shutil.copytree(folder_path, tmp_path / "uploaded")
        calls.append(("upload_folder", repo_id, commit_message))
        return f"https://huggingface.co/{repo_id}/commit/{COMMIT}"

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(huggingface_hub.HfApi, "create_repo", create_repo)
    monkeypatch.setattr(huggingface_hub.HfApi, "upload_folder", upload_folder)
    assert main(["push", str(trained), "someone/tiny-seg-depth", "--private"]) == 0
    assert calls == [
        ("create_repo", "someone/tiny-seg-depth", {"private": True, "exist_ok": True}),
        ("upload_folder", "someone/tiny-seg-depth", "Upload with mtdl push"),
    ]
    assert f"pushed {trained} to someone/tiny-seg-depth: https://huggingface.co/someone/tiny-seg-depth/commit/{COMMIT}" in capsys.readouterr().out
    uploaded = tmp_path / "uploaded"
    assert sorted(p.name for p in uploaded.iterdir()) == ["README.md", "model.safetensors", "recipe.yaml"]
    assert 'MultiTaskModel.from_pretrained("someone/tiny-seg-depth")' in (uploaded / "README.md").read_text()
    assert_same_model(MultiTaskModel.from_pretrained(uploaded), model_from_checkpoint(trained).model)

"""The Hugging Face Hub, offline: repos put into a huggingface_hub cache laid out as huggingface_hub writes it
(https://huggingface.co/docs/hub/local-cache), then read through the real huggingface_hub and timm code paths with
``HF_HUB_OFFLINE=1`` (set for every test in conftest.py)."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import huggingface_hub
import pytest
import timm
import torch
from safetensors.torch import save_file

from multitask_deeplab.models.backbone import TimmBackbone

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

import pytest
import timm
import torch
from safetensors.torch import save_file

from multitask_deeplab.models.backbone import TimmBackbone


@pytest.mark.parametrize("name", ["resnet18", "mobilenetv3_small_100", "efficientnet_b0"])
@pytest.mark.parametrize("output_stride", [8, 16, 32])
def test_channels_and_reductions_match_real_tensors(name, output_stride):
    backbone = TimmBackbone(name, output_stride=output_stride).eval()
    features = backbone(torch.rand(1, 3, 96, 128))
    assert [f.shape[1] for f in features] == backbone.channels
    assert [round(96 / f.shape[-2]) for f in features] == backbone.reductions
    assert max(backbone.reductions) == output_stride


def test_out_indices_and_in_chans():
    backbone = TimmBackbone("resnet18", output_stride=16, in_chans=4, out_indices=[1, 4])
    assert backbone.channels == [64, 512] and backbone.reductions == [4, 16]
    assert len(backbone(torch.rand(1, 4, 64, 64))) == 2


@pytest.mark.parametrize(
    "name,stride",
    [("vit_tiny_patch16_224", 8), ("hrnet_w18_small", 16), ("vgg11", 8), ("swin_tiny_patch4_window7_224", 16)],
)
def test_families_that_cannot_dilate_get_a_clear_error(name, stride):
    with pytest.raises(ValueError, match=rf"backbone '{name}' cannot run at output_stride {stride}.*use output_stride=32 to run it at its native strides if "):
        TimmBackbone(name, output_stride=stride)


@pytest.mark.parametrize("name", ["vit_tiny_patch16_224", "swin_tiny_patch4_window7_224"])
def test_fixed_size_backbones_are_refused_at_stride_32_and_not_listed(name, capsys):
    """timm builds them at stride 32 but they only take their 224 x 224 training size."""
    from multitask_deeplab.cli import main

    with torch.device("meta"), pytest.raises(ValueError, match=rf"^backbone '{name}' cannot run on images of any size \(timm: "):
        TimmBackbone(name, output_stride=32)
    assert main(["list", "backbones", "--output-stride", "32", "--filter", name, "--no-progress"]) == 1
    assert f"no timm backbone matching {name!r} runs at output stride 32" in capsys.readouterr().err


def test_unknown_backbone_and_bad_stride():
    with pytest.raises(ValueError, match=r"unknown timm backbone 'resnet51'; did you mean .*resnet50"):
        TimmBackbone("resnet51")
    with pytest.raises(ValueError, match=r"output_stride must be one of \(8, 16, 32\), got 4"):
        TimmBackbone("resnet18", output_stride=4)


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_local_pretrained_file_is_loaded(tmp_path, suffix):
    source = timm.create_model("resnet18")
    path = tmp_path / f"resnet18{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    save_file(state, str(path)) if suffix == ".safetensors" else torch.save(state, path)
    backbone = TimmBackbone("resnet18", output_stride=8, pretrained=str(path))
    assert torch.equal(backbone.body.state_dict()["layer4.1.conv2.weight"], source.state_dict()["layer4.1.conv2.weight"])


def test_weights_of_another_architecture_fail_naming_file_and_keys(tmp_path):
    path = tmp_path / "mobilenet.safetensors"
    save_file({k: v.contiguous() for k, v in timm.create_model("mobilenetv3_small_100").state_dict().items()}, str(path))
    with pytest.raises(ValueError, match=rf"{path}.*resnet18.*(missing|unexpected) keys"):
        TimmBackbone("resnet18", pretrained=str(path))


def test_weights_with_wrong_shapes_fail_naming_file(tmp_path):
    path = tmp_path / "resnet34.pth"
    torch.save(timm.create_model("resnet34").state_dict(), path)
    with pytest.raises(ValueError, match=rf"{path}"):
        TimmBackbone("resnet18", pretrained=str(path))


def test_missing_weights_file():
    with pytest.raises(ValueError, match="pretrained weights not found: /nowhere/w.pth"):
        TimmBackbone("resnet18", pretrained="/nowhere/w.pth")


def saved_bytes(backbone: TimmBackbone, image: torch.Tensor) -> tuple[int, list[torch.Tensor]]:
    """Bytes of the tensors autograd keeps for the backward pass of one forward."""
    total = 0

    def pack(tensor):
        nonlocal total
        total += tensor.numel() * tensor.element_size()
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        features = backbone(image)
    return total, features


@pytest.mark.parametrize("output_stride", [8, 32])
def test_grad_checkpointing_keeps_less_and_gives_the_same_gradients(output_stride):
    torch.manual_seed(0)
    plain = TimmBackbone("resnet18", output_stride=output_stride)
    checkpointed = TimmBackbone("resnet18", output_stride=output_stride)
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)
    image = torch.rand(2, 3, 64, 64)
    kept_plain, features_plain = saved_bytes(plain, image)
    kept, features = saved_bytes(checkpointed, image)
    assert kept < kept_plain / 5
    for a, b in zip(features_plain, features):
        assert torch.equal(a, b)
    sum(f.square().mean() for f in features_plain).backward()
    sum(f.square().mean() for f in features).backward()
    for p, q in zip(plain.parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad)
    for b, c in zip(plain.buffers(), checkpointed.buffers()):
        assert torch.equal(b, c)  # batch-norm statistics updated once, not again by the recomputation
    checkpointed.set_grad_checkpointing(False)
    assert saved_bytes(checkpointed, image)[0] == kept_plain


def test_hrnet_runs_at_its_native_strides_with_its_raw_branches_and_says_it_cannot_dilate():
    from multitask_deeplab.models.heads import HRNetHead

    backbone = TimmBackbone("hrnet_w18_small_v2", output_stride=32, out_indices=[1, 2, 3, 4], timm_args={"feature_location": ""})
    assert backbone.channels == [18, 36, 72, 144] and backbone.reductions == [4, 8, 16, 32]
    head = HRNetHead(backbone.channels, backbone.reductions, 5, channels=16)
    features = backbone(torch.rand(1, 3, 64, 64))
    assert head(features).shape == (1, 5, 16, 16), "every branch fused at the stride-4 one"
    with pytest.raises(ValueError, match="cannot run at output_stride 8 .* use output_stride=32 to run it at its native strides"):
        TimmBackbone("hrnet_w18_small_v2", output_stride=8)
    with pytest.raises(ValueError, match="backbone_args may not set output_stride"):
        TimmBackbone("resnet18", timm_args={"output_stride": 8})
    with pytest.raises(ValueError, match=r"does not take an argument it was given .*feature_locaton.*; check model.backbone_args"):
        TimmBackbone("hrnet_w18_small_v2", output_stride=32, timm_args={"feature_locaton": ""})

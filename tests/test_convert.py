import pytest
import torch
import torchvision

from multitask_deeplab.models.backbone import TimmBackbone
from multitask_deeplab.models.convert import init_from, load_torchvision_deeplabv3
from multitask_deeplab.models.heads import HEADS
from multitask_deeplab.models.model import MultiTaskModel


def randomise_batch_norm(model: torch.nn.Module) -> None:
    """Makes BN layers non-trivial so an equivalence test can catch a swapped or missed layer."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)


def build_ours(backbone_name: str, stride: int = 8, extra_depth: bool = True) -> MultiTaskModel:
    backbone = TimmBackbone(backbone_name, output_stride=stride)
    heads = {"seg": HEADS.build({"type": "deeplabv3"}, in_channels=backbone.channels, reductions=backbone.reductions, out_channels=5)}
    if extra_depth:
        heads["depth"] = HEADS.build({"type": "deeplabv3", "channels": 16}, in_channels=backbone.channels, reductions=backbone.reductions, out_channels=1)
    return MultiTaskModel(backbone, heads).eval()


@pytest.fixture(scope="module")
def torchvision_file(tmp_path_factory):
    torch.manual_seed(1)
    reference = torchvision.models.segmentation.deeplabv3_resnet50(weights=None, weights_backbone=None, num_classes=5, aux_loss=True)
    randomise_batch_norm(reference)
    path = tmp_path_factory.mktemp("tv") / "deeplabv3_resnet50.pth"
    torch.save(reference.state_dict(), path)
    return reference.eval(), path


def test_same_function_as_torchvision_deeplabv3(torchvision_file):
    reference, path = torchvision_file
    model = build_ours("resnet50")
    assert load_torchvision_deeplabv3(model, path) == "seg"
    image = torch.rand(2, 3, 75, 61)
    with torch.no_grad():
        ours = model(image)["seg"]
        theirs = reference((image - model.mean) / model.std)["out"]
    assert (ours - theirs).abs().max() <= 1e-4
    assert model(image)["depth"].shape == (2, 1, 75, 61)


def test_init_from_recipe_string(torchvision_file):
    reference, path = torchvision_file
    model = build_ours("resnet50", extra_depth=False)
    init_from(model, f"torchvision-deeplabv3:{path}")
    torch.testing.assert_close(model.heads["seg"].classifier.weight, reference.classifier[4].weight)
    with pytest.raises(ValueError, match="init_from 'imagenet:x' is not understood"):
        init_from(model, "imagenet:x")


def test_wrong_backbone_or_stride_is_refused(torchvision_file):
    _, path = torchvision_file
    with pytest.raises(ValueError, match="output stride 8, the model at 16"):
        load_torchvision_deeplabv3(build_ours("resnet50", stride=16, extra_depth=False), path)
    with pytest.raises(ValueError, match=r"does not fit the model .*mismatched"):
        load_torchvision_deeplabv3(build_ours("resnet18", extra_depth=False), path)


def test_unreadable_weights_file(tmp_path):
    bad = tmp_path / "garbage.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match=f"cannot read weights file {bad}"):
        load_torchvision_deeplabv3(build_ours("resnet50", extra_depth=False), bad)

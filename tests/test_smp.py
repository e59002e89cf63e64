"""segmentation_models_pytorch interop: an smp DeepLabV3 / DeepLabV3Plus with a timm (``tu-``) encoder loads into our
model through ``model.init_from: smp-deeplabv3:<file>`` and computes what smp computes; other heads start fresh."""

from __future__ import annotations

import pytest
import torch
from test_convert import randomise_batch_norm

from multitask_deeplab.config import recipe as R
from multitask_deeplab.engine.build import build_model

smp = pytest.importorskip("segmentation_models_pytorch")

V3_HEAD = "{type: deeplabv3, channels: 16, rates: [12, 24, 36], depthwise_norm: false, upsampling: 8}"
PLUS_HEAD = (
    "{type: deeplabv3plus, channels: 16, rates: [12, 24, 36], separable: true, depthwise_norm: false, aspp_conv: true, "
    "decoder_convs: 1, align_corners: true, upsampling: 4}"
)
RECIPE = """\
model: {{backbone: test_resnet, output_stride: {stride}, init_from: "{init_from}"}}
tasks:
  seg: {{kind: segmentation, num_classes: 4, head: {head}}}
  depth: {{kind: depth, head: {{type: deeplabv3, channels: 8}}}}
"""


def smp_model(architecture: type, stride: int, **kwargs) -> torch.nn.Module:
    torch.manual_seed(1)
    reference = architecture("tu-test_resnet", encoder_weights=None, classes=4, encoder_output_stride=stride, decoder_channels=16, **kwargs)
    randomise_batch_norm(reference)
    return reference.eval()


def build(stride: int, head: str, init_from: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(R.loads(RECIPE.format(stride=stride, head=head, init_from=init_from))).eval()


def assert_same_function(ours: torch.nn.Module, reference: torch.nn.Module) -> None:
    image = torch.rand(2, 3, 64, 96, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        theirs = reference((image - ours.mean) / ours.std)  # smp takes normalised inputs, our model normalises itself
        outputs = ours(image)
    assert outputs["seg"].shape == theirs.shape == (2, 4, 64, 96)
    assert (outputs["seg"] - theirs).abs().max() <= 1e-4
    assert theirs.abs().max() > 0.05, "a test on near-zero outputs would prove nothing"
    assert outputs["depth"].shape == (2, 1, 64, 96)


@pytest.mark.parametrize(("architecture", "stride", "head"), [("DeepLabV3", 8, V3_HEAD), ("DeepLabV3Plus", 16, PLUS_HEAD)])
def test_an_smp_state_dict_loads_into_one_head_and_computes_the_same(tmp_path, architecture, stride, head):
    reference = smp_model(getattr(smp, architecture), stride)
    path = tmp_path / "smp.pth"
    torch.save(reference.state_dict(), path)
    ours = build(stride, head, f"smp-deeplabv3:{path}")
    assert_same_function(ours, reference)
    fresh = build(stride, head, "")  # the same seed: only the seg head and the backbone may differ
    for key, value in ours.state_dict().items():
        if value.is_floating_point():
            assert torch.equal(value, fresh.state_dict()[key]) == key.startswith(("heads.depth.", "mean", "std")), key


def test_an_smp_folder_records_its_stride_and_rates(tmp_path):
    reference = smp_model(smp.DeepLabV3Plus, 8, decoder_atrous_rates=(6, 12, 18))
    reference.save_pretrained(str(tmp_path / "smp"))
    ours = build(8, PLUS_HEAD.replace("[12, 24, 36]", "[6, 12, 18]"), f"smp-deeplabv3:{tmp_path / 'smp'}")
    assert_same_function(ours, reference)
    with pytest.raises(ValueError, match=r"needs \{type: deeplabv3plus, rates: \[6, 12, 18\].*differing: rates \[12, 24, 36\]$"):
        build(8, PLUS_HEAD, f"smp-deeplabv3:{tmp_path / 'smp'}")


@pytest.mark.parametrize(
    ("head", "stride", "message"),
    [
        ("{type: deeplabv3plus, channels: 16}", 16, r"is an smp DeepLabV3Plus: tasks\.seg\.head needs \{type: deeplabv3plus, rates: \[12, 24, 36\], "
         r"separable: True, depthwise_norm: False, aspp_conv: True, decoder_convs: 1, align_corners: True, upsampling: 4\}; differing: rates \[6, 12, 18\], "
         r"upsampling 1, align_corners false \(a bare state dict"),
        (PLUS_HEAD.replace("aspp_conv: true", "aspp_conv: false"), 16, r"does not fit the model \(0 missing, 7 unexpected.*heads\.seg\.aspp_conv\.0\.weight"),
        (PLUS_HEAD, 8, r"differing: model\.output_stride 8 \(smp runs at 16\)"),
        (V3_HEAD, 16, r"is an smp DeepLabV3Plus with 4 classes: give a task with 4 outputs the head \{type: deeplabv3plus"),
    ],
)
def test_a_head_that_cannot_compute_the_same_is_refused_naming_what_it_needs(tmp_path, head, stride, message):
    path = tmp_path / "smp.pth"
    torch.save(smp_model(smp.DeepLabV3Plus, 16).state_dict(), path)
    with pytest.raises(ValueError, match=message):
        build(stride, head, f"smp-deeplabv3:{path}")


def test_smps_own_resnet_encoders_are_refused(tmp_path):
    path = tmp_path / "smp.pth"
    torch.manual_seed(0)
    torch.save(smp.DeepLabV3("resnet18", encoder_weights=None, classes=4).state_dict(), path)
    with pytest.raises(ValueError, match="has one of smp's own encoders, which dilate every convolution of a stage.*tu- encoder"):
        build(8, V3_HEAD, f"smp-deeplabv3:{path}")


def test_the_init_from_scheme_is_named_when_unknown():
    with pytest.raises(ValueError, match="'smp-deeplabv3:/path/to/smp_model.pth'"):
        build(8, V3_HEAD, "smp:/x.pth")


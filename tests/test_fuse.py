import pytest
import torch
from torch import nn

from multitask_deeplab import create_model
from multitask_deeplab.models.fuse import fold_batchnorm

TASKS = {
    "seg": {"kind": "segmentation", "num_classes": 4, "head": {"type": "deeplabv3", "channels": 16}},
    "depth": {"kind": "depth", "head": {"type": "deeplabv3", "channels": 16, "separable": True}},
    "plus": {"kind": "segmentation", "num_classes": 3, "head": {"type": "deeplabv3plus", "channels": 16, "low_level_channels": 8}},
}


def randomise_batch_norm(model: nn.Module) -> nn.Module:
    """Non-trivial statistics and affine terms, so that a missed or misplaced fold shows in the outputs."""
    generator = torch.Generator().manual_seed(0)
    for module in model.modules():
        if isinstance(module, nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
            module.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
            module.weight.data.copy_(torch.rand(n, generator=generator) + 0.5)
            module.bias.data.copy_(torch.rand(n, generator=generator) * 0.4 - 0.2)
    return model.eval()


def batch_norms(model: nn.Module) -> list[str]:
    return [name for name, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("backbone", ["resnet18", "mobilenetv3_small_100"])
def test_folded_model_computes_the_same_function_without_batch_norm(backbone):
    torch.manual_seed(0)
    model = randomise_batch_norm(create_model(backbone, output_stride=8, tasks=TASKS))
    fused = fold_batchnorm(model)
    assert batch_norms(fused) == [] and len(batch_norms(model)) > 20
    image = torch.rand(2, 3, 48, 40)
    with torch.no_grad():
        expected, got = model(image), fused(image)
    for task in TASKS:
        assert (expected[task] - got[task]).abs().max() <= 1e-5, task


def test_the_original_is_left_unchanged_unless_inplace():
    model = randomise_batch_norm(create_model("resnet18", tasks={"seg": TASKS["seg"]})).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fused = fold_batchnorm(model)
    assert model.training and not fused.training
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert fold_batchnorm(model, inplace=True) is model and batch_norms(model) == []


def test_folds_only_where_the_conv_output_goes_to_the_norm_alone():
    class Branching(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.conv2 = nn.Conv2d(3, 4, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y + self.bn2(self.conv2(x))  # conv's output is used twice; conv2's only by bn2

    class Untraceable(nn.Sequential):
        def forward(self, x):
            return super().forward(x) if x.abs().sum() >= 0 else x  # data-dependent: fx cannot trace it

    shared = nn.Conv2d(3, 3, 1)
    model = nn.Sequential(
        Branching(),
        Untraceable(nn.Conv2d(4, 3, 1), nn.BatchNorm2d(3)),
        nn.Sequential(shared, nn.BatchNorm2d(3)),
        nn.Sequential(shared, nn.BatchNorm2d(3)),  # the same conv in two places: folding would change both
    )
    model = randomise_batch_norm(model)
    fused = fold_batchnorm(model)
    assert batch_norms(fused) == ["0.bn", "1.1", "2.1", "3.1"]
    image = torch.rand(2, 3, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(fused(image), model(image), atol=1e-6, rtol=1e-5)


def test_fold_arithmetic_on_one_layer():
    conv = nn.Conv2d(1, 1, 1, bias=True)
    bn = nn.BatchNorm2d(1, eps=0.0)
    with torch.no_grad():
        conv.weight.fill_(2.0)
        conv.bias.fill_(1.0)
        bn.running_mean.fill_(3.0)
        bn.running_var.fill_(4.0)
        bn.weight.fill_(5.0)
        bn.bias.fill_(6.0)
    fused = fold_batchnorm(nn.Sequential(conv, bn))
    # y = 5 * ((2x + 1) - 3) / 2 + 6 = 5x + 1
    assert fused[0].weight.item() == 5.0 and fused[0].bias.item() == 1.0
    assert isinstance(fused[1], nn.Identity)

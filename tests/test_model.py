import pytest
import torch

from multitask_deeplab.engine.features import SharedFeatures, forward_with_shared_features
from multitask_deeplab.models.backbone import TimmBackbone
from multitask_deeplab.models.heads import HEADS, DenseHead
from multitask_deeplab.models.heads.aspp import ASPP, default_rates
from multitask_deeplab.models.model import MultiTaskModel

HEAD_CHANNELS = {"deeplabv3": 4, "deeplabv3plus": 3, "hrnet": 2}
SMALL = {"channels": 16}


def build(backbone_name: str, output_stride: int, head_types=tuple(HEAD_CHANNELS)) -> MultiTaskModel:
    backbone = TimmBackbone(backbone_name, output_stride=output_stride)
    heads = {
        head_type: HEADS.build(
            {"type": head_type, **SMALL},
            in_channels=backbone.channels,
            reductions=backbone.reductions,
            out_channels=HEAD_CHANNELS[head_type],
        )
        for head_type in head_types
    }
    return MultiTaskModel(backbone, heads)


def test_every_registered_head_is_covered():
    assert set(HEADS.names()) == set(HEAD_CHANNELS)


@pytest.mark.parametrize("backbone", ["resnet18", "resnet50", "mobilenetv3_large_100", "efficientnet_b0"])
@pytest.mark.parametrize("output_stride", [8, 16])
def test_shapes_and_gradients_reach_backbone_and_every_head(backbone, output_stride):
    model = build(backbone, output_stride)
    outputs = model(torch.rand(2, 3, 64, 80))
    for task, channels in HEAD_CHANNELS.items():
        assert outputs[task].shape == (2, channels, 64, 80)
    sum(o.square().mean() for o in outputs.values()).backward()
    stem = next(model.backbone.parameters())
    assert stem.grad is not None and stem.grad.abs().sum() > 0
    for task, head in model.heads.items():
        grads = [p.grad for p in head.parameters() if p.requires_grad]
        assert all(g is not None for g in grads), task
        assert any(g.abs().sum() > 0 for g in grads), task


@pytest.mark.parametrize("size", [(33, 47), (65, 31), (17, 19)])
def test_odd_sizes_and_batch_of_one_in_eval(size):
    model = build("resnet18", 8)
    outputs = model.predict(torch.rand(1, 3, *size))
    assert all(o.shape[-2:] == size for o in outputs.values())
    assert model.training, "predict() restores the training mode"


def test_activations_apply_to_the_upsampled_head_output_of_their_task_only():
    model = build("resnet18", 16).eval()
    image = torch.rand(2, 3, 40, 40)
    raw = model(image)
    with_activation = MultiTaskModel(model.backbone, dict(model.heads), activations={"deeplabv3plus": torch.nn.Sigmoid(), "deeplabv3": None})
    outputs = with_activation.eval()(image)
    torch.testing.assert_close(outputs["deeplabv3plus"], torch.sigmoid(raw["deeplabv3plus"]), rtol=0, atol=0)
    torch.testing.assert_close(outputs["deeplabv3"], raw["deeplabv3"], rtol=0, atol=0)
    assert not torch.equal(raw["deeplabv3plus"], outputs["deeplabv3plus"])
    with pytest.raises(ValueError, match="activations for other, which have no head"):
        MultiTaskModel(model.backbone, dict(model.heads), activations={"other": torch.nn.Sigmoid()})


@pytest.mark.parametrize("trunk", [False, True], ids=["backbone", "shared_trunk"])
def test_shared_features_forward_gives_the_same_outputs_from_detached_leaves(trunk):
    model = shared_trunk_model() if trunk else build("resnet18", 16, ["deeplabv3plus", "deeplabv3"])
    model.eval()
    image = torch.rand(2, 3, 32, 32)
    plain = model(image)
    outputs, shared = forward_with_shared_features(model, image)
    assert isinstance(shared, SharedFeatures) and len(shared.leaves) == len(shared.tensors) == 5 + trunk
    for task, output in plain.items():
        torch.testing.assert_close(outputs[task], output, rtol=0, atol=0)
    for leaf, tensor in zip(shared.leaves, shared.tensors):
        assert leaf.is_leaf and leaf.requires_grad and tensor.grad_fn is not None
        assert torch.equal(leaf, tensor)
    # The losses stop at the leaves; backpropagating their direct partials into the tensors once gives the
    # plain forward's gradients.
    sum(o.mean() for o in outputs.values()).backward()
    assert all(p.grad is None for p in model.shared_parameters())
    partials = [torch.zeros_like(leaf) if leaf.grad is None else leaf.grad for leaf in shared.leaves]
    torch.autograd.backward(shared.tensors, grad_tensors=partials)
    grads = {name: p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    sum(o.mean() for o in plain.values()).backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(grads[name], p.grad, msg=name)


def test_predict_runs_under_inference_mode():
    outputs = build("resnet18", 16, ["deeplabv3"]).predict(torch.rand(1, 3, 32, 32))
    assert outputs["deeplabv3"].is_inference()


def test_default_rates_follow_the_output_stride():
    assert default_rates(16) == (6, 12, 18)
    assert default_rates(8) == (12, 24, 36)


def test_aspp_takes_any_number_of_rates_and_separable_convs():
    aspp = ASPP(8, 4, [1, 2, 3, 4, 5], separable=True)
    assert len(aspp.convs) == 7  # 1x1 + 5 atrous + pooling
    assert aspp(torch.rand(2, 8, 9, 9)).shape == (2, 4, 9, 9)
    depthwise = aspp.convs[1][0]
    assert depthwise.groups == 8 and depthwise.dilation == (1, 1)


def test_head_reads_the_feature_level_it_is_told():
    backbone = TimmBackbone("resnet18", output_stride=16)
    head = HEADS.build({"type": "deeplabv3", "in_index": 2, **SMALL}, in_channels=backbone.channels, reductions=backbone.reductions, out_channels=3)
    features = backbone(torch.rand(1, 3, 64, 64))
    assert head.eval()(features).shape[-1] == features[2].shape[-1]


def test_bad_head_arguments():
    channels, reductions = [16, 32], [4, 8]
    with pytest.raises(ValueError, match="in_index 5 is out of range"):
        HEADS.build({"type": "deeplabv3", "in_index": 5}, in_channels=channels, reductions=reductions, out_channels=3)
    with pytest.raises(ValueError, match="out_channels >= 1"):
        HEADS.build({"type": "deeplabv3"}, in_channels=channels, reductions=reductions, out_channels=0)
    with pytest.raises(ValueError, match="needs a stride-4 feature"):
        HEADS.build({"type": "deeplabv3plus"}, in_channels=channels, reductions=[8, 16], out_channels=3)
    with pytest.raises(ValueError, match="unknown trunk 'mlp'"):
        HEADS.build({"type": "deeplabv3", "trunk": "mlp"}, in_channels=channels, reductions=reductions, out_channels=1)
    with pytest.raises(ValueError, match="unknown head 'deeplab': did you mean 'deeplabv3'"):
        HEADS.get("deeplab")


def test_custom_head_subclassing_dense_head_plugs_in():
    class Edges(DenseHead):
        def __init__(self, in_channels, reductions, out_channels, *, in_index=0):
            super().__init__(in_index=in_index, num_levels=len(in_channels))
            self.conv = torch.nn.Conv2d(in_channels[in_index], out_channels, 1)

        def forward(self, features):
            return self.conv(self.select(features))

    backbone = TimmBackbone("resnet18", output_stride=16)
    model = MultiTaskModel(backbone, {"edges": Edges(backbone.channels, backbone.reductions, 1)}, activations={"edges": torch.nn.Sigmoid()})
    edges = model(torch.rand(2, 3, 32, 32))["edges"]
    assert edges.shape == (2, 1, 32, 32) and ((edges > 0) & (edges < 1)).all()


def test_mean_and_std_must_fit_the_input_channels():
    with pytest.raises(ValueError, match=r"one value per input channel \(4\)"):
        MultiTaskModel(TimmBackbone("resnet18", in_chans=4), {"x": torch.nn.Identity()})


# ------------------------------------------------------------------------------------------- shared trunk


def shared_trunk_model(**trunk) -> MultiTaskModel:
    from multitask_deeplab import create_model

    return create_model("resnet18", output_stride=16, shared_trunk={"channels": 16, **trunk}, tasks={
        "seg": {"kind": "segmentation", "num_classes": 4, "head": {"type": "deeplabv3", "channels": 16, "trunk": "light"}},
        "depth": {"kind": "depth", "head": {"type": "deeplabv3", "channels": 16, "trunk": "light"}},
    })


def test_shared_trunk_runs_once_and_counts_as_shared():
    model = shared_trunk_model()
    calls = []
    model.trunk.register_forward_hook(lambda *args: calls.append(1))
    image = torch.rand(2, 3, 64, 48)
    outputs, features = forward_with_shared_features(model, image)
    assert len(calls) == 1
    assert outputs["seg"].shape == (2, 4, 64, 48) and outputs["depth"].shape == (2, 1, 64, 48)
    assert features.tensors[-1].shape == (2, 16, 4, 3)  # the trunk's output, read by the heads as the last level
    shared = {id(p) for p in model.shared_parameters()}
    assert {id(p) for p in model.trunk.parameters()} <= shared
    assert {id(p) for p in model.backbone.parameters()} <= shared
    assert not shared & {id(p) for p in model.heads.parameters()}
    sum(o.mean() for o in model(image).values()).backward()
    assert all(p.grad is not None for p in model.trunk.parameters())


def test_shared_trunk_with_a_light_head_splits_the_deeplabv3_head():
    """ASPP in the trunk, then the light head's 3x3 conv and classifier: the same function as one deeplabv3 head."""
    torch.manual_seed(0)
    split = shared_trunk_model()
    backbone = split.backbone
    whole = HEADS.build({"type": "deeplabv3", "channels": 16}, in_channels=backbone.channels, reductions=backbone.reductions, out_channels=4)
    whole.trunk[0].load_state_dict(split.trunk.aspp.state_dict())
    whole.trunk[1].load_state_dict(split.heads["seg"].trunk[0].state_dict())
    whole.classifier.load_state_dict(split.heads["seg"].classifier.state_dict())
    reference = MultiTaskModel(backbone, {"seg": whole})
    image = torch.rand(1, 3, 64, 64)
    torch.testing.assert_close(split.predict(image)["seg"], reference.predict(image)["seg"])


def test_shared_trunk_from_a_recipe_and_its_errors():
    from multitask_deeplab.config.recipe import loads
    from multitask_deeplab.engine.build import build_model

    text = """
model: {backbone: resnet18, shared_trunk: {channels: 8, separable: true}}
tasks:
  seg: {kind: segmentation, num_classes: 3, head: {type: deeplabv3, channels: 8, trunk: light}, loss: {type: cross_entropy}}
"""
    model = build_model(loads(text))
    assert model.trunk.channels == 8 and model.trunk.aspp.convs[1][0].groups == 512
    with pytest.raises(ValueError, match=r"model.shared_trunk: unknown key 'width'; it takes in_index, channels"):
        build_model(loads(text.replace("channels: 8, separable", "width: 8, separable")))


# ------------------------------------------------------------------------------------ gradient checkpointing


def plain_and_checkpointed() -> tuple[MultiTaskModel, MultiTaskModel]:
    """Two models with the same weights, the second with gradient checkpointing."""
    torch.manual_seed(0)
    plain = build("resnet18", 8, ["deeplabv3", "deeplabv3plus"])
    checkpointed = build("resnet18", 8, ["deeplabv3", "deeplabv3plus"])
    checkpointed.load_state_dict(plain.state_dict())
    checkpointed.set_grad_checkpointing(True)
    return plain, checkpointed


def assert_same_gradients_and_buffers(plain: MultiTaskModel, checkpointed: MultiTaskModel) -> None:
    for (name, p), q in zip(plain.named_parameters(), checkpointed.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    for (name, b), c in zip(plain.named_buffers(), checkpointed.buffers()):
        torch.testing.assert_close(c, b, msg=name)  # running statistics and batch counters


def test_grad_checkpointing_gives_the_same_step_and_updates_batch_norm_once():
    plain, checkpointed = plain_and_checkpointed()
    image = torch.rand(2, 3, 48, 48)
    for model in (plain, checkpointed):
        torch.manual_seed(1)  # the same dropout masks
        sum(o.square().mean() for o in model(image).values()).backward()
    assert_same_gradients_and_buffers(plain, checkpointed)
    with torch.no_grad():
        checkpointed(image)  # no_grad and eval forwards skip checkpointing
    assert checkpointed.predict(image)["deeplabv3"].shape == (2, 4, 48, 48)


def test_grad_checkpointing_survives_one_backward_per_task():
    # Gradient-level weightings take one backward pass per task: each recomputes the checkpointed modules.
    plain, checkpointed = plain_and_checkpointed()
    image = torch.rand(2, 3, 48, 48)
    for model in (plain, checkpointed):
        torch.manual_seed(1)
        losses = [o.square().mean() for o in model(image).values()]
        for index, loss in enumerate(losses):
            loss.backward(retain_graph=index < len(losses) - 1)
    assert_same_gradients_and_buffers(plain, checkpointed)

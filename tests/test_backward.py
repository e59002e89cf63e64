"""The backward driver (engine/backward.py): every strategy's gradients against an independent computation.

The references take one plain ``torch.autograd.grad`` per task (of the shared parameters, the heads and the shared
features) and apply each paper's formula to those vectors directly (no Gram-matrix shortcut, no solver of ours
where a closed form or a brute-force search exists), so a driver that mixes up tasks, scales, heads or levels fails.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from helpers_weighting import exact_min_norm, pcgrad_vectors
from torch import Tensor, nn

from multitask_deeplab.engine.backward import Accumulation, NonFiniteLoss, ddp_syncs, mtl_backward
from multitask_deeplab.engine.features import forward_with_shared_features
from multitask_deeplab.tasks import DepthTask, SegmentationTask
from multitask_deeplab.weighting import WEIGHTINGS, Weighting

TASKS = ["seg", "depth"]
KINDS = {"seg": SegmentationTask(num_classes=3), "depth": DepthTask()}
ORIGINAL = ["aligned_mtl", "cagrad", "dwa", "famo", "fixed", "gls", "gradnorm", "imtl", "mgda", "nash_mtl", "pcgrad", "rlw", "uncertainty"]


class Net(nn.Module):
    """A conv trunk without batch statistics and two heads reading a ``feature_hook``'s list, like MultiTaskModel."""

    def __init__(self, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.trunk = nn.Sequential(nn.Conv2d(3, 6, 3, padding=1), nn.Tanh(), nn.Conv2d(6, 6, 3, padding=1))
        self.heads = nn.ModuleDict({"seg": nn.Conv2d(6, 3, 1), "depth": nn.Conv2d(6, 1, 1)})

    def forward(self, image: Tensor, *, feature_hook=None) -> dict[str, Tensor]:
        features = [self.trunk(image)]
        read = features if feature_hook is None else feature_hook(features)
        return {task: head(read[0]) for task, head in self.heads.items()}


def batch(size: int = 4, seed: int = 0) -> dict[str, Tensor]:
    g = torch.Generator().manual_seed(seed)
    return {
        "image": torch.rand(size, 3, 8, 8, generator=g),
        "seg": torch.randint(0, 3, (size, 8, 8), generator=g),
        "depth": torch.rand(size, 1, 8, 8, generator=g) * 5,
    }


def losses_of(outputs: dict[str, Tensor], data: dict[str, Tensor]) -> dict[str, Tensor]:
    return {"seg": F.cross_entropy(outputs["seg"], data["seg"]), "depth": F.l1_loss(outputs["depth"], data["depth"])}


def build(name: str, **args: object) -> Weighting:
    return WEIGHTINGS.build({"type": name, **args}, task_names=TASKS, task_kinds=KINDS)


def driver_step(strategy: Weighting, net: Net, data: dict[str, Tensor], *, micro: int = 1, scaler=None) -> list[Tensor]:
    """One optimizer step's gradients from the driver: ``micro`` equal micro-batches of ``data``."""
    net.zero_grad(set_to_none=True)
    for p in strategy.parameters():
        p.grad = None
    accumulation = Accumulation(micro)
    size = len(data["image"]) // micro
    for i in range(micro):
        part = {key: value[i * size : (i + 1) * size] for key, value in data.items()}
        if strategy.needs_features:
            outputs, features = forward_with_shared_features(net, part["image"])
        else:
            outputs, features = net(part["image"]), None
        mtl_backward(
            losses_of(outputs, part), weighting=strategy, shared_parameters=list(net.trunk.parameters()),
            head_parameters=list(net.heads.parameters()), features=features, scaler=scaler, accumulation=accumulation,
        )
    return [p.grad.clone() for p in [*net.parameters(), *strategy.parameters()]]


# --- the references -----------------------------------------------------------------------------------------


def flat(grads) -> Tensor:
    return torch.cat([g.reshape(-1) for g in grads]).double()


def per_task(net: Net, data: dict[str, Tensor]) -> dict[str, object]:
    """Plain autograd, one call per task: shared, head and feature gradients, and the losses."""
    outputs, shared = forward_with_shared_features(net, data["image"])
    losses = losses_of(outputs, data)
    trunk = list(net.trunk.parameters())
    out = {"losses": torch.stack([losses[t] for t in TASKS]).detach().double(), "shared": [], "heads": [], "features": []}
    for task in TASKS:
        feature = torch.autograd.grad(losses[task], shared.leaves, retain_graph=True)[0]
        out["features"].append(feature.reshape(-1).double())
        out["shared"].append(flat(torch.autograd.grad(shared.tensors[0], trunk, feature, retain_graph=True)))
        out["heads"].append(flat(torch.autograd.grad(losses[task], net.heads.parameters(), retain_graph=True, allow_unused=True, materialize_grads=True)))
    for key in ("shared", "heads", "features"):
        out[key] = torch.stack(out[key])
    return out


def reference_shared(name: str, ref: dict[str, object], strategy: Weighting) -> tuple[Tensor, Tensor]:
    """The paper's shared update and each task's factor on its head (weights, heads)."""
    g, losses = ref["shared"], ref["losses"]
    ones = torch.ones(2, dtype=torch.float64)
    if name in ("fixed", "dwa", "gradnorm"):
        return ones @ g, ones  # weight 1 at the first step
    if name == "uncertainty":
        factors = torch.tensor([1.0, 0.5], dtype=torch.float64)  # classification form for seg, regression for depth
        return factors @ g, factors
    if name == "rlw":
        w = torch.softmax(torch.randn(2, generator=torch.Generator().manual_seed(0)), 0).double()
        return w @ g, w
    if name == "famo":
        w = (0.5 / (losses + 1e-8)) / (0.5 / (losses + 1e-8)).sum()
        return w @ g, w
    if name == "gls":
        w = losses.prod().sqrt() / (2 * losses)
        return w @ g, w
    if name == "pcgrad":
        return pcgrad_vectors(g, torch.Generator().manual_seed(0)).sum(0), ones
    if name == "mgda":  # MGDA-UB: weights from the feature gradients
        return exact_min_norm(ref["features"] @ ref["features"].T) @ g, ones
    if name == "cagrad":  # 1-D dual over w = (t, 1 - t) by a dense grid, then the paper's update
        t = torch.linspace(0, 1, 200001, dtype=torch.float64)
        w = torch.stack([t, 1 - t], 1)
        g0 = g.mean(0)
        gw = w @ g
        dual = gw @ g0 + 0.4 * g0.norm() * gw.norm(dim=1)
        best = w[dual.argmin()]
        d = g0 + 0.4 * g0.norm() / (best @ g).norm() * (best @ g)
        return 2 * d / (1 + 0.4**2), ones
    if name == "imtl":  # Liu et al. 2021, the closed form on the vectors themselves
        u = g / g.norm(dim=1, keepdim=True)
        dmat, umat = g[:1] - g[1:], u[:1] - u[1:]
        rest = g[0] @ umat.T @ torch.linalg.inv(dmat @ umat.T)
        return torch.cat([1 - rest.sum().reshape(1), rest]) @ g, ones
    if name == "aligned_mtl":  # Senushkin et al. 2023: G -> sigma_min U V^T from the SVD of the gradient matrix
        left, sigma, right = torch.linalg.svd(g, full_matrices=False)
        return (sigma.min() * left @ right).sum(0), ones
    if name == "nash_mtl":  # alpha solves alpha_i (G alpha)_i = 1, checked on the strategy's weights below
        alpha = torch.tensor(list(strategy.task_weights().values()), dtype=torch.float64)
        return alpha @ g, ones
    raise AssertionError(name)


@pytest.mark.parametrize("name", ORIGINAL)
def test_driver_matches_plain_autograd_and_the_papers_formulas(name: str) -> None:
    net = Net()
    data = batch()
    strategy = build(name, **({"max_norm": 0.0} if name == "nash_mtl" else {}))
    grads = driver_step(strategy, net, data)
    ref = per_task(net, data)
    shared, head_factors = reference_shared(name, ref, strategy)
    if name == "nash_mtl":
        alpha = torch.tensor(list(strategy.task_weights().values()), dtype=torch.float64)
        gram = ref["shared"] @ ref["shared"].T
        torch.testing.assert_close(alpha * (gram @ alpha), torch.ones(2, dtype=torch.float64), rtol=1e-5, atol=0)
    n_shared = sum(p.numel() for p in net.trunk.parameters())
    heads = head_factors @ ref["heads"] if name in ("fixed", "dwa", "gradnorm", "uncertainty", "rlw", "famo", "gls") else ref["heads"].sum(0)
    ours = torch.cat([x.reshape(-1) for x in grads[: len(list(net.parameters()))]]).double()
    tol = {"rtol": 2e-4, "atol": 2e-6} if name == "cagrad" else {"rtol": 1e-4, "atol": 1e-7}
    torch.testing.assert_close(ours[:n_shared], shared, **tol)
    torch.testing.assert_close(ours[n_shared:], heads, rtol=1e-4, atol=1e-7)
    if name == "uncertainty":  # d/ds of factor e^-s L + s / 2 at s = 0
        torch.testing.assert_close(grads[-1].double(), 0.5 - torch.tensor([1.0, 0.5], dtype=torch.float64) * ref["losses"], rtol=1e-5, atol=1e-7)


def test_mgda_on_parameters_uses_the_parameter_gradients() -> None:
    net, data = Net(), batch()
    grads = driver_step(build("mgda", gradients="params"), net, data)
    ref = per_task(net, data)
    n_shared = sum(p.numel() for p in net.trunk.parameters())
    ours = torch.cat([x.reshape(-1) for x in grads]).double()
    torch.testing.assert_close(ours[:n_shared], exact_min_norm(ref["shared"] @ ref["shared"].T) @ ref["shared"], rtol=1e-4, atol=1e-7)


def test_gradnorm_weights_take_the_papers_step_after_the_backward() -> None:
    net, data = Net(), batch()
    strategy = build("gradnorm", lr=0.01)
    driver_step(strategy, net, data)
    outputs = net(data["image"])
    losses = losses_of(outputs, data)
    layer = net.trunk[-1].weight  # the last shared parameter with more than one dimension
    norms = torch.stack([torch.autograd.grad(losses[t], layer, retain_graph=True)[0].norm() for t in TASKS])
    weights = torch.ones(2, requires_grad=True)  # one Adam step on |w n - mean(w n) r^alpha| (r = 1 at the start)
    target = (weights.detach() * norms).mean()
    optimizer = torch.optim.Adam([weights], lr=0.01)
    weights.grad = torch.sign(weights.detach() * norms - target) * norms
    optimizer.step()
    expected = weights.detach().clamp_min(1e-4)
    torch.testing.assert_close(strategy.weights, expected * 2 / expected.sum())


def test_non_finite_losses_raise_before_any_backward() -> None:
    net, data = Net(), batch()
    outputs = net(data["image"])
    losses = losses_of(outputs, data)
    losses["depth"] = losses["depth"] * math.nan
    with pytest.raises(NonFiniteLoss, match="non-finite loss in task depth"):
        mtl_backward(losses, weighting=build("pcgrad"), shared_parameters=list(net.trunk.parameters()), head_parameters=list(net.heads.parameters()))
    assert all(p.grad is None for p in net.parameters())


def test_the_driver_names_missing_features_and_wrong_tasks() -> None:
    net, data = Net(), batch()
    losses = losses_of(net(data["image"]), data)
    with pytest.raises(ValueError, match="needs the shared features"):
        mtl_backward(losses, weighting=build("mgda"), shared_parameters=list(net.trunk.parameters()), head_parameters=[])
    with pytest.raises(ValueError, match=r"losses must name exactly the tasks \['seg', 'depth'\]"):
        mtl_backward({"seg": losses["seg"]}, weighting=build("fixed"), shared_parameters=[], head_parameters=[])


def test_ddp_sync_decision_follows_the_level_and_the_micro_batch() -> None:
    accumulation = Accumulation(2)
    assert not ddp_syncs(build("fixed"), accumulation)  # the first of two micro-batches
    accumulation.done = 1
    assert ddp_syncs(build("fixed"), accumulation) and not ddp_syncs(build("pcgrad"), accumulation)
    assert ddp_syncs(build("fixed")) and not ddp_syncs(build("mgda"))


# --- accumulation -------------------------------------------------------------------------------------------

ACCUMULATED = [
    ("pcgrad", {}),
    ("mgda", {}),  # MGDA-UB: the feature Gram matrices add up over the micro-batches
    ("mgda", {"gradients": "params"}),
    ("cagrad", {}),
    ("nash_mtl", {}),  # with its max_norm clip
    ("imtl", {}),
    ("aligned_mtl", {"gradients": "features"}),
    ("upgrad", {}),
    ("dualproj", {}),
    ("config", {}),
    ("fairgrad", {}),
    ("pcd", {}),
    ("gradvac", {"beta": 0.5}),
    ("graddrop", {"gradients": "params"}),  # the same draws for the whole step's gradients
    ("moco", {}),
    ("excess_mtl", {}),
    ("cr_mogm", {"alpha": 0.5}),
    ("fixed", {"weights": {"seg": 2.0, "depth": 0.5}}),
    ("uncertainty", {}),
    ("dwa", {}),
    ("rlw", {}),
    ("gradnorm", {}),
    ("imtl_l", {}),
]
"""Every strategy but those whose weights depend on each micro-batch's losses (famo, gls, stch, db_mtl's log) and
modo and sdmgrad, which take the micro-batches as independent samples by design."""


@pytest.mark.parametrize(("name", "args"), ACCUMULATED, ids=lambda v: v if isinstance(v, str) else ",".join(f"{k}={w}" for k, w in v.items()))
def test_four_micro_batches_of_two_equal_one_step_of_eight(name: str, args: dict) -> None:
    """Gradient-level strategies are solved once on the accumulated gradients of the whole step, loss-level ones
    sum 1/N of each micro-batch: the same gradients (and the same state afterwards) as one batch of 8. The net has
    no batch statistics, so the micro-batches compute the same function as the whole batch."""
    data = batch(size=8, seed=3)
    results = []
    for micro in (1, 4):
        net, strategy = Net(), build(name, **args)
        first = driver_step(strategy, net, data, micro=micro)
        second = driver_step(strategy, net, batch(size=8, seed=4), micro=micro)  # from the state the first left
        results.append((first, second, strategy.task_weights(), strategy.state_dict()))
    (a1, a2, wa, sa), (b1, b2, wb, sb) = results
    for x, y in zip([*a1, *a2], [*b1, *b2]):  # float32 sums in another order: rounding only
        torch.testing.assert_close(y, x, rtol=1e-4, atol=1e-7)
    assert wb == pytest.approx(wa, rel=1e-4, abs=1e-7)
    for key, value in sa.items():
        if torch.is_tensor(value) and value.is_floating_point():
            torch.testing.assert_close(sb[key], value, rtol=1e-4, atol=1e-7, msg=key)


def test_fixed_coefficient_steps_accumulate_too() -> None:
    """Nash-MTL between two solves (update_weights_every=2): one backward of sum alpha_t L_t per micro-batch,
    clipped once on the whole step's update, on the parameters and on the features."""
    for gradients in ("params", "features"):
        results = []
        for micro in (1, 2):
            net, strategy = Net(), build("nash_mtl", update_weights_every=2, max_norm=0.05, gradients=gradients)
            steps = [driver_step(strategy, net, batch(size=4, seed=s), micro=micro) for s in range(3)]
            results.append((steps, strategy.task_weights()))
        for x, y in zip(sum(results[0][0], []), sum(results[1][0], [])):
            torch.testing.assert_close(y, x, rtol=1e-5, atol=1e-7)
        assert results[1][1] == pytest.approx(results[0][1], rel=1e-5)


def test_loss_dependent_weights_come_from_each_micro_batch() -> None:
    """GLS's weights depend on the batch's losses; accumulated, each micro-batch uses its own (documented):
    the step's gradient is the mean of the micro-batches' GLS gradients."""
    data, net = batch(size=4, seed=5), Net()
    ours = driver_step(build("gls"), net, data, micro=2)
    expected = None
    for i in range(2):
        part = {key: value[2 * i : 2 * i + 2] for key, value in data.items()}
        losses = losses_of(net(part["image"]), part)
        geometric = (losses["seg"] * losses["depth"]).sqrt()
        grads = torch.autograd.grad(geometric, list(net.parameters()))
        expected = [g / 2 for g in grads] if expected is None else [e + g / 2 for e, g in zip(expected, grads)]
    for x, y in zip(ours, expected):
        torch.testing.assert_close(x, y, rtol=1e-5, atol=1e-7)

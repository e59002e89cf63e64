"""Inference-time fusion: eval-mode batch norm folded into the convolution that feeds it.

In eval mode a batch norm is a per-channel affine map ``y = a * x + b`` with ``a = gamma / sqrt(var + eps)`` and
``b = beta - a * mean``; applied to a convolution's output it folds into the convolution's weight (``a * W``)
and bias (``a * c + b``), which removes one pass over every feature map.

A pair is folded only where the data flow is certain: adjacent children of a plain ``nn.Sequential``, or, in
any other module, a convolution whose only consumer is the batch norm, read from a one-level ``torch.fx``
trace of that module's ``forward`` (timm's ResNet blocks, for instance). A module that cannot be traced keeps
its layers as they are, so the result always computes the same function.
"""

from __future__ import annotations

import copy
from collections import Counter

import torch
import torch.fx
from torch import nn

__all__ = ["fold_batchnorm"]


def fold_batchnorm(model: nn.Module, *, inplace: bool = False) -> nn.Module:
    """Returns an eval-mode copy of ``model`` with every foldable batch norm folded into its convolution.

    The result is for inference only: its folded layers no longer update running statistics.

    Args:
        model: Any module, e.g. a :class:`~multitask_deeplab.models.model.MultiTaskModel`; left unchanged unless
            ``inplace``.
        inplace: Fold into ``model`` itself instead of a copy (no second copy of the weights in memory).

    Returns:
        The fused model, in eval mode, with the same parameters' ``requires_grad`` flags.
    """
    fused = (model if inplace else copy.deepcopy(model)).eval()
    uses = Counter(id(m) for _, m in fused.named_modules(remove_duplicate=False))
    uses.update(id(p) for _, p in fused.named_parameters(remove_duplicate=False))
    for module in list(fused.modules()):
        for conv_name, bn_name in _conv_bn_pairs(module):
            conv, bn = module._modules[conv_name], module._modules[bn_name]
            if uses[id(conv)] > 1 or uses[id(bn)] > 1 or uses[id(conv.weight)] > 1:
                continue  # a layer or weight shared with another place: folding would change that place too
            _fold_into(conv, bn)
            setattr(module, bn_name, _after_norm(bn))
    return fused


def _foldable(conv: nn.Module, bn: nn.Module) -> bool:
    """A conv and an eval-mode batch norm on its output channels that can be expressed as a conv bias."""
    return (
        isinstance(conv, nn.Conv2d)
        and isinstance(bn, nn.BatchNorm2d)
        and bn.track_running_stats
        and bn.running_mean is not None
        and bn.num_features == conv.out_channels
        and (type(bn) is nn.BatchNorm2d or _is_norm_act(bn))
    )


def _is_norm_act(bn: nn.Module) -> bool:
    """timm's ``BatchNormAct2d``: batch norm, then ``drop`` and ``act`` modules, in one layer."""
    return isinstance(getattr(bn, "act", None), nn.Module) and isinstance(getattr(bn, "drop", None), nn.Module)


def _after_norm(bn: nn.BatchNorm2d) -> nn.Module:
    """What replaces a folded batch norm: nothing, or the dropout and activation a norm-act layer applies."""
    return nn.Sequential(bn.drop, bn.act) if _is_norm_act(bn) else nn.Identity()


def _conv_bn_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """Names of the (conv, batch norm) children of ``module`` where the conv's output goes only to the norm."""
    children = {name: child for name, child in module._modules.items() if child is not None}
    if not any(isinstance(c, nn.Conv2d) for c in children.values()) or not any(
        isinstance(c, nn.BatchNorm2d) for c in children.values()
    ):
        return []
    if isinstance(module, nn.Sequential) and type(module).forward is nn.Sequential.forward:
        names = list(children)
        pairs = zip(names, names[1:])
    else:
        pairs = _traced_pairs(module)
    return [(c, b) for c, b in pairs if _foldable(children[c], children[b])]


class _OneLevelTracer(torch.fx.Tracer):
    """Traces a module's own ``forward``, keeping every child module as one call."""

    def __init__(self, root: nn.Module) -> None:
        super().__init__()
        self.root_module = root

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return m is not self.root_module


def _traced_pairs(module: nn.Module) -> list[tuple[str, str]]:
    """(conv, norm) child pairs from a one-level fx trace; none when the forward cannot be traced."""
    try:
        graph = _OneLevelTracer(module).trace(module)
    except Exception:
        return []
    calls = Counter(node.target for node in graph.nodes if node.op == "call_module")
    pairs = []
    for node in graph.nodes:
        if node.op != "call_module" or len(node.args) != 1 or node.kwargs:
            continue
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and source.op == "call_module" and len(source.users) == 1:
            pairs.append((source.target, node.target))
    return [(c, b) for c, b in pairs if "." not in c + b and calls[c] == calls[b] == 1]


@torch.no_grad()
def _fold_into(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> None:
    """Rewrites ``conv``'s weight (in place) and bias so that it computes ``bn(conv(x))`` in eval mode."""
    scale = torch.rsqrt(bn.running_var.double() + bn.eps)
    if bn.weight is not None:
        scale = scale * bn.weight.double()
    shift = -bn.running_mean.double() * scale
    if bn.bias is not None:
        shift = shift + bn.bias.double()
    bias = shift if conv.bias is None else conv.bias.double() * scale + shift
    conv.weight.mul_(scale.to(conv.weight.dtype).view(-1, *([1] * (conv.weight.dim() - 1))))
    conv.bias = nn.Parameter(bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)

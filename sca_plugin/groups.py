"""Queries on Torch-Pruning channel groups and their dependency graph (as Torch-Pruning's
``dependency`` / ``Group``): what a group holds, which of its layers compute its channels, its
BatchNorms, the parameters that carry its channels, where a layer's output flows, and whether the
group's channels are the model's output.

A group (``DG.get_pruning_group`` / ``DG.get_all_groups``) is a list of items ``(dep, idxs)``: the
dependency's target module, the channel indices it touches in that module (``idxs``, "local") and
the matching channels of the group's root layer (``root_idxs``). Every query here reads the group
and, where it needs the graph, the ``tp.DependencyGraph``; none changes anything. The pruners, the
NNI front ends and the speed-up ask these questions through this module only.
"""
from __future__ import annotations

from typing import Callable, Dict, Iterator, List, Optional, Set

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .neurons import is_spiking_neuron

__all__ = ["PRODUCER_TYPES", "is_batchnorm", "group_root", "group_size", "group_modules", "group_members",
           "group_batchnorms", "group_neurons", "computes_channels", "group_producers", "group_channel_mean", "reaches_output",
           "feeds_only", "first_layers", "parameter_channel_dim", "channel_parameters", "parameter_entries"]

#: the layers that compute channels from other channels (their output channels are what is pruned)
PRODUCER_TYPES = (ops.TORCH_CONV, ops.TORCH_LINEAR)


def is_batchnorm(m: nn.Module) -> bool:
    """A BatchNorm layer (any of torch's; the layers whose weight is the channel's scale gamma)."""
    return isinstance(m, ops.TORCH_BATCHNORM)


def group_root(group) -> nn.Module:
    """The layer whose output channels the group is indexed by (``root_idxs`` refer to them)."""
    return group[0].dep.target.module


def group_size(group) -> int:
    """The number of channels of the group (of its root layer)."""
    return len(group[0].idxs)


def group_modules(group) -> Set[nn.Module]:
    """Every module the group touches (layers, and Torch-Pruning's operation nodes)."""
    return {item.dep.target.module for item in group}


def group_members(group, predicate: Callable[[nn.Module], bool]) -> Dict[nn.Module, tuple]:
    """``{module: (local_idxs, root_idxs)}`` for the group's modules that satisfy ``predicate``.

    A module reached through several dependencies appears once, with the union of its indices.
    """
    members: Dict[nn.Module, dict] = {}
    for item in group:
        module = item.dep.target.module
        if not isinstance(module, nn.Module) or not predicate(module):
            continue
        pairs = members.setdefault(module, {})
        for local, root in zip(item.idxs, item.root_idxs):
            pairs.setdefault(int(local), int(root))
    return {m: (list(p.keys()), list(p.values())) for m, p in members.items()}


def group_batchnorms(group, with_weight: bool = False) -> Dict[nn.Module, tuple]:
    """``{BatchNorm: (local_idxs, root_idxs)}`` of the group (``with_weight``: only affine ones,
    whose weight is the channel scale gamma)."""
    return {m: pair for m, pair in group_members(group, is_batchnorm).items()
            if not with_weight or getattr(m, "weight", None) is not None}


def group_neurons(group) -> Dict[nn.Module, tuple]:
    """``{spiking neuron: (local_idxs, root_idxs)}``: the neuron layers fed by the group's channels
    (empty: the channels reach no neuron, so they have no activity score)."""
    return group_members(group, is_spiking_neuron)


def computes_channels(DG: tp.DependencyGraph, handler) -> bool:
    """Whether a dependency's ``handler`` prunes its target's output channels (the target computes
    the group's channels) rather than its input channels (the target only reads them)."""
    return DG.is_out_channel_pruning_fn(handler) and not DG.is_in_channel_pruning_fn(handler)


def group_producers(DG: tp.DependencyGraph, group, types=PRODUCER_TYPES) -> Dict[nn.Module, tuple]:
    """``{layer: (local_idxs, root_idxs)}``: the conv/linear layers of ``group`` that compute its
    channels (their output channels are pruned), not those that only read them."""
    out = {}
    for module, pair in group_members(group, lambda m: isinstance(m, types)).items():
        handlers = [it.dep.handler for it in group if it.dep.target.module is module]
        if any(computes_channels(DG, h) for h in handlers):
            out[module] = pair
    return out


def group_channel_mean(group, values: Dict[nn.Module, torch.Tensor], predicate: Callable[[nn.Module], bool]
                       ) -> Optional[torch.Tensor]:
    """Average per-channel ``values`` of the group's matching modules onto the root's channels.

    Returns None when no matching module of the group has values.
    """
    n = group_size(group)
    total = count = None
    for module, (local, root) in group_members(group, predicate).items():
        v = values.get(module)
        if v is None:
            continue
        if total is None:
            total = torch.zeros(n, dtype=torch.float32, device=v.device)
            count = torch.zeros(n, dtype=torch.float32, device=v.device)
        root_t = torch.tensor(root, device=v.device)
        total.scatter_add_(0, root_t, v[torch.tensor(local, device=v.device)].float())
        count.scatter_add_(0, root_t, torch.ones(len(root), device=v.device))
    if total is None:
        return None
    return total / count.clamp_min(1)


def reaches_output(DG: tp.DependencyGraph, group) -> bool:
    """Whether pruning ``group`` changes the model's output size: one of its layers whose output
    channels it removes (not a consumer whose input channels shrink) feeds nothing (a graph output)."""
    for dep, _ in group:
        if DG.is_in_channel_pruning_fn(dep.handler) and not DG.is_out_channel_pruning_fn(dep.handler):
            continue  # a consumer (conv/linear input channels): its output size stays
        outputs = dep.target.outputs
        if not outputs or any(n.type == ops.OPTYPE.OUTPUT for n in outputs):
            return True
    return False


def _downstream(DG: tp.DependencyGraph, module: nn.Module, module_names) -> Iterator:
    """The graph nodes ``module``'s output reaches, each once, up to the first layers of the model
    (keys of ``module_names``) on every path: past an operation that is not a layer (an addition,
    a reshape, ...) the walk goes on, past a layer it stops."""
    stack, seen = list(DG.module2node[module].outputs), set()
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        yield node
        if node.module not in module_names:
            stack.extend(node.outputs)


def feeds_only(DG: tp.DependencyGraph, module: nn.Module, allowed: set, module_names) -> bool:
    """True when every path from ``module``'s output reaches a layer in ``allowed`` before mixing."""
    if not DG.module2node[module].outputs:
        return False
    for node in _downstream(DG, module, module_names):
        if node.module in module_names:  # a real layer of the model
            if node.module not in allowed:
                return False
        elif len(node.inputs) > 1 or not node.outputs or isinstance(node.module, ops._OutputOp):
            return False  # mixes with other tensors before any BatchNorm, or reaches the output
    return True


def first_layers(DG: tp.DependencyGraph, module: nn.Module, module_names) -> List[nn.Module]:
    """The layers of the model (keys of ``module_names``) that ``module``'s output reaches first,
    through operations that are not layers (additions, reshapes, ...)."""
    return [node.module for node in _downstream(DG, module, module_names) if node.module in module_names]


def parameter_channel_dim(module: nn.Module) -> int:
    """The dimension of a conv/linear/BatchNorm parameter that indexes the layer's output channels
    (1 for a transposed convolution's weight, else 0)."""
    return 1 if isinstance(module, ops.TORCH_CONV) and getattr(module, "transposed", False) else 0


def channel_parameters(DG: tp.DependencyGraph, group) -> List[tuple]:
    """``[(module, parameter name, channel dim, local_idxs, root_idxs, role)]``: the parameters that
    carry the group's channels, as the reference code's ``do_masks`` zeroes them: the output rows
    (filters) and bias of every conv/linear computing the channels (role ``"filter"``), and the
    weight and bias of every BatchNorm of the group (role ``"bn"``; ``BN(0) = beta``, so zeroing
    the scale alone would leave the channel firing)."""
    return parameter_entries(group_producers(DG, group), group_batchnorms(group))


def parameter_entries(producers: Dict[nn.Module, tuple], bns: Dict[nn.Module, tuple]) -> List[tuple]:
    """:func:`channel_parameters` from a group's producers and BatchNorms (``{module: (local, root)}``)."""
    out = []
    for module, (local, root) in producers.items():
        dim = parameter_channel_dim(module)
        for name in ("weight", "bias"):
            if getattr(module, name, None) is not None:
                out.append((module, name, dim, local, root, "filter"))
    for module, (local, root) in bns.items():
        for name in ("weight", "bias"):
            if getattr(module, name, None) is not None:
                out.append((module, name, 0, local, root, "bn"))
    return out

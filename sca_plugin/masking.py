"""Soft (reversible) channel masking with a straight-through gradient.

A masked channel must contribute nothing to the forward pass, so that the masked model computes
exactly what the physically pruned one will: its BatchNorm output is zero (as if the BN weight and
bias were zero) and, where no BatchNorm follows, its conv/linear output is zero. It must still
receive gradients so that regrowth has a signal: the mask is applied with a straight-through
gradient, so the parameters of masked channels keep training on the gradient evaluated at the
masked forward pass (as in dynamic pruning with feedback, Lin et al. 2020). In particular the
BN-scale gradient of a masked channel, ``sum(dL/dy * x_hat)``, is informative because the conv
feeding that BatchNorm is left unmasked.
"""
from __future__ import annotations

from typing import Dict, List, Optional

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from spikingjelly.activation_based import base as sj_base

from .importance import group_members

__all__ = ["StraightThroughMask", "output_channel_dim", "ChannelMasker", "mask_targets", "feeds_only"]


class StraightThroughMask(torch.autograd.Function):
    """Forward ``y * mask``; backward passes the gradient through unchanged."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return y * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad, None


def output_channel_dim(module: nn.Module) -> int:
    """Channel dimension of a layer's output: last for Linear, 2 for multi-step SpikingJelly layers, else 1."""
    if isinstance(module, nn.Linear):
        return -1
    if isinstance(module, sj_base.StepModule) and getattr(module, "step_mode", "s") == "m":
        return 2
    return 1


class ChannelMasker:
    """Applies per-channel keep-masks to the outputs of a set of layers via forward hooks."""

    def __init__(self) -> None:
        self.masks: Dict[nn.Module, Optional[torch.Tensor]] = {}
        self._handles: List = []

    def set_mask(self, module: nn.Module, keep: torch.Tensor) -> None:
        """Mask ``module``'s output channels where ``keep`` is False (a bool vector)."""
        if module not in self.masks:
            self._handles.append(module.register_forward_hook(self._hook))
        # decided here, at update time, so the forward hook never synchronises with the device
        self.masks[module] = None if bool(keep.all()) else keep.float()

    def _hook(self, module: nn.Module, args, output):
        keep = self.masks.get(module)
        if keep is None:
            return None
        dim = output_channel_dim(module) % output.dim()
        shape = [1] * output.dim()
        shape[dim] = -1
        mask = keep.to(device=output.device, dtype=output.dtype).view(shape)
        return StraightThroughMask.apply(output, mask)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.masks.clear()


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, ops.TORCH_BATCHNORM)


def mask_targets(DG: tp.DependencyGraph, group, module_names: Dict[nn.Module, str]) -> List[tuple]:
    """``[(layer, local_idxs, root_idxs)]``: the layers of ``group`` whose outputs must be masked.

    Every BatchNorm of the group, and every conv/linear producing the group's channels unless its
    output reaches nothing but BatchNorms of the same group (which zero it already, and whose
    normalised input must stay informative for the regrowth gradient).
    """
    bns = group_members(group, _is_bn)
    targets = [(m, local, root) for m, (local, root) in bns.items()]
    for module, (local, root) in group_producers(DG, group).items():
        if not feeds_only(DG, module, set(bns), module_names):
            targets.append((module, local, root))
    return targets


def group_producers(DG: tp.DependencyGraph, group, types=(ops.TORCH_CONV, ops.TORCH_LINEAR)) -> Dict[nn.Module, tuple]:
    """``{layer: (local_idxs, root_idxs)}``: the conv/linear layers of ``group`` that compute its
    channels (their output channels are pruned), not those that only read them."""
    out = {}
    for module, pair in group_members(group, lambda m: isinstance(m, types)).items():
        handlers = [it.dep.handler for it in group if it.dep.target.module is module]
        if any(DG.is_out_channel_pruning_fn(h) and not DG.is_in_channel_pruning_fn(h) for h in handlers):
            out[module] = pair
    return out


def feeds_only(DG: tp.DependencyGraph, module: nn.Module, allowed: set, module_names) -> bool:
    """True when every path from ``module``'s output reaches a layer in ``allowed`` before mixing."""
    stack, seen = list(DG.module2node[module].outputs), set()
    if not stack:
        return False
    while stack:
        node = stack.pop()
        if node in seen:
            continue
        seen.add(node)
        if node.module in module_names:  # a real layer of the model
            if node.module not in allowed:
                return False
        elif len(node.inputs) > 1 or not node.outputs or isinstance(node.module, ops._OutputOp):
            return False  # mixes with other tensors before any BatchNorm, or reaches the output
        else:
            stack.extend(node.outputs)
    return True

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
from spikingjelly.activation_based import base as sj_base

from .groups import feeds_only, group_batchnorms, group_producers

__all__ = ["MASKINGS", "StraightThroughMask", "output_channel_dim", "ChannelMasker", "out_channels", "mask_targets",
           "zero_channels"]

#: how masked channels act during training (see :class:`sca_plugin.SCAPruner`, ``masking=``):
#: ``"reset"``: forward mask with a straight-through gradient, the masked channels' BatchNorm weight
#: and bias zeroed at every mask update (their filters are kept, so the BN-scale gradient that
#: regrowth ranks by stays informative); ``"reset-filters"``: the same, filter rows zeroed too;
#: ``"soft"``: the reference code (filters and BatchNorm zeroed at every update, no forward mask,
#: the channels revive during training); ``"mask"``: forward mask only, parameters never reset
#: (the behaviour before the reset existed; masked parameters drift; kept for ablations).
MASKINGS = ("reset", "reset-filters", "soft", "mask")


class StraightThroughMask(torch.autograd.Function):
    """Forward ``y * mask``; backward ``grad`` unchanged, or ``grad * grad_scale`` when given.

    One tensor-sized multiply each way: the channel masks of a training step cost no more than
    that. ``grad_scale`` (broadcast like ``mask``) is what :class:`ChannelMasker` precomputes as
    ``mask + (1 - mask) * through``: ones for a straight-through gradient, the mask itself for an
    exact one. It is saved for backward (the mask is not needed there), so changing it in place
    between a forward and its backward is an error rather than a silently different gradient."""

    @staticmethod
    def forward(ctx, y: torch.Tensor, mask: torch.Tensor, grad_scale: Optional[torch.Tensor] = None) -> torch.Tensor:
        if grad_scale is not None:
            ctx.save_for_backward(grad_scale)
        ctx.scaled = grad_scale is not None
        return y * mask

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        if not ctx.scaled:
            return grad, None, None
        (grad_scale,) = ctx.saved_tensors
        return grad * grad_scale, None, None


def output_channel_dim(module: nn.Module) -> int:
    """Channel dimension of a layer's output: last for Linear, 2 for multi-step SpikingJelly layers, else 1."""
    if isinstance(module, nn.Linear):
        return -1
    if isinstance(module, sj_base.StepModule) and getattr(module, "step_mode", "s") == "m":
        return 2
    return 1


class ChannelMasker:
    """Applies per-channel keep-masks to the outputs of a set of layers via forward hooks.

    ``straight_through=True`` passes the gradient of masked channels through unchanged (their
    parameters keep a training signal, the regrowth criterion reads it); ``False`` is an exact
    mask (what training the physically pruned network does), for a structure that no longer changes.

    Each masked layer keeps two float tensors: the mask and the gradient factor
    ``mask + (1 - mask) * through`` (``through`` is 1.0 for the straight-through gradient, 0.0 for
    the exact one), both set whenever the mask or :attr:`straight_through` changes. The hook is
    then one :class:`StraightThroughMask` (one multiply forward, one backward; none backward in
    eager mode while straight-through, where the factor is all ones) instead of the
    ``y * mask + (y - y.detach()) * ((1 - mask) * through)`` it replaces, with the same values and
    gradients (``tests/test_mask_gradients.py``).

    Everything that changes during training is a tensor changed in place (the masks and the
    gradient factors), and the hook set only grows when a layer is first masked: a
    ``torch.compile``'d forward, which does not guard on module hooks, then computes the same as
    eager mode (install every mask, all ones, before the first compiled call).
    """

    def __init__(self, straight_through: bool = True) -> None:
        self.masks: Dict[nn.Module, Optional[torch.Tensor]] = {}
        self._grad_scales: Dict[nn.Module, torch.Tensor] = {}  # mask + (1 - mask) * through, per layer
        self._straight_through = bool(straight_through)
        self._handles: List = []

    @property
    def straight_through(self) -> bool:
        return self._straight_through

    @straight_through.setter
    def straight_through(self, value: bool) -> None:
        self._straight_through = bool(value)
        for module, scale in self._grad_scales.items():
            self._set_grad_scale(scale, self.masks[module])

    def _set_grad_scale(self, scale: torch.Tensor, mask: torch.Tensor) -> None:
        """``scale[:] = mask + (1 - mask) * through`` in place: all ones (straight-through) or the mask."""
        if self._straight_through:
            scale.fill_(1.0)
        else:
            scale.copy_(mask)

    def set_mask(self, module: nn.Module, keep: torch.Tensor) -> None:
        """Mask ``module``'s output channels where ``keep`` is False (a bool vector)."""
        if module not in self.masks:
            self._handles.append(module.register_forward_hook(self._hook))
        current = self.masks.get(module)
        if current is not None and current.shape == keep.shape and current.device == keep.device:
            current.copy_(keep)  # in place: a torch.compile'd forward keeps its graph
            self._set_grad_scale(self._grad_scales[module], current)
        else:
            self.masks[module] = mask = keep.float()
            self._grad_scales[module] = scale = torch.empty_like(mask)
            self._set_grad_scale(scale, mask)

    @staticmethod
    def channel_view(module: nn.Module, output: torch.Tensor, per_channel: torch.Tensor) -> torch.Tensor:
        """``per_channel`` (one value per output channel of ``module``) shaped to broadcast over ``output``."""
        shape = [1] * output.dim()
        shape[output_channel_dim(module) % output.dim()] = -1
        return per_channel.to(device=output.device, dtype=output.dtype).view(shape)

    def _hook(self, module: nn.Module, args, output):
        keep = self.masks.get(module)
        if keep is None:
            return None
        mask = self.channel_view(module, output, keep)
        if not torch.compiler.is_compiling() and self._straight_through:
            # eager straight-through: the factor is all ones, and grad * 1 is grad bit for bit
            return StraightThroughMask.apply(output, mask)
        # value: output * mask; gradient: grad * (mask + (1 - mask) * through), i.e. straight-through
        # (ones) or exact (the mask), switched by a tensor rather than by Python control flow: a
        # compiled graph reads the factor, which changes in place with the switch
        scale = self.channel_view(module, output, self._grad_scales[module])
        return StraightThroughMask.apply(output, mask, scale)

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.masks.clear()
        self._grad_scales.clear()


def out_channels(module: nn.Module) -> int:
    """The number of output channels of a layer whose outputs can be masked per channel."""
    for attr in ("num_features", "out_channels", "out_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise TypeError(f"cannot mask the outputs of {type(module).__name__}")


def mask_targets(DG: tp.DependencyGraph, group, module_names: Dict[nn.Module, str]) -> List[tuple]:
    """``[(layer, local_idxs, root_idxs)]``: the layers of ``group`` whose outputs must be masked.

    Every BatchNorm of the group, and every conv/linear producing the group's channels unless its
    output reaches nothing but BatchNorms of the same group (which zero it already, and whose
    normalised input must stay informative for the regrowth gradient).
    """
    bns = group_batchnorms(group)
    targets = [(m, local, root) for m, (local, root) in bns.items()]
    for module, (local, root) in group_producers(DG, group).items():
        if not feeds_only(DG, module, set(bns), module_names):
            targets.append((module, local, root))
    return targets


@torch.no_grad()
def zero_channels(entries: List[tuple], keep: torch.Tensor, parameter=None, filters: bool = True) -> int:
    """Zero, in place, the slices of ``entries`` (from :func:`sca_plugin.groups.channel_parameters`)
    of the channels where ``keep`` (over the group's root channels) is False; returns how many
    slices were zeroed.
    ``filters=False`` leaves the filter rows alone where the group has a BatchNorm (zeroing its
    weight and bias silences the channel). ``parameter(module, name)`` finds a parameter held
    elsewhere (NNI's wrappers); default getattr."""
    dropped = ~keep.bool().cpu()
    if not bool(dropped.any()):
        return 0
    has_bn = any(e[5] == "bn" for e in entries)
    zeroed = 0
    for module, name, dim, local, root, role in entries:
        if role == "filter" and not filters and has_bn:
            continue
        p = getattr(module, name) if parameter is None else parameter(module, name)
        local_t, root_t = torch.tensor(local, dtype=torch.long), torch.tensor(root, dtype=torch.long)
        rows = local_t[dropped[root_t]]
        if rows.numel():
            p.data.index_fill_(dim, rows.to(p.device), 0.0)
            zeroed += int(rows.numel())
    return zeroed

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
from spikingjelly.activation_based import base as sj_base

__all__ = ["StraightThroughMask", "output_channel_dim", "ChannelMasker"]


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

"""Layer helpers and residual blocks shared by the reference architectures.

All blocks use SpikingJelly's stateless wrappers (their step mode is set by the owning
:class:`~sca_plugin.models.base.SpikingNet`), plain ``+`` for residual additions and no in-place
operations, so they run in both step modes and can be traced by Torch-Pruning.
"""
from __future__ import annotations

from typing import Callable, List

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer

__all__ = ["NeuronFactory", "conv3x3", "conv1x1", "conv_bn_sn", "BasicBlock", "PreActBlock", "SEWBlock"]

NeuronFactory = Callable[[], nn.Module]


def conv3x3(in_channels: int, out_channels: int, stride: int = 1) -> layer.Conv2d:
    """3x3 convolution, padding 1, no bias."""
    return layer.Conv2d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)


def conv1x1(in_channels: int, out_channels: int, stride: int = 1) -> layer.Conv2d:
    """1x1 convolution, no bias."""
    return layer.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False)


def conv_bn_sn(in_channels: int, out_channels: int, make_neuron: NeuronFactory, stride: int = 1) -> List[nn.Module]:
    """``[Conv3x3 (pad 1, no bias), BatchNorm2d, neuron]``."""
    return [conv3x3(in_channels, out_channels, stride), layer.BatchNorm2d(out_channels), make_neuron()]


class BasicBlock(nn.Module):
    """Post-activation spiking basic block (standard spiking ResNet, e.g. tdBN / TET ResNet-19).

    ``sn2(bn2(conv2(sn1(bn1(conv1(x))))) + shortcut(x))``: the second neuron fires after the residual
    addition. ``shortcut`` is the identity or ``Conv1x1(stride) + BatchNorm2d``.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, make_neuron: NeuronFactory) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = layer.BatchNorm2d(channels)
        self.sn1 = make_neuron()
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = layer.BatchNorm2d(channels)
        if stride != 1 or in_channels != channels:
            self.shortcut: nn.Module = nn.Sequential(conv1x1(in_channels, channels, stride), layer.BatchNorm2d(channels))
        else:
            self.shortcut = nn.Identity()
        self.sn2 = make_neuron()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sn1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        out = out + self.shortcut(x)
        return self.sn2(out)


class PreActBlock(nn.Module):
    """Pre-activation spiking basic block (reference PreResNet of the SCA code).

    ``out = conv1(sn1(bn1(x))); out = conv2(sn2(bn2(out))); out + shortcut(x)`` where ``shortcut`` is
    the identity or a ``Conv1x1(stride)`` applied to the raw stream ``x`` (``bn1`` only feeds ``conv1``).
    """

    def __init__(self, in_channels: int, channels: int, stride: int, make_neuron: NeuronFactory) -> None:
        super().__init__()
        self.bn1 = layer.BatchNorm2d(in_channels)
        self.sn1 = make_neuron()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn2 = layer.BatchNorm2d(channels)
        self.sn2 = make_neuron()
        self.conv2 = conv3x3(channels, channels)
        if stride != 1 or in_channels != channels:
            self.shortcut: nn.Module = conv1x1(in_channels, channels, stride)
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.sn1(self.bn1(x)))
        out = self.conv2(self.sn2(self.bn2(out)))
        return out + self.shortcut(x)


class SEWBlock(nn.Module):
    """Spike-element-wise block with ADD connection (Fang et al., NeurIPS 2021, SEW ResNet).

    ``out = sn2(bn2(conv2(sn1(bn1(conv1(x)))))); out + shortcut(x)`` -- the addition acts on spikes,
    after the second neuron. ``shortcut`` is the identity or ``Conv1x1(stride) + BatchNorm2d + neuron``.
    """

    def __init__(self, in_channels: int, channels: int, stride: int, make_neuron: NeuronFactory) -> None:
        super().__init__()
        self.conv1 = conv3x3(in_channels, channels, stride)
        self.bn1 = layer.BatchNorm2d(channels)
        self.sn1 = make_neuron()
        self.conv2 = conv3x3(channels, channels)
        self.bn2 = layer.BatchNorm2d(channels)
        self.sn2 = make_neuron()
        if stride != 1 or in_channels != channels:
            self.shortcut: nn.Module = nn.Sequential(
                conv1x1(in_channels, channels, stride), layer.BatchNorm2d(channels), make_neuron()
            )
        else:
            self.shortcut = nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sn1(self.bn1(self.conv1(x)))
        out = self.sn2(self.bn2(self.conv2(out)))
        return out + self.shortcut(x)

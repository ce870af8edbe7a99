"""Spiking ResNets: pre-activation ResNet-18 (SCA reference code) and post-activation ResNet-18/19."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Type

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer

from .base import SpikingNet, check_width, scale_channels
from .blocks import BasicBlock, NeuronFactory, PreActBlock, conv3x3
from .neuron_factory import NeuronSpec, make_neuron_factory

__all__ = ["SpikingPreActResNet", "SpikingResNet", "preact_resnet18", "resnet18", "resnet19"]


def _make_stages(
    block: Type[nn.Module],
    in_channels: int,
    layers: Sequence[int],
    widths: Sequence[int],
    strides: Sequence[int],
    make_neuron: NeuronFactory,
) -> nn.ModuleList:
    """One ``nn.Sequential`` of blocks per stage; the first block of a stage carries its stride."""
    if not (len(layers) == len(widths) == len(strides)):
        raise ValueError("layers, widths and strides must have the same length")
    stages: List[nn.Module] = []
    channels = in_channels
    for n_blocks, out_channels, stride in zip(layers, widths, strides):
        blocks = []
        for i in range(n_blocks):
            blocks.append(block(channels, out_channels, stride if i == 0 else 1, make_neuron))
            channels = out_channels
        stages.append(nn.Sequential(*blocks))
    return nn.ModuleList(stages)


class SpikingPreActResNet(SpikingNet):
    """Pre-activation spiking ResNet (reference ``PreResNet`` of the SCA code).

    Stem ``Conv3x3(stride 1)`` (no BN / neuron: every block starts with ``bn1 -> sn1``), stages of
    :class:`~sca_plugin.models.blocks.PreActBlock` (``layer1`` ... ``layerN``), head
    ``bn -> sn -> AdaptiveAvgPool2d(1) -> Flatten -> classifier``.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2, 2, 2),
        widths: Sequence[int] = (64, 128, 256, 512),
        num_classes: int = 10,
        in_channels: int = 3,
        T: int = 4,
        width: float = 1.0,
        make_neuron: Optional[NeuronFactory] = None,
        step_mode: str = "m",
    ) -> None:
        super().__init__(T=T, num_classes=num_classes, in_channels=in_channels, step_mode=step_mode)
        width = check_width(width)
        make_neuron = make_neuron or make_neuron_factory("if")
        ws = [scale_channels(w, width) for w in widths]
        strides = [1] + [2] * (len(ws) - 1)
        self.conv1 = conv3x3(in_channels, ws[0])
        stages = _make_stages(PreActBlock, ws[0], layers, ws, strides, make_neuron)
        self.num_stages = len(stages)
        for i, stage in enumerate(stages):
            self.add_module(f"layer{i + 1}", stage)
        self.bn = layer.BatchNorm2d(ws[-1])
        self.sn = make_neuron()
        self.pool = layer.AdaptiveAvgPool2d((1, 1))
        self.flatten = layer.Flatten()
        self.classifier = layer.Linear(ws[-1], num_classes)
        self._finish_init(step_mode)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(x)
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = self.flatten(self.pool(self.sn(self.bn(out))))
        return self.classifier(out)


class SpikingResNet(SpikingNet):
    """Post-activation spiking ResNet built from :class:`~sca_plugin.models.blocks.BasicBlock`.

    Stem ``Conv3x3 -> BN -> neuron`` (``conv1``, ``bn1``, ``sn1``), stages ``layer1`` ... ``layerN``
    (first stride 1, then 2), ``AdaptiveAvgPool2d(1) -> Flatten``, an optional hidden
    ``fc`` (``Linear -> neuron``), then ``classifier``.
    """

    def __init__(
        self,
        layers: Sequence[int],
        widths: Sequence[int],
        stem_channels: int,
        num_classes: int = 10,
        in_channels: int = 3,
        T: int = 4,
        width: float = 1.0,
        hidden: Optional[int] = None,
        make_neuron: Optional[NeuronFactory] = None,
        step_mode: str = "m",
    ) -> None:
        super().__init__(T=T, num_classes=num_classes, in_channels=in_channels, step_mode=step_mode)
        width = check_width(width)
        make_neuron = make_neuron or make_neuron_factory("if")
        ws = [scale_channels(w, width) for w in widths]
        stem = scale_channels(stem_channels, width)
        strides = [1] + [2] * (len(ws) - 1)
        self.conv1 = conv3x3(in_channels, stem)
        self.bn1 = layer.BatchNorm2d(stem)
        self.sn1 = make_neuron()
        stages = _make_stages(BasicBlock, stem, layers, ws, strides, make_neuron)
        self.num_stages = len(stages)
        for i, stage in enumerate(stages):
            self.add_module(f"layer{i + 1}", stage)
        self.pool = layer.AdaptiveAvgPool2d((1, 1))
        self.flatten = layer.Flatten()
        features = ws[-1]
        if hidden is not None:
            h = scale_channels(hidden, width)
            self.fc: nn.Module = nn.Sequential(layer.Linear(features, h), make_neuron())
            features = h
        else:
            self.fc = nn.Identity()
        self.classifier = layer.Linear(features, num_classes)
        self._finish_init(step_mode)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        out = self.sn1(self.bn1(self.conv1(x)))
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        out = self.fc(self.flatten(self.pool(out)))
        return self.classifier(out)


def preact_resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    T: int = 4,
    width: float = 1.0,
    neuron: NeuronSpec = "if",
    step_mode: str = "m",
    **neuron_kwargs: Any,
) -> SpikingPreActResNet:
    """Pre-activation spiking ResNet-18 of the SCA reference code (``PreResNet``).

    ``[2, 2, 2, 2]`` pre-act blocks, widths 64/128/256/512, stem Conv3x3 stride 1; designed for
    32x32 CIFAR inputs (any size >= 8 works thanks to the global average pool).
    """
    return SpikingPreActResNet(
        (2, 2, 2, 2), (64, 128, 256, 512), num_classes=num_classes, in_channels=in_channels, T=T,
        width=width, make_neuron=make_neuron_factory(neuron, **neuron_kwargs), step_mode=step_mode,
    )


def resnet18(
    num_classes: int = 10,
    in_channels: int = 3,
    T: int = 4,
    width: float = 1.0,
    neuron: NeuronSpec = "if",
    step_mode: str = "m",
    **neuron_kwargs: Any,
) -> SpikingResNet:
    """Post-activation spiking ResNet-18 (CIFAR variant: stem Conv3x3 64, no max pool).

    ``[2, 2, 2, 2]`` basic blocks, widths 64/128/256/512; for 32x32 inputs (any size >= 8 works).
    """
    return SpikingResNet(
        (2, 2, 2, 2), (64, 128, 256, 512), stem_channels=64, num_classes=num_classes,
        in_channels=in_channels, T=T, width=width, hidden=None,
        make_neuron=make_neuron_factory(neuron, **neuron_kwargs), step_mode=step_mode,
    )


def resnet19(
    num_classes: int = 10,
    in_channels: int = 3,
    T: int = 4,
    width: float = 1.0,
    neuron: NeuronSpec = "if",
    step_mode: str = "m",
    **neuron_kwargs: Any,
) -> SpikingResNet:
    """Spiking ResNet-19 as in tdBN (Zheng et al., AAAI 2021) and TET (Deng et al., ICLR 2022).

    Stem Conv3x3 128, stages of ``[3, 3, 2]`` basic blocks with widths 128/256/512 (strides 1/2/2),
    global average pool, ``fc`` = ``Linear(512 -> 256) + neuron``, ``classifier`` = ``Linear(256 ->
    num_classes)``; for 32x32 CIFAR inputs (any size >= 4 works).
    """
    return SpikingResNet(
        (3, 3, 2), (128, 256, 512), stem_channels=128, num_classes=num_classes,
        in_channels=in_channels, T=T, width=width, hidden=256,
        make_neuron=make_neuron_factory(neuron, **neuron_kwargs), step_mode=step_mode,
    )

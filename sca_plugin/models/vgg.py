"""Spiking VGG-16 of the SCA paper (reference code ``VGG16``), multi-step by default."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer

from .base import SpikingNet, check_width, scale_channels
from .blocks import NeuronFactory, conv_bn_sn
from .neuron_factory import NeuronSpec, make_neuron_factory

__all__ = ["VGG16_CFG", "SpikingVGG", "vgg16"]

#: Convolution channels of VGG-16 (``'M'`` = 2x2 max pooling).
VGG16_CFG: List[Union[int, str]] = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512, "M"]


class SpikingVGG(SpikingNet):
    """Spiking VGG: ``[Conv3x3 -> BN -> neuron]`` stacks with 2x2 max pooling, then an MLP head.

    Head: ``AdaptiveAvgPool2d((1, 1)) -> Flatten -> fc`` (``Linear(C -> hidden, no bias) -> BN1d ->
    neuron``, twice) ``-> classifier`` (``Linear(hidden -> num_classes)``).

    Pooling choice for non-CIFAR sizes: the max pools use ``ceil_mode=True`` (so a 28x28 MNIST image
    goes 28 -> 14 -> 7 -> 4 -> 2 -> 1 instead of failing at the fifth pool) and an
    ``AdaptiveAvgPool2d((1, 1))`` precedes the flatten, so any input size works and the flatten size
    is always the last conv width.  For 32x32 inputs both are no-ops (the map is already 1x1) and the
    network equals the reference one (``Linear(512*1*1 -> 512)``).
    """

    def __init__(
        self,
        cfg: Sequence[Union[int, str]],
        num_classes: int = 10,
        in_channels: int = 3,
        T: int = 4,
        width: float = 1.0,
        hidden: int = 512,
        make_neuron: Optional[NeuronFactory] = None,
        step_mode: str = "m",
    ) -> None:
        super().__init__(T=T, num_classes=num_classes, in_channels=in_channels, step_mode=step_mode)
        width = check_width(width)
        if make_neuron is None:
            make_neuron = make_neuron_factory("if")
        features: List[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v == "M":
                features.append(layer.MaxPool2d(kernel_size=2, stride=2, ceil_mode=True))
            else:
                out_channels = scale_channels(int(v), width)
                features.extend(conv_bn_sn(channels, out_channels, make_neuron))
                channels = out_channels
        self.features = nn.Sequential(*features)
        self.pool = layer.AdaptiveAvgPool2d((1, 1))
        self.flatten = layer.Flatten()
        h = scale_channels(hidden, width)
        self.fc = nn.Sequential(
            layer.Linear(channels, h, bias=False),
            layer.BatchNorm1d(h),
            make_neuron(),
            layer.Linear(h, h, bias=False),
            layer.BatchNorm1d(h),
            make_neuron(),
        )
        self.classifier = layer.Linear(h, num_classes)
        self._finish_init(step_mode)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        x = self.flatten(self.pool(self.features(x)))
        return self.classifier(self.fc(x))


def vgg16(
    num_classes: int = 10,
    in_channels: int = 3,
    T: int = 4,
    width: float = 1.0,
    neuron: NeuronSpec = "if",
    step_mode: str = "m",
    **neuron_kwargs: Any,
) -> SpikingVGG:
    """Spiking VGG-16 of the SCA paper (reference code), 13 conv + 3 FC layers.

    Inputs: CIFAR 32x32 (reference layout), MNIST 28x28 or any size >= 1 thanks to ceil-mode pooling
    and a final adaptive average pool (see :class:`SpikingVGG`).  ``width`` scales every conv and
    hidden FC width (rounded, at least 1).
    """
    return SpikingVGG(
        VGG16_CFG,
        num_classes=num_classes,
        in_channels=in_channels,
        T=T,
        width=width,
        make_neuron=make_neuron_factory(neuron, **neuron_kwargs),
        step_mode=step_mode,
    )

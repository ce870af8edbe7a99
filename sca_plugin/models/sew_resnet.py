"""Small SEW ResNet (Fang et al., "Deep Residual Learning in Spiking Neural Networks", NeurIPS 2021)."""
from __future__ import annotations

from typing import Any, Optional, Sequence

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer

from .base import SpikingNet, check_width, scale_channels
from .blocks import NeuronFactory, SEWBlock, conv_bn_sn
from .neuron_factory import NeuronSpec, make_neuron_factory
from .resnet import _make_stages

__all__ = ["SpikingSEWResNet", "sew_resnet"]


class SpikingSEWResNet(SpikingNet):
    """SEW ResNet with ADD connections: residual additions act on spikes (after the block's neuron).

    Stem ``Conv3x3 -> BN -> neuron`` (``stem``), stages ``layer1`` ... ``layerN`` of
    :class:`~sca_plugin.models.blocks.SEWBlock` (first stride 1, then 2), ``AdaptiveAvgPool2d(1) ->
    Flatten -> classifier``.
    """

    def __init__(
        self,
        layers: Sequence[int] = (2, 2),
        widths: Sequence[int] = (32, 64),
        num_classes: int = 10,
        in_channels: int = 3,
        T: int = 4,
        width: float = 1.0,
        make_neuron: Optional[NeuronFactory] = None,
        step_mode: str = "m",
    ) -> None:
        super().__init__(T=T, num_classes=num_classes, in_channels=in_channels, step_mode=step_mode)
        width = check_width(width)
        if len(layers) == 0:
            raise ValueError("sew_resnet needs at least one stage")
        make_neuron = make_neuron or make_neuron_factory("if")
        ws = [scale_channels(w, width) for w in widths]
        strides = [1] + [2] * (len(ws) - 1)
        self.stem = nn.Sequential(*conv_bn_sn(in_channels, ws[0], make_neuron))
        stages = _make_stages(SEWBlock, ws[0], layers, ws, strides, make_neuron)
        self.num_stages = len(stages)
        for i, stage in enumerate(stages):
            self.add_module(f"layer{i + 1}", stage)
        self.pool = layer.AdaptiveAvgPool2d((1, 1))
        self.flatten = layer.Flatten()
        self.classifier = layer.Linear(ws[-1], num_classes)
        self._finish_init(step_mode)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        out = self.stem(x)
        for i in range(self.num_stages):
            out = getattr(self, f"layer{i + 1}")(out)
        return self.classifier(self.flatten(self.pool(out)))


def sew_resnet(
    num_classes: int = 10,
    in_channels: int = 3,
    T: int = 4,
    width: float = 1.0,
    neuron: NeuronSpec = "if",
    step_mode: str = "m",
    layers: Sequence[int] = (2, 2),
    widths: Sequence[int] = (32, 64),
    **neuron_kwargs: Any,
) -> SpikingSEWResNet:
    """Small SEW ResNet (ADD connect; Fang et al. 2021) for small inputs (e.g. 8x8 to 32x32).

    ``layers`` blocks per stage with channel ``widths`` (default two stages ``[2, 2]`` of 32 and 64
    channels); the downsampling shortcut is ``Conv1x1 + BN + neuron``.
    """
    return SpikingSEWResNet(
        layers, widths, num_classes=num_classes, in_channels=in_channels, T=T, width=width,
        make_neuron=make_neuron_factory(neuron, **neuron_kwargs), step_mode=step_mode,
    )

"""Small plain spiking CNNs: the SCA paper's DVS-CIFAR10 net and a CNN for 8x8 digits."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer

from .base import SpikingNet, check_width, scale_channels
from .blocks import NeuronFactory, conv_bn_sn
from .neuron_factory import NeuronSpec, make_neuron_factory

__all__ = ["DVS_NET_CFG", "DIGITS_CNN_CFG", "SpikingPlainCNN", "dvs_net", "digits_cnn"]

#: 64C3-AP2-128C3-AP2-128C3-AP2-256C3-AP2-256C3-AP2 ('A' = 2x2 average pooling).
DVS_NET_CFG: List[Union[int, str]] = [64, "A", 128, "A", 128, "A", 256, "A", 256, "A"]
#: 16C3-32C3-MP2-64C3-MP2 ('M' = 2x2 max pooling).
DIGITS_CNN_CFG: List[Union[int, str]] = [16, 32, "M", 64, "M"]

Size = Union[int, Tuple[int, int]]


def _hw(size: Size) -> Tuple[int, int]:
    if isinstance(size, int):
        return size, size
    h, w = size
    return int(h), int(w)


class SpikingPlainCNN(SpikingNet):
    """Plain spiking CNN: ``[Conv3x3 (pad 1) -> BN -> neuron]`` stacks with 2x2 pooling ('A' average,
    'M' max, floor mode) in ``features``, then ``Flatten -> classifier``.

    The flatten size is computed from ``input_size`` (int or ``(H, W)``); a ``ValueError`` is raised
    when the input is too small for the number of pools.
    """

    def __init__(
        self,
        cfg: Sequence[Union[int, str]],
        input_size: Size,
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
        h, w = _hw(input_size)
        self.input_size = (h, w)
        features: List[nn.Module] = []
        channels = in_channels
        for v in cfg:
            if v in ("A", "M"):
                features.append(layer.AvgPool2d(2, 2) if v == "A" else layer.MaxPool2d(2, 2))
                h, w = h // 2, w // 2
                if h < 1 or w < 1:
                    raise ValueError(f"input_size {input_size} is too small for the pooling layers of {cfg}")
            else:
                out_channels = scale_channels(int(v), width)
                features.extend(conv_bn_sn(channels, out_channels, make_neuron))
                channels = out_channels
        self.features = nn.Sequential(*features)
        self.flatten = layer.Flatten()
        self.classifier = layer.Linear(channels * h * w, num_classes)
        self._finish_init(step_mode)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.flatten(self.features(x)))


def dvs_net(
    num_classes: int = 10,
    in_channels: int = 2,
    T: int = 20,
    width: float = 1.0,
    neuron: NeuronSpec = "if",
    step_mode: str = "m",
    input_size: Size = 128,
    **neuron_kwargs: Any,
) -> SpikingPlainCNN:
    """DVS-CIFAR10 network of the SCA paper: 64C3-AP2-128C3-AP2-128C3-AP2-256C3-AP2-256C3-AP2-FC.

    Expects event frames ``[T, B, 2, H, W]`` (or a static ``[B, 2, H, W]``) with ``H = W =
    input_size``; 128x128 gives a ``256*4*4`` flatten, 48x48 gives ``256*1*1``; input_size >= 32.
    """
    return SpikingPlainCNN(
        DVS_NET_CFG, input_size, num_classes=num_classes, in_channels=in_channels, T=T, width=width,
        make_neuron=make_neuron_factory(neuron, **neuron_kwargs), step_mode=step_mode,
    )


def digits_cnn(
    num_classes: int = 10,
    in_channels: int = 1,
    T: int = 4,
    width: float = 1.0,
    neuron: NeuronSpec = "if",
    step_mode: str = "m",
    input_size: Size = 8,
    **neuron_kwargs: Any,
) -> SpikingPlainCNN:
    """Small CNN for scikit-learn's 8x8 digits (fast on CPU): 16C3-32C3-MP2-64C3-MP2-FC.

    For 8x8 inputs the classifier is ``Linear(64*2*2 -> num_classes)``; other sizes via ``input_size``.
    """
    return SpikingPlainCNN(
        DIGITS_CNN_CFG, input_size, num_classes=num_classes, in_channels=in_channels, T=T, width=width,
        make_neuron=make_neuron_factory(neuron, **neuron_kwargs), step_mode=step_mode,
    )

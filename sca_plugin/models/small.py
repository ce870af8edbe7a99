"""Small plain spiking CNNs: the SCA paper's DVS-CIFAR10 net, a CNN for 8x8 digits and the SD-SNN
paper's MNIST network."""
from __future__ import annotations

from typing import Any, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import layer

from .base import SpikingNet, check_width, scale_channels
from .blocks import NeuronFactory, conv_bn_sn
from .neuron_factory import NeuronSpec, make_neuron_factory

__all__ = ["DVS_NET_CFG", "DIGITS_CNN_CFG", "SpikingPlainCNN", "SDSNNMnistNet", "dvs_net", "digits_cnn",
           "sdsnn_mnist_net"]

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


class SDSNNMnistNet(SpikingNet):
    """The SD-SNN authors' MNIST network (``SCNN``): ``Conv3x3(in -> 15) -> neuron -> AvgPool2 ->
    Conv3x3(15 -> 40) -> neuron -> AvgPool2 -> Flatten -> fc1 (40*H/4*W/4 -> 300) -> neuron ->
    classifier (300 -> classes)``; convolutions and fc1 with bias, no BatchNorm."""

    def __init__(self, input_size: Size = 28, num_classes: int = 10, in_channels: int = 1, T: int = 4,
                 width: float = 1.0, make_neuron: Optional[NeuronFactory] = None, step_mode: str = "m") -> None:
        super().__init__(T=T, num_classes=num_classes, in_channels=in_channels, step_mode=step_mode)
        width = check_width(width)
        make_neuron = make_neuron or make_neuron_factory("lif")
        h, w = _hw(input_size)
        if h < 4 or w < 4:
            raise ValueError(f"input_size {input_size} is too small for two 2x2 poolings")
        c1, c2, hidden = scale_channels(15, width), scale_channels(40, width), scale_channels(300, width)
        self.features = nn.Sequential(
            layer.Conv2d(in_channels, c1, 3, padding=1), make_neuron(), layer.AvgPool2d(2, 2),
            layer.Conv2d(c1, c2, 3, padding=1), make_neuron(), layer.AvgPool2d(2, 2),
        )
        self.flatten = layer.Flatten()
        self.fc1 = nn.Sequential(layer.Linear(c2 * (h // 4) * (w // 4), hidden), make_neuron())
        self.classifier = layer.Linear(hidden, num_classes)
        self._finish_init(step_mode)

    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fc1(self.flatten(self.features(x))))


def sdsnn_mnist_net(
    num_classes: int = 10,
    in_channels: int = 1,
    T: int = 4,
    width: float = 1.0,
    neuron: NeuronSpec = "lif",
    step_mode: str = "m",
    input_size: Size = 28,
    **neuron_kwargs: Any,
) -> SDSNNMnistNet:
    """The SD-SNN MNIST network. Default neuron: the authors' leaky neuron ``v = 0.2 * v + W x``,
    threshold 0.5, hard reset to 0 (SpikingJelly ``LIFNode(tau=1.25, decay_input=False,
    v_threshold=0.5)``); their Bernoulli rate coding and MSE loss are not reproduced here."""
    if neuron == "lif":
        neuron_kwargs = {"tau": 1.25, "decay_input": False, "v_threshold": 0.5, **neuron_kwargs}
    return SDSNNMnistNet(input_size, num_classes=num_classes, in_channels=in_channels, T=T, width=width,
                         make_neuron=make_neuron_factory(neuron, **neuron_kwargs), step_mode=step_mode)

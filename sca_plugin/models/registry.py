"""Name -> builder registry of the reference spiking architectures."""
from __future__ import annotations

from typing import Any, Callable, Dict

from .base import SpikingNet
from .resnet import preact_resnet18, resnet18, resnet19
from .sew_resnet import sew_resnet
from .small import digits_cnn, dvs_net, sdsnn_mnist_net
from .vgg import vgg16

__all__ = ["MODELS", "get_model"]

#: Every builder shares ``(num_classes, in_channels, T, width, neuron, step_mode, **neuron_kwargs)``.
MODELS: Dict[str, Callable[..., SpikingNet]] = {
    "vgg16": vgg16,
    "preact_resnet18": preact_resnet18,
    "resnet18": resnet18,
    "resnet19": resnet19,
    "sew_resnet": sew_resnet,
    "dvs_net": dvs_net,
    "digits_cnn": digits_cnn,
    "sdsnn_mnist_net": sdsnn_mnist_net,
}


def get_model(name: str, **kwargs: Any) -> SpikingNet:
    """Build the model registered as ``name`` (case-insensitive) with the builder's ``kwargs``."""
    key = name.lower() if isinstance(name, str) else name
    if key not in MODELS:
        raise ValueError(f"Unknown model {name!r}; valid names are {sorted(MODELS)}")
    return MODELS[key](**kwargs)

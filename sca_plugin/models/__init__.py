"""Reference spiking architectures for SCA channel pruning (SpikingJelly stateless layers).

All models are :class:`SpikingNet` subclasses: multi-step by default, accept ``[B, C, H, W]``
(direct encoding over ``T`` steps) or ``[T, B, C, H, W]`` inputs, return the time-averaged output
``[B, num_classes]``, and expose their last linear layer as ``model.classifier``.  Call
``spikingjelly.activation_based.functional.reset_net(model)`` after every batch.
"""
from .base import SpikingNet, check_width, init_reference_weights, scale_channels
from .blocks import BasicBlock, PreActBlock, SEWBlock
from .neuron_factory import NEURON_TYPES, default_neuron_kwargs, make_neuron_factory
from .registry import MODELS, get_model
from .resnet import SpikingPreActResNet, SpikingResNet, preact_resnet18, resnet18, resnet19
from .sew_resnet import SpikingSEWResNet, sew_resnet
from .small import DIGITS_CNN_CFG, DVS_NET_CFG, SDSNNMnistNet, SpikingPlainCNN, digits_cnn, dvs_net, sdsnn_mnist_net
from .vgg import VGG16_CFG, SpikingVGG, vgg16

__all__ = [
    "SpikingNet",
    "check_width",
    "init_reference_weights",
    "scale_channels",
    "BasicBlock",
    "PreActBlock",
    "SEWBlock",
    "NEURON_TYPES",
    "default_neuron_kwargs",
    "make_neuron_factory",
    "MODELS",
    "get_model",
    "SpikingVGG",
    "VGG16_CFG",
    "vgg16",
    "SpikingPreActResNet",
    "SpikingResNet",
    "preact_resnet18",
    "resnet18",
    "resnet19",
    "SpikingSEWResNet",
    "sew_resnet",
    "SpikingPlainCNN",
    "DVS_NET_CFG",
    "DIGITS_CNN_CFG",
    "dvs_net",
    "digits_cnn",
    "sdsnn_mnist_net",
    "SDSNNMnistNet",
]

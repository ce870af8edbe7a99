"""The spiking body of a model as a ``torch.fx`` graph, and BatchNorm folded into the preceding
conv / linear layer (torch's ``fuse_conv_bn_eval`` / ``fuse_linear_bn_eval`` on the traced pairs)."""
from __future__ import annotations

import copy
import os
from typing import Dict, List, Tuple, Union

import torch
import torch.nn as nn
from torch import fx
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from spikingjelly.activation_based import base as sj_base
from spikingjelly.activation_based import functional




PathLike = Union[str, os.PathLike]


class _Body(nn.Module):
    """``model.forward_body`` as a module whose children are ``model``'s (same names, same objects).

    Attributes that are not modules (``T``, helper methods, ...) are looked up on ``model``.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        object.__setattr__(self, "_net", model)
        for name, child in model.named_children():
            self._modules[name] = child  # add_module() would see `name` on model through __getattr__

    def forward(self, x):
        return type(self._net).forward_body(self, x)

    def __getattr__(self, name: str):
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(object.__getattribute__(self, "_net"), name)


class _SpikingTracer(fx.Tracer):
    """SpikingJelly step modules (layers, neurons, containers) and ``torch.nn`` modules are leaves."""

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        if isinstance(m, sj_base.StepModule):
            return True
        return super().is_leaf_module(m, module_qualified_name)


def _is_spiking_net(model: nn.Module) -> bool:
    from ..models.base import SpikingNet

    return isinstance(model, SpikingNet)


def spiking_body(model: nn.Module) -> fx.GraphModule:
    """The network body of ``model`` as an ``fx.GraphModule`` whose nodes are its layers.

    For a :class:`~sca_plugin.models.SpikingNet` this is :meth:`forward_body` (input ``[T, B, ...]``
    in multi-step mode, output ``[T, B, classes]`` -- no input repetition, no time average); for any
    other module its ``forward``. SpikingJelly modules and ``torch.nn`` layers stay single nodes
    (leaves); the returned module shares its layers with ``model`` (same objects).

    Raises ``torch.fx`` tracing errors when the forward has data-dependent control flow.
    """
    root = _Body(model) if _is_spiking_net(model) else model
    tracer = _SpikingTracer()
    graph = tracer.trace(root)
    return fx.GraphModule(root, graph, class_name=f"{type(model).__name__}Body")


def _set_submodule(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    setattr(parent, name, module)


_BN = nn.modules.batchnorm._BatchNorm


def _foldable(src: nn.Module, bn: nn.Module) -> bool:
    if not isinstance(bn, _BN) or not bn.track_running_stats or bn.running_mean is None or bn.running_var is None:
        return False
    if isinstance(src, nn.modules.conv._ConvNd):
        return not src.transposed and src.out_channels == bn.num_features
    if isinstance(src, nn.Linear):
        # a Linear acts on the last dim, BatchNorm1d on dim 1 ([N, C] or, multi-step, [T*N, C])
        return isinstance(bn, nn.BatchNorm1d) and src.out_features == bn.num_features
    return False


def _pairs_from_graph(model: nn.Module) -> List[Tuple[str, str]]:
    gm = spiking_body(model)
    calls: Dict[str, int] = {}
    for node in gm.graph.nodes:
        if node.op == "call_module":
            calls[node.target] = calls.get(node.target, 0) + 1
    pairs = []
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(gm.get_submodule(node.target), _BN) or len(node.args) != 1:
            continue
        src = node.args[0]
        if not isinstance(src, fx.Node) or src.op != "call_module":
            continue
        # the conv output must feed only this BatchNorm, and neither module may be reused elsewhere
        if len(src.users) != 1 or calls[src.target] != 1 or calls[node.target] != 1:
            continue
        if _foldable(gm.get_submodule(src.target), gm.get_submodule(node.target)):
            pairs.append((src.target, node.target))
    return pairs


def _pairs_from_sequentials(model: nn.Module) -> List[Tuple[str, str]]:
    """Fallback when the forward cannot be traced: adjacent pairs inside ``nn.Sequential``."""
    pairs = []
    for name, seq in model.named_modules():
        if type(seq) is not nn.Sequential:
            continue
        children = list(seq.named_children())
        for (a_name, a), (b_name, b) in zip(children, children[1:]):
            if _foldable(a, b):
                prefix = f"{name}." if name else ""
                pairs.append((prefix + a_name, prefix + b_name))
    return pairs


def fold_batchnorm_(model: nn.Module) -> List[Tuple[str, str]]:
    """Fold every ``Conv -> BatchNorm`` / ``Linear -> BatchNorm1d`` pair of ``model`` in place; returns
    the folded ``(layer, batchnorm)`` paths.

    The in-place step behind :func:`fuse_batchnorm` (which copies first) and
    :func:`sca_plugin.optimize_for_inference` (which folds its own copy, so the model is copied
    once): the folded layer replaces the conv/linear (same class and step mode, now with a bias)
    and the BatchNorm becomes ``nn.Identity``. Uses the running statistics, so ``model`` must be
    meant for eval mode; pairs are found as :func:`fuse_batchnorm` describes.
    """
    try:
        pairs = _pairs_from_graph(model)
    except (fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError):
        # data-dependent control flow etc.: fall back to what is certain (never a bug of ours: an
        # ImportError or NameError here would make every model fall back silently)
        pairs = _pairs_from_sequentials(model)
    for src_path, bn_path in pairs:
        src, bn = model.get_submodule(src_path), model.get_submodule(bn_path)
        was = src.training
        src.eval(), bn.eval()  # torch's fuse_*_bn_eval refuse training-mode modules
        with torch.no_grad():
            folded = fuse_conv_bn_eval(src, bn) if isinstance(src, nn.modules.conv._ConvNd) else fuse_linear_bn_eval(src, bn)
        folded.train(was)
        _set_submodule(model, src_path, folded)
        _set_submodule(model, bn_path, nn.Identity())
    return pairs


def fuse_batchnorm(model: nn.Module) -> nn.Module:
    """A copy of ``model`` (in eval mode) with every ``Conv -> BatchNorm`` and ``Linear -> BatchNorm1d``
    pair folded into the convolution / linear layer, using the BatchNorm's running statistics.

    In eval mode the copy computes the same outputs as ``model`` (up to float rounding). The folded
    layer keeps its class (a SpikingJelly ``layer.Conv2d`` stays one, with its step mode) and gains a
    bias; the BatchNorm is replaced by ``nn.Identity``. Pairs are found from the traced forward
    (:func:`spiking_body`): a BatchNorm is folded only when its sole input is a conv/linear whose output
    feeds nothing else. A BatchNorm without such a producer (the ``bn1`` on the residual stream of a
    pre-activation block, a BatchNorm after a pooling layer) is left in place; check with
    ``any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in fused.modules())``.
    When the forward cannot be traced, only adjacent pairs inside ``nn.Sequential`` containers fold.

    ``model`` is not modified, except that its neuron states are reset (needed to copy it).
    """
    functional.reset_net(model)
    fused = copy.deepcopy(model)
    fused.eval()
    fold_batchnorm_(fused)
    return fused

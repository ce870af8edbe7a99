"""Dependency graphs of SpikingJelly networks that are correct in both step modes.

Torch-Pruning traces a model's autograd graph. Three things in a multi-step (``[T, B, ...]``)
SpikingJelly network mislead it (see ``docs`` / ecosystem facts):

1. a neuron's time loop ``for x in x_seq`` is an ``unbind`` over dim 0, which Torch-Pruning takes
   for a channel split (channel ``i`` mapped to offsets ``i * C / T``);
2. ``layer.Linear`` returns a 3-D ``[T, B, F]`` tensor, which switches off Torch-Pruning's
   flatten -> linear index mapping for the whole graph;
3. the ``[T, B] <-> [T*B]`` folds of ``seq_to_ann_forward`` become reshape nodes.

:func:`repair_time_dimension` removes the index mappings of time/batch unbinds, turns the flatten
mapping back on and recomputes all mappings; reshapes whose channel count is unchanged (the folds)
then map channels one to one. :class:`SpikingMetaPruner` is Torch-Pruning's ``BasePruner`` with
spiking neurons registered, the graph repaired, and training mode restored after tracing;
:func:`build_graph` is the one place that traces a ``DependencyGraph`` for everything else.
Tracing runs on autograd, so it enables autograd itself (it works under ``torch.no_grad()`` and
``torch.inference_mode()``, where a user typically loads a model).
"""
from __future__ import annotations

import contextlib
from typing import Any, Dict, Iterator, Optional, Tuple

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops
from torch_pruning.dependency import index_mapping as tp_index_mapping
from torch_pruning.dependency import constants as tp_constants
from spikingjelly.activation_based import functional

from .neurons import SpikingNeuronPruner, is_spiking_neuron, neuron_types_in
from .rollback import RemovalTransaction, map_tensors

__all__ = [
    "build_graph",
    "call_model",
    "parameter_shapes",
    "repair_time_dimension",
    "spiking_neuron_pruners",
    "SpikingMetaPruner",
    "preserve_training_mode",
    "replay_pruning",
    "TracedLayers",
]


def _reshape_shapes(grad_fn) -> Optional[tuple]:
    """(input shape, output shape) of a traced view/reshape, when autograd exposes them."""
    in_shape = getattr(grad_fn, "_saved_self_sym_sizes", None) or getattr(grad_fn, "_saved_self_sizes", None)
    metadata = getattr(grad_fn, "_input_metadata", None)
    if in_shape is None or not metadata:
        return None
    return tuple(int(s) for s in in_shape), tuple(int(s) for s in metadata[0].shape)


def is_time_fold(in_shape: tuple, out_shape: tuple) -> bool:
    """True for ``[T, B, *rest] <-> [T*B, *rest]``: a reshape that leaves the channel layout alone."""
    def folds(a, b):
        return len(a) == len(b) + 1 and len(b) >= 1 and a[0] * a[1] == b[0] and a[2:] == b[1:]
    return folds(in_shape, out_shape) or folds(out_shape, in_shape)


def repair_time_dimension(DG: tp.DependencyGraph) -> tp.DependencyGraph:
    """Fix the index mappings of a graph traced from a SpikingJelly network (idempotent)."""
    for node in DG.module2node.values():
        if node.type == ops.OPTYPE.UNBIND and getattr(node.grad_fn, "_saved_dim", 0) == 0:
            # dim 0 is time (multi-step) or batch (single-step), never channels
            node.enable_index_mapping = False
        elif node.type == ops.OPTYPE.RESHAPE:
            shapes = _reshape_shapes(node.grad_fn)
            if shapes is not None and (shapes[0] == shapes[1] or is_time_fold(*shapes)):
                node.type = ops.OPTYPE.ELEMENTWISE  # channel i stays channel i
    DG._2d_4d = True
    for node in DG.module2node.values():
        for dep in node.dependencies:
            dep.index_mapping = [tp_constants.INDEX_MAPPING_PLACEHOLDER, tp_constants.INDEX_MAPPING_PLACEHOLDER]
    tp_index_mapping.update_index_mapping(DG)
    DG._sca_time_repaired = True  # SCAImportance refuses groups of an unrepaired multi-step graph
    return DG


@contextlib.contextmanager
def preserve_training_mode(model: nn.Module) -> Iterator[None]:
    """Restore every submodule's train/eval flag on exit (Torch-Pruning's tracing calls ``model.eval()``)."""
    flags = [(m, m.training) for m in model.modules()]
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


@contextlib.contextmanager
def _removing_leaked_hooks(model: nn.Module) -> Iterator[None]:
    """Torch-Pruning's tracer leaves its forward hooks behind when the forward raises: remove them."""
    before = [(m, set(m._forward_hooks)) for m in model.modules()]
    try:
        yield
    except BaseException:
        for m, keys in before:
            for k in set(m._forward_hooks) - keys:
                del m._forward_hooks[k]
        raise


@contextlib.contextmanager
def _recording_neuron_channels(model: nn.Module, pruner: SpikingNeuronPruner) -> Iterator[None]:
    hooks = [
        m.register_forward_pre_hook(lambda mod, args: pruner.record(mod, args[0]))
        for m in model.modules()
        if is_spiking_neuron(m)
    ]
    try:
        yield
    finally:
        for h in hooks:
            h.remove()


@contextlib.contextmanager
def autograd_for_tracing() -> Iterator[None]:
    """Torch-Pruning traces the autograd graph ("Dependency graph relies on autograd for tracing"):
    switch autograd on for the trace, even inside ``torch.no_grad()`` or ``torch.inference_mode()``."""
    with torch.inference_mode(False), torch.enable_grad():
        yield


def traceable(inputs: Any) -> Any:
    """``inputs`` with inference tensors (made under ``torch.inference_mode()``, which autograd cannot
    record) replaced by ordinary copies; other values unchanged. Call inside :func:`autograd_for_tracing`."""
    return map_tensors(lambda t: t.clone() if t.is_inference() else t, inputs)


def call_model(model: nn.Module, example_inputs: Any, forward_fn=None):
    """``model`` on ``example_inputs`` as Torch-Pruning calls it: ``forward_fn(model, inputs)``, or
    keywords for a dict, positional arguments for a tuple/list, else the one input."""
    if forward_fn is not None:
        return forward_fn(model, example_inputs)
    if isinstance(example_inputs, dict):
        return model(**example_inputs)
    if isinstance(example_inputs, (tuple, list)):
        return model(*example_inputs)
    return model(example_inputs)


def eval_outputs(model: nn.Module, inputs: Any, forward_fn=None) -> list:
    """The model's output tensors for ``inputs`` in eval mode, from a fresh neuron state (and the
    state reset afterwards); train/eval flags are restored."""

    with preserve_training_mode(model), torch.no_grad():
        model.eval()
        functional.reset_net(model)
        out = [t.detach().clone() for t in tp.utils.flatten_as_list(call_model(model, inputs, forward_fn))
               if isinstance(t, torch.Tensor)]
        functional.reset_net(model)
    return out


def spiking_neuron_pruners(model: nn.Module, example_inputs: Any, forward_fn=None) -> Dict[type, SpikingNeuronPruner]:
    """``customized_pruners`` for Torch-Pruning covering every neuron class in ``model``.

    Runs one forward pass (eval mode, no gradient) to learn each neuron's channel count, then
    resets the network state. Pass the result to any Torch-Pruning pruner, and call
    :func:`repair_time_dimension` on its ``DG`` for multi-step networks::

        pruner = tp.pruner.MetaPruner(model, x, importance=SCAImportance(),
                                      customized_pruners=spiking_neuron_pruners(model, x))
        repair_time_dimension(pruner.DG)
    """
    pruner = SpikingNeuronPruner()
    functional.reset_net(model)
    with preserve_training_mode(model), _recording_neuron_channels(model, pruner), torch.no_grad():
        model.eval()
        call_model(model, example_inputs, forward_fn)
    functional.reset_net(model)
    return {t: pruner for t in neuron_types_in(model)}


def _tracing_error(e: Exception) -> ValueError:
    return ValueError(
        f"tracing the model with example_inputs failed ({type(e).__name__}: {e}); pass example_inputs "
        "exactly as the model takes them (e.g. [B, C, H, W] or [T, B, C, H, W]), or a forward_fn")


@contextlib.contextmanager
def _tracing(model: nn.Module, neuron_pruner: Optional[SpikingNeuronPruner]) -> Iterator[None]:
    """What every trace of a SpikingJelly model runs in: fresh neuron states before and after (a
    state left by the user's last forward, with its autograd history, would be traced as part of the
    graph), train/eval flags restored, hooks of a failed trace removed, autograd on, the neurons'
    channel counts recorded for ``neuron_pruner``; a failed trace raises the ValueError naming the fix."""
    functional.reset_net(model)
    try:
        with preserve_training_mode(model), _removing_leaked_hooks(model), autograd_for_tracing(), \
                (_recording_neuron_channels(model, neuron_pruner) if neuron_pruner is not None else contextlib.nullcontext()):
            yield
    except (RuntimeError, TypeError, IndexError) as e:
        raise _tracing_error(e) from e
    finally:
        functional.reset_net(model)


class SpikingMetaPruner(tp.pruner.BasePruner):
    """Torch-Pruning's ``BasePruner`` (``MetaPruner``) for SpikingJelly networks.

    Same arguments as ``tp.pruner.BasePruner``. Spiking neurons are registered as customised
    layers (so pruning slices their state and parameters), the traced graph is repaired for the
    time dimension, and the model's train/eval mode and neuron states are restored after tracing.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, importance, *args, customized_pruners: Optional[dict] = None, forward_fn=None, **kwargs):
        neuron_pruner = SpikingNeuronPruner()
        pruners: Dict[Any, Any] = {t: neuron_pruner for t in neuron_types_in(model)}
        pruners.update(customized_pruners or {})
        with _tracing(model, neuron_pruner):
            super().__init__(model, traceable(example_inputs), importance, *args, customized_pruners=pruners,
                             forward_fn=forward_fn, **kwargs)
        repair_time_dimension(self.DG)
        self.neuron_pruner = neuron_pruner


def build_graph(model: nn.Module, example_inputs: Any, forward_fn=None,
                customized_pruners: Optional[dict] = None) -> Tuple[tp.DependencyGraph, Optional[SpikingNeuronPruner]]:
    """Torch-Pruning's dependency graph of a SpikingJelly ``model``, repaired for the time dimension.

    Spiking neurons are registered as customised layers (``customized_pruners`` adds or overrides
    entries), autograd is enabled for the trace, the model's train/eval flags and neuron states
    are restored, and hooks a failed trace leaves behind are removed. Returns the graph and the
    neuron pruner (None when the model has no spiking neurons).
    """
    neuron_pruners = spiking_neuron_pruners(model, example_inputs, forward_fn)
    pruners: Dict[Any, Any] = dict(neuron_pruners)
    pruners.update(customized_pruners or {})
    neuron_pruner = next(iter(neuron_pruners.values()), None)
    DG = tp.DependencyGraph()
    with _tracing(model, neuron_pruner):
        DG.build_dependency(model, traceable(example_inputs), forward_fn=forward_fn,
                            customized_pruners=pruners, verbose=False)
    repair_time_dimension(DG)
    return DG, neuron_pruner


def parameter_shapes(module: nn.Module) -> Dict[str, tuple]:
    """``{parameter name: shape}`` of a layer, by leaf name (a framework that re-hosts the parameters
    in a child, as NNI's wrapper does, changes nothing)."""
    return {n.rsplit(".", 1)[-1]: tuple(p.shape) for n, p in module.named_parameters()}


class TracedLayers:
    """The layers a dependency graph was traced on, by name, with their parameter shapes: a layer
    replaced, removed or resized afterwards invalidates the graph's groups (:meth:`first_change`)."""

    def __init__(self, model: nn.Module, DG: tp.DependencyGraph, module_names: Dict[nn.Module, str]) -> None:
        self.layers = {module_names[m]: (m, parameter_shapes(m)) for m in DG.module2node
                       if m in module_names and m is not model}

    def first_change(self, model: nn.Module) -> Optional[Tuple[str, Optional[dict], dict]]:
        """``(name, parameter shapes now, when traced)`` of the first traced layer that ``model`` no
        longer holds as it was (shapes now None: the layer was replaced or removed), or None."""
        for name, (module, shapes) in self.layers.items():
            try:
                now = model.get_submodule(name)
            except AttributeError:
                now = None
            if now is not module:
                return name, None, shapes
            if parameter_shapes(module) != shapes:
                return name, parameter_shapes(module), shapes
        return None


def replay_pruning(model: nn.Module, example_inputs: Any, history, forward_fn=None) -> nn.Module:
    """Prune a freshly built ``model`` in place as recorded in ``pruner.pruning_history()``.

    Use it to load a finalized model from a ``state_dict``: build the unpruned architecture,
    replay the history, then ``load_state_dict``. A history that does not fit the model raises
    and leaves the model unchanged.
    """
    DG, neuron_pruner = build_graph(model, example_inputs, forward_fn)
    with RemovalTransaction(model, DG, neuron_pruner):
        DG.load_pruning_history(history)
    return model

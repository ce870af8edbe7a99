"""Export a pruned spiking network: pickled module, TorchScript, ``torch.export`` or NIR.

* :func:`export_run` writes the finalized model of a ``sca-prune train`` run folder in one of
  :data:`EXPORT_FORMATS`.
* :func:`fuse_batchnorm` folds every ``Conv -> BatchNorm`` (and ``Linear -> BatchNorm1d``) pair into
  the convolution / linear layer (eval-mode statistics); the copy it returns computes the same
  outputs in eval mode and contains no folded BatchNorm.
* :func:`export_nir` / :func:`import_nir` exchange the network body with neuromorphic tools through
  NIR (the `Neuromorphic Intermediate Representation <https://neuroir.org>`_), using SpikingJelly's
  ``nir_exchange`` (needs ``pip install nir nirtorch``, the ``nir`` extra of this package).

What NIR (SpikingJelly 2.0.0's exporter) can express: ``Conv1d``/``Conv2d`` (ungrouped, zero
padding), ``Linear``, ``AvgPool2d`` (no ceil mode), ``Flatten``, ``IFNode``, ``LIFNode``,
``ParametricLIFNode`` (exported as a LIF with its learned time constant), ``CUBALIFNode`` -- all
with hard reset -- and residual additions. BatchNorm is folded first; ``AdaptiveAvgPool2d`` is
rewritten as an ``AvgPool2d`` when its input size is a multiple of its output size.

Which models: a :class:`~sca_plugin.models.SpikingNet` (its ``forward_body``, run multi-step), or
any module whose forward ``torch.fx`` can trace into those layers and additions -- in particular a
plain ``nn.Sequential`` of SpikingJelly layers (``layer.Conv2d``, ``layer.BatchNorm2d``, neurons,
``layer.AvgPool2d``, ``layer.Flatten``, ``layer.Linear``), of the ``torch.nn`` equivalents, or of
``torch.nn`` layers wrapped in ``layer.SeqToANNContainer`` (unwrapped into the equivalent
multi-step layers), in one step mode. A multi-step model takes ``[T, B, ...]``; a single-step
model is exported from one step ``[B, ...]`` (NIR describes one step of the dynamics) and
imports, like every graph, as a multi-step network taking ``[T, B, ...]``. Everything else raises
one ``ValueError`` line that names each unsupported module or operation once per kind with the
fix: max pooling (modules, wrapped or functional: NIR has none), soft reset, un-foldable BatchNorm
(pre-activation blocks), other modules (activations, other neurons, ``MultiStepContainer``, ...)
and tensor operations in the forward.
"""
from __future__ import annotations

import copy
import io
import json
import operator
import os
import warnings
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn as nn
from torch import fx
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval
from spikingjelly.activation_based import base as sj_base
from spikingjelly.activation_based import functional, layer, neuron

from .files import atomic_save, atomic_write_bytes

__all__ = [
    "EXPORT_FORMATS",
    "NIR_INSTALL_HINT",
    "NIRNotInstalledError",
    "ImportedNIRNet",
    "PlainNeuron",
    "plain_torch_copy",
    "export_run",
    "export_torch",
    "export_torchscript",
    "export_program",
    "export_nir",
    "import_nir",
    "fuse_batchnorm",
    "spiking_body",
    "example_input_for",
]

#: ``fmt`` values of :func:`export_run` and the file suffix each one conventionally uses.
EXPORT_FORMATS: Dict[str, str] = {"torch": ".pt", "torchscript": ".ts.pt", "export": ".pt2", "nir": ".nir"}
NIR_INSTALL_HINT = "pip install nir nirtorch"
#: ``metadata["format"]`` of the NIR graphs written by :func:`export_nir`.
NIR_FORMAT = "sca_plugin.nir/1"

PathLike = Union[str, os.PathLike]


class NIRNotInstalledError(ImportError):
    """The optional ``nir`` / ``nirtorch`` packages are missing."""


# --------------------------------------------------------------------------- optional dependency
def _require_nir():
    """``(nir, to_nir module, from_nir module)``, or :class:`NIRNotInstalledError`."""
    try:
        import nir  # noqa: F401
        import nirtorch  # noqa: F401
        from spikingjelly.activation_based.nir_exchange import from_nir, to_nir
    except ImportError as e:
        raise NIRNotInstalledError(
            f"NIR export/import needs the nir and nirtorch packages ({e}); {NIR_INSTALL_HINT} "
            "(or pip install 'sca_plugin[nir]')"
        ) from e
    return nir, to_nir, from_nir


# --------------------------------------------------------------------------- the spiking body as a graph
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
    from .models.base import SpikingNet

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


# --------------------------------------------------------------------------- BatchNorm folding
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
    try:
        pairs = _pairs_from_graph(fused)
    except Exception:  # data-dependent control flow etc.: fall back to what is certain
        pairs = _pairs_from_sequentials(fused)
    for src_path, bn_path in pairs:
        src, bn = fused.get_submodule(src_path), fused.get_submodule(bn_path)
        with torch.no_grad():
            folded = fuse_conv_bn_eval(src, bn) if isinstance(src, nn.modules.conv._ConvNd) else fuse_linear_bn_eval(src, bn)
        _set_submodule(fused, src_path, folded)
        _set_submodule(fused, bn_path, nn.Identity())
    return fused


# --------------------------------------------------------------------------- NIR
_IDENTITY_TYPES = (nn.Identity, nn.modules.dropout._DropoutNd, layer.Dropout)

_NIR_SUPPORTED = ("Conv1d/Conv2d (ungrouped), Linear, AvgPool2d, Flatten and the neurons IFNode, LIFNode, "
                  "ParametricLIFNode and CUBALIFNode (hard reset), as SpikingJelly layers or torch.nn modules, "
                  "also inside SeqToANNContainer, joined by additions")

_NIR_HINTS = {
    "MaxPool": "NIR has no max pooling; replace it with average pooling (layer.AvgPool2d), as in dvs_net",
    "BatchNorm": "NIR has no BatchNorm and this one follows no conv/linear it could be folded into "
                 "(e.g. a pre-activation block); use a post-activation model such as dvs_net, resnet18 or sew_resnet",
    "AdaptiveAvgPool": "NIR has no adaptive pooling and this one's input size is not a multiple of its output size; "
                       "choose an input size that is, or use a model with fixed pooling such as dvs_net",
    "soft reset": "NIR has no soft reset; build the neurons with v_reset=0.0 (hard reset)",
    "AvgPool ceil_mode": "NIR has no ceil-mode pooling; use ceil_mode=False",
    "Flatten": "a torch.nn.Flatten in a multi-step model flattens the [T, B, ...] tensor itself; flatten from dim 2 "
               "(nn.Flatten(2)) or use layer.Flatten(step_mode='m')",
    "module": f"SpikingJelly's NIR exporter maps only {_NIR_SUPPORTED}",
    "operation": "NIR export supports only layers, spiking neurons and additions, not tensor operations in the "
                 "forward (write them as layers)",
}
_MAX_POOL_FUNCTIONS = ("max_pool", "fractional_max_pool", "adaptive_max_pool")


def _nir_module_types(to_nir) -> set:
    """Module types SpikingJelly's exporter maps (an exact-type lookup), plus ``torch.nn.Linear``."""
    try:
        mapper = object.__new__(to_nir._ModuleMapper)
        types = set(type(mapper).map_dict.fget(mapper).keys())
    except Exception:  # pragma: no cover - other SpikingJelly versions
        types = {nn.Linear, layer.Linear, nn.Conv1d, layer.Conv1d, nn.Conv2d, layer.Conv2d, nn.AvgPool2d,
                 layer.AvgPool2d, nn.Flatten, layer.Flatten, neuron.IFNode, neuron.LIFNode,
                 neuron.ParametricLIFNode, neuron.CUBALIFNode}
    return types | {nn.Linear}


def _propagate_shapes(gm: fx.GraphModule, x: torch.Tensor) -> Dict[str, torch.Size]:
    """Input shape of every ``call_module`` node (by node name) for input ``x``."""
    from torch.fx.passes.shape_prop import ShapeProp

    functional.reset_net(gm)
    with torch.no_grad():
        ShapeProp(gm).propagate(x)
    functional.reset_net(gm)
    shapes = {}
    for node in gm.graph.nodes:
        if node.op == "call_module" and node.args and isinstance(node.args[0], fx.Node):
            meta = node.args[0].meta.get("tensor_meta")
            if meta is not None and hasattr(meta, "shape"):
                shapes[node.name] = meta.shape
    return shapes


def _prepare_nir_body(gm: fx.GraphModule, x: torch.Tensor, supported: set) -> None:
    """Rewrite ``gm`` in place into what the exporter can map; ``ValueError`` listing what NIR lacks."""
    # identities (folded BatchNorms, eval-mode dropout) disappear
    for node in list(gm.graph.nodes):
        if node.op == "call_module" and isinstance(gm.get_submodule(node.target), _IDENTITY_TYPES) and len(node.args) == 1:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
    gm.recompile()
    shapes = _propagate_shapes(gm, x)

    problems: Dict[str, List[str]] = {}
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            m = gm.get_submodule(node.target)
            if isinstance(m, (nn.AdaptiveAvgPool2d, layer.AdaptiveAvgPool2d)) and node.name in shapes:
                h, w = (int(v) for v in shapes[node.name][-2:])
                size = m.output_size
                oh, ow = (size, size) if isinstance(size, int) else tuple(size)
                oh, ow = h if oh is None else int(oh), w if ow is None else int(ow)  # None keeps the input size
                if h % oh or w % ow:
                    problems.setdefault("AdaptiveAvgPool", []).append(f"{type(m).__name__} {node.target}")
                    continue
                if (oh, ow) == (h, w):
                    node.replace_all_uses_with(node.args[0])
                    gm.graph.erase_node(node)
                else:
                    k = (h // oh, w // ow)
                    pool = layer.AvgPool2d(kernel_size=k, stride=k, step_mode=getattr(m, "step_mode", "s"))
                    _set_submodule(gm, node.target, pool)
                continue
            inner = _wrapped(m)
            kind = type(inner).__name__
            where = f"{kind} {node.target}" + (" (in a SeqToANNContainer)" if inner is not m else "")
            if isinstance(inner, (nn.modules.pooling._MaxPoolNd, nn.modules.pooling._AdaptiveMaxPoolNd)) \
                    or "MaxPool" in kind:
                problems.setdefault("MaxPool", []).append(where)
            elif isinstance(inner, _BN):
                problems.setdefault("BatchNorm", []).append(where)
            elif inner is not m or type(m) not in supported:
                problems.setdefault("module", []).append(where)
            elif isinstance(m, neuron.BaseNode) and getattr(m, "v_reset", 0.0) is None:
                problems.setdefault("soft reset", []).append(where)
            elif isinstance(m, nn.AvgPool2d) and m.ceil_mode:
                problems.setdefault("AvgPool ceil_mode", []).append(where)
        elif node.op == "call_function" and node.target not in (operator.add, torch.add):
            name = getattr(node.target, "__name__", str(node.target))
            key = "MaxPool" if any(f in name for f in _MAX_POOL_FUNCTIONS) else "operation"
            problems.setdefault(key, []).append(f"{name} ({node.name})")
        elif node.op == "call_method" and node.target != "add":
            problems.setdefault("operation", []).append(f".{node.target}() ({node.name})")
    if problems:
        raise ValueError(_nir_problems_message(problems))
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()


def _nir_problems_message(problems: Dict[str, List[str]]) -> str:
    """One line: each kind of problem once (its hint), with the modules or operations where it occurs."""
    order = ["MaxPool", "BatchNorm", "AdaptiveAvgPool", "soft reset", "AvgPool ceil_mode", "Flatten", "module", "operation"]
    parts = []
    for key in sorted(problems, key=lambda k: order.index(k) if k in order else len(order)):
        where = list(dict.fromkeys(problems[key]))
        shown = ", ".join(where[:4]) + (f" and {len(where) - 4} more" if len(where) > 4 else "")
        parts.append(f"{_NIR_HINTS.get(key, key)} (found: {shown})")
    return "cannot export to NIR: " + "; ".join(parts)


def _wrapped(m: nn.Module) -> nn.Module:
    """The module inside a one-module ``SeqToANNContainer`` (what the user wrote), else ``m``."""
    if isinstance(m, layer.SeqToANNContainer) and len(m) == 1:
        return m[0]
    return m


#: the SpikingJelly layer computing, on ``[T, B, ...]`` in multi-step mode, what a torch.nn module
#: computes on ``[T*B, ...]`` inside a ``SeqToANNContainer`` (each subclasses its torch.nn module)
_STEP_LAYERS = {
    nn.Conv1d: layer.Conv1d, nn.Conv2d: layer.Conv2d, nn.Linear: layer.Linear,
    nn.BatchNorm1d: layer.BatchNorm1d, nn.BatchNorm2d: layer.BatchNorm2d, nn.AvgPool2d: layer.AvgPool2d,
    nn.MaxPool1d: layer.MaxPool1d, nn.MaxPool2d: layer.MaxPool2d, nn.AdaptiveAvgPool2d: layer.AdaptiveAvgPool2d,
    nn.Flatten: layer.Flatten,
}


def _as_step_layer(m: nn.Module, step_mode: str) -> Optional[nn.Module]:
    """``m`` (a torch.nn module, or a SpikingJelly layer) as the SpikingJelly layer of that class in
    ``step_mode``, sharing its parameters and settings; ``nn.Identity`` for identities; None if
    there is no such layer."""
    if isinstance(m, _IDENTITY_TYPES):
        return nn.Identity()
    sj_cls = next((sj for t, sj in _STEP_LAYERS.items() if type(m) in (t, sj)), None)
    if sj_cls is None:
        return None
    out = sj_cls.__new__(sj_cls)
    out.__dict__.update(m.__dict__)  # same parameters, buffers and hyper-parameters (a layer only adds step_mode)
    out.step_mode = step_mode
    return out


def _unwrap_sequence(m: nn.Module) -> List[nn.Module]:
    if type(m) in (nn.Sequential, layer.SeqToANNContainer):
        return [part for child in m for part in _unwrap_sequence(child)]
    return [m]


def _rewrite_for_nir(module: nn.Module, multi_step: bool, problems: Dict[str, List[str]], prefix: str = "") -> None:
    """In place: every ``SeqToANNContainer`` becomes an ``nn.Sequential`` of the equivalent
    multi-step SpikingJelly layers (the modules without one stay wrapped, alone, so the forward is
    unchanged and the check names them); in a multi-step model a ``torch.nn.Flatten(start_dim >= 2)``
    becomes the equivalent ``layer.Flatten``, since the exporter reads a plain Flatten's dimensions
    as single-step ones."""
    for name, child in list(module.named_children()):
        path = f"{prefix}{name}"
        if type(child) is layer.SeqToANNContainer:
            parts = []
            for part in _unwrap_sequence(child):
                converted = _as_step_layer(part, "m")
                parts.append(converted if converted is not None else layer.SeqToANNContainer(part))
            setattr(module, name, nn.Sequential(*parts))
        elif multi_step and type(child) is nn.Flatten:
            if child.start_dim >= 2 and (child.end_dim < 0 or child.end_dim >= child.start_dim):
                end = child.end_dim - 1 if child.end_dim > 0 else child.end_dim
                setattr(module, name, layer.Flatten(child.start_dim - 1, end, step_mode="m"))
            else:
                problems.setdefault("Flatten", []).append(f"Flatten {path} (start_dim={child.start_dim})")
        else:
            _rewrite_for_nir(child, multi_step, problems, prefix=f"{path}.")


def _exportable_copy(model: nn.Module) -> Tuple[nn.Module, bool]:
    """A copy of ``model`` in the form the exporter maps (see :func:`_rewrite_for_nir`) and whether
    it runs multi-step; ``ValueError`` for what cannot be rewritten."""
    functional.reset_net(model)
    work = copy.deepcopy(model)
    if _is_spiking_net(work):
        work.step_mode = "m"
        multi_step = True
    else:
        modes = {"m" if isinstance(m, sj_base.MultiStepModule) else getattr(m, "step_mode", "s")
                 for m in work.modules() if isinstance(m, sj_base.StepModule)}
        if len(modes) > 1:
            raise ValueError("cannot export to NIR: the model mixes single-step and multi-step SpikingJelly modules; "
                             "set one step mode for all (functional.set_step_mode(model, 'm'))")
        multi_step = modes == {"m"}
    problems: Dict[str, List[str]] = {}
    _rewrite_for_nir(work, multi_step, problems)
    if problems:
        raise ValueError(_nir_problems_message(problems))
    return work, multi_step


def _time_major_input(model: nn.Module, example_input: torch.Tensor) -> torch.Tensor:
    """``[T, B, ...]`` for a SpikingNet (a static ``[B, ...]`` batch is repeated ``model.T`` times)."""
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
    dims = model.static_input_dims
    if example_input.dim() == dims:
        return example_input.unsqueeze(0).repeat(model.T, *([1] * dims))
    if example_input.dim() == dims + 1:
        return example_input
    raise ValueError(f"example_input must be a static batch with {dims} dims or a time-major sequence with "
                     f"{dims + 1} dims, got shape {tuple(example_input.shape)}")


def export_nir(model: nn.Module, example_input: torch.Tensor, path: Optional[PathLike] = None,
               dt: float = 1e-4):
    """Export the spiking network ``model`` to NIR; writes NIR's HDF5 file to ``path`` (if given).

    Steps: a copy of ``model`` (``model`` is untouched apart from a state reset) with every
    ``layer.SeqToANNContainer`` replaced by the equivalent multi-step SpikingJelly layers;
    :func:`fuse_batchnorm`; the network *body* (:func:`spiking_body`; for a
    :class:`~sca_plugin.models.SpikingNet`, in multi-step mode, input ``[T, B, ...]``, output
    ``[T, B, classes]``: no input repetition, no time average, which the :class:`ImportedNIRNet`
    returned by :func:`import_nir` adds back; for any other module its ``forward``, e.g. an
    ``nn.Sequential``), identities dropped and exact ``AdaptiveAvgPool2d`` rewritten as
    ``AvgPool2d``, then SpikingJelly's ``nir_exchange.export_to_nir``.

    ``example_input`` fixes the layer shapes recorded in the graph: for a SpikingNet a static
    ``[B, C, H, W]`` batch (repeated ``model.T`` times) or ``[T, B, C, H, W]``; for another
    multi-step model what it takes (``[T, B, ...]``); for a single-step model one step ``[B, ...]``.

    The graph's ``metadata`` records ``format``, ``readout`` (``"mean"`` for a SpikingNet, else
    ``"sequence"``), ``dt``, ``source``, ``source_step_mode`` and, for a SpikingNet, ``time_steps``
    (``model.T``) so that :func:`import_nir` can rebuild the model's behaviour.

    Returns the ``nir.NIRGraph``. Raises :class:`NIRNotInstalledError` (an ``ImportError``) without
    ``nir``/``nirtorch`` and one ``ValueError`` (each kind of problem once, naming the modules and
    the fix) for what NIR cannot express: max pooling, BatchNorm that cannot be folded, soft reset,
    non-integer adaptive pooling, other modules, operations other than layers, neurons and additions.
    """
    nir, to_nir, _ = _require_nir()
    if dt <= 0:
        raise ValueError(f"dt must be positive, got {dt!r}")
    if not isinstance(example_input, torch.Tensor):
        raise TypeError(f"example_input must be a tensor, got {type(example_input).__name__}")
    work, multi_step = _exportable_copy(model)
    fused = fuse_batchnorm(work)
    spiking = _is_spiking_net(fused)
    if spiking:
        x = _time_major_input(fused, example_input)
    else:
        x = example_input
    param = next(fused.parameters(), None)
    if param is not None:
        x = x.to(device=param.device, dtype=param.dtype)
    try:
        gm = spiking_body(fused)
    except Exception as e:
        raise ValueError(f"cannot export to NIR: the forward of {type(model).__name__} cannot be traced by torch.fx "
                         f"({type(e).__name__}: {e}); NIR needs a static graph of layers, neurons and additions") from e
    _prepare_nir_body(gm, x, _nir_module_types(to_nir))
    try:
        graph = to_nir.export_to_nir(gm, x, save_path=None, dt=dt)
    except NotImplementedError as e:
        raise ValueError(f"cannot export to NIR: {e}") from e
    finally:
        functional.reset_net(gm)
    metadata = {"format": NIR_FORMAT, "dt": float(dt), "readout": "mean" if spiking else "sequence",
                "source": type(model).__name__, "source_step_mode": "m" if multi_step else "s"}
    if spiking:
        metadata["time_steps"] = int(fused.T)
    graph.metadata = {**dict(getattr(graph, "metadata", None) or {}), **metadata}
    if path is not None:
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        nir.write(str(path), graph)
    return graph


def _meta_value(v):
    if hasattr(v, "item") and getattr(v, "ndim", 1) == 0:
        v = v.item()
    if isinstance(v, bytes):
        v = v.decode()
    return v


class ImportedNIRNet(nn.Module):
    """A NIR graph imported with SpikingJelly, called like a :class:`~sca_plugin.models.SpikingNet`.

    ``forward(x)`` takes ``[T, B, ...]`` (or a static ``[B, ...]`` batch, repeated ``time_steps``
    times when the graph records them) and returns the output averaged over time ``[B, out]``
    (``readout="mean"``) or the whole sequence ``[T, B, out]`` (``readout="sequence"``). Every call
    starts from the initial neuron state; no ``reset_net`` is needed. The SpikingJelly
    ``fx.GraphModule`` (``forward(x, state=None) -> (out, state)``) is :attr:`graph_module`.
    """

    def __init__(self, graph_module: nn.Module, readout: str = "mean", time_steps: Optional[int] = None,
                 input_dims: Optional[int] = None, metadata: Optional[dict] = None) -> None:
        super().__init__()
        if readout not in ("mean", "sequence"):
            raise ValueError(f"readout must be 'mean' or 'sequence', got {readout!r}")
        self.graph_module = graph_module
        self.readout = readout
        self.time_steps = time_steps
        self.input_dims = input_dims  # dims of one sample at one time step (e.g. 3 for [C, H, W])
        self.metadata = dict(metadata or {})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_dims is not None and x.dim() == self.input_dims + 1:
            if self.time_steps is None:
                single = self.metadata.get("source_step_mode") == "s"
                raise ValueError(f"got a static batch {tuple(x.shape)} but the NIR graph records no time_steps"
                                 + (" (it was exported from a single-step model; the imported network is multi-step)"
                                    if single else "") + "; pass a time-major [T, B, ...] input")
            x = x.unsqueeze(0).repeat(self.time_steps, *([1] * x.dim()))
        out, _ = self.graph_module(x)
        return out.mean(dim=0) if self.readout == "mean" else out

    def extra_repr(self) -> str:
        return f"readout={self.readout}, time_steps={self.time_steps}"


def import_nir(path: Union[PathLike, Any], dt: Optional[float] = None, readout: Optional[str] = None,
               device: str = "cpu", dtype: torch.dtype = torch.float32) -> ImportedNIRNet:
    """Load a NIR graph (HDF5 path or ``nir.NIRGraph``) as a multi-step SpikingJelly network.

    Uses SpikingJelly's ``nir_exchange.import_from_nir`` in multi-step mode (feed-forward graphs).
    ``dt`` defaults to the one recorded by :func:`export_nir` (else ``1e-4``, as in SpikingJelly);
    ``readout`` defaults to the recorded one (else ``"sequence"``). See :class:`ImportedNIRNet`.
    """
    nir, _, from_nir = _require_nir()
    graph = nir.read(str(path)) if isinstance(path, (str, os.PathLike)) else path
    meta = {k: _meta_value(v) for k, v in (getattr(graph, "metadata", None) or {}).items()}
    if dt is None:
        dt = float(meta.get("dt", 1e-4))
    if readout is None:
        readout = str(meta.get("readout", "sequence"))
    gm = from_nir.import_from_nir(graph, dt=dt, device=device, dtype=dtype, step_mode="m")
    input_dims = None
    for node in graph.nodes.values():
        if isinstance(node, nir.Input):
            shape = next(iter(node.input_type.values()), None)
            if shape is not None:
                input_dims = int(len(shape))
            break
    time_steps = meta.get("time_steps")
    net = ImportedNIRNet(gm, readout=readout, time_steps=int(time_steps) if time_steps is not None else None,
                         input_dims=input_dims, metadata=meta)
    return net.eval()


# --------------------------------------------------------------------------- TorchScript / torch.export
class PlainNeuron(nn.Module):
    """Inference-only, pure-PyTorch multi-step IF / LIF / PLIF neuron (SpikingJelly's reference formulas).

    SpikingJelly 2.0.0 neurons run registered custom operators (``sj_if::forward``, ...), which a
    TorchScript or ``torch.export`` artefact would need SpikingJelly to load. For those formats the
    neurons are swapped for this module: ``[T, ...] -> [T, ...]`` spikes, starting from rest at every
    call (``v = v_reset``, or 0 for soft reset), Heaviside firing, hard or soft reset.
    """

    def __init__(self, kind: str, v_threshold: float, v_reset: Optional[float], tau: float = 2.0,
                 decay_input: bool = True, w: Optional[torch.Tensor] = None) -> None:
        super().__init__()
        if kind not in ("if", "lif", "plif"):
            raise ValueError(f"kind must be 'if', 'lif' or 'plif', got {kind!r}")
        self.kind = kind
        self.v_threshold = float(v_threshold)
        self.v_reset = None if v_reset is None else float(v_reset)
        self.tau = float(tau)
        self.decay_input = bool(decay_input)
        self.register_buffer("w", None if w is None else w.detach().clone())

    @classmethod
    def from_spikingjelly(cls, node: nn.Module) -> "PlainNeuron":
        kind = {neuron.IFNode: "if", neuron.LIFNode: "lif", neuron.ParametricLIFNode: "plif"}.get(type(node))
        if kind is None:
            raise ValueError(f"no plain-PyTorch version of {type(node).__name__}")
        v_reset = node.v_reset
        if isinstance(v_reset, torch.Tensor) or isinstance(node.v_threshold, torch.Tensor):
            raise ValueError(f"{type(node).__name__} with tensor-valued threshold/reset is not supported")
        return cls(kind, node.v_threshold, v_reset, tau=float(getattr(node, "tau", 2.0)),
                   decay_input=getattr(node, "decay_input", True), w=getattr(node, "w", None))

    def forward(self, x_seq: torch.Tensor) -> torch.Tensor:
        reset = 0.0 if self.v_reset is None else self.v_reset
        v = torch.full_like(x_seq[0], reset)
        spikes = []
        for x in x_seq.unbind(0):
            if self.kind == "if":
                h = v + x
            elif self.kind == "lif":
                h = v + (x - (v - reset)) / self.tau if self.decay_input else v - (v - reset) / self.tau + x
            else:
                q = self.w.sigmoid()
                h = v + (x - (v - reset)) * q if self.decay_input else v - (v - reset) * q + x
            spike = (h - self.v_threshold >= 0).to(h.dtype)
            v = h - spike * self.v_threshold if self.v_reset is None else spike * self.v_reset + (1.0 - spike) * h
            spikes.append(spike)
        return torch.stack(spikes)

    def extra_repr(self) -> str:
        return f"kind={self.kind}, v_threshold={self.v_threshold}, v_reset={self.v_reset}"


def plain_torch_copy(model: nn.Module) -> nn.Module:
    """An eval-mode copy of ``model`` in multi-step mode whose neurons are :class:`PlainNeuron`.

    Same outputs as ``model`` in eval mode; no state is kept between calls (no ``reset_net``
    needed), and tracing it records only standard PyTorch operators. ``ValueError`` for neuron types
    other than ``IFNode``/``LIFNode``/``ParametricLIFNode`` (use ``fmt="torch"`` for those) and for
    non-SpikingNet models with single-step neurons.
    """
    functional.reset_net(model)
    m = copy.deepcopy(model).eval()
    if _is_spiking_net(m):
        m.step_mode = "m"
    unsupported = []
    for name, mod in list(m.named_modules()):
        if isinstance(mod, neuron.BaseNode) or (isinstance(mod, sj_base.MemoryModule) and not isinstance(mod, layer.Dropout)):
            if mod.step_mode != "m":
                unsupported.append(f"{type(mod).__name__} {name} (single-step)")
                continue
            try:
                _set_submodule(m, name, PlainNeuron.from_spikingjelly(mod).to(
                    next((p.device for p in m.parameters()), torch.device("cpu"))))
            except ValueError:
                unsupported.append(f"{type(mod).__name__} {name}")
    if unsupported:
        shown = ", ".join(unsupported[:4]) + (f" and {len(unsupported) - 4} more" if len(unsupported) > 4 else "")
        raise ValueError("plain-PyTorch export (torchscript/export) supports multi-step IFNode, LIFNode and "
                         f"ParametricLIFNode neurons only (found: {shown}); use fmt='torch'")
    return m


def export_torchscript(model: nn.Module, example_input: torch.Tensor, path: PathLike) -> str:
    """``torch.jit.trace`` of ``model`` in eval mode (neurons as :class:`PlainNeuron`), saved with
    ``torch.jit.save``; returns the path.

    Loads with plain torch -- ``torch.jit.load(path)``, no ``sca_plugin`` and no SpikingJelly -- and
    every call starts from rest. The trace unrolls the time loop: the artefact takes the layout of
    ``example_input`` (static ``[B, C, H, W]`` repeated ``T`` times, or ``[T, B, C, H, W]``) with
    its number of time steps; the batch size is free.
    """
    m = plain_torch_copy(model)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit.trace is deprecated in torch 2.x; it still works
        with torch.no_grad():
            traced = torch.jit.trace(m, example_input, check_trace=False)
    buf = io.BytesIO()
    torch.jit.save(traced, buf)
    atomic_write_bytes(buf.getvalue(), Path(path))
    return str(path)


def export_program(model: nn.Module, example_input: torch.Tensor, path: PathLike) -> str:
    """``torch.export`` of ``model`` in eval mode (neurons as :class:`PlainNeuron`, batch dimension
    dynamic), saved with ``torch.export.save`` (a ``.pt2`` archive); returns the path.

    Loads with plain torch: ``torch.export.load(path).module()`` (no ``sca_plugin``, no
    SpikingJelly). As with TorchScript the number of time steps is that of ``example_input``.
    """
    m = plain_torch_copy(model)
    static = example_input.dim() == getattr(m, "static_input_dims", example_input.dim())
    with torch.no_grad():
        # Dim.AUTO: a named Dim("batch") fails on guards torch cannot prove for batch 0
        program = torch.export.export(m, (example_input,), dynamic_shapes=({0 if static else 1: torch.export.Dim.AUTO},))
    buf = io.BytesIO()
    torch.export.save(program, buf)
    atomic_write_bytes(buf.getvalue(), Path(path))
    return str(path)


def export_torch(model: nn.Module, path: PathLike) -> str:
    """``torch.save`` of the whole module (as the runner writes ``model.pt``); see :func:`export_run`."""

    functional.reset_net(model)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_save(model, path)
    return str(path)


# --------------------------------------------------------------------------- run folders
#: ``(in_channels, height, width)`` of one frame of the datasets ``sca-prune train`` knows, for
#: models that do not record their input size.
_DATASET_FRAME = {
    "digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32), "nmnist": (2, 34, 34), "nmnist-sim": (2, 34, 34),
}


def example_input_for(model: nn.Module, config: Optional[dict] = None, batch_size: int = 1,
                      input_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A random static example ``[batch_size, C, H, W]`` for ``model``.

    The frame shape comes from ``input_shape`` (``(C, H, W)``), else the model (``in_channels`` and
    ``input_size``), else the run's dataset (``config["dataset"]``); ``ValueError`` if unknown.
    """
    if input_shape is None:
        size = getattr(model, "input_size", None)
        channels = getattr(model, "in_channels", None)
        if size is not None and channels is not None:
            h, w = (size, size) if isinstance(size, int) else size
            input_shape = (channels, h, w)
        elif config and str(config.get("dataset", "")).lower() in _DATASET_FRAME:
            input_shape = _DATASET_FRAME[str(config["dataset"]).lower()]
            if channels is not None:
                input_shape = (channels, *input_shape[1:])
        else:
            raise ValueError("cannot tell the model's input shape; pass input_shape=(C, H, W) or example_input")
    param = next(model.parameters(), None)
    kwargs = {"device": param.device, "dtype": param.dtype} if param is not None else {}
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch_size, *[int(s) for s in input_shape], generator=g).to(**kwargs)


def _run_config(run_dir: Path) -> dict:
    metrics = run_dir / "metrics.json"
    if metrics.is_file():
        try:
            return dict(json.loads(metrics.read_text()).get("config") or {})
        except (OSError, ValueError):
            pass
    return {}


def export_run(run_dir: PathLike, out_path: PathLike, fmt: str = "torch",
               example_input: Optional[torch.Tensor] = None, input_shape: Optional[Sequence[int]] = None,
               dt: float = 1e-4) -> str:
    """Write the finalized (physically pruned) model of a ``sca-prune train`` run folder; returns the path.

    Formats (:data:`EXPORT_FORMATS`):

    * ``"torch"`` -- the pickled module (``torch.save(model)``, as the run's ``model.pt``). Loading
      needs only ``sca_plugin`` importable (for the model classes) and
      ``model = torch.load(path, weights_only=False)``; call ``model.eval()`` and
      ``spikingjelly.activation_based.functional.reset_net(model)`` after every batch. Unpickling
      runs code: load trusted files only.
    * ``"torchscript"`` -- ``torch.jit.trace`` in eval mode; loads with plain torch,
      ``torch.jit.load(path)`` (no ``sca_plugin``); fixed number of time steps, any batch size.
    * ``"export"`` -- ``torch.export`` program (``.pt2``); ``torch.export.load(path).module()``.
    * ``"nir"`` -- BatchNorm folded, then NIR via SpikingJelly (:func:`export_nir`); read it back with
      :func:`import_nir` or any NIR-capable tool. Needs ``pip install nir nirtorch``.

    ``example_input`` (a static ``[B, C, H, W]`` batch or ``[T, B, C, H, W]``) fixes the traced
    shapes of the non-pickle formats; by default a random batch of the run's input shape
    (:func:`example_input_for`, ``input_shape=(C, H, W)`` overrides it).
    """
    from .runner import load_finalized_model

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    run_dir = Path(run_dir)
    if fmt == "nir":
        _require_nir()  # fail before loading anything
    model = load_finalized_model(str(run_dir))
    model.eval()
    if fmt == "torch":
        return export_torch(model, out_path)
    if example_input is None:
        example_input = example_input_for(model, _run_config(run_dir), batch_size=2, input_shape=input_shape)
    if fmt == "torchscript":
        return export_torchscript(model, example_input, out_path)
    if fmt == "export":
        return export_program(model, example_input, out_path)
    export_nir(model, example_input, out_path, dt=dt)
    return str(out_path)

"""NIR export and import through SpikingJelly's ``nir_exchange`` (``pip install nir nirtorch``):
the body rewritten into what NIR can express, or one error naming every unsupported part."""
from __future__ import annotations

import copy
import operator
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import torch
import torch.nn as nn
from torch import fx
from spikingjelly.activation_based import base as sj_base
from spikingjelly.activation_based import functional, layer, neuron


from .fusion import PathLike, _BN, _is_spiking_net, _set_submodule, fuse_batchnorm, spiking_body


NIR_INSTALL_HINT = "pip install nir nirtorch"


#: ``metadata["format"]`` of the NIR graphs written by :func:`export_nir`.
NIR_FORMAT = "sca_plugin.nir/1"


class NIRNotInstalledError(ImportError):
    """The optional ``nir`` / ``nirtorch`` packages are missing."""


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

"""Files that load without sca_plugin or SpikingJelly: TorchScript and ``torch.export`` programs of
a plain-PyTorch copy (:class:`PlainNeuron` for the neurons), and the pickled module."""
from __future__ import annotations

import copy
import io
import warnings
from pathlib import Path
from typing import Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import base as sj_base
from spikingjelly.activation_based import functional, layer, neuron

from ..files import atomic_save, atomic_write_bytes

from .fusion import PathLike, _is_spiking_net, _set_submodule


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

"""The counters of :func:`~sca_plugin.metrics.spiking_metrics`: synaptic operators, the one dense-MAC
count, neuron activity and layer order, energy."""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from torch.utils.flop_counter import FlopCounterMode

from ..neurons import is_spiking_neuron, neuron_channel_dim



_aten = torch.ops.aten


#: The operators that carry synaptic weights (the rules SpikingJelly's ``SynOpCounter`` has).
SYNAPTIC_OPS = (
    _aten.convolution.default,
    _aten.mm.default,
    _aten.addmm.default,
    _aten.bmm.default,
    _aten.baddbmm.default,
)


_SYNAPTIC_PACKETS = tuple(op.overloadpacket for op in SYNAPTIC_OPS)


_SYNAPTIC_MODULES = (nn.modules.conv._ConvNd, nn.Linear)


def _library_version(name: str) -> str:
    try:
        from importlib.metadata import version

        return version(name)
    except Exception:  # pragma: no cover - metadata missing in odd installs
        return "unknown"


def _input_of(batch: Any) -> Any:
    """A batch is an input tensor, or an ``(input, target, ...)`` tuple/list from a data loader."""
    if isinstance(batch, (tuple, list)):
        if not batch:
            raise ValueError("spiking_metrics: got an empty tuple/list as a batch")
        return batch[0]
    return batch


def _top_level_neurons(model: nn.Module) -> List[Tuple[str, nn.Module]]:
    """Spiking-neuron modules that are not nested inside another neuron module."""
    found: List[Tuple[str, nn.Module]] = []
    for name, m in model.named_modules():
        if not is_spiking_neuron(m):
            continue
        if any(name.startswith(parent + ".") for parent, _ in found if parent):
            continue
        found.append((name, m))
    return found


class _HookSet:
    """A context manager whose ``__enter__`` (the subclass's) puts hooks on the model, keeping their
    handles in ``_handles``; ``__exit__`` removes them."""

    _handles: list

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


class _Activity(_HookSet):
    """Forward hooks on the neurons: non-zero outputs, output elements, and the time/batch layout."""

    def __init__(self, neurons: List[Tuple[str, nn.Module]]) -> None:
        self.neurons = neurons
        self.nnz: Dict[str, int] = {name: 0 for name, _ in neurons}
        self.numel: Dict[str, int] = {name: 0 for name, _ in neurons}
        self._handles: list = []
        self._first: Optional[nn.Module] = None
        self._first_calls: List[tuple] = []

    def start_batch(self) -> None:
        self._first = None
        self._first_calls = []

    def layout(self) -> Optional[Tuple[int, int]]:
        """``(time_steps, batch_size)`` of the last batch, read from the first neuron that ran."""
        if self._first is None:
            return None
        shape = self._first_calls[0]
        if len(shape) == 0:
            return None
        if neuron_channel_dim(self._first) == 2 and len(shape) >= 2:  # multi-step [T, B, ...]
            return int(shape[0]), int(shape[1])
        return len(self._first_calls), int(shape[0])  # single-step: T calls of [B, ...]

    def _hook(self, name: str):
        def hook(module, args, out):
            out = out[0] if isinstance(out, (tuple, list)) else out
            if not torch.is_tensor(out):
                return
            self.nnz[name] += int(torch.count_nonzero(out).item())
            self.numel[name] += int(out.numel())
            if self._first is None:
                self._first = module
            if module is self._first:
                self._first_calls.append(tuple(out.shape))

        return hook

    def __enter__(self) -> "_Activity":
        for name, m in self.neurons:
            self._handles.append(m.register_forward_hook(self._hook(name)))
        return self


class _LayerOrder(_HookSet):
    """Names of the conv/linear layers in the order they first run."""

    def __init__(self, layers: List[Tuple[str, nn.Module]]) -> None:
        self.layers = layers
        self.order: List[str] = []
        self._handles: list = []

    def __enter__(self) -> "_LayerOrder":
        for name, m in self.layers:
            def hook(module, args, name=name):
                if name not in self.order:
                    self.order.append(name)

            self._handles.append(m.register_forward_pre_hook(hook))
        return self


def _energy(macs: float, acs: float, dense: float, e_mac: float, e_ac: float) -> Dict[str, Any]:
    mac_pj, ac_pj, ann_pj = macs * e_mac, acs * e_ac, dense * e_mac
    return {
        "mac_pJ": mac_pj,
        "ac_pJ": ac_pj,
        "total_pJ": mac_pj + ac_pj,
        "total_uJ": (mac_pj + ac_pj) * 1e-6,
        "ann_equivalent_pJ": ann_pj,
        "ann_equivalent_uJ": ann_pj * 1e-6,
        "ratio_to_ann": (mac_pj + ac_pj) / ann_pj if ann_pj else None,
        "e_mac_pJ": e_mac,
        "e_ac_pJ": e_ac,
    }


def _synaptic_total(counts: Dict[Any, int]) -> int:
    """Sum of a FlopCounterMode scope's counts over the synaptic operators."""
    return int(sum(v for op, v in counts.items() if op in _SYNAPTIC_PACKETS))


def synaptic_macs(flop_mode: FlopCounterMode, scope: str = "Global") -> int:
    """The MACs of the synaptic operators (:data:`SYNAPTIC_OPS`: convolutions and matrix products)
    a ``FlopCounterMode`` saw, FLOPs / 2 (bias additions not included): the one dense-MAC count of
    the package (``spiking_metrics``' ``dense_macs``, ``reporting.count_macs``)."""
    return _synaptic_total(flop_mode.get_flop_counts().get(scope, {})) // 2

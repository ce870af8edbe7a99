"""Spiking neurons as first-class members of Torch-Pruning's dependency graph.

Torch-Pruning looks pruners up by the *exact* class of a module, so every SpikingJelly neuron
class found in a model gets an entry pointing at :class:`SpikingNeuronPruner`.  A neuron is
channel-wise (element-wise), so pruning its input channels prunes its output channels: the pruner
slices per-channel parameters and buffers and resets the membrane state, whose shape depended on
the old width.
"""
from __future__ import annotations

import inspect
import weakref
from typing import Callable, Dict, Iterable, Optional, Sequence, Type

import torch
import torch.nn as nn
import torch_pruning as tp
from spikingjelly.activation_based import base as sj_base
from spikingjelly.activation_based import neuron as sj_neuron

__all__ = [
    "NEURON_BASE_CLASSES",
    "is_spiking_neuron",
    "register_neuron_class",
    "neuron_channel_dim",
    "SpikingNeuronPruner",
    "register_charge_function",
    "charge_function_for",
]


def _spikingjelly_neuron_classes() -> tuple:
    classes = []
    for _, obj in inspect.getmembers(sj_neuron, inspect.isclass):
        if issubclass(obj, nn.Module) and obj.__module__.startswith("spikingjelly.activation_based.neuron"):
            classes.append(obj)
    return tuple(classes)


#: Every neuron class SpikingJelly exports from ``spikingjelly.activation_based.neuron``; user
#: subclasses of any of them are recognised too (``isinstance``).
NEURON_BASE_CLASSES: tuple = _spikingjelly_neuron_classes()
_EXTRA_NEURON_CLASSES: list = []


def register_neuron_class(cls: Type[nn.Module]) -> Type[nn.Module]:
    """Declare a neuron class that does not derive from a SpikingJelly neuron (usable as decorator)."""
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise TypeError(f"register_neuron_class expects an nn.Module subclass, got {cls!r}")
    if cls not in _EXTRA_NEURON_CLASSES:
        _EXTRA_NEURON_CLASSES.append(cls)
    return cls


def is_spiking_neuron(module: nn.Module) -> bool:
    """True for SpikingJelly neurons, their subclasses and classes given to :func:`register_neuron_class`."""
    return isinstance(module, NEURON_BASE_CLASSES + tuple(_EXTRA_NEURON_CLASSES))


def neuron_channel_dim(module: nn.Module) -> int:
    """Channel dimension of a neuron's input: 2 for time-major multi-step ``[T, B, C, ...]``, else 1."""
    step_mode = getattr(module, "step_mode", "m" if isinstance(module, sj_base.MultiStepModule) else "s")
    return 2 if step_mode == "m" else 1


class SpikingNeuronPruner(tp.pruner.BasePruningFunc):
    """Torch-Pruning pruner for spiking-neuron layers.

    The channel count of a neuron is not visible in its parameters (thresholds and time constants are
    usually scalars), so it is recorded from the input seen while the dependency graph is traced
    (:meth:`record`). ``get_out_channels`` must return it: without it Torch-Pruning cannot map a
    ``Flatten -> Linear`` behind a neuron.
    """

    TARGET_MODULES = None

    def __init__(self) -> None:
        super().__init__(pruning_dim=1)
        self._channels: "weakref.WeakKeyDictionary[nn.Module, int]" = weakref.WeakKeyDictionary()

    def record(self, module: nn.Module, x: torch.Tensor) -> None:
        """Remember the channel count of ``module`` from an input it received."""
        dim = neuron_channel_dim(module)
        if x.dim() > dim:
            self._channels[module] = int(x.shape[dim])

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        n = self.get_out_channels(layer)
        removed = set(int(i) for i in idxs)
        keep = None if n is None else torch.tensor([i for i in range(n) if i not in removed], dtype=torch.long)
        if keep is not None:
            for name, p in list(layer.named_parameters(recurse=False)):
                if p.dim() >= 1 and p.shape[0] == n:
                    new = nn.Parameter(p.data.index_select(0, keep.to(p.device)).clone(), requires_grad=p.requires_grad)
                    setattr(layer, name, new)
            for name, b in list(layer.named_buffers(recurse=False)):
                if b.dim() >= 1 and b.shape[0] == n:
                    setattr(layer, name, b.index_select(0, keep.to(b.device)).clone())
            self._channels[layer] = len(keep)
        if hasattr(layer, "reset"):
            layer.reset()  # membrane state was shaped for the old width
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> Optional[int]:
        return self._channels.get(layer)

    get_in_channels = get_out_channels


# ---------------------------------------------------------------------------------------------
# Charge functions: the pre-reset membrane potential H[t] from the input X[t] and the post-reset
# potential V[t-1]. SpikingJelly's fused kernels do not expose H, so the paper's score recomputes it.
# ---------------------------------------------------------------------------------------------
ChargeFn = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
_CHARGE_FUNCTIONS: Dict[type, ChargeFn] = {}


def register_charge_function(cls: type, fn: ChargeFn) -> None:
    """Register ``fn(neuron, x, v_prev) -> h`` giving the pre-reset potential for neurons of ``cls``."""
    _CHARGE_FUNCTIONS[cls] = fn


def charge_function_for(module: nn.Module) -> Optional[ChargeFn]:
    """The most specific registered charge function for ``module`` (by MRO), or None."""
    for cls in type(module).__mro__:
        if cls in _CHARGE_FUNCTIONS:
            return _CHARGE_FUNCTIONS[cls]
    return None


def _v_reset(module: nn.Module) -> float:
    return 0.0 if module.v_reset is None else float(module.v_reset)


def _if_charge(module: nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return v + x


def _leaky_charge(module: nn.Module, x: torch.Tensor, v: torch.Tensor, inv_tau) -> torch.Tensor:
    vr = _v_reset(module)
    if module.decay_input:
        return v + (x - (v - vr)) * inv_tau
    return v - (v - vr) * inv_tau + x


def _lif_charge(module: nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _leaky_charge(module, x, v, 1.0 / module.tau)


def _plif_charge(module: nn.Module, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    return _leaky_charge(module, x, v, module.w.detach().sigmoid())


register_charge_function(sj_neuron.IFNode, _if_charge)
register_charge_function(sj_neuron.LIFNode, _lif_charge)
register_charge_function(sj_neuron.ParametricLIFNode, _plif_charge)
for _name, _fn in (("SimpleIFNode", _if_charge), ("SimpleLIFNode", _lif_charge)):
    if hasattr(sj_neuron, _name):
        register_charge_function(getattr(sj_neuron, _name), _fn)


def neuron_types_in(model: nn.Module) -> Iterable[type]:
    """Exact classes of the spiking neurons inside ``model`` (in first-seen order)."""
    seen = []
    for m in model.modules():
        if is_spiking_neuron(m) and type(m) not in seen:
            seen.append(type(m))
    return seen

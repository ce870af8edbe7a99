"""Spiking neurons as first-class members of Torch-Pruning's dependency graph.

Torch-Pruning looks pruners up by the *exact* class of a module, so every SpikingJelly neuron
class found in a model gets an entry pointing at :class:`SpikingNeuronPruner`.  A neuron is
channel-wise (element-wise), so pruning its input channels prunes its output channels: the pruner
slices per-channel parameters and buffers and resets the membrane state, whose shape depended on
the old width.
"""
from __future__ import annotations

import copy
import inspect
import weakref
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Type

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
    "unsupported_reason",
    "untraced_neurons_message",
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


#: called as ``f(neuron, kept_channel_indices)`` whenever a neuron's channels are removed, so that
#: per-channel statistics follow Torch-Pruning's own pruning (e.g. ``iterative_steps > 1``)
_PRUNE_LISTENERS: List[Callable[[nn.Module, torch.Tensor], None]] = []


def add_prune_listener(listener: Callable[[nn.Module, torch.Tensor], None]) -> None:
    if listener not in _PRUNE_LISTENERS:
        _PRUNE_LISTENERS.append(listener)


def remove_prune_listener(listener: Callable[[nn.Module, torch.Tensor], None]) -> None:
    if listener in _PRUNE_LISTENERS:
        _PRUNE_LISTENERS.remove(listener)


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
        self._probed: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()
        #: neurons whose output at a time step does not depend on that step's input (only on the
        #: state): a trace of a single step cannot see through them (resonate-and-fire)
        self.first_step_blind: "weakref.WeakSet[nn.Module]" = weakref.WeakSet()

    def record(self, module: nn.Module, x: torch.Tensor) -> None:
        """Remember the channel count of ``module`` from an input it received.

        Called from a forward pre-hook while the dependency graph is traced. Torch-Pruning traces
        in eval mode, and some neurons (``ComplementaryLIFNode``, ``SLTTLIFNode``) switch to a
        non-differentiable Heaviside in eval mode: their spikes then have no autograd history, the
        traced graph stops at them and every convolution before them is missing from it (the
        pruner then found "no prunable channel groups"). With gradients enabled (a trace), the first
        call on each neuron therefore checks on a copy whether its eval-mode output depends on its
        input; if only its training-mode output does, the neuron runs this traced forward in
        training mode (its own ``training`` flag only; the tracing code restores every flag
        afterwards, see :func:`sca_plugin.graph.preserve_training_mode`). A neuron whose output
        depends on its input in neither mode raises ``ValueError`` with the reason.
        """
        dim = neuron_channel_dim(module)
        if x.dim() > dim:
            self._channels[module] = int(x.shape[dim])
        if torch.is_grad_enabled() and isinstance(x, torch.Tensor) and module not in self._probed:
            self._probed.add(module)
            self._check_traceable(module, x)

    def _check_traceable(self, module: nn.Module, x: torch.Tensor) -> None:
        multi_step = neuron_channel_dim(module) == 2
        steps = 1 if multi_step else 2  # single-step: the state carries the input to the next step
        if module.training or _depends_on_input(module, x, False, steps) is not False:
            self._note_first_step(module, x, multi_step)
            return
        if _depends_on_input(module, x, True, steps):
            module.training = True  # this trace only: the surrogate spike keeps the autograd path
            return
        name = type(module).__name__
        if multi_step and x.shape[0] == 1 and _depends_on_input(module, x.repeat(2, *([1] * (x.dim() - 1))), False, 1):
            raise ValueError(
                f"{name}: over the single time step of example_inputs its output does not depend on its input "
                "(its spike at a step reacts to the input of earlier steps only), so no channel before it "
                "influences the network's output and Torch-Pruning finds nothing to prune; trace and train with "
                "at least 2 time steps (T >= 2)")
        raise ValueError(
            f"{name}: its output does not depend on its input in training or in eval mode (it has no surrogate "
            "gradient), so Torch-Pruning cannot trace any channel through it and SCA's gradient-based "
            "regrowth has no signal; use a surrogate-gradient neuron such as IFNode, LIFNode or ParametricLIFNode")

    def _note_first_step(self, module: nn.Module, x: torch.Tensor, multi_step: bool) -> None:
        if not multi_step and _depends_on_input(module, x, module.training, 1) is False:
            self.first_step_blind.add(module)

    def prune_out_channels(self, layer: nn.Module, idxs: Sequence[int]) -> nn.Module:
        """Slice the per-channel parameters and buffers of ``layer`` and of its submodules (e.g. the
        membrane-potential BatchNorm ``vbn`` of ``MPBNLIFNode``), then reset its state."""
        n = self.get_out_channels(layer)
        removed = set(int(i) for i in idxs)
        keep = None if n is None else torch.tensor([i for i in range(n) if i not in removed], dtype=torch.long)
        if keep is not None:
            for sub in layer.modules():
                for name, p in list(sub.named_parameters(recurse=False)):
                    if p.dim() >= 1 and p.shape[0] == n:
                        new = nn.Parameter(p.data.index_select(0, keep.to(p.device)).clone(), requires_grad=p.requires_grad)
                        setattr(sub, name, new)
                for name, b in list(sub.named_buffers(recurse=False)):
                    if b is not None and b.dim() >= 1 and b.shape[0] == n:
                        setattr(sub, name, b.index_select(0, keep.to(b.device)).clone())
                if isinstance(sub, nn.modules.batchnorm._NormBase) and sub.num_features == n:
                    sub.num_features = len(keep)
            self._channels[layer] = len(keep)
            for listener in list(_PRUNE_LISTENERS):
                listener(layer, keep)
        if hasattr(layer, "reset"):
            layer.reset()  # membrane state was shaped for the old width
        return layer

    prune_in_channels = prune_out_channels

    def get_out_channels(self, layer: nn.Module) -> Optional[int]:
        return self._channels.get(layer)

    get_in_channels = get_out_channels


_HOOK_DICTS = ("_forward_hooks", "_forward_pre_hooks", "_forward_hooks_with_kwargs", "_forward_pre_hooks_with_kwargs",
               "_forward_hooks_always_called", "_backward_hooks", "_backward_pre_hooks")


def _first_tensor(out) -> Optional[torch.Tensor]:
    while isinstance(out, (tuple, list)) and out:
        out = out[0]
    return out if isinstance(out, torch.Tensor) else None


def _depends_on_input(module: nn.Module, x: torch.Tensor, training: bool, steps: int) -> Optional[bool]:
    """Whether the output of a fresh copy of ``module`` (train or eval mode) over ``steps`` calls on
    ``x`` has an autograd path to ``x`` (what Torch-Pruning's tracer follows); None when the copy
    cannot be made or run (nothing is concluded then)."""
    try:
        probe = copy.deepcopy(module)
    except Exception:
        return None
    for m in probe.modules():
        for attr in _HOOK_DICTS:
            hooks = getattr(m, attr, None)
            if hooks is not None:
                hooks.clear()
    probe.training = training
    if hasattr(probe, "reset"):
        probe.reset()
    xp = x.detach().clone().requires_grad_(True)
    try:
        with torch.enable_grad():
            outs = [_first_tensor(probe(xp)) for _ in range(steps)]
    except Exception:
        return None
    outs = [o for o in outs if o is not None and o.requires_grad]
    if not outs:
        return False
    grad = torch.autograd.grad(sum(o.sum() for o in outs), xp, allow_unused=True)[0]
    return grad is not None


def untraced_neurons_message(model: nn.Module, DG: tp.DependencyGraph,
                             pruner: Optional[SpikingNeuronPruner] = None) -> Optional[str]:
    """Why a traced dependency graph may have no prunable group: the spiking neurons of ``model``
    that the trace never reached (their outputs had no autograd path to the network output), with
    the reason where it is known; None when every neuron is in the graph."""
    missing = [(n, m) for n, m in model.named_modules() if is_spiking_neuron(m) and m not in DG.module2node]
    if not missing:
        return None
    blind = [n for n, m in missing if pruner is not None and m in pruner.first_step_blind]
    shown = ", ".join(f"{type(m).__name__} {n}" for n, m in missing[:4]) + (" ..." if len(missing) > 4 else "")
    msg = (f"the dependency graph does not reach the spiking neurons {shown}: their outputs have no autograd path "
           "to the network output, so the layers before them look unconnected")
    if blind:
        msg += (f"; {', '.join(blind[:4])} react to an input only at the next time step (k such layers in a row need "
                "more than k time steps before the output depends on the input): trace with example_inputs or a "
                "forward_fn that run enough time steps (a multi-step T > k, or a forward_fn calling a single-step "
                "model k + 1 times)")
    return msg


# ---------------------------------------------------------------------------------------------
# What SCA cannot score, and why (checked before anything is attached or traced)
# ---------------------------------------------------------------------------------------------
_UNSUPPORTED: Dict[type, str] = {}


def _refuse(names: Sequence[str], reason: str) -> None:
    for name in names:
        cls = getattr(sj_neuron, name, None)
        if isinstance(cls, type):
            _UNSUPPORTED[cls] = reason


_refuse(["NonSpikingBaseNode", "NoisyNonSpikingBaseNode"],
        "it is a non-spiking read-out neuron: it integrates without firing and returns membrane potentials (a list "
        "by default) and keeps no state between forwards, so there are no spikes to score; use a spiking neuron "
        "(IFNode, LIFNode) in the layers to prune and decode the classifier's output outside the model")
_refuse(["NoisyBaseNode"],
        "it is a noisy exploration neuron for spiking reinforcement-learning policies: it adds noise from tables "
        "sized num_node to flat [T, B, num_node] inputs and rebuilds its potential at every call, so it fits "
        "neither convolutions nor pruned widths; use CUBALIFNode (the noise-free counterpart) or LIFNode")
_refuse(["ILCBaseNode"],
        "it is an inter-layer-connection neuron: its units are coupled through a learnable Conv1d (conn) over a "
        "fixed [act_dim, dec_pop_dim] population layout, so its channels cannot be removed one by one; use "
        "IFNode, LIFNode or CUBALIFNode")
_refuse(["PSN", "MaskedPSN", "SlidingPSN"],
        "it is a parallel spiking neuron: it computes the potentials of all time steps at once with a learnable "
        "time-mixing weight and keeps no membrane potential, so there is nothing for SCA to score; use "
        "LIFNode or ParametricLIFNode")
_refuse(["FewSpikeNode"],
        "it is a few-spike coding neuron for ANN-to-SNN conversion: it encodes an activation in K spikes from a "
        "fixed table and keeps no membrane potential; use a neuron with a membrane state (IFNode, LIFNode)")
_refuse(["STBIFNode"],
        "it is SpikeZIP's ternary quantisation neuron: its state is a quantisation residual and a spike count "
        "(q, acc_q), not a membrane potential; use IFNode or TernaryIFNode")
_refuse(["DSRIFNode", "DSRLIFNode"],
        "it is a differentiable-spike-representation neuron: it computes firing rates from the whole sequence "
        "and keeps no membrane potential; use IFNode or LIFNode")
_refuse(["FlexSN"],
        "it is a generic neuron built from a user function (core): its states are unnamed tensors, so SCA cannot "
        "tell which one is the membrane potential; use a SpikingJelly neuron with a potential v (LIFNode, or a "
        "subclass of spikingjelly.activation_based.neuron.BaseNode implementing the same dynamics)")
_refuse(["OTTTLIFNode"],
        "it is OTTT's online-learning neuron: in training mode it returns [spike, trace] for SpikingJelly's OTTT "
        "layers (layer.OTTTSequential, layer.ReplaceforGrad), which plain layers cannot take, and its eval-mode "
        "spikes are not differentiable; use SLTTLIFNode (SLTT's online LIF, plain outputs) or LIFNode")


def unsupported_reason(module: nn.Module) -> Optional[str]:
    """Why SCA cannot score (or prune through) this neuron, with what to use instead; None if it can.

    Covers SpikingJelly's neuron families that keep no membrane potential or do not fit channel
    pruning (listed above, subclasses included) and abstract base classes whose forward SpikingJelly
    leaves unimplemented. Whether a multi-step neuron can give its potential sequence is decided
    by :func:`sca_plugin.activity.potential_sequence_source`.
    """
    cls = type(module)
    for klass in cls.__mro__:
        if klass in _UNSUPPORTED:
            return _UNSUPPORTED[klass]
    if isinstance(module, sj_neuron.BaseNode) \
            and cls.single_step_functional_forward is sj_neuron.BaseNode.single_step_functional_forward \
            and cls.multi_step_functional_forward is sj_base.MemoryModule.multi_step_functional_forward:
        return ("it is an abstract base class (SpikingJelly raises NotImplementedError in its forward); subclass it "
                "and implement single_step_functional_forward, or use IFNode, LIFNode or ParametricLIFNode")
    simple = getattr(sj_neuron, "SimpleBaseNode", None)
    if simple is not None and isinstance(module, simple) and cls.neuronal_charge is simple.neuronal_charge:
        return ("it is an abstract base class (SpikingJelly raises NotImplementedError in neuronal_charge); "
                "subclass it and implement neuronal_charge, or use SimpleIFNode or SimpleLIFNode")
    return None


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

"""Per-channel membrane-potential activity of spiking-neuron layers, collected during training.

The statistics come from the user's own training forward passes (no extra passes). Each neuron
layer gets a forward pre-hook and a forward hook; the hook reduces the activity of one forward to a
per-channel sum on the model's device, so memory is O(channels) and no potential sequence outlives
the forward that produced it.

Two definitions of activity (``definition``):

``"spike_plus_v"`` (default, the authors' reference code)
    ``S[t] + |V[t]|`` with ``V`` the post-reset potential SpikingJelly keeps. For hard reset to 0
    and threshold 1 this is 1 where the pre-reset potential ``H[t] >= 1`` (a spike) and ``|H[t]|``
    otherwise: bounded above by 1 for firing and positive sub-threshold potentials, but unbounded
    for strongly negative (inhibited) ones, so a silent, inhibited channel can outscore a firing
    one. It is what the published numbers were made with and needs nothing but the spikes and
    the stored potential, so it works for every SpikingJelly neuron.
``"membrane_l1"`` (the paper's text)
    ``|H[t]|``, the L1 norm of the pre-reset potential ("degree of polarisation"). The fused
    kernels do not expose ``H``, so it is recomputed with the neuron's charge function from the
    input and ``V[t-1]`` (see :func:`sca_plugin.neurons.register_charge_function`).

Where the potentials come from: in single-step mode, the neuron's ``v`` after each step. In
multi-step mode (:func:`potential_sequence_source`) the neuron keeps only the last step's ``v``.
The statistics are then fused into a step-by-step replay wherever that reproduces the neuron exactly:
``IFNode``, ``LIFNode``, ``ParametricLIFNode`` (SpikingJelly's fused multi-step kernels) and the
``SimpleBaseNode`` neurons (``SimpleIFNode``, ``SimpleLIFNode``) are replayed from the input, the
emitted spikes and the initial potential with the registered charge function and SpikingJelly's
reset (the neuron's own recursion), one time step at a time, and each step's activity is added into
a running ``[B, C, ...]`` sum. The ``[T, B, C, ...]`` potential sequence is never materialised and
the neuron keeps running its fast path (``store_v_seq`` stays False). Reading the trace instead
cost 5-15 % of a CPU training step on the benchmark nets (SpikingJelly stacking ``v_seq``, then
tensor-sized temporaries for the reduction, each a fresh allocation on CPU). Other neurons give their sequence per forward from
``v_seq`` (``store_v_seq`` switched on for that forward: every other ``BaseNode``) or from
``state_seqs[0]`` (``ComplementaryLIFNode``'s ``store_state_seqs``) -- the "trace" path. The replay
of the fused-kernel neurons runs on CPU float32 inputs with SpikingJelly's default precision; on a
GPU (SpikingJelly's triton / CUDA kernels, whose rounding the replay has not been checked against
here) and for other dtypes or an explicit ``neuron precision`` those neurons use the trace path,
which gives the same scores. Neurons with none of these, or that keep no membrane potential at all,
are refused by :meth:`MembraneActivityRecorder.check_supported` with the reason and what to use
instead.
"""
from __future__ import annotations

from typing import Dict, Iterable, Optional

import torch
import torch.nn as nn

from spikingjelly.activation_based import neuron as sj_neuron

from .collectors import StatisticsCollector
from .neurons import (_if_charge, _lif_charge, _plif_charge, add_prune_listener, charge_function_for, is_spiking_neuron,
                      neuron_channel_dim, remove_prune_listener, unsupported_reason)

__all__ = ["DEFINITIONS", "MembraneActivityRecorder", "potential_sequence_source"]

DEFINITIONS = ("spike_plus_v", "membrane_l1")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


_REPLAY_METHODS = ("forward", "single_step_forward", "multi_step_forward", "neuronal_charge", "neuronal_reset",
                   "single_step_functional_forward", "multi_step_functional_forward", "materialize_states")

#: SpikingJelly neurons whose multi-step kernels compute exactly ``H = charge(X, V[t-1])`` and then
#: SpikingJelly's hard/soft reset (checked against ``v_seq`` in tests/test_fused_statistics.py)
_FUSED_KERNEL_CLASSES = (sj_neuron.IFNode, sj_neuron.LIFNode, sj_neuron.ParametricLIFNode)
#: charge functions that return a new tensor (never their input): the replay resets their result in place
_FRESH_RESULT_CHARGES = (_if_charge, _lif_charge, _plif_charge)


def _charge_class(module: nn.Module) -> Optional[type]:
    """The class of ``module``'s MRO under which its charge function is registered."""
    from .neurons import _CHARGE_FUNCTIONS

    return next((c for c in type(module).__mro__ if c in _CHARGE_FUNCTIONS), None)


def _unchanged_up_to(module: nn.Module, registered: type) -> bool:
    """No class from ``type(module)`` down to ``registered`` (exclusive) redefines the dynamics."""
    for klass in type(module).__mro__:
        if klass is registered:
            return True
        if any(name in vars(klass) for name in _REPLAY_METHODS):
            return False
    return False


def _replayable(module: nn.Module) -> bool:
    """A ``SimpleBaseNode`` whose dynamics are exactly its registered charge function followed by
    SpikingJelly's hard/soft reset: no class between its own and the registered one redefines
    the forward, the charge or the reset."""
    simple = getattr(sj_neuron, "SimpleBaseNode", None)
    registered = _charge_class(module)
    if simple is None or not isinstance(module, simple) or registered is None:
        return False
    if type(module).neuronal_reset is not simple.neuronal_reset:
        return False
    return _unchanged_up_to(module, registered)


def _fused_replayable(module: nn.Module) -> bool:
    """An ``IFNode`` / ``LIFNode`` / ``ParametricLIFNode`` (or a subclass that changes none of their
    forward, charge, reset or state handling): its multi-step potentials can be replayed."""
    registered = _charge_class(module)
    return registered in _FUSED_KERNEL_CLASSES and isinstance(module, sj_neuron.BaseNode) \
        and _unchanged_up_to(module, registered)


def _replay_exact_here(module: nn.Module, x: torch.Tensor) -> bool:
    """The fused-kernel replay is used on CPU float32 inputs with SpikingJelly's default precision
    (its CPU kernel is the float32 reference loop the replay repeats); elsewhere the trace path."""
    return x.device.type == "cpu" and x.dtype == torch.float32 and getattr(module, "_neuron_precision", None) is None


def potential_sequence_source(module: nn.Module) -> Optional[str]:
    """How the recorder obtains a multi-step neuron's post-reset potentials ``V[0..T-1]``:
    ``"replay"`` (recomputed step by step with the statistics fused in: ``IFNode``, ``LIFNode``,
    ``ParametricLIFNode`` -- on CPU float32, see :func:`_replay_exact_here` -- and ``SimpleBaseNode``
    neurons with a registered charge function), ``"state_seqs"`` (``store_state_seqs``,
    ``ComplementaryLIFNode``), ``"v_seq"`` (``store_v_seq``, every other ``BaseNode``) or None (it
    cannot be scored in multi-step mode)."""
    cls = type(module)
    if isinstance(getattr(cls, "store_state_seqs", None), property):
        return "state_seqs"
    if _fused_replayable(module):
        return "replay"
    if isinstance(getattr(cls, "store_v_seq", None), property) or "store_v_seq" in vars(module):
        return "v_seq"
    if _replayable(module):
        return "replay"
    return None


def _reset_like_spikingjelly(module: nn.Module, h: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
    """SpikingJelly's reset (``SimpleBaseNode.neuronal_reset``, the fused kernels' reset): soft
    (``v_reset=None``) or hard reset of ``h`` by ``spike``."""
    if module.v_reset is None:
        return h - module.v_threshold * spike
    return spike * module.v_reset + (1.0 - spike) * h


def _numeric_reset(module: nn.Module) -> bool:
    """Threshold and reset potential are Python numbers (the in-place reset below applies)."""
    return all(isinstance(a, (int, float)) for a in (module.v_threshold, module.v_reset or 0.0))


def _reset_(module: nn.Module, h: torch.Tensor, spike: torch.Tensor) -> torch.Tensor:
    """:func:`_reset_like_spikingjelly` in place on ``h`` (a tensor the replay owns), for numeric
    threshold and reset, with the same values: the products of a spike (0 or 1) with ``h``, the
    threshold or the reset potential are exact, so ``h - h * spike`` is ``(1 - spike) * h`` and only
    the order of exact terms changes (nothing but the sign of a zero, which ``|.|`` and the next
    charge do not see). In place because fresh tensor-sized temporaries are what the replay cost on CPU."""
    if module.v_reset is None:
        return h.sub_(spike, alpha=module.v_threshold)
    h.addcmul_(h, spike, value=-1.0)
    return h if module.v_reset == 0.0 else h.add_(spike, alpha=module.v_reset)


def _initial_state(module: nn.Module, v, x0: torch.Tensor):
    """The potential the neuron starts this forward from, as a float where SpikingJelly would fill
    a tensor with one (a float state; for a ``BaseNode`` a tensor of another shape, re-initialised to
    ``v_reset``), else the tensor itself (detached; the replay never writes into it)."""
    if not isinstance(v, torch.Tensor):
        return float(v)
    if isinstance(module, sj_neuron.BaseNode) and v.shape != x0.shape:
        return 0.0 if module.v_reset is None else float(module.v_reset)
    return v.detach()


def _initial_potential(module: nn.Module, v, x0: torch.Tensor) -> torch.Tensor:
    """:func:`_initial_state` as a tensor, materialised the way SpikingJelly does it."""
    v = _initial_state(module, v, x0)
    return torch.full_like(x0, v) if isinstance(v, float) else v


class MembraneActivityRecorder(StatisticsCollector):
    """Running per-channel sums of membrane activity for every spiking neuron of a model (a
    :class:`~sca_plugin.collectors.StatisticsCollector`: attach, enable/disable, reset, detach).

    Only forwards in training mode count. ``score(neuron)`` is the mean activity per channel over
    every (sample, time step, position) seen since the last :meth:`reset`.
    """

    name = "activity"
    #: fuse the statistics into a replay where that is exact (see the module docstring); False reads
    #: the stored trace wherever a neuron has one instead -- the same scores, slower (for comparisons)
    fused: bool = True

    def __init__(self, definition: str = "spike_plus_v") -> None:
        super().__init__()
        if definition not in DEFINITIONS:
            raise ValueError(f"unknown activity definition {definition!r}; use one of {DEFINITIONS}")
        self.definition = definition
        # per neuron layer: running per-channel sums and the number of values summed (a float64
        # tensor of one element: exact for integers, and updated in place, so torch.compile'd training sees the same
        # Python state at every step and does not recompile)
        self.sums: Dict[nn.Module, torch.Tensor] = {}
        self.counts: Dict[nn.Module, torch.Tensor] = {}
        self._v_prev: Dict[nn.Module, object] = {}
        self._forced_store: Dict[nn.Module, bool] = {}
        self._sources: Dict[nn.Module, Optional[str]] = {}  # per neuron: this forward's potential source

    # ------------------------------------------------------------------ attachment
    def check_supported(self, neurons: Iterable[nn.Module]) -> None:
        """Raise ``ValueError`` before anything is attached if some neuron cannot give this
        definition: the message names each class, the reason and what to use instead."""
        problems: Dict[str, str] = {}
        for m in neurons:
            name = type(m).__name__
            if name in problems:
                continue
            reason = unsupported_reason(m)
            multi_step = neuron_channel_dim(m) == 2
            if reason is None and not hasattr(m, "v"):
                reason = ("it exposes no membrane potential 'v', which SCA scores; use a SpikingJelly neuron with a "
                          "membrane state (IFNode, LIFNode, ParametricLIFNode)")
            if reason is None and multi_step and potential_sequence_source(m) is None:
                simple = getattr(sj_neuron, "SimpleBaseNode", None)
                replayable = simple is not None and isinstance(m, simple) \
                    and type(m).neuronal_reset is simple.neuronal_reset
                reason = ("in multi-step mode it keeps only the last step's membrane potential (it has no store_v_seq "
                          "to keep all of them) and its potentials cannot be recomputed, so SCA cannot score it; use "
                          "single-step mode if the class supports it, or a neuron that stores v_seq (IFNode, LIFNode, "
                          "ParametricLIFNode)"
                          + (", or register its charge equation with sca_plugin.register_charge_function(cls, fn) "
                             "(its potentials are then replayed)" if replayable else ""))
            if reason is None and self.definition == "membrane_l1" and charge_function_for(m) is None:
                reason = ("definition 'membrane_l1' needs its pre-reset potential H, which SpikingJelly does not "
                          "expose, and no charge function is registered to recompute it; register one with "
                          "sca_plugin.register_charge_function(cls, fn) or use definition='spike_plus_v'")
            if reason is not None:
                problems[name] = reason
        if problems:
            raise ValueError(f"SCA (activity definition {self.definition!r}) cannot score the neuron classes "
                             f"{sorted(problems)}: " + "; ".join(f"{n}: {r}" for n, r in sorted(problems.items())))

    def check(self, model: nn.Module, modules=None) -> None:
        """The model has spiking neurons, and every one can give this definition."""
        neurons = [m for m in model.modules() if is_spiking_neuron(m)]
        if not neurons:
            raise ValueError("the model has no spiking neurons (spikingjelly.activation_based.neuron); "
                             "SCA scores come from membrane potentials")
        self.check_supported(neurons)

    def _install(self, model: nn.Module, modules=None) -> list:
        """Hooks on every spiking neuron of ``model``; a listener keeps the statistics of the
        channels that remain when Torch-Pruning removes some."""
        handles = []
        for m in model.modules():
            if is_spiking_neuron(m):
                handles.append(m.register_forward_pre_hook(self._pre_hook))
                handles.append(m.register_forward_hook(self._hook))
        add_prune_listener(self._on_pruned)
        return handles

    def _uninstall(self) -> None:
        remove_prune_listener(self._on_pruned)

    def _on_pruned(self, module: nn.Module, keep: torch.Tensor) -> None:
        """Torch-Pruning removed channels of ``module`` (e.g. ``pruner.step()`` with
        ``iterative_steps > 1``): keep the statistics of the channels that remain."""
        if module in self.sums and self.sums[module].dim() == 1 and self.sums[module].numel() > int(keep.max()):
            self.sums[module] = self.sums[module].index_select(0, keep.to(self.sums[module].device))

    def synchronize(self, order) -> None:
        """Sum the statistics over all torch.distributed processes (DDP: every process then scores
        the channels on the global batch). ``order``: the recorded modules in one fixed order."""
        from .distributed import all_reduce_sum_, world_size

        if world_size() == 1:
            return
        modules = [m for m in order if m in self.sums]
        for m in modules:
            all_reduce_sum_(self.sums[m])
        for m in modules:
            all_reduce_sum_(self.counts[m])

    def reset(self) -> None:
        """Forget the statistics (called after every mask update). The accumulators are zeroed in
        place (a compiled training step keeps using them)."""
        with torch.no_grad():
            for m in self.sums:
                self.sums[m].zero_()
                self.counts[m].zero_()

    # ------------------------------------------------------------------ hooks
    def _active(self, module: nn.Module) -> bool:
        return self.enabled and module.training

    def _pre_hook(self, module: nn.Module, args) -> None:
        """Note where this forward's potentials will come from (the source, and the initial
        potential where they are recomputed); switch the trace on for this forward where needed."""
        if not self._active(module):
            return
        multi_step = neuron_channel_dim(module) == 2
        source = potential_sequence_source(module) if multi_step else None
        if source == "replay" and isinstance(module, sj_neuron.BaseNode) \
                and not (self.fused and _replay_exact_here(module, args[0])):
            source = "v_seq"  # the trace path: same scores (see the module docstring)
        self._sources[module] = source
        if self.definition == "membrane_l1" or source == "replay":
            self._v_prev[module] = module.v
        if source == "v_seq" and not module.store_v_seq:
            module.store_v_seq = True
            self._forced_store[module] = True
        elif source == "state_seqs" and not module.store_state_seqs:
            module.store_state_seqs = True
            self._forced_store[module] = True

    def _trace(self, module: nn.Module, source: Optional[str], spikes: torch.Tensor) -> torch.Tensor:
        """The post-reset potentials ``V[0..T-1]`` the neuron stored for this forward (``v_seq`` or
        ``state_seqs[0]``); the store is switched off again, so nothing outlives the forward."""
        forced = self._forced_store.pop(module, False)
        if source is None:
            raise RuntimeError(
                f"{type(module).__name__} now runs in multi-step mode, where it keeps only the last step's membrane "
                "potential; SCA cannot score it (check_supported refuses it in multi-step mode): switch it back to "
                "single-step mode or use a neuron that stores v_seq (IFNode, LIFNode, ParametricLIFNode)")
        if source == "state_seqs":
            seqs = module.state_seqs
            v = seqs[0] if isinstance(seqs, (list, tuple)) and seqs else None
            if forced:
                module.store_state_seqs = False  # the setter drops state_seqs: nothing outlives the forward
        else:
            v = module.v_seq
            if forced:
                module.store_v_seq = False  # the setter drops v_seq: nothing outlives the forward
        if not isinstance(v, torch.Tensor) or v.shape != spikes.shape:
            raise RuntimeError(
                f"{type(module).__name__} did not record its membrane-potential sequence "
                f"({'state_seqs' if source == 'state_seqs' else 'v_seq'} is "
                f"{None if v is None else tuple(getattr(v, 'shape', ()))}, expected {tuple(spikes.shape)}) although "
                f"{'store_state_seqs' if source == 'state_seqs' else 'store_v_seq'}=True: its multi_step_forward "
                "ignores the flag; keep the flag's behaviour in the subclass, or run the neuron in single-step mode")
        return v

    def _replayed_channel_sum(self, module: nn.Module, x: torch.Tensor, spikes: torch.Tensor) -> torch.Tensor:
        """The activity of a multi-step forward summed per channel (float32 ``[C]``), by replaying the
        neuron's recursion one step at a time: ``H[t] = charge(X[t], V[t-1])``, ``V[t] = reset(H[t], S[t])``
        with the spikes ``S`` the neuron emitted; each step's activity goes into a running ``[B, C, ...]``
        sum, reduced once at the end. Every op is in place on three step-sized buffers (the potential,
        the activity, the running sum; IF's charge ``V[t-1] + X[t]`` is an in-place add, the built-in
        charges give fresh tensors that are reset in place): on CPU the replay is bound by memory
        traffic and fresh tensor-sized temporaries, so fewer passes and no allocations per step are
        what make it cheaper. The potential sequence is never stacked."""
        x, spikes = x.detach(), spikes.detach()
        l1 = self.definition == "membrane_l1"
        charge = charge_function_for(module)
        owned = charge in _FRESH_RESULT_CHARGES and _numeric_reset(module)  # the reset can work in place on H
        add_in_place = owned and charge is _if_charge
        v = _initial_state(module, self._v_prev.pop(module), x[0])
        if not add_in_place and isinstance(v, float):
            v = torch.full_like(x[0], v)
        total, act = torch.empty_like(x[0]), torch.empty_like(x[0])
        for t in range(x.shape[0]):
            if add_in_place:  # H = V[t-1] + X[t]; a fresh tensor (this replay's own) at t = 0
                h = torch.add(x[0], v) if t == 0 else v.add_(x[t])
            else:
                h = charge(module, x[t], v)
            if l1:
                torch.abs(h, out=total if t == 0 else act)
            v = _reset_(module, h, spikes[t]) if owned else _reset_like_spikingjelly(module, h, spikes[t])
            if not l1:
                torch.abs(v, out=total if t == 0 else act).add_(spikes[t])  # S[t] + |V[t]|
            if t:
                total.add_(act)
        return total.sum(dim=[d for d in range(total.dim()) if d != 1], dtype=torch.float32)

    def _activity(self, module: nn.Module, source: Optional[str], x: torch.Tensor, spikes: torch.Tensor):
        """The activity of this forward (``[T, B, C, ...]``, or ``[B, C, ...]`` in single-step mode)
        from the neuron's own potentials: its ``v`` (single step) or the trace."""
        multi_step = neuron_channel_dim(module) == 2
        v = self._trace(module, source, spikes) if multi_step else module.v
        if self.definition == "spike_plus_v":
            return spikes.detach() + v.detach().abs()
        v0 = _initial_potential(module, self._v_prev.pop(module), x[0] if multi_step else x)
        v_prev = torch.cat([v0.unsqueeze(0), v.detach()[:-1]]) if multi_step else v0
        return charge_function_for(module)(module, x.detach(), v_prev).abs()

    def _hook(self, module: nn.Module, args, output) -> None:
        if not self._active(module):
            return
        x, spikes = args[0], _first(output)
        source = self._sources.pop(module, None)
        with torch.no_grad():
            if source == "replay":  # already reduced per channel
                channel_sum, count = self._replayed_channel_sum(module, x, spikes), x.numel() // x.shape[2]
            else:
                act, dim = self._activity(module, source, x, spikes), neuron_channel_dim(module)
                channel_sum = act.sum(dim=[d for d in range(act.dim()) if d != dim], dtype=torch.float32)
                count = act.numel() // act.shape[dim]
            self._accumulate(module, channel_sum, count)

    def _accumulate(self, module: nn.Module, channel_sum: torch.Tensor, count: int) -> None:
        """Add one forward's per-channel sum and its number of values to the running statistics."""
        if module in self.sums and self.sums[module].shape != channel_sum.shape:
            if bool(self.counts[module] != 0):
                raise RuntimeError(
                    f"{type(module).__name__} now has {channel_sum.numel()} channels but its SCA statistics "
                    f"were recorded with {self.sums[module].numel()}: the model was pruned since. Call reset() "
                    "to start new statistics, or detach() the importance once pruning is done")
            del self.sums[module], self.counts[module]  # reset since: nothing recorded is lost
        if module in self.sums:
            self.sums[module].add_(channel_sum)
            self.counts[module].add_(count)
        else:
            self.sums[module] = channel_sum
            # shape (1,), not 0-d: torch.compile treats 0-d CPU tensors as scalars and drops in-place updates
            self.counts[module] = torch.full((1,), float(count), dtype=torch.float64, device=channel_sum.device)

    # ------------------------------------------------------------------ results
    def score(self, module: nn.Module) -> Optional[torch.Tensor]:
        """Mean activity per channel of ``module`` since the last reset, or None if none was seen."""
        if module not in self.sums or float(self.counts[module]) == 0:
            return None
        return self.sums[module] / float(self.counts[module])

    def state_dict(self, names: Dict[nn.Module, str]) -> dict:
        return {names[m]: {"sum": s.detach().cpu().clone(), "count": int(self.counts[m])}
                for m, s in self.sums.items() if float(self.counts[m]) != 0}

    def load_state_dict(self, state: dict, modules: Dict[str, nn.Module], device=None) -> None:
        self.reset()
        for name, entry in state.items():
            m = modules[name]
            self.sums[m] = entry["sum"].to(device) if device is not None else entry["sum"].clone()
            self.counts[m] = torch.full((1,), float(entry["count"]), dtype=torch.float64, device=self.sums[m].device)

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
"""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional

import torch
import torch.nn as nn

from .neurons import charge_function_for, is_spiking_neuron, neuron_channel_dim

__all__ = ["DEFINITIONS", "MembraneActivityRecorder"]

DEFINITIONS = ("spike_plus_v", "membrane_l1")


def _first(out):
    return out[0] if isinstance(out, (tuple, list)) else out


class MembraneActivityRecorder:
    """Running per-channel sums of membrane activity for every spiking neuron of a model.

    Only forwards in training mode count. ``score(neuron)`` is the mean activity per channel over
    every (sample, time step, position) seen since the last :meth:`reset`.
    """

    def __init__(self, definition: str = "spike_plus_v") -> None:
        if definition not in DEFINITIONS:
            raise ValueError(f"unknown activity definition {definition!r}; use one of {DEFINITIONS}")
        self.definition = definition
        # per neuron layer: running per-channel sums and the number of values summed (a float64
        # tensor of one element: exact for integers, and updated in place, so torch.compile'd training sees the same
        # Python state at every step and does not recompile)
        self.sums: Dict[nn.Module, torch.Tensor] = {}
        self.counts: Dict[nn.Module, torch.Tensor] = {}
        self.enabled = True
        self._handles: List = []
        self._v_prev: Dict[nn.Module, object] = {}
        self._forced_store: Dict[nn.Module, bool] = {}
        self.model: Optional[nn.Module] = None

    # ------------------------------------------------------------------ attachment
    def check_supported(self, neurons: Iterable[nn.Module]) -> None:
        """Raise before anything is attached if some neuron cannot give this definition."""
        bad = []
        for m in neurons:
            if self.definition == "membrane_l1" and charge_function_for(m) is None:
                bad.append(type(m).__name__)
            elif not hasattr(m, "v"):
                bad.append(type(m).__name__)
        if bad:
            raise ValueError(
                f"activity definition {self.definition!r} cannot be computed for neuron classes "
                f"{sorted(set(bad))}: they expose no membrane potential 'v'"
                + (" or have no registered charge function; register one with "
                   "sca_plugin.register_charge_function(cls, fn) or use definition='spike_plus_v'"
                   if self.definition == "membrane_l1" else "")
            )

    def attach(self, model: nn.Module) -> "MembraneActivityRecorder":
        """Hook every spiking neuron of ``model``; statistics accumulate from now on."""
        if self.model is not None:
            raise RuntimeError("this recorder is already attached to a model; call detach() first")
        neurons = [m for m in model.modules() if is_spiking_neuron(m)]
        if not neurons:
            raise ValueError("the model has no spiking neurons (spikingjelly.activation_based.neuron); "
                             "SCA scores come from membrane potentials")
        self.check_supported(neurons)
        for m in neurons:
            self._handles.append(m.register_forward_pre_hook(self._pre_hook))
            self._handles.append(m.register_forward_hook(self._hook))
        self.model = model
        return self

    def detach(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()
        self.model = None

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
        if not self._active(module):
            return
        if self.definition == "membrane_l1":
            self._v_prev[module] = module.v
        if neuron_channel_dim(module) == 2 and not getattr(module, "store_v_seq", True):
            module.store_v_seq = True
            self._forced_store[module] = True

    def _hook(self, module: nn.Module, args, output) -> None:
        if not self._active(module):
            return
        x, spikes = args[0], _first(output)
        multi_step = neuron_channel_dim(module) == 2
        with torch.no_grad():
            if multi_step:
                v = module.v_seq
                if self._forced_store.pop(module, False):
                    module.store_v_seq = False  # the setter drops v_seq: nothing outlives the forward
            else:
                v = module.v
            if self.definition == "spike_plus_v":
                act = spikes.detach() + v.detach().abs()
            else:
                v0 = self._v_prev.pop(module)
                first = x[0] if multi_step else x
                v0 = torch.full_like(first, float(v0)) if not isinstance(v0, torch.Tensor) else v0.detach()
                v_prev = torch.cat([v0.unsqueeze(0), v.detach()[:-1]]) if multi_step else v0
                act = charge_function_for(module)(module, x.detach(), v_prev).abs()
            dim = neuron_channel_dim(module)
            dims = [d for d in range(act.dim()) if d != dim]
            channel_sum = act.sum(dim=dims, dtype=torch.float32)
            count = act.numel() // act.shape[dim]
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

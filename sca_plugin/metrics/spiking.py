"""``spiking_metrics``: SynOps, MACs, dense MACs, firing rates, activation sparsity and energy of a model."""
from __future__ import annotations

import contextlib
import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter
from spikingjelly.activation_based.op_counter.simple_energy import SimpleEnergyCostConfig
from torch.utils.flop_counter import FlopCounterMode

from ..graph import call_model, preserve_training_mode

from .counting import SYNAPTIC_OPS, _Activity, _LayerOrder, _SYNAPTIC_MODULES, _energy, _input_of, _library_version, _top_level_neurons, synaptic_macs
from .definitions import DEFINITIONS
from .neurobench import NB_RECURRENT_LAYERS, NB_STATELESS_LAYERS, NEUROBENCH_VERSION, _NeuroBenchOps, _nb_find, _nb_is_activation, _neurobench_block


def _layer_stats(names: List[str], scope: Dict[str, str], synop_counter, mac_counter, flop_mode,
                 per_sample) -> Dict[str, Dict[str, float]]:
    """``{layer: {synops, macs, dense_macs}}`` per sample, of the layers that ran (in ``names``)."""
    syn_scopes, mac_scopes = synop_counter.get_counts(), mac_counter.get_counts()
    return {name: {"synops": per_sample(sum(syn_scopes.get(scope[name], {}).values())),
                   "macs": per_sample(sum(mac_scopes.get(scope[name], {}).values())),
                   "dense_macs": per_sample(synaptic_macs(flop_mode, scope[name]))} for name in names}


#: which counter gives each figure of :func:`spiking_metrics` (its ``counters`` entry)
_COUNTERS = {
    "synops": "spikingjelly.activation_based.op_counter.SynOpCounter (DispatchCounterMode)",
    "macs": "spikingjelly.activation_based.op_counter.MACCounter, conv/mm/addmm/bmm/baddbmm rules "
            "only (DispatchCounterMode)",
    "dense_macs": "torch.utils.flop_counter.FlopCounterMode, conv/mm/addmm/bmm/baddbmm FLOPs / 2",
    "activity": "forward hooks on spiking-neuron modules (non-zero outputs)",
    "neurobench": f"sca_plugin's own reimplementation of NeuroBench {NEUROBENCH_VERSION}'s "
                  "SynapticOperations / ActivationSparsity(ByLayer) / ParameterCount / Footprint / "
                  "ConnectionSparsity (forward pre-hooks on the connection layers)",
}


#: where the energy constants come from (the ``energy["constants"]`` entry of :func:`spiking_metrics`)
_ENERGY_CONSTANTS = ("45 nm FP32, Horowitz ISSCC 2014 (spikingjelly op_counter SimpleEnergyCostConfig.fp32); "
                     "compute only: mac_pJ = macs * e_mac_pJ, ac_pJ = synops * e_ac_pJ, "
                     "ann_equivalent = dense_macs * e_mac_pJ")


def _spiking_energy(macs: float, synops: float, dense_macs: float) -> Tuple[Dict[str, Any], float, float]:
    """The ``energy`` entry from per-sample counts with SpikingJelly's 45 nm constants, and the
    constants ``(E_MAC, E_AC)`` in pJ."""
    cost = SimpleEnergyCostConfig.fp32()
    e_mac, e_ac = float(cost.e_mac_pj), float(cost.e_ac_pj)
    energy = _energy(macs, synops, dense_macs, e_mac, e_ac)
    energy["constants"] = _ENERGY_CONSTANTS
    return energy, e_mac, e_ac


def _activity_figures(activity: "_Activity", neurons) -> Tuple[Dict[str, float], float, int]:
    """``(firing rate per neuron layer, activation sparsity over all of them, non-zero outputs)``."""
    total_nnz = sum(activity.nnz.values())
    total_numel = sum(activity.numel.values())
    firing_rates = {
        name: (activity.nnz[name] / activity.numel[name]) if activity.numel[name] else 0.0
        for name, _ in neurons
    }
    activation_sparsity = 1.0 - total_nnz / total_numel if total_numel else 1.0
    return firing_rates, activation_sparsity, total_nnz


def _neurobench_observers(model: nn.Module, neurons) -> tuple:
    """NeuroBench's view of the same forward passes: ``(recurrent layer names, its connection-layer
    counter, its activation layers, whether those are the spiking neurons, their activity hooks)``
    (empty when they are the neurons, whose activity then serves both)."""
    nb_recurrent = [n for n, _ in _nb_find(model, lambda m: isinstance(m, NB_RECURRENT_LAYERS))]
    nb_ops = _NeuroBenchOps(_nb_find(model, lambda m: isinstance(m, NB_STATELESS_LAYERS)))
    nb_acts = _nb_find(model, _nb_is_activation)
    same_acts = [m for _, m in nb_acts] == [m for _, m in neurons]
    return nb_recurrent, nb_ops, nb_acts, same_acts, _Activity([] if same_acts else nb_acts)


def _count_batches(model: nn.Module, batches: Iterable[Any], max_batches: Optional[int], activity: "_Activity",
                   counters: tuple) -> Tuple[int, int, Optional[int]]:
    """Run ``model`` on each batch inside ``counters`` (context managers), neuron states reset
    around every batch; ``(samples, batches, time steps)`` read from the neurons' layout."""
    samples = n_batches = 0
    time_steps: Optional[int] = None
    try:
        with contextlib.ExitStack() as stack:
            for c in counters:
                stack.enter_context(c)
            for batch in batches:
                if max_batches is not None and n_batches >= max_batches:
                    break
                x = _input_of(batch)
                activity.start_batch()
                functional.reset_net(model)
                call_model(model, x)  # x: one batch's input (a tensor or keywords)
                functional.reset_net(model)
                lay = activity.layout()
                if lay is None:
                    if not torch.is_tensor(x) or x.dim() == 0:
                        raise ValueError(
                            "spiking_metrics: cannot tell the batch size (no spiking neuron ran "
                            "and the input is not a tensor with a batch dimension)"
                        )
                    lay = (1, int(x.shape[0]))
                t, b = lay
                if time_steps is None:
                    time_steps = t
                samples += b
                n_batches += 1
    finally:
        functional.reset_net(model)
    return samples, n_batches, time_steps


def spiking_metrics(
    model: nn.Module,
    batches: Iterable[Any],
    max_batches: Optional[int] = None,
) -> Dict[str, Any]:
    """SynOps, MACs, dense MACs, firing rates, activation sparsity and energy of ``model``, per sample.

    :param model: a SpikingJelly network (either step mode; pruned or not) returning ``[B, ...]``.
    :param batches: iterable of input tensors already on the model's device -- a static batch
        ``[B, C, H, W]`` (direct encoding) or a time-major ``[T, B, ...]`` -- or of ``(input,
        target, ...)`` tuples, whose first element is used.
    :param max_batches: stop after this many batches (``None``: all of them).

    The model runs in eval mode under ``torch.no_grad()``; neuron states are reset before and after
    every batch; every module's train/eval flag is restored afterwards.  The number of samples and
    time steps of each batch are read from the first spiking neuron (``[T, B, ...]`` in multi-step
    mode, ``T`` calls with ``[B, ...]`` in single-step mode); without neurons, dim 0 of the input is
    the batch and ``T = 1``.

    Returns a JSON-serialisable dict (all counts are per sample, summed over time steps)::

        synops              spike-triggered accumulates (SpikingJelly SynOpCounter)
        macs                MACs of layers with non-binary input (SpikingJelly MACCounter)
        macs_first_layer    MACs of the first synaptic layer executed (direct encoding: all of macs)
        dense_macs          MACs of a dense evaluation (torch FlopCounterMode / 2)
        activation_sparsity 1 - non-zero fraction of all neuron outputs (NeuroBench definition)
        spikes              non-zero neuron outputs (all spiking layers and time steps)
        firing_rates        {neuron module name: non-zero fraction of its outputs}
        energy              {mac_pJ, ac_pJ, total_pJ, total_uJ, ann_equivalent_pJ,
                             ann_equivalent_uJ, ratio_to_ann, e_mac_pJ, e_ac_pJ, constants}
        layers              {conv/linear name: {synops, macs, dense_macs}}
        mac_layers          names of the layers with macs > 0
        neurobench          NeuroBench 2.3 definitions (our computation): {effective_macs,
                            effective_acs, dense, layers, energy, activation_sparsity,
                            activation_sparsity_by_layer, parameter_count, footprint_bytes,
                            connection_sparsity, follows, unsupported}
        definitions         {field: which definition it follows} (:data:`DEFINITIONS`)
        samples, batches, time_steps, counter, counters

    ``samples`` is the number of samples all figures are averaged over: pass the whole test set
    (``max_batches=None``) to make them comparable with an accuracy measured on all of it.
    """
    if max_batches is not None and (not isinstance(max_batches, int) or max_batches < 1):
        raise ValueError(f"max_batches must be a positive int or None, got {max_batches!r}")

    root = type(model).__name__
    layers = [(n, m) for n, m in model.named_modules() if isinstance(m, _SYNAPTIC_MODULES)]
    scope = {n: (f"{root}.{n}" if n else root) for n, _ in layers}
    neurons = _top_level_neurons(model)

    synop_counter = SynOpCounter()
    mac_counter = MACCounter()
    # Only synaptic operators: BatchNorm folds into the previous layer at inference.
    mac_counter.rules = {op: rule for op, rule in mac_counter.rules.items() if op in SYNAPTIC_OPS}
    flop_mode = FlopCounterMode(display=False)
    activity = _Activity(neurons)
    order = _LayerOrder(layers)
    nb_recurrent, nb_ops, nb_acts, same_acts, nb_activity = _neurobench_observers(model, neurons)

    with preserve_training_mode(model), torch.no_grad(), activity, order, nb_ops, nb_activity:
        model.eval()
        samples, n_batches, time_steps = _count_batches(model, batches, max_batches, activity,
                                                        (flop_mode, DispatchCounterMode([synop_counter, mac_counter])))
    if n_batches == 0 or samples == 0:
        raise ValueError("spiking_metrics: no batches (or no samples) were given")

    def per_sample(v: float) -> float:
        return float(v) / samples

    synops = per_sample(synop_counter.get_total())
    macs = per_sample(mac_counter.get_total())
    dense_macs = per_sample(synaptic_macs(flop_mode))
    layer_stats = _layer_stats([n for n, _ in layers if n in order.order], scope, synop_counter, mac_counter,
                               flop_mode, per_sample)
    first = order.order[0] if order.order else None
    macs_first_layer = layer_stats[first]["macs"] if first is not None else 0.0

    firing_rates, activation_sparsity, total_nnz = _activity_figures(activity, neurons)
    energy, e_mac, e_ac = _spiking_energy(macs, synops, dense_macs)
    neurobench = _neurobench_block(model, nb_ops, nb_recurrent, activity if same_acts else nb_activity,
                                   neurons if same_acts else nb_acts, per_sample, e_mac, e_ac)

    sj = _library_version("spikingjelly")
    result = {
        "synops": synops,
        "macs": macs,
        "macs_first_layer": float(macs_first_layer),
        "dense_macs": dense_macs,
        "activation_sparsity": float(activation_sparsity),
        "spikes": per_sample(total_nnz),
        "firing_rates": {k: float(v) for k, v in firing_rates.items()},
        "energy": energy,
        "layers": layer_stats,
        "mac_layers": [n for n, v in layer_stats.items() if v["macs"] > 0],
        "neurobench": neurobench,
        "samples": int(samples),
        "batches": int(n_batches),
        "time_steps": int(time_steps if time_steps is not None else 1),
        "counter": f"spikingjelly {sj} op_counter (SynOpCounter, MACCounter) + torch {torch.__version__} "
                   "FlopCounterMode (dense MACs)",
        "counters": dict(_COUNTERS),
        "definitions": dict(DEFINITIONS),
    }
    for key in ("synops", "macs", "dense_macs", "activation_sparsity"):
        if not math.isfinite(result[key]):  # pragma: no cover - defensive
            raise RuntimeError(f"spiking_metrics: {key} is not finite ({result[key]})")
    return result

"""Spiking-network cost metrics: synaptic operations, dense MACs, activity and estimated energy.

:func:`spiking_metrics` runs a model over some batches and returns, per sample, what an SNN paper
reports next to accuracy::

    from sca_plugin.metrics import spiking_metrics
    m = spiking_metrics(model, batches, max_batches=10)
    m["synops"], m["dense_macs"], m["activation_sparsity"], m["energy"]["total_uJ"]

The operations are counted by libraries, not by hand:

* ``synops`` -- SpikingJelly 2.0.0's ``op_counter.SynOpCounter`` under ``DispatchCounterMode``.
  For every ``aten`` convolution / (b)mm / addmm whose input is a binary tensor it counts the
  weight uses triggered by the non-zero inputs: a spike in a linear layer costs ``out_features``
  accumulates, a spike in a convolution costs one accumulate per output position it reaches
  (padding borders are exact) times the output channels of its group.  Weights are taken as dense
  (a zeroed weight still costs an AC; a physically pruned layer costs less).
* ``macs`` -- SpikingJelly's ``op_counter.MACCounter`` restricted to the same synaptic operators
  (its BatchNorm rule is removed: BN folds into the preceding layer at inference): MACs of the
  layers whose input is *not* binary, i.e. the first layer under direct encoding (analog pixels),
  layers behind average pooling, or behind residual additions of spikes.  ``macs_first_layer`` is
  the MAC count of the first synaptic layer executed.
* ``dense_macs`` -- ``torch.utils.flop_counter.FlopCounterMode`` (FLOPs / 2 of the same synaptic
  operators, bias additions not included), i.e. the MACs of a dense, ANN-style evaluation of every
  layer at every time step.  SpikingJelly's counters cannot give this number: ``MACCounter``
  skips spike inputs by design and ``FlopCounter`` adds the bias additions.  It equals
  :func:`sca_plugin.reporting.count_macs`.

All three counters observe the same forward passes, so the counts are consistent with each other.
Firing rates and activation sparsity come from forward hooks on the spiking-neuron modules: the
fraction of non-zero neuron outputs over all time steps, samples and positions (NeuroBench's
``ActivationSparsity`` is ``1 -`` that fraction over all spiking layers together).

Energy uses the 45 nm constants of SpikingJelly's ``SimpleEnergyCostConfig.fp32()`` (Horowitz,
ISSCC 2014): ``E_MAC = 4.6 pJ``, ``E_AC = 0.9 pJ``; ``mac_pJ = macs * E_MAC``, ``ac_pJ = synops *
E_AC``, and the ANN equivalent is ``dense_macs * E_MAC``.  Memory traffic and neuron updates are
not included (SpikingJelly's ``estimate_simple_energy`` adds them, and also counts BN and
element-wise additions as ACs).
"""
from __future__ import annotations

import math
from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional
from spikingjelly.activation_based.op_counter import DispatchCounterMode, MACCounter, SynOpCounter
from spikingjelly.activation_based.op_counter.simple_energy import SimpleEnergyCostConfig
from torch.utils.flop_counter import FlopCounterMode

from .graph import preserve_training_mode
from .neurons import is_spiking_neuron, neuron_channel_dim

__all__ = ["spiking_metrics", "SYNAPTIC_OPS"]

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


def _call(model: nn.Module, x: Any) -> Any:
    if isinstance(x, dict):
        return model(**x)
    return model(x)


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


class _Activity:
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

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


class _LayerOrder:
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

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles.clear()


def _synaptic_total(counts: Dict[Any, int]) -> int:
    """Sum of a FlopCounterMode scope's counts over the synaptic operators."""
    return int(sum(v for op, v in counts.items() if op in _SYNAPTIC_PACKETS))


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
        samples, batches, time_steps, counter, counters
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

    samples = 0
    n_batches = 0
    time_steps: Optional[int] = None
    with preserve_training_mode(model), torch.no_grad(), activity, order:
        model.eval()
        try:
            with flop_mode, DispatchCounterMode([synop_counter, mac_counter]):
                for batch in batches:
                    if max_batches is not None and n_batches >= max_batches:
                        break
                    x = _input_of(batch)
                    activity.start_batch()
                    functional.reset_net(model)
                    _call(model, x)
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
    if n_batches == 0 or samples == 0:
        raise ValueError("spiking_metrics: no batches (or no samples) were given")

    flop_counts = flop_mode.get_flop_counts()
    syn_scopes = synop_counter.get_counts()
    mac_scopes = mac_counter.get_counts()

    def per_sample(v: float) -> float:
        return float(v) / samples

    synops = per_sample(synop_counter.get_total())
    macs = per_sample(mac_counter.get_total())
    dense_macs = per_sample(_synaptic_total(flop_counts.get("Global", {})) / 2)

    layer_stats: Dict[str, Dict[str, float]] = {}
    for name, _ in layers:
        s = scope[name]
        if name not in order.order:
            continue
        layer_stats[name] = {
            "synops": per_sample(sum(syn_scopes.get(s, {}).values())),
            "macs": per_sample(sum(mac_scopes.get(s, {}).values())),
            "dense_macs": per_sample(_synaptic_total(flop_counts.get(s, {})) / 2),
        }
    first = order.order[0] if order.order else None
    macs_first_layer = layer_stats[first]["macs"] if first is not None else 0.0

    total_nnz = sum(activity.nnz.values())
    total_numel = sum(activity.numel.values())
    firing_rates = {
        name: (activity.nnz[name] / activity.numel[name]) if activity.numel[name] else 0.0
        for name, _ in neurons
    }
    activation_sparsity = 1.0 - total_nnz / total_numel if total_numel else 1.0

    cost = SimpleEnergyCostConfig.fp32()
    e_mac, e_ac = float(cost.e_mac_pj), float(cost.e_ac_pj)
    mac_pj = macs * e_mac
    ac_pj = synops * e_ac
    ann_pj = dense_macs * e_mac
    energy = {
        "mac_pJ": mac_pj,
        "ac_pJ": ac_pj,
        "total_pJ": mac_pj + ac_pj,
        "total_uJ": (mac_pj + ac_pj) * 1e-6,
        "ann_equivalent_pJ": ann_pj,
        "ann_equivalent_uJ": ann_pj * 1e-6,
        "ratio_to_ann": (mac_pj + ac_pj) / ann_pj if ann_pj else None,
        "e_mac_pJ": e_mac,
        "e_ac_pJ": e_ac,
        "constants": "45 nm FP32, Horowitz ISSCC 2014 (spikingjelly op_counter SimpleEnergyCostConfig.fp32); "
                     "compute only: mac_pJ = macs * e_mac_pJ, ac_pJ = synops * e_ac_pJ, "
                     "ann_equivalent = dense_macs * e_mac_pJ",
    }

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
        "samples": int(samples),
        "batches": int(n_batches),
        "time_steps": int(time_steps if time_steps is not None else 1),
        "counter": f"spikingjelly {sj} op_counter (SynOpCounter, MACCounter) + torch {torch.__version__} "
                   "FlopCounterMode (dense MACs)",
        "counters": {
            "synops": "spikingjelly.activation_based.op_counter.SynOpCounter (DispatchCounterMode)",
            "macs": "spikingjelly.activation_based.op_counter.MACCounter, conv/mm/addmm/bmm/baddbmm rules "
                    "only (DispatchCounterMode)",
            "dense_macs": "torch.utils.flop_counter.FlopCounterMode, conv/mm/addmm/bmm/baddbmm FLOPs / 2",
            "activity": "forward hooks on spiking-neuron modules (non-zero outputs)",
        },
    }
    for key in ("synops", "macs", "dense_macs", "activation_sparsity"):
        if not math.isfinite(result[key]):  # pragma: no cover - defensive
            raise RuntimeError(f"spiking_metrics: {key} is not finite ({result[key]})")
    return result

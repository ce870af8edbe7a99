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
  skips spike inputs by design and ``FlopCounter`` adds the bias additions.  One count, one place:
  :func:`synaptic_macs`, which :func:`sca_plugin.reporting.count_macs` uses too.

All three counters observe the same forward passes, so the counts are consistent with each other.
Firing rates and activation sparsity come from forward hooks on the spiking-neuron modules: the
fraction of non-zero neuron outputs over all time steps, samples and positions (NeuroBench's
``ActivationSparsity`` is ``1 -`` that fraction over all spiking layers together).

Energy uses the 45 nm constants of SpikingJelly's ``SimpleEnergyCostConfig.fp32()`` (Horowitz,
ISSCC 2014): ``E_MAC = 4.6 pJ``, ``E_AC = 0.9 pJ``; ``mac_pJ = macs * E_MAC``, ``ac_pJ = synops *
E_AC``, and the ANN equivalent is ``dense_macs * E_MAC``.  Memory traffic and neuron updates are
not included (SpikingJelly's ``estimate_simple_energy`` adds them, and also counts BN and
element-wise additions as ACs).

NeuroBench definitions.  ``macs`` and ``dense_macs`` above are dense counts: every weight at every
output position, padding and zero inputs included.  NeuroBench 2.3 (``SynapticOperations``) counts
only the (non-zero input, non-zero weight) pairs that reach an output, so its numbers are smaller.
The ``neurobench`` block of the result recomputes NeuroBench 2.3's figures exactly, by our own code
(NeuroBench is not imported): ``effective_macs`` / ``effective_acs`` / ``dense`` (NeuroBench's
``Effective_MACs`` / ``Effective_ACs`` / ``Dense``), ``activation_sparsity``,
``activation_sparsity_by_layer``, ``parameter_count``, ``footprint_bytes``,
``connection_sparsity`` and the energy of the formula above applied to NeuroBench's counts.  The
rules, as in ``neurobench/metrics/utils/layers`` and ``neurobench/models/neurobench_model.py``:

* connection layers are the ``nn.Linear`` / ``nn.Conv1d/2d/3d`` modules (subclasses included, so
  SpikingJelly's ``layer.*``) found by walking ``children()`` from the root, not descending into a
  connection layer; every forward call of such a module is counted (not the ``aten`` operators:
  a bare ``torch.matmul`` is not a connection for NeuroBench);
* a call is *spiking* (its operations are ACs) when every input value is 0, 1 or -1, otherwise
  its operations are MACs -- decided per call, so an analog first layer gives MACs and a layer
  behind average pooling or a residual sum of spikes gives MACs too;
* effective operations of a call = the sum of the layer's output when input and weights are
  binarised (non-zero -> 1) and the bias dropped: non-zero input x non-zero weight pairs, padding
  contributes nothing, a zeroed (masked) weight costs nothing;
* ``dense`` = the same with every input and weight set to 1 (padding still excluded), over all
  calls, spiking or not;
* per sample: divided by the number of samples (NeuroBench divides by ``data[0].size(0)`` of each
  batch, i.e. batch-first data);
* activation layers are ``nn.ReLU``, ``nn.Sigmoid`` (NeuroBench's defaults) and the spiking neurons
  (what a SpikingJelly user registers with ``NeuroBenchModel.add_activation_module``), found the same
  way; sparsity = zero outputs / all outputs.

:func:`neurobench_reference` runs NeuroBench itself (when it is installed) on the same model and
batches; the tests check that both agree.
"""
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

from .graph import call_model, preserve_training_mode
from .neurons import is_spiking_neuron, neuron_channel_dim

__all__ = ["spiking_metrics", "neurobench_reference", "synaptic_macs", "SYNAPTIC_OPS", "DEFINITIONS",
           "METRICS_JSON_DEFINITIONS", "NEUROBENCH_VERSION"]

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


#: The NeuroBench release whose definitions the ``neurobench`` block follows.
NEUROBENCH_VERSION = "2.3.0"
#: NeuroBench's stateless connection layers (``neurobench.blocks.layer.STATELESS_LAYERS``).
NB_STATELESS_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)
#: NeuroBench's recurrent connection layers; their operation counts are not reproduced here.
NB_RECURRENT_LAYERS = (nn.RNNBase, nn.RNNCellBase)
#: NeuroBench's default activation modules (``neurobench.blocks.activation.SUPPORTED_ACTIVATIONS``).
NB_DEFAULT_ACTIVATIONS = (nn.ReLU, nn.Sigmoid)


def _nb_find(module: nn.Module, match, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    """Modules matching ``match`` found as NeuroBench finds them: walk ``named_children`` from the
    root (the root itself is never a candidate), do not descend into a match.  A module reachable
    under two names is listed once (NeuroBench would hook it twice and count it double)."""
    found: List[Tuple[str, nn.Module]] = []
    seen: set = set()

    def walk(m: nn.Module, pre: str) -> None:
        for name, child in m.named_children():
            full = f"{pre}.{name}" if pre else name
            if match(child):
                if id(child) not in seen:
                    seen.add(id(child))
                    found.append((full, child))
            elif next(child.children(), None) is not None:
                walk(child, full)

    walk(module, prefix)
    return found


def _nb_is_activation(m: nn.Module) -> bool:
    return isinstance(m, NB_DEFAULT_ACTIVATIONS) or is_spiking_neuron(m)


def _is_spike_valued(x: torch.Tensor) -> bool:
    """NeuroBench's test for a spiking input: every value is 0, 1 or -1."""
    return bool(((x == 0) | (x == 1) | (x == -1)).all().item())


class _NeuroBenchOps:
    """Forward pre-hooks on NeuroBench's connection layers; effective and dense operations per layer.

    Both counts are linear in the binarised input and the weights do not change during an
    evaluation, so a hook only adds the binarised input, summed over its leading (time, batch)
    dimensions, to an accumulator per layer, spiking flag and input shape; :meth:`finish` then does one
    small convolution (one output channel per group) per accumulator.  That is exact (integers,
    float64; NeuroBench sums float32 outputs, exact while a layer's count per batch stays below
    2**24), costs a fraction of a forward pass, and runs no convolution inside the hooks, where the
    other counters would count it.
    """

    def __init__(self, layers: List[Tuple[str, nn.Module]]) -> None:
        self.layers = layers
        self.calls: Dict[str, int] = {name: 0 for name, _ in layers}
        # (name, spiking, input shape after the leading dims) -> [summed binarised input, rows]
        self._acc: Dict[tuple, list] = {}

    def _hook(self, name: str):
        def hook(module, args):
            if len(args) != 1 or not torch.is_tensor(args[0]):
                raise ValueError(f"NeuroBench ops: layer {name!r} was called with {len(args)} positional "
                                 "arguments; NeuroBench's stateless layers take one input tensor")
            x = args[0].detach()
            # the dims a single sample-step of the layer sees: [in_features] or [C, *spatial]
            d = 0 if isinstance(module, nn.Linear) else len(module.kernel_size)
            width = module.in_features if d == 0 else module.in_channels
            if x.dim() < d + 1 or x.shape[-d - 1] != width:
                raise ValueError(f"NeuroBench ops: {type(module).__name__} {name!r} expects {width} input "
                                 f"{'features' if d == 0 else 'channels'}, got input of shape {tuple(x.shape)}")
            inner = tuple(x.shape[-d - 1:])
            xb = (x != 0).reshape(-1, *inner)
            key = (name, _is_spike_valued(x), inner)
            entry = self._acc.get(key)
            if entry is None:
                self._acc[key] = [xb.sum(0), xb.shape[0]]
            else:
                entry[0] += xb.sum(0)
                entry[1] += xb.shape[0]
            self.calls[name] += 1

        return hook

    def finish(self) -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
        """``(macs, acs, dense)`` per layer name, summed over all samples (call outside the counters)."""
        modules = dict(self.layers)
        macs = {name: 0 for name, _ in self.layers}
        acs = dict(macs)
        dense = dict(macs)
        with torch.no_grad():
            for (name, spiking, inner), (xs, rows) in self._acc.items():
                layer = modules[name]
                if isinstance(layer, nn.Linear):
                    # sum_{rows,out} xb @ wb.T = sum_in (#non-zero inputs at in) * (#non-zero weights at in)
                    eff = int((xs.to(torch.int64) * (layer.weight != 0).sum(0)).sum().item())
                    d_ops = rows * layer.in_features * layer.out_features
                else:
                    c, g, out = layer.in_channels, layer.groups, layer.out_channels
                    wb = (layer.weight.detach() != 0).to("cpu", torch.float64)
                    # one output channel per group: its binarised filters summed over its output channels
                    wg = wb.reshape(g, out // g, c // g, *layer.kernel_size).sum(1)
                    x64 = xs.to("cpu", torch.float64).unsqueeze(0)
                    eff = int(round(layer._conv_forward(x64, wg, None).sum().item()))
                    ones = torch.ones_like(x64)
                    w1 = torch.full_like(wg, float(out // g))
                    d_ops = rows * int(round(layer._conv_forward(ones, w1, None).sum().item()))
                (acs if spiking else macs)[name] += eff
                dense[name] += d_ops
        return macs, acs, dense

    def __enter__(self) -> "_NeuroBenchOps":
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in self.layers]
        return self

    def __exit__(self, *exc) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []


def _nb_static(model: nn.Module) -> Dict[str, Any]:
    """NeuroBench's static metrics: ``ParameterCount``, ``Footprint`` (bytes of parameters and
    buffers) and ``ConnectionSparsity`` (zero weights / weights of the leaf connection layers under
    the root's children; NeuroBench rounds it to 4 decimals, we do not)."""
    params = sum(p.numel() for p in model.parameters())
    footprint = sum(p.numel() * p.element_size() for p in model.parameters())
    footprint += sum(b.numel() * b.element_size() for b in model.buffers())
    zeros = total = 0

    def visit(m: nn.Module) -> None:
        nonlocal zeros, total
        kids = list(m.children())
        if kids:
            for k in kids:
                visit(k)
        elif isinstance(m, NB_STATELESS_LAYERS):
            zeros += int((m.weight == 0).sum().item())
            total += m.weight.numel()
        elif isinstance(m, NB_RECURRENT_LAYERS):  # NeuroBench: all weights and biases of the cell/layer
            for _, p in m.named_parameters(recurse=False):
                zeros += int((p == 0).sum().item())
                total += p.numel()

    for child in model.children():
        visit(child)
    return {"parameter_count": int(params), "footprint_bytes": int(footprint),
            "connection_sparsity": (zeros / total) if total else None}


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


#: What each field of :func:`spiking_metrics`'s result means and which definition it follows.
DEFINITIONS: Dict[str, str] = {
    "synops": "ours (SpikingJelly SynOpCounter): per sample, the weight uses triggered by non-zero inputs of "
              "conv/mm/addmm/bmm/baddbmm operators whose input is binary {0,1}; padding excluded; weights "
              "counted dense (a zeroed weight still costs an AC). Equals NeuroBench Effective_ACs "
              "(neurobench.effective_acs) when no weight is exactly zero and the same layers are spiking",
    "macs": "ours (SpikingJelly MACCounter): per sample, dense MACs (every weight at every output position, "
            "padding and zero inputs included) of the synaptic operators whose input is not binary. NOT "
            "NeuroBench's: its Effective_MACs is neurobench.effective_macs",
    "macs_first_layer": "ours: the macs of the first conv/linear layer executed (dense, padding included)",
    "dense_macs": "ours (torch FlopCounterMode FLOPs / 2): per sample, MACs of a dense evaluation of every "
                  "conv/linear at every time step, padding included, bias excluded. NOT NeuroBench's: its "
                  "Dense is neurobench.dense (padding excluded)",
    "activation_sparsity": "NeuroBench ActivationSparsity over the spiking-neuron modules: zero outputs / all "
                           "outputs, all layers, time steps and samples (equals neurobench.activation_sparsity "
                           "when the model has no nn.ReLU / nn.Sigmoid)",
    "spikes": "ours: non-zero spiking-neuron outputs per sample (all layers and time steps)",
    "firing_rates": "1 - NeuroBench ActivationSparsityByLayer, per spiking-neuron module, keyed by full module "
                    "name (NeuroBench keys by the module's own child name)",
    "energy": "ours: mac_pJ = macs * e_mac_pJ, ac_pJ = synops * e_ac_pJ, ann_equivalent = dense_macs * e_mac_pJ "
              "(45 nm, Horowitz 2014). NeuroBench has no energy metric; the same formula on its counts is "
              "neurobench.energy",
    "layers": "ours: synops / macs / dense_macs of each conv/linear module, per sample",
    "mac_layers": "ours: the layers with macs > 0 (layers fed non-binary input)",
    "neurobench": f"NeuroBench {NEUROBENCH_VERSION} definitions, computed by sca_plugin without importing "
                  "NeuroBench: effective_macs / effective_acs / dense = SynapticOperations' Effective_MACs / "
                  "Effective_ACs / Dense (non-zero input x non-zero weight pairs, padding excluded; a call is "
                  "AC when all its inputs are in {0, 1, -1}); activation_sparsity(_by_layer), parameter_count, "
                  "footprint_bytes, connection_sparsity (unrounded); energy = the formula of 'energy' on "
                  "effective_macs, effective_acs and dense",
    "samples": "number of samples every per-sample figure is averaged over",
    "batches": "number of batches run",
    "time_steps": "time steps per sample (first batch)",
}

#: What the top-level fields of a run's ``metrics.json`` (``sca_plugin.runner``) follow.
METRICS_JSON_DEFINITIONS: Dict[str, str] = {
    "accuracy": "top-1 accuracy on the whole test set (NeuroBench ClassificationAccuracy)",
    "parameters": "number of parameters (NeuroBench ParameterCount)",
    "macs": "ours (sca_plugin.reporting.count_macs): dense MACs per sample per time step and over all time "
            "steps, padding included = spiking_metrics.dense_macs; NOT NeuroBench Dense (neurobench.dense)",
    "synops": DEFINITIONS["synops"] + "; 'before' is the dense baseline's",
    "activation_sparsity": DEFINITIONS["activation_sparsity"],
    "firing_rates": DEFINITIONS["firing_rates"],
    "energy": DEFINITIONS["energy"],
    "synops_connected": "ours: each layer's synops times its fraction of non-zero weights",
    "neurobench": DEFINITIONS["neurobench"] + " (of the final model; the dense baseline's is in "
                  "dense_baseline.neurobench)",
    "metrics_samples": "number of test samples synops, activation_sparsity, firing_rates, energy and neurobench "
                       "are averaged over: the whole test set, as for accuracy",
    "dense_baseline": "accuracy, synops, activation_sparsity, energy, neurobench and metrics_samples of the dense "
                      "baseline, with the definitions above",
    "spiking_metrics": "the full result of sca_plugin.metrics.spiking_metrics on the test set (its 'samples' "
                       "says on how many samples; its 'definitions' says what each field follows)",
}


def _synaptic_total(counts: Dict[Any, int]) -> int:
    """Sum of a FlopCounterMode scope's counts over the synaptic operators."""
    return int(sum(v for op, v in counts.items() if op in _SYNAPTIC_PACKETS))


def synaptic_macs(flop_mode: FlopCounterMode, scope: str = "Global") -> int:
    """The MACs of the synaptic operators (:data:`SYNAPTIC_OPS`: convolutions and matrix products)
    a ``FlopCounterMode`` saw, FLOPs / 2 (bias additions not included): the one dense-MAC count of
    the package (``spiking_metrics``' ``dense_macs``, ``reporting.count_macs``)."""
    return _synaptic_total(flop_mode.get_flop_counts().get(scope, {})) // 2


def _neurobench_block(model: nn.Module, ops: _NeuroBenchOps, recurrent: List[str], activity: _Activity,
                      acts: List[Tuple[str, nn.Module]], per_sample, e_mac: float, e_ac: float) -> Dict[str, Any]:
    """The ``neurobench`` block of :func:`spiking_metrics` (see the module docstring)."""
    block: Dict[str, Any] = {"follows": f"NeuroBench {NEUROBENCH_VERSION}", "unsupported": None}
    if recurrent:
        # NeuroBench counts recurrent cells with its own gate-level rules (and raises for nn.RNN/LSTM/GRU);
        # they are not reproduced here, so no synaptic-operation figures rather than wrong ones.
        block["unsupported"] = f"recurrent layers {recurrent}: NeuroBench synaptic operations not reproduced"
        block.update(effective_macs=None, effective_acs=None, dense=None, layers={}, energy=None)
    else:
        l_macs, l_acs, l_dense = ops.finish()
        macs = per_sample(sum(l_macs.values()))
        acs = per_sample(sum(l_acs.values()))
        dense = per_sample(sum(l_dense.values()))
        block.update(
            effective_macs=macs, effective_acs=acs, dense=dense,
            layers={name: {"effective_macs": per_sample(l_macs[name]), "effective_acs": per_sample(l_acs[name]),
                           "dense": per_sample(l_dense[name])}
                    for name, _ in ops.layers if ops.calls[name]},
            energy=_energy(macs, acs, dense, e_mac, e_ac),
        )
    nnz = sum(activity.nnz[n] for n, _ in acts)
    numel = sum(activity.numel[n] for n, _ in acts)
    # NeuroBench returns 0.0 when no activation layer ran; None says so instead.
    block["activation_sparsity"] = (1.0 - nnz / numel) if numel else None
    block["activation_sparsity_by_layer"] = {
        n: 1.0 - activity.nnz[n] / activity.numel[n] for n, _ in acts if activity.numel[n]}
    block.update(_nb_static(model))
    return block


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
    # NeuroBench's view of the same forward passes (its connection and activation layers).
    nb_recurrent = [n for n, _ in _nb_find(model, lambda m: isinstance(m, NB_RECURRENT_LAYERS))]
    nb_ops = _NeuroBenchOps(_nb_find(model, lambda m: isinstance(m, NB_STATELESS_LAYERS)))
    nb_acts = _nb_find(model, _nb_is_activation)
    same_acts = [m for _, m in nb_acts] == [m for _, m in neurons]
    nb_activity = _Activity([] if same_acts else nb_acts)

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

    total_nnz = sum(activity.nnz.values())
    total_numel = sum(activity.numel.values())
    firing_rates = {
        name: (activity.nnz[name] / activity.numel[name]) if activity.numel[name] else 0.0
        for name, _ in neurons
    }
    activation_sparsity = 1.0 - total_nnz / total_numel if total_numel else 1.0

    cost = SimpleEnergyCostConfig.fp32()
    e_mac, e_ac = float(cost.e_mac_pj), float(cost.e_ac_pj)
    energy = _energy(macs, synops, dense_macs, e_mac, e_ac)
    energy["constants"] = ("45 nm FP32, Horowitz ISSCC 2014 (spikingjelly op_counter SimpleEnergyCostConfig.fp32); "
                           "compute only: mac_pJ = macs * e_mac_pJ, ac_pJ = synops * e_ac_pJ, "
                           "ann_equivalent = dense_macs * e_mac_pJ")
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


class _ListLoader:
    """The little of a ``DataLoader`` NeuroBench's ``Benchmark.run`` uses: iteration, ``len`` and
    ``len(.dataset)`` (the sample count it normalises per-batch metrics by)."""

    def __init__(self, batches: List[Tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches
        self.dataset = range(sum(int(x.shape[0]) for x, _ in batches))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def neurobench_reference(
    model: nn.Module,
    batches: Iterable[Any],
    time_major: bool = False,
    max_batches: Optional[int] = None,
) -> Dict[str, Any]:
    """Run NeuroBench itself (``pip install 'sca_plugin[neurobench]'``) on ``model`` and ``batches``.

    The cross-check of the ``neurobench`` block of :func:`spiking_metrics`: same model, same batches,
    NeuroBench's own ``Benchmark`` with ``ParameterCount``, ``Footprint``, ``ConnectionSparsity``,
    ``ActivationSparsity``, ``ActivationSparsityByLayer``, ``SynapticOperations`` and, when the
    batches carry targets, ``ClassificationAccuracy`` (of ``argmax(-1)`` of the output).

    :param batches: as for :func:`spiking_metrics`: input tensors or ``(input, target, ...)`` tuples.
    :param time_major: the inputs are ``[T, B, ...]``.  NeuroBench takes the batch size from dim 0,
        so they are handed to it batch-first and transposed back before the model sees them.
    :returns: NeuroBench's result dict (its own keys) plus ``samples``.
    :raises ImportError: NeuroBench is not installed.
    :raises RuntimeError: NeuroBench reported an error in a metric (it would otherwise record 0.0).

    The spiking-neuron classes of the model are registered as NeuroBench activation modules (as a
    SpikingJelly user does with ``add_activation_module``); neuron states are reset around every
    batch; it runs under ``torch.no_grad()`` and the modules' train/eval flags are restored.
    """
    try:
        from neurobench.benchmarks import Benchmark
        from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
        from neurobench.metrics.workload import (ActivationSparsity, ActivationSparsityByLayer,
                                                 ClassificationAccuracy, SynapticOperations)
        from neurobench.models import TorchModel
    except ImportError as e:
        raise ImportError(f"neurobench_reference needs NeuroBench {NEUROBENCH_VERSION}: "
                          "pip install 'sca_plugin[neurobench]' (with your torch pinned)") from e
    import contextlib
    import io

    class _SpikingJellyModel(TorchModel):
        def __call__(self, batch):
            x = batch.transpose(0, 1) if time_major else batch
            functional.reset_net(self.net)
            try:
                return self.net(x)
            finally:
                functional.reset_net(self.net)

    data: List[Tuple[torch.Tensor, torch.Tensor]] = []
    with_targets = True
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x = _input_of(batch)
        if not torch.is_tensor(x):
            raise ValueError("neurobench_reference: inputs must be tensors")
        xb = x.transpose(0, 1) if time_major else x
        if isinstance(batch, (tuple, list)) and len(batch) > 1 and torch.is_tensor(batch[1]):
            y = batch[1]
        else:
            with_targets = False
            y = torch.zeros(xb.shape[0], dtype=torch.long, device=xb.device)
        data.append((xb, y))
    if not data:
        raise ValueError("neurobench_reference: no batches were given")

    workload = [ActivationSparsity, ActivationSparsityByLayer, SynapticOperations]
    if with_targets:
        workload.insert(0, ClassificationAccuracy)
    log = io.StringIO()
    with preserve_training_mode(model), torch.no_grad():
        nb_model = _SpikingJellyModel(model)
        for cls in {type(m) for m in model.modules() if is_spiking_neuron(m)}:
            nb_model.add_activation_module(cls)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            bench = Benchmark(nb_model, _ListLoader(data), [], [lambda p: p.argmax(-1)],
                              [[ParameterCount, Footprint, ConnectionSparsity], workload])
            try:
                results = bench.run(quiet=False)
            finally:
                bench.workload_metric_manager.cleanup_hooks(nb_model)
                functional.reset_net(model)
    errors = [line for line in log.getvalue().splitlines() if line.startswith("Error running")]
    if errors:
        raise RuntimeError("NeuroBench reported errors (it records 0.0 for such a metric): " + "; ".join(errors))
    results = dict(results)
    results["samples"] = sum(int(x.shape[0]) for x, _ in data)
    return results

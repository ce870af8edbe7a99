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

The modules: :mod:`~sca_plugin.metrics.spiking` (:func:`spiking_metrics`),
:mod:`~sca_plugin.metrics.counting` (the counters, :func:`synaptic_macs`),
:mod:`~sca_plugin.metrics.neurobench` (NeuroBench's definitions, :func:`neurobench_reference`),
:mod:`~sca_plugin.metrics.definitions`.
"""
from .counting import SYNAPTIC_OPS, synaptic_macs
from .definitions import DEFINITIONS, METRICS_JSON_DEFINITIONS
from .neurobench import NEUROBENCH_VERSION, neurobench_reference
from .spiking import spiking_metrics

__all__ = ["spiking_metrics", "neurobench_reference", "synaptic_macs", "SYNAPTIC_OPS", "DEFINITIONS",
           "METRICS_JSON_DEFINITIONS", "NEUROBENCH_VERSION"]

"""Which definition each reported figure follows (``definitions`` in results and metrics.json)."""
from __future__ import annotations

from typing import Dict



from .neurobench import NEUROBENCH_VERSION


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

"""spiking_metrics: SynOps / MACs / dense MACs / activity / energy against hand counts and invariants."""
import copy
import json
import math

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

from tests.helpers import assert_unchanged, snapshot, train_steps
from sca_plugin import SCAPruner
from sca_plugin.metrics import spiking_metrics
from sca_plugin.models import digits_cnn
from sca_plugin.neurons import is_spiking_neuron
from sca_plugin.reporting import count_macs

E_MAC, E_AC = 4.6, 0.9


def tiny_net(step_mode="m"):
    """Conv 1x1 (1 -> 2, weights 0.5 / 0.25) -> IF -> Flatten -> Linear(8 -> 3)."""
    net = nn.Sequential(layer.Conv2d(1, 2, 1, bias=False), neuron.IFNode(), layer.Flatten(), layer.Linear(8, 3))
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([0.5, 0.25]).view(2, 1, 1, 1))
        net[3].weight.fill_(0.3)
        net[3].bias.fill_(0.1)
    functional.set_step_mode(net, step_mode)
    return net


class StepLoop(nn.Module):
    """Feeds a [T, B, ...] sequence step by step to a single-step network (like SpikingNet in 's')."""

    def __init__(self, net):
        super().__init__()
        self.net = net

    def forward(self, x_seq):
        return torch.stack([self.net(x) for x in x_seq]).mean(0)


T = 4
# Analog input, constant over T=4 steps, one sample per batch.
X_SPIKING = torch.tensor([[1.0, 0.5], [2.0, 0.0]]).view(1, 1, 1, 2, 2).repeat(T, 1, 1, 1, 1)
X_SILENT = torch.full((T, 1, 1, 2, 2), 0.25)  # analog but too weak to reach the threshold in 4 steps

# Hand count.  Conv outputs (constant per step): ch0 = [[.5,.25],[1,0]], ch1 = [[.25,.125],[.5,0]].
# IF (threshold 1, hard reset to 0) over 4 steps: .5 -> 2 spikes, .25 -> 1, 1 -> 4, .125 -> 0, 0 -> 0,
# so X_SPIKING gives 2+1+4+0 + 1+0+2+0 = 10 spikes and X_SILENT (0.125 / 0.0625 per step) gives 0.
HAND_SPIKES = 10
HAND_CONV_MACS = 2 * 2 * 2 * 1 * T  # output elements x (in channels x kernel) per step x T, analog input
HAND_LINEAR_DENSE = 8 * 3 * T
HAND_NEURON_OUTPUTS = 8 * T  # per sample


def check_hand_counts(m):
    samples = 2
    assert m["samples"] == samples and m["batches"] == 2 and m["time_steps"] == T
    assert m["synops"] == pytest.approx(HAND_SPIKES * 3 / samples)  # each spike reaches 3 outputs
    assert m["macs"] == pytest.approx(HAND_CONV_MACS)  # analog input: MACs every step, both samples
    assert m["macs_first_layer"] == pytest.approx(HAND_CONV_MACS)
    assert m["dense_macs"] == pytest.approx(HAND_CONV_MACS + HAND_LINEAR_DENSE)
    rate = HAND_SPIKES / (samples * HAND_NEURON_OUTPUTS)
    assert list(m["firing_rates"].values()) == [pytest.approx(rate)]
    assert m["activation_sparsity"] == pytest.approx(1 - rate)
    assert m["spikes"] == pytest.approx(HAND_SPIKES / samples)
    e = m["energy"]
    assert (e["e_mac_pJ"], e["e_ac_pJ"]) == (E_MAC, E_AC)
    assert e["mac_pJ"] == pytest.approx(HAND_CONV_MACS * E_MAC)
    assert e["ac_pJ"] == pytest.approx(HAND_SPIKES * 3 / samples * E_AC)
    assert e["total_uJ"] == pytest.approx((e["mac_pJ"] + e["ac_pJ"]) * 1e-6)
    assert e["ann_equivalent_uJ"] == pytest.approx((HAND_CONV_MACS + HAND_LINEAR_DENSE) * E_MAC * 1e-6)


def test_tiny_network_matches_hand_count_multi_step():
    net = tiny_net("m")
    m = spiking_metrics(net, [X_SPIKING, X_SILENT, X_SPIKING], max_batches=2)
    check_hand_counts(m)
    assert list(m["firing_rates"]) == ["1"]
    assert m["mac_layers"] == ["0"]
    assert m["layers"]["0"] == {"synops": 0.0, "macs": HAND_CONV_MACS, "dense_macs": HAND_CONV_MACS}
    assert m["layers"]["3"] == {"synops": 15.0, "macs": 0.0, "dense_macs": HAND_LINEAR_DENSE}
    json.dumps(m, allow_nan=False)


def test_tiny_network_matches_hand_count_single_step_and_tuple_batches():
    net = StepLoop(tiny_net("s"))
    y = torch.zeros(1, dtype=torch.long)
    m = spiking_metrics(net, iter([(X_SPIKING, y), (X_SILENT, y)]))
    check_hand_counts(m)
    assert list(m["firing_rates"]) == ["net.1"]


def test_padded_conv_spike_fan_out_is_exact():
    """Binary input: a corner spike reaches 2x2 outputs, a centre spike 3x3 (padding 1), per channel."""
    net = nn.Sequential(layer.Conv2d(1, 3, 3, padding=1, bias=False), neuron.IFNode(), layer.Flatten(),
                        layer.Linear(48, 2, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[3].weight.fill_(-0.7)
    functional.set_step_mode(net, "m")
    x = torch.zeros(2, 1, 1, 4, 4)
    x[0, 0, 0, 0, 0] = 1.0  # t=0: corner
    x[1, 0, 0, 1, 1] = 1.0  # t=1: inner pixel
    m = spiking_metrics(net, [x])
    # Conv: 4*3 + 9*3 ACs.  Potentials: the 4 outputs covered by both spikes reach 0.5+0.5 = 1 at
    # t=1 -> 4 positions x 3 channels = 12 spikes, each reaching 2 linear outputs.
    assert m["layers"]["0"]["synops"] == 4 * 3 + 9 * 3
    assert m["layers"]["3"]["synops"] == 12 * 2
    assert m["synops"] == 4 * 3 + 9 * 3 + 12 * 2
    assert m["macs"] == 0 and m["macs_first_layer"] == 0 and m["mac_layers"] == []
    assert m["dense_macs"] == 3 * 16 * 9 * 2 + 48 * 2 * 2
    assert m["activation_sparsity"] == pytest.approx(1 - 12 / (48 * 2))
    assert m["energy"]["mac_pJ"] == 0
    assert m["energy"]["ac_pJ"] == pytest.approx(m["synops"] * E_AC)


def test_digits_cnn_metrics_are_sane_and_step_mode_invariant(digits_batch):
    torch.manual_seed(0)
    model = digits_cnn(T=4)
    x, y = digits_batch
    batches = [x[:8], x[8:]]
    m = spiking_metrics(model, batches)
    for key in ("synops", "macs", "dense_macs", "activation_sparsity", "spikes"):
        assert math.isfinite(m[key]), key
    assert m["samples"] == 16 and m["time_steps"] == 4
    assert 0.0 <= m["activation_sparsity"] <= 1.0
    assert all(0.0 <= r <= 1.0 for r in m["firing_rates"].values())
    assert set(m["firing_rates"]) == {n for n, mod in model.named_modules() if is_spiking_neuron(mod)}
    assert 0 < m["synops"] <= m["dense_macs"]
    # Direct encoding: only the first conv sees analog input; its MACs are its dense MACs (T steps).
    first = m["mac_layers"]
    assert first == ["features.0"] and m["macs"] == m["macs_first_layer"]
    assert m["macs_first_layer"] == m["layers"]["features.0"]["dense_macs"]
    assert m["synops"] + m["macs"] <= m["dense_macs"]
    assert m["dense_macs"] == count_macs(model, x)["total"]
    assert m["energy"]["total_uJ"] < m["energy"]["ann_equivalent_uJ"]
    json.dumps(m, allow_nan=False)

    single = copy.deepcopy(model)
    functional.set_step_mode(single, "s")
    m_s = spiking_metrics(single, batches)
    assert m_s == m


def test_counter_sees_the_physically_pruned_model(digits_batch):
    torch.manual_seed(0)
    model = digits_cnn(T=4)
    x, y = digits_batch
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.0, ignored_layers=[model.classifier])
    train_steps(model, x, y, 1, pruner)  # SCA importance needs training-mode statistics
    pruner.update_masks()
    masked = spiking_metrics(model, [x])
    pruner.finalize()
    pruned = spiking_metrics(model, [x])
    # Same spikes (masked channels are silent), but the pruned layers are smaller.
    assert pruned["spikes"] == pytest.approx(masked["spikes"])
    assert pruned["dense_macs"] < 0.6 * masked["dense_macs"]
    assert pruned["dense_macs"] == count_macs(model, x)["total"]
    assert pruned["synops"] < masked["synops"]  # dead fan-out is gone (op_counter counts weights dense)
    kept = model.features[0].out_channels / 16  # first conv: analog input, MACs scale with its width
    assert pruned["macs"] == pytest.approx(kept * masked["macs"])
    assert pruned["activation_sparsity"] < masked["activation_sparsity"]  # silent neurons removed


def test_narrower_model_costs_less(digits_batch):
    x, _ = digits_batch
    wide = spiking_metrics(digits_cnn(T=4, width=1.0), [x])
    narrow = spiking_metrics(digits_cnn(T=4, width=0.5), [x])
    assert narrow["dense_macs"] < 0.5 * wide["dense_macs"]
    assert narrow["macs_first_layer"] == pytest.approx(0.5 * wide["macs_first_layer"])


def test_flags_hooks_and_neuron_state_are_restored(digits_batch):
    x, _ = digits_batch
    model = digits_cnn(T=4)
    model.train()
    model.features[1].eval()  # mixed flags must come back as they were
    snap = snapshot(model)
    spiking_metrics(model, [x[:4]])
    assert_unchanged(model, snap)
    assert model.training and not model.features[1].training
    for mod in model.modules():
        if is_spiking_neuron(mod):
            assert not torch.is_tensor(mod.v)  # reset: back to the scalar initial state

    # A failing forward still resets the state and restores the flags.
    with pytest.raises(Exception):
        spiking_metrics(model, [x[:4], torch.zeros(4, 3, 8, 8)])
    assert_unchanged(model, snap)
    for mod in model.modules():
        if is_spiking_neuron(mod):
            assert not torch.is_tensor(mod.v)


def test_bad_arguments():
    net = tiny_net()
    with pytest.raises(ValueError):
        spiking_metrics(net, [])
    with pytest.raises(ValueError):
        spiking_metrics(net, [X_SPIKING], max_batches=0)


# --- NeuroBench 2.3 definitions (the ``neurobench`` block), hand counts, no NeuroBench needed ---------


def test_neurobench_block_tiny_network_hand_count():
    """Effective MACs count only non-zero pixels; ours count the analog layer densely."""
    net = tiny_net("m")
    m = spiking_metrics(net, [X_SPIKING, X_SILENT])
    nb = m["neurobench"]
    # X_SPIKING has 3 non-zero pixels, X_SILENT 4; 1x1 conv, 2 output channels, T steps.
    conv_eff = (3 * 2 * T + 4 * 2 * T) / 2
    assert nb["layers"]["0"] == {"effective_macs": conv_eff, "effective_acs": 0.0, "dense": HAND_CONV_MACS}
    # The linear layer sees spikes (binary): each spike reaches 3 outputs (no zero weight).
    assert nb["layers"]["3"] == {"effective_macs": 0.0, "effective_acs": HAND_SPIKES * 3 / 2,
                                 "dense": HAND_LINEAR_DENSE}
    assert nb["effective_macs"] == conv_eff < m["macs"] == HAND_CONV_MACS
    assert nb["effective_acs"] == m["synops"]
    assert nb["dense"] == m["dense_macs"]  # no padding, no zero weight: the dense counts agree
    assert nb["activation_sparsity"] == m["activation_sparsity"]
    assert nb["activation_sparsity_by_layer"] == {"1": pytest.approx(1 - m["firing_rates"]["1"])}
    assert nb["parameter_count"] == 2 + 24 + 3
    assert nb["footprint_bytes"] == 4 * (2 + 24 + 3)
    assert nb["connection_sparsity"] == 0.0
    e = nb["energy"]
    assert e["mac_pJ"] == pytest.approx(conv_eff * E_MAC) and e["ac_pJ"] == pytest.approx(15 * E_AC)
    assert e["ann_equivalent_pJ"] == pytest.approx((HAND_CONV_MACS + HAND_LINEAR_DENSE) * E_MAC)
    assert nb["unsupported"] is None and nb["follows"] == "NeuroBench 2.3.0"


def padded_net():
    net = nn.Sequential(layer.Conv2d(1, 3, 3, padding=1, bias=False), neuron.IFNode(), layer.Flatten(),
                        layer.Linear(48, 2, bias=False))
    with torch.no_grad():
        net[0].weight.fill_(0.5)
        net[3].weight.fill_(-0.7)
    functional.set_step_mode(net, "m")
    x = torch.zeros(2, 1, 1, 4, 4)
    x[0, 0, 0, 0, 0] = 1.0  # t=0: corner
    x[1, 0, 0, 1, 1] = 1.0  # t=1: inner pixel
    return net, x


def test_neurobench_dense_excludes_padding_and_zero_weights_cost_nothing():
    net, x = padded_net()
    m = spiking_metrics(net, [x])
    nb = m["neurobench"]
    # 3x3 kernel, padding 1, 4x4 map: an output sees 4 (corner), 6 (edge) or 9 (inner) real pixels.
    valid = 4 * 4 + 8 * 6 + 4 * 9
    assert nb["layers"]["0"]["dense"] == valid * 3 * 2  # x 3 out channels x 2 steps
    assert m["layers"]["0"]["dense_macs"] == 16 * 9 * 3 * 2  # ours: padding included
    assert nb["dense"] == valid * 3 * 2 + 48 * 2 * 2
    assert nb["effective_acs"] == m["synops"] == 4 * 3 + 9 * 3 + 12 * 2
    assert nb["effective_macs"] == 0

    # Zero the linear weights of the first 24 flattened inputs: channel 0 and the top half of channel 1.
    # The 12 spikes sit at positions 0, 1, 4, 5 of each channel: 8 of them lose both their synapses.
    with torch.no_grad():
        net[3].weight[:, :24] = 0
    z = spiking_metrics(net, [x])
    assert z["synops"] == m["synops"]  # ours: weights counted dense
    assert z["neurobench"]["layers"]["3"]["effective_acs"] == 4 * 2
    assert z["neurobench"]["layers"]["3"]["dense"] == 48 * 2 * 2  # Dense ignores weight values
    assert z["neurobench"]["connection_sparsity"] == pytest.approx(48 / (27 + 96))


def _binarised_sum(layer_, x, ones=False):
    """The brute-force NeuroBench rule: run a copy with binarised (or all-one) weights and inputs."""
    lb = copy.deepcopy(layer_)
    with torch.no_grad():
        lb.weight.copy_(torch.ones_like(lb.weight) if ones else (lb.weight != 0).float())
        if lb.bias is not None:
            lb.bias.zero_()
        xb = torch.ones_like(x) if ones else (x != 0).float()
        return lb(xb).sum().item()


@pytest.mark.parametrize("make", [
    lambda: (nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2), torch.rand(3, 4, 7, 7)),
    lambda: (nn.Conv2d(2, 4, 3, padding=2, dilation=2, padding_mode="circular"), torch.rand(2, 2, 6, 5)),
    lambda: (nn.Conv1d(3, 5, 4, padding="same"), torch.rand(2, 3, 9)),
    lambda: (nn.Conv3d(2, 2, 2, padding=1), torch.rand(1, 2, 3, 4, 4)),
    lambda: (nn.Linear(6, 4), torch.rand(5, 6)),
])
@pytest.mark.filterwarnings("ignore:Using padding='same'")
def test_neurobench_counts_match_brute_force_binarised_layer(make):
    """Our summed-input shortcut equals NeuroBench's rule (a binarised copy of the layer) for strides,
    groups, dilation, padding modes and 1-3 d convolutions, with zero inputs and zero weights."""
    torch.manual_seed(0)
    lay, x = make()
    with torch.no_grad():
        lay.weight[lay.weight.abs() < 0.1] = 0  # some zero weights
    x[x < 0.4] = 0  # some zero inputs
    for spikes in (False, True):
        xi = (x > 0).float() if spikes else x
        m = spiking_metrics(nn.Sequential(lay), [xi])  # NeuroBench never counts the root
        nb = m["neurobench"]
        samples = m["samples"]
        eff = _binarised_sum(lay, xi) / samples
        assert nb["effective_acs" if spikes else "effective_macs"] == eff
        assert nb["effective_macs" if spikes else "effective_acs"] == 0
        assert nb["dense"] == _binarised_sum(lay, xi, ones=True) / samples


def test_neurobench_activation_layers_include_relu():
    """NeuroBench also counts nn.ReLU / nn.Sigmoid outputs; ours count spiking neurons only."""
    net = nn.Sequential(layer.Linear(4, 6), neuron.IFNode(), layer.Linear(6, 5), nn.ReLU(), layer.Linear(5, 2))
    functional.set_step_mode(net, "m")
    torch.manual_seed(1)
    x = torch.rand(3, 2, 4) * 3
    m = spiking_metrics(net, [x])
    nb = m["neurobench"]
    assert set(nb["activation_sparsity_by_layer"]) == {"1", "3"} and set(m["firing_rates"]) == {"1"}
    functional.reset_net(net)
    with torch.no_grad():
        s = net[1](net[0](x))
        r = net[3](net[2](s))
    functional.reset_net(net)
    total_zero = (s == 0).sum().item() + (r == 0).sum().item()
    assert nb["activation_sparsity"] == pytest.approx(total_zero / (s.numel() + r.numel()))
    assert m["activation_sparsity"] == pytest.approx((s == 0).sum().item() / s.numel())
    # the last layer gets ReLU output (non-binary): its effective ops are MACs
    assert nb["layers"]["4"]["effective_acs"] == 0
    assert nb["layers"]["4"]["effective_macs"] == pytest.approx(((r != 0).sum().item() * 2) / 2)


def test_neurobench_recurrent_layers_are_reported_unsupported():
    net = nn.Sequential(nn.Linear(4, 4), neuron.IFNode(), nn.RNNCell(4, 3))
    m = spiking_metrics(net, [torch.rand(2, 4)])
    nb = m["neurobench"]
    assert nb["effective_macs"] is None and nb["effective_acs"] is None and nb["dense"] is None
    assert "2" in nb["unsupported"]
    assert nb["parameter_count"] == sum(p.numel() for p in net.parameters())


def test_neurobench_block_on_digits_is_step_mode_invariant_and_below_our_dense(digits_batch):
    torch.manual_seed(0)
    model = digits_cnn(T=4)
    x, _ = digits_batch
    x = x.clone()
    x[x < 0.5] = 0  # background pixels cost no effective MAC
    m = spiking_metrics(model, [x[:8], x[8:]])
    nb = m["neurobench"]
    assert nb["effective_acs"] == m["synops"]  # no zero weight: same ACs
    assert 0 < nb["effective_macs"] < m["macs"]
    assert nb["dense"] < m["dense_macs"]  # padding excluded
    assert nb["effective_macs"] == nb["layers"]["features.0"]["effective_macs"]
    assert nb["parameter_count"] == sum(p.numel() for p in model.parameters())
    single = copy.deepcopy(model)
    functional.set_step_mode(single, "s")
    assert spiking_metrics(single, [x[:8], x[8:]])["neurobench"] == nb


def test_every_field_says_which_definition_it_follows():
    from sca_plugin.metrics import DEFINITIONS, METRICS_JSON_DEFINITIONS

    m = spiking_metrics(tiny_net(), [X_SPIKING])
    assert m["definitions"] == DEFINITIONS
    assert set(m) - {"counter", "counters", "definitions"} <= set(DEFINITIONS)
    for key in ("macs", "dense_macs"):
        assert "NOT NeuroBench" in DEFINITIONS[key]
    assert "Effective_ACs" in DEFINITIONS["synops"]
    assert {"accuracy", "parameters", "macs", "synops", "energy", "neurobench"} <= set(METRICS_JSON_DEFINITIONS)
    json.dumps(m, allow_nan=False)


def test_neurobench_ternary_input_is_spiking_and_negative_values_count():
    """NeuroBench calls an input spiking when all values are in {-1, 0, 1}; a 2 makes it analog."""
    net = nn.Sequential(layer.Linear(4, 3, bias=False))
    x = torch.tensor([[1.0, -1.0, 0.0, 0.0], [0.0, 0.0, 0.0, -1.0]])
    nb = spiking_metrics(net, [x])["neurobench"]
    assert (nb["effective_acs"], nb["effective_macs"]) == (3 * 3 / 2, 0)
    nb = spiking_metrics(net, [x * 2])["neurobench"]
    assert (nb["effective_acs"], nb["effective_macs"]) == (0, 3 * 3 / 2)

"""The ``neurobench`` block of spiking_metrics equals NeuroBench 2.3's own figures on the same model and
samples (skipped when NeuroBench is not installed: ``pip install -c constraints.txt '.[neurobench]'``)."""
import copy

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

pytest.importorskip("neurobench")

from sca_plugin.metrics import neurobench_reference, spiking_metrics  # noqa: E402
from sca_plugin.models import digits_cnn  # noqa: E402


def assert_same_as_neurobench(model, batches, time_major=False):
    ours = spiking_metrics(model, batches)
    ref = neurobench_reference(model, batches, time_major=time_major)
    nb = ours["neurobench"]
    assert ref["samples"] == ours["samples"]
    syn = ref["SynapticOperations"]
    assert (nb["effective_macs"], nb["effective_acs"], nb["dense"]) == (
        syn["Effective_MACs"], syn["Effective_ACs"], syn["Dense"])
    # NeuroBench averages per-batch sparsities weighted by batch size; ours is the global ratio.
    assert nb["activation_sparsity"] == pytest.approx(ref["ActivationSparsity"], rel=1e-12, abs=1e-15)
    # NeuroBench keys by the module's own child name.
    by_child = {name.rsplit(".", 1)[-1]: v for name, v in nb["activation_sparsity_by_layer"].items()}
    assert len(by_child) == len(nb["activation_sparsity_by_layer"])
    assert by_child == pytest.approx(ref["ActivationSparsityByLayer"], rel=1e-12, abs=1e-15)
    assert nb["parameter_count"] == ref["ParameterCount"]
    assert nb["footprint_bytes"] == ref["Footprint"]
    assert round(nb["connection_sparsity"], 4) == ref["ConnectionSparsity"]
    return ours, ref


def digits_data(n=40, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 8, 8, generator=g) * 2
    x[x < 0.6] = 0  # background pixels
    y = torch.randint(0, 10, (n,), generator=g)
    return [(x[:16], y[:16]), (x[16:32], y[16:32]), (x[32:], y[32:])]  # unequal last batch


def test_digits_cnn_equals_neurobench_and_differs_from_our_dense_counts():
    torch.manual_seed(0)
    model = digits_cnn(T=4)
    batches = digits_data()
    ours, ref = assert_same_as_neurobench(model, batches)
    syn = ref["SynapticOperations"]
    assert ours["synops"] == syn["Effective_ACs"]  # no zero weight: SynOps = Effective_ACs
    assert syn["Effective_MACs"] < ours["macs"]  # ours: first layer dense
    assert syn["Dense"] < ours["dense_macs"]  # ours: padding included
    assert ours["activation_sparsity"] == pytest.approx(ref["ActivationSparsity"], rel=1e-12)
    correct = 0
    with torch.no_grad():
        for x, y in batches:
            functional.reset_net(model)
            correct += (model(x).argmax(-1) == y).sum().item()
    functional.reset_net(model)
    assert ref["ClassificationAccuracy"] == pytest.approx(correct / 40)

    single = copy.deepcopy(model)  # single-step: T calls per layer and batch
    functional.set_step_mode(single, "s")
    assert_same_as_neurobench(single, batches)


def test_masked_weights_equal_neurobench_where_synops_do_not():
    torch.manual_seed(0)
    model = digits_cnn(T=4)
    with torch.no_grad():
        model.features[3].weight[::2] = 0  # masked output channels
        model.features[3].weight[:, ::3] = 0  # and input slices
    batches = digits_data(seed=1)
    ours, ref = assert_same_as_neurobench(model, batches)
    assert ours["synops"] > ref["SynapticOperations"]["Effective_ACs"]  # ours count zeroed weights
    assert ref["ConnectionSparsity"] > 0


class MixedNet(nn.Module):
    """Grouped / strided / circular-padded convs, average pooling (non-binary input mid-network), a
    Conv1d, ReLU and a bias: the cases where NeuroBench's rules differ from dense counting."""

    def __init__(self):
        super().__init__()
        self.conv1 = layer.Conv2d(2, 4, 3, padding=1, groups=2)
        self.sn1 = neuron.IFNode(v_threshold=0.1)
        self.pool = layer.AvgPool2d(2)
        self.block = nn.Sequential(layer.Conv2d(4, 6, 3, stride=2, padding=1, padding_mode="circular"),
                                   neuron.LIFNode(v_threshold=0.05))
        self.conv1d = nn.Conv1d(6, 3, 2, padding=1)
        self.head = nn.Sequential(nn.Flatten(1), nn.Linear(15, 8), nn.ReLU(), nn.Linear(8, 3))
        functional.set_step_mode(self, "m")

    def forward(self, x):  # x: [T, B, 2, 8, 8] spikes
        s = self.block(self.pool(self.sn1(self.conv1(x))))
        t, b = s.shape[:2]
        z = self.conv1d(s.flatten(3).flatten(0, 1))  # plain torch module on [T*B, 6, 4]
        return self.head(z).view(t, b, -1).mean(0)


def test_mixed_network_time_major_equals_neurobench():
    torch.manual_seed(3)
    net = MixedNet()
    g = torch.Generator().manual_seed(4)
    x = (torch.rand(3, 10, 2, 8, 8, generator=g) < 0.3).float()  # event frames [T, B, ...]
    y = torch.randint(0, 3, (10,), generator=g)
    batches = [(x[:, :6], y[:6]), (x[:, 6:], y[6:])]
    ours, ref = assert_same_as_neurobench(net, batches, time_major=True)
    nb = ours["neurobench"]
    assert ours["samples"] == 10 and ours["time_steps"] == 3
    assert nb["layers"]["conv1"]["effective_acs"] > 0 and nb["layers"]["conv1"]["effective_macs"] == 0
    assert nb["layers"]["block.0"]["effective_macs"] > 0  # behind average pooling: MACs
    assert nb["layers"]["conv1d"]["effective_acs"] > 0 and nb["layers"]["conv1d"]["effective_macs"] == 0
    assert nb["layers"]["head.3"]["effective_macs"] > 0  # behind ReLU: MACs

"""Spiking neurons in the dependency graph: per-channel parameters and state are sliced."""
import torch
import torch.nn as nn
from spikingjelly.activation_based import layer, neuron

from conftest import outputs, train_steps
from sca_plugin import SCAPruner, is_spiking_neuron, register_neuron_class
from sca_plugin import neurons
from sca_plugin.neurons import NEURON_BASE_CLASSES, SpikingNeuronPruner


class GainLIF(neuron.LIFNode):
    """A user neuron with a learnable per-channel input gain (multi-step)."""

    def __init__(self, channels):
        super().__init__(step_mode="m", detach_reset=True)
        self.gain = nn.Parameter(torch.linspace(0.5, 2.0, channels))

    def forward(self, x):
        return super().forward(x * self.gain.view(1, 1, -1, 1, 1))


class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = layer.Conv2d(1, 6, 3, padding=1, bias=False, step_mode="m")
        self.bn1 = layer.BatchNorm2d(6, step_mode="m")
        self.sn1 = GainLIF(6)
        self.conv2 = layer.Conv2d(6, 8, 3, padding=1, bias=False, step_mode="m")
        self.bn2 = layer.BatchNorm2d(8, step_mode="m")
        self.sn2 = neuron.ParametricLIFNode(step_mode="m")
        self.flat = layer.Flatten(step_mode="m")
        self.classifier = layer.Linear(8 * 16, 10, step_mode="m")

    def forward(self, x):
        x = x.unsqueeze(0).repeat(2, 1, 1, 1, 1)
        x = self.sn2(self.bn2(self.conv2(self.sn1(self.bn1(self.conv1(x))))))
        return self.classifier(self.flat(x)).mean(0)


def test_user_neuron_subclass_with_per_channel_parameter_is_sliced():
    torch.manual_seed(0)
    net = Net()
    x, y = torch.rand(6, 1, 4, 4) * 3, torch.randint(0, 10, (6,))
    pruner = SCAPruner(net, x[:2], pruning_ratio=0.5, regrow_ratio=0.0, ignored_layers=[net.classifier],
                       global_pruning=False)
    train_steps(net, x, y, 2, pruner)
    pruner.update_masks()
    keep = pruner.masks[pruner.group_names().index("conv1")]
    gain = net.sn1.gain.detach().clone()
    before = outputs(net, x)
    pruner.finalize()
    assert torch.equal(net.sn1.gain, gain[keep])
    assert (outputs(net, x) - before).abs().max() <= 1e-5
    # Flatten -> Linear behind the PLIF neuron maps channel c to features c*16 .. c*16+15
    assert net.classifier.in_features == net.conv2.out_channels * 16


def test_every_spikingjelly_neuron_class_is_recognised():
    names = {c.__name__ for c in NEURON_BASE_CLASSES}
    assert {"IFNode", "LIFNode", "ParametricLIFNode", "KLIFNode", "QIFNode", "EIFNode", "IzhikevichNode"} <= names
    assert is_spiking_neuron(GainLIF(3))


def test_register_neuron_class_for_foreign_neurons():
    class Foreign(nn.Module):
        def forward(self, x):
            return (x > 1).float()

    assert not is_spiking_neuron(Foreign())
    register_neuron_class(Foreign)
    try:
        assert is_spiking_neuron(Foreign())
    finally:
        neurons._EXTRA_NEURON_CLASSES.remove(Foreign)


def test_neuron_pruner_resets_state_and_reports_channels():
    sn = neuron.LIFNode(step_mode="m")
    p = SpikingNeuronPruner()
    x = torch.rand(2, 3, 5, 4, 4)
    p.record(sn, x)
    sn(x)
    assert p.get_out_channels(sn) == 5 and isinstance(sn.v, torch.Tensor)
    p.prune_out_channels(sn, [1, 3])
    assert p.get_out_channels(sn) == 3 and sn.v == 0.0

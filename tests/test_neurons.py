"""Spiking neurons in the dependency graph: per-channel parameters and state are sliced."""
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import layer, neuron

from tests.helpers import outputs, train_steps
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


# --------------------------------------------------------------------------- tracing through neurons
class PlainNet(nn.Module):
    """conv-BN-neuron-conv-BN-neuron-flatten-linear; ``steps`` forwards of the body per call in
    single-step mode (0: the caller loops over time), the input repeated ``steps`` times in multi-step."""

    def __init__(self, make, mode, steps=2):
        super().__init__()
        self.mode, self.steps = mode, steps
        self.conv1 = layer.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn1 = layer.BatchNorm2d(4)
        self.sn1 = make()
        self.conv2 = layer.Conv2d(4, 4, 3, padding=1, bias=False)
        self.bn2 = layer.BatchNorm2d(4)
        self.sn2 = make()
        self.flat = layer.Flatten()
        self.fc = layer.Linear(4 * 16, 3)
        from spikingjelly.activation_based import functional
        functional.set_step_mode(self, mode)

    def body(self, x):
        return self.fc(self.flat(self.sn2(self.bn2(self.conv2(self.sn1(self.bn1(self.conv1(x))))))))

    def forward(self, x):
        if self.mode == "m":
            return self.body(x.unsqueeze(0).repeat(self.steps, 1, 1, 1, 1)).mean(0)
        if self.steps == 0:
            return self.body(x)
        return torch.stack([self.body(x) for _ in range(self.steps)]).mean(0)


@pytest.mark.parametrize("make, mode", [
    (lambda: neuron.ComplementaryLIFNode(), "s"),
    (lambda: neuron.ComplementaryLIFNode(), "m"),
    (lambda: neuron.SLTTLIFNode(), "s"),
], ids=["CLIF-s", "CLIF-m", "SLTT-s"])
@pytest.mark.parametrize("train_mode", [True, False])
def test_neurons_with_eval_mode_heaviside_are_traced(make, mode, train_mode):
    """These neurons fire a non-differentiable Heaviside in eval mode, the mode Torch-Pruning traces
    in, which cut the traced graph: regression for "no prunable channel groups: every convolution is
    ignored" (which was false). The trace now runs them in training mode; every flag is restored."""
    torch.manual_seed(0)
    net = PlainNet(make, mode)
    net.train(train_mode)
    x = torch.rand(2, 1, 4, 4) * 3
    pruner = SCAPruner(net, x, pruning_ratio=0.5, regrow_ratio=0.0, ignored_layers=[net.fc])
    assert sorted(pruner.group_names()) == ["conv1", "conv2"]
    assert all(m.training is train_mode for m in net.modules())


def test_first_step_blind_neuron_with_one_time_step_gets_the_true_reason():
    """A resonate-and-fire neuron's spike reacts to its input one step later: with T=1 no channel
    influences the output. Regression: the pruner said "every convolution is ignored"."""
    from tests.helpers import assert_unchanged, snapshot

    net = PlainNet(lambda: neuron.RAFNode(), "m", steps=1)
    x = torch.rand(2, 1, 4, 4) * 3
    snap = snapshot(net)
    with pytest.raises(ValueError, match=r"RAFNode: over the single time step.*at least 2 time steps"):
        SCAPruner(net, x, pruning_ratio=0.5, regrow_ratio=0.0, ignored_layers=[net.fc])
    assert_unchanged(net, snap)
    SCAPruner(PlainNet(lambda: neuron.RAFNode(), "m", steps=3), x, regrow_ratio=0.0)  # T=3 is fine


def test_untraced_neurons_are_named_with_the_reason():
    """A single-step model called once per time step by the user traces one step only: the graph
    cannot reach through RAF neurons. :func:`untraced_neurons_message` says so (for the pruner's
    "no prunable channel groups" error)."""
    from sca_plugin import SCAImportance, SpikingMetaPruner
    from sca_plugin.neurons import untraced_neurons_message

    net = PlainNet(lambda: neuron.RAFNode(), "s", steps=0)
    x = torch.rand(2, 1, 4, 4) * 3
    p = SpikingMetaPruner(net, x, SCAImportance(), ignored_layers=[net.fc])
    msg = untraced_neurons_message(net, p.DG, p.neuron_pruner)
    assert "RAFNode sn1" in msg and "RAFNode sn2" in msg and "next time step" in msg
    ok = PlainNet(lambda: neuron.RAFNode(), "s", steps=3)  # two RAF layers in a row: 3 steps
    p = SpikingMetaPruner(ok, x, SCAImportance(), ignored_layers=[ok.fc])
    assert untraced_neurons_message(ok, p.DG, p.neuron_pruner) is None


def test_neuron_with_a_batchnorm_inside_is_sliced():
    """MPBNLIFNode normalises its membrane potential with a BatchNorm submodule (vbn) whose
    per-channel parameters and running statistics must follow the pruned channels (regression:
    finalize() failed with "running_mean should contain 2 elements not 4")."""
    from tests.helpers import outputs64

    torch.manual_seed(0)
    from test_neuron_classes import excite

    net = PlainNet(lambda: neuron.MPBNLIFNode(out_channels=4, learnable_vth=True), "m")
    x, y = torch.rand(6, 1, 4, 4) * 3, torch.randint(0, 3, (6,))
    excite(net, x)  # eval-mode firing, else the comparison below is vacuous
    pruner = SCAPruner(net, x[:2], pruning_ratio=0.5, regrow_ratio=0.0, ignored_layers=[net.fc], global_pruning=False)
    train_steps(net, x, y, 2, pruner)
    pruner.update_masks()
    keep = pruner.masks[pruner.group_names().index("conv1")]
    vbn = net.sn1.vbn
    stats = {k: getattr(vbn, k).clone() for k in ("weight", "bias", "running_mean", "running_var")}
    a = net.sn1.a.detach().clone()
    masked = outputs64(net, x)
    assert not torch.allclose(masked, outputs64(net, x * 0.2))
    pruner.finalize()
    assert vbn.num_features == int(keep.sum()) == net.conv1.out_channels
    for k, before in stats.items():
        assert torch.equal(getattr(vbn, k).detach(), before[keep]), k
    assert torch.equal(net.sn1.a.detach(), a[keep])
    torch.testing.assert_close(outputs64(net, x), masked, atol=1e-6, rtol=0)


@pytest.mark.parametrize("mode", ["s", "m"])
def test_per_channel_thresholds_follow_the_pruned_channels(mode):
    """ActivationAwareIFNode with a threshold and an offset per channel (channel_dim=1 of a step's
    [B, C, H, W]): the buffers are sliced with the channels and the pruned model equals the masked one."""
    from tests.helpers import outputs64
    from test_neuron_classes import excite

    torch.manual_seed(0)
    make = lambda: neuron.ActivationAwareIFNode(v_threshold=torch.linspace(0.5, 1.5, 4),  # noqa: E731
                                                v_offset=torch.linspace(-0.2, 0.2, 4), channel_dim=1)
    net = PlainNet(make, mode)
    x, y = torch.rand(6, 1, 4, 4) * 3, torch.randint(0, 3, (6,))
    excite(net, x)  # eval-mode firing, else the comparison below is vacuous
    pruner = SCAPruner(net, x[:2], pruning_ratio=0.5, regrow_ratio=0.0, ignored_layers=[net.fc], global_pruning=False)
    train_steps(net, x, y, 1, pruner)
    pruner.update_masks()
    keep = pruner.masks[pruner.group_names().index("conv1")]
    threshold, offset = net.sn1.v_threshold.clone(), net.sn1.v_offset.clone()
    masked = outputs64(net, x)
    assert not torch.allclose(masked, outputs64(net, x * 0.2))  # the output depends on the input
    pruner.finalize()
    assert torch.equal(net.sn1.v_threshold, threshold[keep].to(net.sn1.v_threshold.dtype))
    assert torch.equal(net.sn1.v_offset, offset[keep].to(net.sn1.v_offset.dtype))
    torch.testing.assert_close(outputs64(net, x), masked, atol=1e-6, rtol=0)


def test_reference_models_take_simple_neuron_classes_with_the_sca_defaults():
    """``neuron=SimpleIFNode`` gets the SCA defaults (detach_reset, Sigmoid(alpha=4)) like
    ``neuron=IFNode``, and the multi-step model prunes (its potentials are replayed)."""
    from tests.helpers import outputs64
    from sca_plugin.models import digits_cnn

    torch.manual_seed(0)
    model = digits_cnn(neuron=neuron.SimpleIFNode, T=2, width=0.25)
    sns = [m for m in model.modules() if isinstance(m, neuron.SimpleIFNode)]
    assert sns and all(sn.detach_reset and sn.surrogate_function.alpha == 4.0 for sn in sns)
    x, y = torch.rand(4, 1, 8, 8) * 3, torch.randint(0, 10, (4,))
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.0, ignored_layers=[model.classifier])
    train_steps(model, x, y, 1, pruner)
    pruner.update_masks()
    masked = outputs64(model, x)
    pruner.finalize()
    torch.testing.assert_close(outputs64(model, x), masked, atol=1e-6, rtol=0)

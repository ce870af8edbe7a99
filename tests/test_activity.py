"""SCA scores against hand computations, and the recorder's contract (training only, O(C) memory)."""
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import layer, neuron, surrogate

from sca_plugin import SCAImportance, SpikingMetaPruner
from sca_plugin.activity import MembraneActivityRecorder
from sca_plugin.groups import group_members
from sca_plugin.neurons import charge_function_for, is_spiking_neuron


def hand_if(x_seq, threshold=1.0):
    """IF neuron, hard reset to 0: returns (H, S, V) over time by the textbook equations."""
    v = torch.zeros_like(x_seq[0])
    hs, ss, vs = [], [], []
    for x in x_seq:
        h = v + x
        s = (h >= threshold).float()
        v = h * (1 - s)
        hs.append(h), ss.append(s), vs.append(v)
    return torch.stack(hs), torch.stack(ss), torch.stack(vs)


def hand_lif(x_seq, tau=2.0, threshold=1.0):
    v = torch.zeros_like(x_seq[0])
    hs, ss, vs = [], [], []
    for x in x_seq:
        h = v + (x - v) / tau
        s = (h >= threshold).float()
        v = h * (1 - s)
        hs.append(h), ss.append(s), vs.append(v)
    return torch.stack(hs), torch.stack(ss), torch.stack(vs)


X_SEQ = torch.tensor([[[[0.6, -0.3], [1.4, 0.2]], [[2.5, -1.0], [0.1, 0.9]]],
                      [[[0.7, -0.2], [0.3, 1.1]], [[-0.5, 0.4], [0.8, 0.05]]],
                      [[[0.1, 0.9], [0.0, -2.0]], [[1.2, 1.2], [0.3, 0.3]]]]).unsqueeze(1).repeat(1, 2, 1, 1, 1)
# [T=3, B=2, C=2, H=2, W=2]; batch item 1 is scaled so that samples differ
X_SEQ[:, 1] *= 1.7


@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("definition", ["spike_plus_v", "membrane_l1"])
@pytest.mark.parametrize("kind", ["if", "lif"])
def test_scores_equal_hand_computation(step_mode, definition, kind):
    sn = (neuron.IFNode if kind == "if" else neuron.LIFNode)(step_mode=step_mode, surrogate_function=surrogate.Sigmoid())
    rec = MembraneActivityRecorder(definition).attach(nn.Sequential(sn))
    sn.train()
    if step_mode == "m":
        sn(X_SEQ)
    else:
        for x in X_SEQ:
            sn(x)
    h, s, v = (hand_if if kind == "if" else hand_lif)(X_SEQ)
    act = s + v.abs() if definition == "spike_plus_v" else h.abs()
    expected = act.transpose(0, 2).reshape(2, -1).mean(1)  # channel-wise mean over T, B, H, W
    torch.testing.assert_close(rec.score(sn), expected, rtol=1e-6, atol=1e-6)


def test_statistics_accumulate_over_batches_and_ignore_eval():
    sn = neuron.IFNode(step_mode="m")
    rec = MembraneActivityRecorder().attach(nn.Sequential(sn))
    sn.train()
    sn(X_SEQ); sn.reset()
    sn(X_SEQ * 0.5); sn.reset()
    sn.eval()
    sn(X_SEQ * 100); sn.reset()  # evaluation batches never count
    a = hand_if(X_SEQ)
    b = hand_if(X_SEQ * 0.5)
    per = lambda hsv: (hsv[1] + hsv[2].abs()).transpose(0, 2).reshape(2, -1)
    expected = torch.cat([per(a), per(b)], 1).mean(1)
    torch.testing.assert_close(rec.score(sn), expected)
    rec.reset()
    assert rec.score(sn) is None


def test_no_potential_sequence_outlives_the_forward():
    sn = neuron.LIFNode(step_mode="m")
    assert sn.store_v_seq is False
    MembraneActivityRecorder().attach(nn.Sequential(sn))
    sn.train()
    sn(X_SEQ)
    assert sn.store_v_seq is False and sn.v_seq is None


@pytest.mark.parametrize("cls, kwargs", [
    (neuron.IFNode, {}),
    (neuron.LIFNode, {"decay_input": True, "tau": 3.0}),
    (neuron.LIFNode, {"decay_input": False}),
    (neuron.ParametricLIFNode, {"decay_input": True, "init_tau": 4.0}),
    (neuron.ParametricLIFNode, {"decay_input": False}),
])
def test_charge_functions_match_spikingjelly(cls, kwargs):
    """With an unreachable threshold nothing fires, so SpikingJelly's post-reset V equals H."""
    sn = cls(v_threshold=1e9, step_mode="m", store_v_seq=True, v_reset=0.3, **kwargs)
    with torch.no_grad():
        sn(X_SEQ)
    v_prev = torch.cat([torch.full_like(X_SEQ[:1], 0.3), sn.v_seq[:-1]])
    torch.testing.assert_close(charge_function_for(sn)(sn, X_SEQ, v_prev), sn.v_seq)


class TwoNeuronNet(nn.Module):
    """conv channels feed two neuron layers: their group must average both."""

    def __init__(self):
        super().__init__()
        self.conv = layer.Conv2d(1, 3, 1, bias=False, step_mode="m")
        self.bn = layer.BatchNorm2d(3, step_mode="m")
        self.sn_a = neuron.IFNode(step_mode="m")
        self.sn_b = neuron.IFNode(step_mode="m", v_threshold=0.5)
        self.head = layer.Conv2d(3, 2, 1, step_mode="m")
        self.sn_c = neuron.IFNode(step_mode="m")

    def forward(self, x):
        y = self.bn(self.conv(x))
        return self.sn_c(self.head(self.sn_a(y) + self.sn_b(y)))


def test_group_score_averages_every_coupled_neuron():
    torch.manual_seed(0)
    net = TwoNeuronNet()
    x = torch.rand(3, 2, 1, 4, 4) * 3
    imp = SCAImportance()
    pruner = SpikingMetaPruner(net, x, imp, ignored_layers=[net.head])
    imp.attach(net)
    net.train()
    net(x)
    group = pruner.DG.get_pruning_group(net.conv, pruner.DG.get_pruner_of_module(net.conv).prune_out_channels, [0, 1, 2])
    assert set(group_members(group, is_spiking_neuron)) == {net.sn_a, net.sn_b}
    expected = (imp.recorder.score(net.sn_a) + imp.recorder.score(net.sn_b)) / 2
    torch.testing.assert_close(imp(group), expected)
    # and that equals the textbook IF dynamics on the BN output
    with torch.no_grad():
        net.train()
        y = net.bn(net.conv(x))
    ha, sa, va = hand_if(y)
    hb, sb, vb = hand_if(y, threshold=0.5)
    mean = lambda a: a.transpose(0, 2).reshape(3, -1).mean(1)
    torch.testing.assert_close(imp(group), (mean(sa + va.abs()) + mean(sb + vb.abs())) / 2, rtol=1e-5, atol=1e-6)


def test_membrane_l1_refuses_neurons_without_charge_function():
    class Weird(neuron.BaseNode):
        def single_step_functional_forward(self, inputs, states):
            return (inputs[0] > 0).float(), states

    with pytest.raises(ValueError, match="register_charge_function"):
        MembraneActivityRecorder("membrane_l1").attach(nn.Sequential(Weird()))


def test_unknown_definition():
    with pytest.raises(ValueError, match="spike_plus_v"):
        SCAImportance(definition="bogus")


# --------------------------------------------------------------------------- neurons without v_seq
@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("definition", ["spike_plus_v", "membrane_l1"])
@pytest.mark.parametrize("kind", ["if", "lif"])
def test_simple_neurons_score_like_the_textbook(step_mode, definition, kind):
    """SimpleIFNode / SimpleLIFNode keep no v_seq; in multi-step mode their potentials are replayed
    from the charge function, the spikes and the initial potential (regression: AttributeError
    'SimpleIFNode' object has no attribute 'v_seq' at the first training forward)."""
    sn = (neuron.SimpleIFNode(step_mode=step_mode, surrogate_function=surrogate.Sigmoid()) if kind == "if" else
          neuron.SimpleLIFNode(2.0, True, step_mode=step_mode, surrogate_function=surrogate.Sigmoid()))
    rec = MembraneActivityRecorder(definition).attach(nn.Sequential(sn))
    sn.train()
    for scale in (1.0, 0.5):  # two forwards (reset in between): statistics accumulate
        if step_mode == "m":
            sn(X_SEQ * scale)
        else:
            for x in X_SEQ * scale:
                sn(x)
        sn.reset()
    per = []
    for scale in (1.0, 0.5):
        h, s, v = (hand_if if kind == "if" else hand_lif)(X_SEQ * scale)
        per.append((s + v.abs() if definition == "spike_plus_v" else h.abs()).transpose(0, 2).reshape(2, -1))
    torch.testing.assert_close(rec.score(sn), torch.cat(per, 1).mean(1), rtol=1e-6, atol=1e-6)


def test_replay_starts_from_the_potential_left_by_the_previous_forward():
    """Without reset_net between forwards the neuron carries its potential on; the replay must too."""
    sn = neuron.SimpleIFNode(step_mode="m")
    ref = neuron.IFNode(step_mode="m")
    recs = [MembraneActivityRecorder().attach(nn.Sequential(m)) for m in (sn, ref)]
    for m in (sn, ref):
        m.train()
        m(X_SEQ)
        m(X_SEQ * 0.5)  # no reset: starts from the last potential of the first forward
    torch.testing.assert_close(recs[0].score(sn), recs[1].score(ref))


@pytest.mark.parametrize("cls", [neuron.LIFNode, neuron.ComplementaryLIFNode])
def test_no_state_sequence_outlives_the_forward(cls):
    sn = cls(step_mode="m")
    rec = MembraneActivityRecorder().attach(nn.Sequential(sn))
    sn.train()
    sn(X_SEQ)
    assert rec.score(sn) is not None
    if cls is neuron.ComplementaryLIFNode:  # its potentials come from store_state_seqs
        assert sn.store_state_seqs is False and sn.state_seqs is None
    else:
        assert sn.store_v_seq is False and sn.v_seq is None


class ChargeOverridingIF(neuron.SimpleIFNode):
    """Different dynamics under a class whose charge function is registered (SimpleIFNode's)."""

    def neuronal_charge(self, x):
        self.v = 0.5 * self.v + 2.0 * x


def test_subclass_with_other_dynamics_is_not_replayed_with_the_parents_charge():
    with pytest.raises(ValueError, match="ChargeOverridingIF.*keeps only the last step's membrane potential"):
        MembraneActivityRecorder().attach(nn.Sequential(ChargeOverridingIF(step_mode="m")))
    # single-step mode reads its own v after every step: fine
    sn = ChargeOverridingIF(step_mode="s")
    rec = MembraneActivityRecorder().attach(nn.Sequential(sn))
    sn.train()
    sn(X_SEQ[0])
    assert rec.score(sn) is not None
    # switched to multi-step after attaching: a clear error instead of a wrongly shaped score
    sn.reset()
    sn.step_mode = "m"
    with pytest.raises(RuntimeError, match="ChargeOverridingIF now runs in multi-step mode"):
        sn(X_SEQ)


def test_refusals_name_the_class_the_reason_and_the_alternative():
    with pytest.raises(ValueError) as info:
        MembraneActivityRecorder().attach(nn.Sequential(neuron.PSN(T=3), neuron.GatedLIFNode(T=3), neuron.IFNode()))
    msg = str(info.value)
    assert "PSN: it is a parallel spiking neuron" in msg and "GatedLIFNode: in multi-step mode" in msg
    assert "classes ['GatedLIFNode', 'PSN']:" in msg  # the supported IFNode is not listed
    assert msg.count("use ") >= 2


def test_registering_the_charge_equation_makes_a_simple_neuron_replayable():
    from sca_plugin import register_charge_function
    from sca_plugin import neurons as sca_neurons

    register_charge_function(ChargeOverridingIF, lambda m, x, v: 0.5 * v + 2.0 * x)
    try:
        scores = []
        for mode in ("m", "s"):
            sn = ChargeOverridingIF(step_mode=mode)
            rec = MembraneActivityRecorder().attach(nn.Sequential(sn))
            sn.train()
            if mode == "m":
                sn(X_SEQ)
            else:
                for x in X_SEQ:
                    sn(x)
            scores.append(rec.score(sn))
        torch.testing.assert_close(scores[0], scores[1])  # the replay equals the neuron's own steps
    finally:
        del sca_neurons._CHARGE_FUNCTIONS[ChargeOverridingIF]

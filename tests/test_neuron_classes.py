"""Every neuron class SpikingJelly exports, in both step modes, through the whole SCA pipeline.

The classes are enumerated from ``spikingjelly.activation_based.neuron`` itself, so a class added by
a SpikingJelly upgrade fails :func:`test_every_class_has_a_recipe_and_an_expected_outcome` until it
is given a recipe (constructor arguments) and an expected outcome here. Each (class, step mode)
either works -- the pruner is built, a training forward/backward gives SCA scores, the masks are
updated and ``finalize()`` removes channels with the pruned model's outputs equal to the masked
model's -- or the pruner's constructor refuses it with a message that names the class, the reason
and what to use instead, before anything is changed, or SpikingJelly itself refuses to build the
neuron in that mode.
"""
import inspect

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron, surrogate

from tests.helpers import assert_unchanged, outputs64, snapshot, train_steps
from sca_plugin import SCAPruner

C, T = 4, 2


def _spikingjelly_neuron_classes():
    return sorted((obj for _, obj in inspect.getmembers(neuron, inspect.isclass)
                   if issubclass(obj, nn.Module) and obj.__module__.startswith("spikingjelly.activation_based.neuron")),
                  key=lambda c: c.__name__)


CLASSES = _spikingjelly_neuron_classes()


def _table():
    return neuron.FewSpikeTable([1.0, 0.5], [1.0, 0.5], [1.0, 0.5])


def _flex_core(x, v):
    h = v + x
    s = surrogate.sigmoid.apply(h - 1.0, 4.0)
    return s, h * (1.0 - s)


#: constructor arguments of each class (callables are called once per neuron: fresh objects)
RECIPES = {
    "ActivationAwareIFNode": {}, "AdaptBaseNode": {}, "BaseNode": {}, "CUBALIFNode": {},
    "ComplementaryLIFNode": {}, "DSRIFNode": {"T": T}, "DSRLIFNode": {"T": T}, "EIFNode": {},
    "FewSpikeNode": {"table": _table}, "FlexSN": {"core": lambda: _flex_core, "num_states": 1},
    "GatedLIFNode": {"T": T, "inplane": C},
    "HGNode": {"tables": lambda: [_table(), _table()], "gate_thresholds": [0.5]},
    "HalfThresholdIFNode": {}, "IFNode": {},
    "ILCBaseNode": {"act_dim": 2, "dec_pop_dim": 2}, "ILCCUBALIFNode": {"act_dim": 2, "dec_pop_dim": 2},
    "ILCIFNode": {"act_dim": 2, "dec_pop_dim": 2}, "ILCLIFNode": {"act_dim": 2, "dec_pop_dim": 2},
    "ILIFNode": {}, "IzhikevichNode": {}, "KLIFNode": {},
    "LIAFNode": {"act": lambda: nn.ReLU(), "threshold_related": True}, "LIFNode": {},
    "MPBNBaseNode": {"out_channels": C}, "MPBNLIFNode": {"out_channels": C},
    "MaskedPSN": {"k": 2, "T": T}, "NoisyBaseNode": {"num_node": C, "T": T}, "NoisyCUBALIFNode": {"num_node": C, "T": T},
    "NoisyILCBaseNode": {"act_dim": 2, "dec_pop_dim": 2, "T": T},
    "NoisyILCCUBALIFNode": {"act_dim": 2, "dec_pop_dim": 2, "T": T},
    "NoisyNonSpikingBaseNode": {"num_node": C, "T": T}, "NoisyNonSpikingIFNode": {"num_node": C, "T": T},
    "NonSpikingBaseNode": {}, "NonSpikingIFNode": {}, "NonSpikingLIFNode": {},
    "OTTTLIFNode": {}, "OutlierAwareThresholdNode": {"table": _table, "outlier_table": _table, "split_threshold": 1.0},
    "PSN": {"T": T}, "ParametricLIFNode": {}, "QIFNode": {},
    "RAFNode": {"v_threshold": 0.5},
    "SLTTLIFNode": {},
    "STBIFNode": {"q_threshold": 1.0, "level": 4}, "SimpleBaseNode": {}, "SimpleIFNode": {},
    "SimpleLIFNode": {"tau": 2.0, "decay_input": True}, "SlidingPSN": {"k": 2}, "TernaryIFNode": {}, "TernaryLIFNode": {},
}

#: time steps of the test network: a resonate-and-fire neuron fires one step after its input, so
#: two RAF layers in a row need 3 steps before the output depends on the input at all
STEPS = {"RAFNode": 3}

WORKS = "works"
# refusals: (who, a phrase of the reason); the pruner's messages must also name the class and say what to use
ABSTRACT = ("pruner", "abstract base class")
NO_POTENTIAL = {
    "NonSpiking": ("pruner", "non-spiking read-out neuron"),
    "Noisy": ("pruner", "noisy exploration neuron"),
    "ILC": ("pruner", "inter-layer-connection neuron"),
    "PSN": ("pruner", "parallel spiking neuron"),
    "FewSpike": ("pruner", "few-spike coding neuron"),
    "DSR": ("pruner", "differentiable-spike-representation neuron"),
}
SJ_SINGLE_STEP_ONLY = ("spikingjelly", "single-step mode")  # SpikingJelly asserts step_mode == 's'
SJ_MULTI_STEP_ONLY = ("spikingjelly", "")  # SpikingJelly asserts step_mode == 'm'


def _both(outcome):
    return {"s": outcome, "m": outcome}


EXPECTED = {
    "ActivationAwareIFNode": _both(WORKS), "AdaptBaseNode": _both(ABSTRACT), "BaseNode": _both(ABSTRACT),
    "CUBALIFNode": _both(WORKS), "ComplementaryLIFNode": _both(WORKS),
    "DSRIFNode": {"s": SJ_MULTI_STEP_ONLY, "m": NO_POTENTIAL["DSR"]},
    "DSRLIFNode": {"s": SJ_MULTI_STEP_ONLY, "m": NO_POTENTIAL["DSR"]},
    "EIFNode": _both(WORKS), "FewSpikeNode": _both(NO_POTENTIAL["FewSpike"]),
    "FlexSN": _both(("pruner", "states are unnamed tensors")),
    "GatedLIFNode": {"s": SJ_MULTI_STEP_ONLY, "m": ("pruner", "keeps only the last step's membrane potential")},
    "HGNode": _both(NO_POTENTIAL["FewSpike"]), "HalfThresholdIFNode": _both(WORKS), "IFNode": _both(WORKS),
    "ILCBaseNode": _both(NO_POTENTIAL["ILC"]), "ILCCUBALIFNode": _both(NO_POTENTIAL["ILC"]),
    "ILCIFNode": _both(NO_POTENTIAL["ILC"]), "ILCLIFNode": _both(NO_POTENTIAL["ILC"]),
    "ILIFNode": _both(WORKS), "IzhikevichNode": _both(WORKS), "KLIFNode": _both(WORKS), "LIAFNode": _both(WORKS),
    "LIFNode": _both(WORKS), "MPBNBaseNode": _both(ABSTRACT), "MPBNLIFNode": _both(WORKS),
    "MaskedPSN": _both(NO_POTENTIAL["PSN"]), "NoisyBaseNode": _both(NO_POTENTIAL["Noisy"]),
    "NoisyCUBALIFNode": _both(NO_POTENTIAL["Noisy"]), "NoisyILCBaseNode": _both(NO_POTENTIAL["Noisy"]),
    "NoisyILCCUBALIFNode": _both(NO_POTENTIAL["Noisy"]), "NoisyNonSpikingBaseNode": _both(NO_POTENTIAL["NonSpiking"]),
    "NoisyNonSpikingIFNode": _both(NO_POTENTIAL["NonSpiking"]), "NonSpikingBaseNode": _both(NO_POTENTIAL["NonSpiking"]),
    "NonSpikingIFNode": _both(NO_POTENTIAL["NonSpiking"]), "NonSpikingLIFNode": _both(NO_POTENTIAL["NonSpiking"]),
    "OTTTLIFNode": {"s": ("pruner", "OTTT's online-learning neuron"), "m": SJ_SINGLE_STEP_ONLY},
    "OutlierAwareThresholdNode": _both(NO_POTENTIAL["FewSpike"]), "PSN": _both(NO_POTENTIAL["PSN"]),
    "ParametricLIFNode": _both(WORKS), "QIFNode": _both(WORKS), "RAFNode": _both(WORKS),
    "SLTTLIFNode": {"s": WORKS, "m": SJ_SINGLE_STEP_ONLY},
    "STBIFNode": _both(("pruner", "ternary quantisation neuron")), "SimpleBaseNode": _both(ABSTRACT),
    "SimpleIFNode": _both(WORKS), "SimpleLIFNode": _both(WORKS), "SlidingPSN": _both(NO_POTENTIAL["PSN"]),
    "TernaryIFNode": _both(WORKS), "TernaryLIFNode": _both(WORKS),
}


def make_neuron(cls, mode):
    kwargs = {k: (v() if callable(v) and not isinstance(v, type) else v) for k, v in RECIPES[cls.__name__].items()}
    if "step_mode" in inspect.signature(cls.__init__).parameters:
        kwargs["step_mode"] = mode
    return cls(**kwargs)


class Net(nn.Module):
    """Conv-BN-neuron-Conv-BN-neuron-Flatten-Linear on 4x4 inputs, T=2 (:data:`STEPS`); single-step mode loops the
    time steps inside the forward (as :class:`sca_plugin.models.SpikingNet` does)."""

    def __init__(self, cls, mode):
        super().__init__()
        self.mode = mode
        self.T = STEPS.get(cls.__name__, T)
        self.conv1 = layer.Conv2d(1, C, 3, padding=1, bias=False)
        self.bn1 = layer.BatchNorm2d(C)
        self.sn1 = make_neuron(cls, mode)
        self.conv2 = layer.Conv2d(C, C, 3, padding=1, bias=False)
        self.bn2 = layer.BatchNorm2d(C)
        self.sn2 = make_neuron(cls, mode)
        self.flat = layer.Flatten()
        self.fc = layer.Linear(C * 16, 3)
        functional.set_step_mode(self, mode)

    def body(self, x):
        return self.fc(self.flat(self.sn2(self.bn2(self.conv2(self.sn1(self.bn1(self.conv1(x))))))))

    def forward(self, x):
        if self.mode == "m":
            return self.body(x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)).mean(0)
        return torch.stack([self.body(x) for _ in range(self.T)]).mean(0)


def test_every_class_has_a_recipe_and_an_expected_outcome():
    names = {c.__name__ for c in CLASSES}
    assert len(names) >= 49  # SpikingJelly 2.0.0 exports 49 neuron classes
    missing = sorted(names - set(RECIPES)) + sorted(names - set(EXPECTED))
    assert not missing, f"new SpikingJelly neuron classes {missing}: add a recipe and an expected outcome here"
    assert set(RECIPES) == set(EXPECTED)


def excite(net, x):
    """Eval-mode BatchNorm statistics from ``x`` and positive BN shifts, so that the neurons fire in
    eval mode too (otherwise a silent network would make the outputs comparison vacuous)."""
    g = torch.Generator().manual_seed(2)
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    net.train()
    for m in bns:
        m.momentum = None  # cumulative average over the calibration pass
        m.reset_running_stats()
    with torch.no_grad():
        net(x)
    functional.reset_net(net)
    for m in bns:
        m.momentum = 0.1
        if m.affine and m.weight.shape == (C,):
            with torch.no_grad():
                m.weight.copy_(torch.rand(C, generator=g) + 0.75)
                m.bias.copy_(torch.rand(C, generator=g) * 0.8)


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 4, 4, generator=g) * 3, torch.randint(0, 3, (8,), generator=g)


@pytest.mark.parametrize("mode", ["s", "m"])
@pytest.mark.parametrize("cls", CLASSES, ids=lambda c: c.__name__)
def test_neuron_class_works_or_is_refused_clearly(cls, mode):
    expected = EXPECTED.get(cls.__name__, {}).get(mode)
    assert expected is not None, f"no expected outcome for {cls.__name__}"
    torch.manual_seed(0)
    if expected != WORKS and expected[0] == "spikingjelly":
        with pytest.raises(AssertionError, match=expected[1] or None):
            Net(cls, mode)
        return
    net = Net(cls, mode)
    x, y = _data()
    if expected != WORKS:
        snap = snapshot(net)
        with pytest.raises(ValueError) as info:
            SCAPruner(net, x[:2], pruning_ratio=0.5, regrow_ratio=0.25, ignored_layers=[net.fc])
        msg = str(info.value)
        assert cls.__name__ in msg and expected[1] in msg and "use " in msg, msg
        assert "\n" not in msg
        assert_unchanged(net, snap)  # refused before anything was attached or changed
        return

    excite(net, x)
    pruner = SCAPruner(net, x[:2], pruning_ratio=0.5, regrow_ratio=0.25, ignored_layers=[net.fc])
    assert all(m.training for m in net.modules())  # tracing's eval()/train() switches were undone
    train_steps(net, x, y, 1, pruner)
    for sn in (net.sn1, net.sn2):
        score = pruner.importance.recorder.score(sn)
        assert score is not None and score.shape == (C,) and torch.isfinite(score).all()
    pruner.update_masks()
    masked = outputs64(net, x)
    # the comparison below is not vacuous: the output depends on the input through the neurons
    assert not torch.allclose(masked, outputs64(net, x * 0.3))
    pruner.finalize()
    assert net.conv1.out_channels < C and net.conv2.out_channels < C
    torch.testing.assert_close(outputs64(net, x), masked, atol=1e-6, rtol=0)


@pytest.mark.parametrize("definition", ["spike_plus_v", "membrane_l1"])
@pytest.mark.parametrize("cls", [c for c in CLASSES if EXPECTED[c.__name__]["s"] == WORKS
                                 and EXPECTED[c.__name__]["m"] == WORKS], ids=lambda c: c.__name__)
def test_scores_agree_in_both_step_modes(cls, definition):
    """The same neuron on the same input sequence gets the same SCA score whether it runs step by
    step (its ``v`` after each step) or on the whole sequence (``v_seq``, ``state_seqs`` or the
    charge-function replay): each way of reading the potentials is checked against the other."""
    from sca_plugin.activity import MembraneActivityRecorder
    from sca_plugin.neurons import charge_function_for

    if definition == "membrane_l1" and charge_function_for(make_neuron(cls, "s")) is None:
        with pytest.raises(ValueError, match="register_charge_function"):
            MembraneActivityRecorder(definition).attach(nn.Sequential(make_neuron(cls, "s")))
        return

    g = torch.Generator().manual_seed(1)
    x_seq = (torch.rand(3, 2, C, 2, 2, generator=g) - 0.3) * 3
    scores = {}
    for mode in "sm":
        torch.manual_seed(0)
        sn = make_neuron(cls, mode)
        functional.set_step_mode(sn, mode)
        rec = MembraneActivityRecorder(definition).attach(nn.Sequential(sn))
        sn.train()
        with torch.no_grad():
            if mode == "m":
                sn(x_seq)
            else:
                for x in x_seq:
                    sn(x)
        scores[mode] = rec.score(sn)
        rec.detach()
    assert scores["s"] is not None and scores["s"].abs().sum() > 0
    torch.testing.assert_close(scores["m"], scores["s"], rtol=1e-5, atol=1e-6)

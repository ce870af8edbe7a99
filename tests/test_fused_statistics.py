"""Issue 14: the SCA statistics are fused into a step-by-step replay instead of reading the stored
membrane trace (``store_v_seq``). The scores must be the ones the trace gives (computed here the old
way, from ``v_seq`` with ``store_v_seq=True``), for both definitions, both step modes and every
neuron class the recorder replays, eager and under torch.compile; and the pruner's training forward
must no longer make the neurons store their potential sequence."""
import copy

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, neuron, surrogate

from sca_plugin import SCAPruner
from sca_plugin.activity import MembraneActivityRecorder, potential_sequence_source
from sca_plugin.models import digits_cnn
from sca_plugin.neurons import charge_function_for

T, B, C = 4, 3, 5


def _x(seed=0, scale=2.5, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return ((torch.rand(T, B, C, 3, 3, generator=g) - 0.35) * scale).to(dtype)


# (name, factory): every class whose multi-step statistics are now replayed, with hard and soft reset
NEURONS = [
    ("IF", lambda **k: neuron.IFNode(surrogate_function=surrogate.Sigmoid(), **k)),
    ("IF-soft", lambda **k: neuron.IFNode(v_reset=None, v_threshold=0.8, **k)),
    ("IF-reset0.2", lambda **k: neuron.IFNode(v_reset=0.2, **k)),
    ("LIF", lambda **k: neuron.LIFNode(tau=3.0, **k)),
    ("LIF-nodecay", lambda **k: neuron.LIFNode(decay_input=False, tau=1.25, v_threshold=0.5, **k)),
    ("LIF-soft", lambda **k: neuron.LIFNode(v_reset=None, **k)),
    ("PLIF", lambda **k: neuron.ParametricLIFNode(init_tau=2.5, **k)),
    ("PLIF-soft-nodecay", lambda **k: neuron.ParametricLIFNode(v_reset=None, decay_input=False, **k)),
    ("SimpleIF", lambda **k: neuron.SimpleIFNode(**k)),
    ("SimpleLIF", lambda **k: neuron.SimpleLIFNode(tau=2.0, decay_input=True, **k)),
]


def _old_scores(make, x_seq, definition, v0=None):
    """The scores the way they were computed before issue 14: the post-reset potentials from the
    neuron's stored trace (``v_seq`` with ``store_v_seq=True``; the ``Simple*`` neurons store none, so
    their ``v`` after each single step, which is what the trace holds), the pre-reset potentials
    recomputed with the charge function from ``V[t-1]``."""
    sn = make(step_mode="s")
    vs, ss = [], []
    with torch.no_grad():
        if v0 is not None:
            sn.v = v0.clone()
        v_init = sn.v if isinstance(sn.v, torch.Tensor) else torch.full_like(x_seq[0], float(sn.v))
        if isinstance(sn, neuron.BaseNode):  # the trace itself
            sn.step_mode, sn.store_v_seq = "m", True
            ss, vs = sn(x_seq), sn.v_seq
        else:
            for x in x_seq:
                ss.append(sn(x))
                vs.append(sn.v.clone())
            ss, vs = torch.stack(ss), torch.stack(vs)
        if definition == "spike_plus_v":
            act = ss + vs.abs()
        else:
            v_prev = torch.cat([v_init.unsqueeze(0), vs[:-1]])
            act = charge_function_for(sn)(sn, x_seq, v_prev).abs()
    return act.transpose(0, 2).reshape(act.shape[2], -1).mean(1)


def _new_scores(make, x_seq, definition, mode, fused=True, v0=None):
    sn = make(step_mode=mode)
    rec = MembraneActivityRecorder(definition)
    rec.fused = fused
    rec.attach(nn.Sequential(sn))
    sn.train()
    if v0 is not None:
        sn.v = v0.clone()
    x_seq = x_seq.clone().requires_grad_(True)  # a training forward: autograd on
    out = sn(x_seq) if mode == "m" else torch.stack([sn(x) for x in x_seq])
    out.sum().backward()
    if mode == "m" and isinstance(sn, neuron.BaseNode):
        assert sn.store_v_seq is False and sn.v_seq is None
    return rec.score(sn)


@pytest.mark.parametrize("definition", ["spike_plus_v", "membrane_l1"])
@pytest.mark.parametrize("mode", ["m", "s"])
@pytest.mark.parametrize("name, make", NEURONS, ids=[n for n, _ in NEURONS])
def test_fused_scores_equal_the_trace_scores(name, make, mode, definition):
    x_seq = _x()
    if mode == "m":
        assert potential_sequence_source(make(step_mode="m")) == "replay"
    expected = _old_scores(make, x_seq, definition)
    assert expected.abs().sum() > 0
    torch.testing.assert_close(_new_scores(make, x_seq, definition, mode), expected, rtol=1e-6, atol=1e-6)
    if mode == "m" and name.startswith(("IF", "LIF", "PLIF")):  # the kept trace path gives them too
        torch.testing.assert_close(_new_scores(make, x_seq, definition, mode, fused=False), expected,
                                   rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("definition", ["spike_plus_v", "membrane_l1"])
@pytest.mark.parametrize("index", [0, 1, 2, 3], ids=[NEURONS[i][0] for i in range(4)])
def test_replay_starts_from_the_carried_potential(definition, index):
    """No reset between forwards: the replay starts from the potential the neuron kept (IF: the
    in-place charge starts from a tensor, hard and soft reset; LIF: the built-in charge)."""
    make = NEURONS[index][1]
    v0 = _x(seed=3)[0] * 0.4
    torch.testing.assert_close(_new_scores(make, _x(), definition, "m", v0=v0),
                               _old_scores(make, _x(), definition, v0=v0), rtol=1e-6, atol=1e-6)


class _InputIsPotentialIF(neuron.SimpleIFNode):
    """A registered charge that returns its input tensor itself (H = X): the replay must not reset
    it in place."""


@pytest.mark.parametrize("definition", ["spike_plus_v", "membrane_l1"])
@pytest.mark.parametrize("kind", ["IF", "IF-soft", "LIF", "input-as-potential"])
def test_replay_writes_into_nothing_of_the_forward(kind, definition):
    """The replay works in place on its own buffers only: the neuron's input, its output spikes and
    the carried potential it started from are unchanged, and the spikes are those of the same
    neuron without the recorder."""
    from sca_plugin import neurons as sca_neurons

    makes = {"IF": NEURONS[0][1], "IF-soft": NEURONS[1][1], "LIF": NEURONS[3][1],
             "input-as-potential": lambda **k: _InputIsPotentialIF(**k)}
    sca_neurons.register_charge_function(_InputIsPotentialIF, lambda m, x, v: x)
    try:
        bare, sn = makes[kind](step_mode="m"), makes[kind](step_mode="m")
        rec = MembraneActivityRecorder(definition).attach(nn.Sequential(sn))
        assert potential_sequence_source(sn) == "replay"
        v0 = _x(seed=5)[0] * 0.3
        bare.v, sn.v = v0.clone(), v0
        x_seq = _x(seed=6)
        x_in = x_seq.clone().requires_grad_(True)
        out = sn(x_in)
        out.sum().backward()  # autograd's saved tensors were not modified in place
        assert torch.equal(x_in.detach(), x_seq) and torch.equal(v0, _x(seed=5)[0] * 0.3)
        assert torch.equal(out.detach(), bare(x_seq.clone()).detach())
        assert rec.score(sn) is not None and torch.isfinite(rec.score(sn)).all()
    finally:
        del sca_neurons._CHARGE_FUNCTIONS[_InputIsPotentialIF]


def test_stale_potential_is_reinitialised_like_spikingjelly():
    """A potential of another batch size left from an earlier forward: SpikingJelly starts from
    v_reset, and so does the replay (fused and trace recorders agree)."""
    scores = []
    for fused in (True, False):
        sn = neuron.IFNode(step_mode="m", v_reset=0.1)
        rec = MembraneActivityRecorder()
        rec.fused = fused
        rec.attach(nn.Sequential(sn))
        sn.train()
        with torch.no_grad():
            sn(_x(seed=1)[:, :2])
            rec.reset()
            sn(_x(seed=2))  # batch 3 after batch 2, no reset_net
        scores.append(rec.score(sn))
    torch.testing.assert_close(scores[0], scores[1], rtol=1e-6, atol=1e-6)


def test_other_dtypes_use_the_trace_with_the_same_scores():
    """float64 inputs (like a GPU kernel, not replayed) take the trace path: same scores."""
    make = NEURONS[0][1]
    x64 = _x(dtype=torch.float64)
    torch.testing.assert_close(_new_scores(make, x64, "spike_plus_v", "m"),
                               _old_scores(make, x64, "spike_plus_v").float(), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["if", "lif"])
def test_compiled_training_forward_gives_the_trace_scores(kind):
    torch._dynamo.reset()
    make = NEURONS[0][1] if kind == "if" else NEURONS[3][1]
    x_seq = _x(seed=4)
    sn = make(step_mode="m")
    model = nn.Sequential(sn)
    recs = {d: MembraneActivityRecorder(d).attach(model) for d in ("spike_plus_v", "membrane_l1")}
    net = torch.compile(model, dynamic=False)
    model.train()
    for _ in range(2):  # two training forwards: the accumulators are updated in the compiled graph
        xr = x_seq.clone().requires_grad_(True)
        net(xr).sum().backward()
        functional.reset_net(model)
    for d, rec in recs.items():
        assert float(rec.counts[sn]) == 2 * T * B * 9
        torch.testing.assert_close(rec.score(sn), _old_scores(make, x_seq, d), rtol=1e-5, atol=1e-6)


def _store_flags_seen_in_forward(fused: bool) -> list:
    """Build SCAPruner on digits_cnn, run one training step, and note each neuron's store_v_seq as
    its forward runs (a pre-hook registered after the recorder's)."""
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.25)
    x, y = torch.rand(8, 1, 8, 8) * 2, torch.randint(0, 10, (8,))
    pruner = SCAPruner(model, x[:2], ignored_layers=[model.classifier], pruning_ratio=0.5)
    pruner.importance.recorder.fused = fused
    seen = []
    for m in model.modules():
        if isinstance(m, neuron.BaseNode):
            m.register_forward_pre_hook(lambda mod, args: seen.append(mod.store_v_seq))
            m.register_forward_hook(lambda mod, args, out: seen.append(mod.v_seq is not None))
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    opt.step()
    functional.reset_net(model)
    assert all(pruner.importance.recorder.score(m) is not None for m in pruner.importance.recorder.sums)
    return seen


def test_training_forward_does_not_store_the_potential_sequence():
    seen = _store_flags_seen_in_forward(fused=True)
    assert seen and not any(seen)
    assert any(_store_flags_seen_in_forward(fused=False))  # the check sees the trace where it is stored


def test_trace_kept_for_classes_that_need_it():
    """Neurons without a replay keep reading their stored sequence (ComplementaryLIF: state_seqs;
    another BaseNode: v_seq)."""
    assert potential_sequence_source(neuron.ComplementaryLIFNode(step_mode="m")) == "state_seqs"
    assert potential_sequence_source(neuron.QIFNode(step_mode="m")) == "v_seq"

    class OwnForward(neuron.LIFNode):
        def single_step_functional_forward(self, inputs, states, **kwargs):
            return super().single_step_functional_forward(inputs, states, **kwargs)

    assert potential_sequence_source(OwnForward(step_mode="m")) == "v_seq"  # not replayed with LIF's charge
    sn = copy.deepcopy(neuron.ComplementaryLIFNode(step_mode="m"))
    rec = MembraneActivityRecorder().attach(nn.Sequential(sn))
    sn.train()
    sn(_x())
    assert rec.score(sn) is not None and sn.state_seqs is None

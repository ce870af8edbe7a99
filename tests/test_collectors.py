"""The statistics-collector protocol (sca_plugin.collectors): SpikingJelly's monitor lifecycle for
the activity recorder and the regrowth gradients, and a pruner that handles any collector an
importance brings without knowing its type."""
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from spikingjelly.activation_based import functional

from sca_plugin import SCAImportance, SCAPruner
from sca_plugin.activity import MembraneActivityRecorder
from sca_plugin.collectors import StatisticsCollector
from sca_plugin.models import digits_cnn
from sca_plugin.neurons import is_spiking_neuron
from sca_plugin.regrowth import GradientMagnitudes
from tests.helpers import train_steps


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _model():
    torch.manual_seed(0)
    return digits_cnn(T=2, width=0.5)


def _forward(model, x):
    model.train()
    out = model(x)
    functional.reset_net(model)
    return out


def test_recorder_lifecycle_attach_disable_enable_reset_detach(digits_batch):
    x, _ = digits_batch
    model = _model()
    bare = _hooks(model)
    rec = MembraneActivityRecorder()
    neuron = next(m for m in model.modules() if is_spiking_neuron(m))
    with rec.attach(model) as attached:
        assert attached is rec and rec.is_attached and _hooks(model) > bare
        with pytest.raises(RuntimeError, match="already attached to a model; call detach"):
            rec.attach(model)
        _forward(model, x[:4])
        seen = float(rec.counts[neuron])
        assert seen > 0 and rec.score(neuron) is not None
        rec.disable()
        assert not rec.is_enabled()
        _forward(model, x[:4])
        assert float(rec.counts[neuron]) == seen  # paused: hooks stay, nothing recorded
        rec.enable()
        _forward(model, x[:4])
        assert float(rec.counts[neuron]) == 2 * seen
        rec.reset()
        assert rec.score(neuron) is None
    assert not rec.is_attached and _hooks(model) == bare  # the context manager detached
    rec.close()  # idempotent
    _forward(model, x[:4])
    assert rec.score(neuron) is None
    rec.attach(model).detach()  # attachable again


def test_gradient_collector_records_only_while_attached_and_enabled(digits_batch):
    x, y = digits_batch
    model = _model()
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    grads = GradientMagnitudes()
    with pytest.raises(ValueError, match=r"needs the BatchNorms"):
        grads.attach(model)
    assert not grads.is_attached

    def step():
        loss = nn.functional.cross_entropy(_forward(model, x[:8]), y[:8])
        loss.backward()

    grads.attach(model, modules=bns)
    step()
    assert grads.counts == {bn: 1 for bn in bns}
    grads.disable()
    step()
    assert grads.counts == {bn: 1 for bn in bns}
    grads.enable()
    grads.detach()
    step()
    assert grads.counts == {bn: 1 for bn in bns} and not grads.is_attached  # hooks gone
    grads.reset()
    assert not grads


class _CallCounter(StatisticsCollector):
    """Counts training forwards of every convolution: a collector the pruner has never heard of."""

    name = "calls"

    def __init__(self):
        super().__init__()
        self.calls = {}

    def _install(self, model, modules):
        return [m.register_forward_hook(self._hook) for m in model.modules() if isinstance(m, nn.Conv2d)]

    def _hook(self, module, args, out):
        if self.enabled and module.training:
            self.calls[module] = self.calls.get(module, 0) + 1

    def reset(self):
        self.calls.clear()

    def state_dict(self, names):
        return {names[m]: n for m, n in self.calls.items()}

    def load_state_dict(self, state, modules, device=None):
        self.calls = {modules[n]: c for n, c in state.items()}


class _ByCalls(tp.importance.Importance):
    """L1 magnitude, with a collector attached (its statistics only need to be gathered)."""

    def __init__(self):
        self.counter = _CallCounter()
        self.l1 = tp.importance.GroupMagnitudeImportance(p=1)

    @property
    def collectors(self):
        return (self.counter,)

    def __call__(self, group):
        return self.l1(group)


def test_pruner_attaches_resets_saves_and_removes_any_collector_of_its_importance(digits_batch):
    x, y = digits_batch
    model = _model()
    bare = _hooks(model)
    imp = _ByCalls()
    pruner = SCAPruner(model, x[:2], importance=imp, ignored_layers=[model.classifier], pruning_ratio=0.5)
    assert imp.counter.is_attached and imp.counter in pruner.collectors
    assert pruner._growth in pruner.collectors and pruner._growth.is_attached  # dynamic phase of a regrowing run
    train_steps(model, x, y, 2, pruner)
    assert imp.counter.calls and all(n == 2 for n in imp.counter.calls.values())
    saved = pruner.state_dict()
    assert saved["calls"] == {pruner.module_names[m]: 2 for m in imp.counter.calls}
    pruner.update_masks()
    assert imp.counter.calls == {} and not pruner._growth  # every collector reset after the update
    with pytest.raises(ValueError, match="already attached to a model"):
        SCAPruner(model, x[:2], importance=imp, ignored_layers=[model.classifier])
    pruner.fix_masks()
    assert not pruner._growth.is_attached  # regrowth gradients only while masks change
    pruner.remove()
    assert not any(c.is_attached for c in pruner.collectors) and _hooks(model) == bare


def test_collector_state_round_trips_through_a_new_pruner(digits_batch):
    x, y = digits_batch

    def build():
        model = _model()
        imp = _ByCalls()
        return model, imp, SCAPruner(model, x[:2], importance=imp, ignored_layers=[model.classifier])

    model, imp, pruner = build()
    train_steps(model, x, y, 3, pruner)
    state = pruner.state_dict()
    model2, imp2, pruner2 = build()
    pruner2.load_state_dict(state)
    assert {pruner2.module_names[m]: n for m, n in imp2.counter.calls.items()} == state["calls"]
    assert {pruner2.module_names[m] for m in pruner2._growth.sums} == set(state["growth"])
    bad = {**state, "calls": {"no.such.layer": 1}}
    with pytest.raises(ValueError, match="layers this model does not have: \\['no.such.layer'\\]"):
        pruner2.load_state_dict(bad)


def test_sca_importance_lists_its_recorder_as_its_collector():
    imp = SCAImportance()
    assert imp.collectors == (imp.recorder,) and isinstance(imp.recorder, StatisticsCollector)

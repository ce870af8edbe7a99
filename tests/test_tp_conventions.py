"""Torch-Pruning's own conventions with SCAImportance (issue 12, item 8): an unrepaired multi-step
graph is refused before anything is pruned, the iterative loop (iterative_steps > 1) works, and
SpikingMetaPruner leaves the caller's train/eval mode as it was."""
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
import torch_pruning as tp
from spikingjelly.activation_based import functional

from sca_plugin import SCAImportance, SpikingMetaPruner, count_macs, repair_time_dimension, spiking_neuron_pruners
from sca_plugin.models import digits_cnn


def _data():
    g = torch.Generator().manual_seed(0)
    return torch.rand(8, 1, 8, 8, generator=g) * 2, torch.randint(0, 10, (8,), generator=g)


def _train_forward(model, x, y):
    model.train()
    F.cross_entropy(model(x), y).backward()
    functional.reset_net(model)


def _widths(model):
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_unrepaired_multi_step_graph_is_refused_before_pruning():
    x, y = _data()
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    imp = SCAImportance().attach(model)
    pruner = tp.pruner.MetaPruner(model, x[:2], importance=imp, pruning_ratio=0.5, ignored_layers=[model.classifier],
                                  customized_pruners=spiking_neuron_pruners(model, x[:2]))
    _train_forward(model, x, y)
    with pytest.raises(RuntimeError, match=r"not repaired .*repair_time_dimension\(pruner.DG\)"):
        pruner.step()
    assert _widths(model) == [8, 16, 32]
    # the documented recipe works
    model = digits_cnn(T=2, width=0.5)
    imp = SCAImportance().attach(model)
    pruner = tp.pruner.MetaPruner(model, x[:2], importance=imp, pruning_ratio=0.5, ignored_layers=[model.classifier],
                                  customized_pruners=spiking_neuron_pruners(model, x[:2]))
    repair_time_dimension(pruner.DG)
    _train_forward(model, x, y)
    pruner.step()
    assert _widths(model) == [4, 8, 16]


def test_iterative_steps_with_sca_importance_keep_the_surviving_statistics():
    x, y = _data()
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    imp = SCAImportance().attach(model)
    model.train()
    pruner = SpikingMetaPruner(model, x[:2], imp, pruning_ratio=0.5, iterative_steps=2, ignored_layers=[model.classifier])
    assert model.training  # the caller's mode is restored after tracing
    widths = []
    for _ in range(2):
        _train_forward(model, x, y)  # failed on the second step: statistics shaped for the old width
        pruner.step()
        widths.append(_widths(model))
    _train_forward(model, x, y)
    assert widths == [[6, 12, 24], [4, 8, 16]]
    neuron = model.features[2]
    assert imp.recorder.score(neuron).shape == (4,)


def test_count_macs_counts_what_torch_pruning_misses():
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    x = torch.rand(1, 1, 8, 8)
    ops, params = tp.utils.count_ops_and_params(model, x)
    assert ops == 0 and params > 0  # Torch-Pruning's counter does not see SpikingJelly's layers
    functional.reset_net(model)
    macs = count_macs(model, x)
    assert macs["per_step"] > 0 and macs["total"] == 2 * macs["per_step"]

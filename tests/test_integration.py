"""SCA inside Torch-Pruning's own pruners, and the graph repair that makes multi-step nets prunable."""

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from spikingjelly.activation_based import functional

from sca_plugin import SCAImportance, SpikingMetaPruner, is_spiking_neuron, repair_time_dimension, spiking_neuron_pruners
from sca_plugin.models import preact_resnet18, resnet18, vgg16


@pytest.mark.parametrize("use_helper", [True, False])
def test_sca_importance_in_torch_pruning_one_shot_pruner(use_helper):
    torch.manual_seed(0)
    model = resnet18(width=0.125, T=2)
    x = torch.rand(6, 3, 8, 8) * 3
    imp = SCAImportance().attach(model)
    model.train()
    for _ in range(2):
        model(x)
        functional.reset_net(model)
    if use_helper:
        pruner = SpikingMetaPruner(model, x[:2], importance=imp, pruning_ratio=0.5, global_pruning=False,
                                   ignored_layers=[model.classifier], root_module_types=[nn.Conv2d])
    else:  # plain Torch-Pruning plus the two public helpers
        pruner = tp.pruner.MetaPruner(model, x[:2], importance=imp, pruning_ratio=0.5, global_pruning=False,
                                      ignored_layers=[model.classifier], root_module_types=[nn.Conv2d],
                                      customized_pruners=spiking_neuron_pruners(model, x[:2]))
        repair_time_dimension(pruner.DG)
    groups = list(pruner.DG.get_all_groups(ignored_layers=pruner.ignored_layers, root_module_types=[nn.Conv2d]))
    roots = [g[0].dep.target.module for g in groups]
    scores = [imp(g) for g in groups]
    # per-layer ranking: each group loses its int(n/2) lowest-SCA channels
    survivors = [sorted(torch.argsort(s)[len(s) - int(len(s) * 0.5):].tolist()) for s in scores]
    weights = [r.weight.detach().clone() for r in roots]
    neurons = [m for m in model.modules() if is_spiking_neuron(m) and imp.recorder.score(m) is not None]
    neuron_scores = {m: imp.recorder.score(m).clone() for m in neurons}
    pruner.step()
    # Torch-Pruning removed the lowest-SCA channels: each root keeps exactly its above-threshold filters
    exact = 0
    for root, w, keep in zip(roots, weights, survivors):
        assert root.out_channels == len(keep)
        if root.in_channels == w.shape[1]:  # input side untouched: the kept filters are exactly these
            assert torch.equal(root.weight, w[keep])
            exact += 1
    assert exact >= 1
    # the statistics follow the pruning (Torch-Pruning's iterative loop): each neuron keeps exactly the
    # scores of its surviving channels, and training goes on
    sliced = 0
    for group, keep in zip(groups, survivors):
        for dep, _ in group:
            m = dep.target.module
            if m in neuron_scores and neuron_scores[m].numel() == len(scores[groups.index(group)]):
                assert torch.equal(imp.recorder.score(m), neuron_scores[m][keep])
                sliced += 1
    assert sliced >= 1
    model.train()
    assert model(x).shape == (6, 10)
    imp.detach()
    functional.reset_net(model)


@pytest.mark.parametrize("build, size", [(lambda: vgg16(width=0.125, T=3), 16),
                                          (lambda: preact_resnet18(width=0.125, T=3), 8)])
def test_plain_torch_pruning_breaks_multistep_graphs_that_the_repair_fixes(build, size):
    """Documents root causes 1-3: without the repair, pruning a multi-step net breaks it."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, size, size)
    broken = build()
    pruner = tp.pruner.MetaPruner(broken, x, importance=tp.importance.RandomImportance(), pruning_ratio=0.5,
                                  ignored_layers=[broken.classifier],
                                  customized_pruners=spiking_neuron_pruners(broken, x))
    pruner.step()
    functional.reset_net(broken)
    with pytest.raises(RuntimeError):
        broken(x)
    fixed = build()
    pruner = SpikingMetaPruner(fixed, x, importance=tp.importance.RandomImportance(), pruning_ratio=0.5,
                               ignored_layers=[fixed.classifier])
    pruner.step()
    functional.reset_net(fixed)
    assert fixed(x).shape == (2, 10)


def test_tracing_restores_training_mode_and_state():
    model = resnet18(width=0.125, T=2)
    model.train()
    SpikingMetaPruner(model, torch.rand(2, 3, 8, 8), importance=tp.importance.MagnitudeImportance(),
                      ignored_layers=[model.classifier])
    assert all(m.training for m in model.modules())

"""Helpers shared by the tests (imported as ``tests.helpers``; fixtures live in conftest.py)."""
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional


def train_steps(model, x, y, steps=2, pruner=None, lr=0.05, optimizer=None):
    """A few plain SGD steps (the user's loop with the SCA lines)."""
    optimizer = optimizer or torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    model.train()
    for _ in range(steps):
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        if pruner is not None:
            pruner.regularize(model)
        optimizer.step()
        functional.reset_net(model)
    return optimizer


def outputs(model, x):
    """Eval-mode output with fresh neuron state (the invariant's comparison)."""
    was = model.training
    model.eval()
    functional.reset_net(model)
    with torch.no_grad():
        out = model(x).clone()
    functional.reset_net(model)
    model.train(was)
    return out


def assert_not_silent(out, what="the network"):
    """``out`` (batch first) differs between samples: a network silent at some layer gives every
    sample the same output (the classifier's bias), which would make an output comparison vacuous.
    Needs at least two different inputs in the batch."""
    flat = out.reshape(out.shape[0], -1)
    assert flat.shape[0] >= 2, "give at least two different inputs to check that the network responds to them"
    assert (flat - flat[:1]).abs().max() > 0, f"{what} gives every input the same output (silent): the comparison would prove nothing"


def excite(model, x, seed=0):
    """Eval-mode BatchNorm statistics from ``x`` and positive shifts, so that every layer spikes
    (a freshly initialised deep SNN is often silent in eval mode, which would make comparisons vacuous)."""
    g = torch.Generator().manual_seed(seed)
    model.train()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = None  # cumulative average over the calibration pass
            m.reset_running_stats()
    with torch.no_grad():
        model(x)
    functional.reset_net(model)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
            with torch.no_grad():
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 0.5)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.8)
    model.eval()
    return model


def snapshot(model):
    """Everything a failed call must leave untouched."""
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "training": [m.training for m in model.modules()],
        "hooks": sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()),
        "params": [p for p in model.parameters()],
    }


def assert_unchanged(model, snap):
    now = snapshot(model)
    assert now["state"].keys() == snap["state"].keys()
    for k in snap["state"]:
        assert torch.equal(now["state"][k], snap["state"][k]), k
    assert now["training"] == snap["training"]
    assert now["hooks"] == snap["hooks"]
    assert all(a is b for a, b in zip(now["params"], snap["params"]))


def outputs64(model, x):
    """Eval-mode float64 output of a copy of ``model`` with fresh neuron state."""
    import copy

    m = copy.deepcopy(model).double().eval()
    functional.reset_net(m)
    with torch.no_grad():
        return m(x.double())


def masked_copy(model, masks):
    """A copy of ``model`` with NNI-style ``{module: {target: mask}}`` multiplied into its parameters."""
    import copy

    ref = copy.deepcopy(model)
    with torch.no_grad():
        for name, targets in masks.items():
            module = ref.get_submodule(name)
            for target, mask in targets.items():
                t = getattr(module, target, None)
                if mask is not None and t is not None:
                    t.mul_(mask.to(t.dtype))
    return ref


def trained_digits_pruner(digits_batch, **kw):
    """A small digits_cnn with an SCAPruner after two training steps and one mask update."""
    from sca_plugin import SCAPruner
    from sca_plugin.models import digits_cnn

    x, y = digits_batch
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    pruner = SCAPruner(model, x[:2], ignored_layers=[model.classifier], pruning_ratio=0.5, **kw)
    train_steps(model, x, y, 2, pruner)
    pruner.update_masks()
    return model, pruner


def nni_evaluator(model, x, y, lr=0.05, momentum=0.9, dummy_input=None):
    """An NNI ``TorchEvaluator`` that trains ``model`` on the one batch ``(x, y)`` for ``max_steps``."""
    import nni
    from nni.compression import TorchEvaluator

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        for _ in range(max_steps):
            loss = training_step((x, y), model)
            optimizers.zero_grad()
            loss.backward()
            optimizers.step()
            functional.reset_net(model)

    return TorchEvaluator(training_func, nni.trace(torch.optim.SGD)(model.parameters(), lr=lr, momentum=momentum),
                          lambda batch, model: F.cross_entropy(model(batch[0]), batch[1]), dummy_input=dummy_input)


def importable_module(tmp_path, monkeypatch, name, source):
    """``<tmp_path>/project/<name>.py`` holding ``source``, that folder the current one and first on
    ``sys.path`` (as the CLI puts it), ``name`` not yet imported; monkeypatch restores it all. The
    caller drops ``sys.modules[name]`` afterwards."""
    import sys

    folder = tmp_path / "project"
    folder.mkdir()
    (folder / f"{name}.py").write_text(source)
    monkeypatch.setattr(sys, "path", [str(folder), *sys.path])
    monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.chdir(folder)
    return folder


def load_benchmark(name):
    """``benchmarks/<name>.py`` as a module (the benchmarks are scripts, not a package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"bench_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod

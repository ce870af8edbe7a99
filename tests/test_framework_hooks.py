"""The public hooks by which a framework that wraps the model (NNI) drives the core pruner, tested on
DynamicChannelPruner itself: set_forward_masks, detach_collectors / attach_collectors / collecting,
redirect_parameters."""
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from sca_plugin import SCAPruner
from sca_plugin.groups import group_batchnorms, group_neurons
from sca_plugin.masking import output_channel_dim
from sca_plugin.models import digits_cnn
from tests.helpers import train_steps


def _hooks(model):
    return sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())


def _pruner(x, **kw):
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    kw = {"ignored_layers": [model.classifier], "pruning_ratio": 0.5, **kw}
    return model, SCAPruner(model, x[:2], **kw)


def _neuron_inputs(model, pruner, x):
    """Per group: the input of the group's first spiking neuron (what its BatchNorm passes on), by
    root channel (channels first), from one training-mode forward."""
    seen = {}
    handles = []
    for i, (_, group) in enumerate(pruner.groups):
        neuron, (local, root) = next(iter(group_neurons(group).items()))
        bn = next(iter(group_batchnorms(group)))

        def hook(mod, args, i=i, local=local, root=root, bn=bn):
            t = args[0].detach()
            by_local = t.movedim(output_channel_dim(bn) % t.dim(), 0).reshape(t.shape[output_channel_dim(bn)], -1)
            out = torch.empty(len(root), by_local.shape[1])
            out[torch.tensor(root)] = by_local[torch.tensor(local)]
            seen[i] = out
        handles.append(neuron.register_forward_pre_hook(hook))
    model.train()
    try:
        with torch.no_grad():
            model(x)
    finally:
        functional.reset_net(model)
        for h in handles:
            h.remove()
    return seen


def test_set_forward_masks_switches_the_pruner_masking_of_the_outputs(digits_batch):
    x, y = digits_batch
    # masking="mask": parameters are never reset, so only the forward mask silences a masked channel
    model, pruner = _pruner(x, masking="mask", regrow_ratio=0.0)
    train_steps(model, x, y, 2, pruner)
    pruner.update_masks()
    masked = [~keep for keep in pruner.masks]
    assert any(m.any() for m in masked) and all((~m).any() for m in masked)
    with_masks = _hooks(model)

    on = _neuron_inputs(model, pruner, x[:4])
    for i, drop in enumerate(masked):
        assert not drop.any() or on[i][drop].abs().max() == 0  # the pruner masks them
        assert on[i][~drop].abs().max() > 0

    pruner.set_forward_masks(False)
    assert _hooks(model) < with_masks  # the pruner's forward hooks are gone
    off = _neuron_inputs(model, pruner, x[:4])
    for i, drop in enumerate(masked):
        assert not drop.any() or off[i][drop].abs().max() > 0  # nothing masks them now
    first = next(i for i, (root, _) in enumerate(pruner.groups) if root is model.features[0])
    assert torch.equal(off[first][~masked[first]], on[first][~masked[first]])  # the first layer's kept channels
    # the pruner goes on updating (and records the masks) without masking the outputs itself
    train_steps(model, x, y, 1, pruner)
    pruner.update_masks()
    assert pruner.num_updates == 2 and _hooks(model) < with_masks

    pruner.set_forward_masks(True)  # installed again, with the current masks
    assert _hooks(model) == with_masks
    again = _neuron_inputs(model, pruner, x[:4])
    for i, keep in enumerate(pruner.masks):
        assert (keep.all() or again[i][~keep].abs().max() == 0) and again[i][keep].abs().max() > 0


def _statistics(pruner):
    return {c.name: c.state_dict(pruner.module_names) for c in pruner.collectors}


def test_detached_collectors_record_nothing_until_attached_again(digits_batch):
    x, y = digits_batch
    model, pruner = _pruner(x)  # SCA with regrowth: activity recorder and regrowth gradients
    assert pruner.collecting and all(c.is_attached for c in pruner.collectors) and len(pruner.collectors) == 2
    train_steps(model, x, y, 2, pruner)
    pruner.update_masks()  # resets every collector
    assert not any(_statistics(pruner).values())

    with_collectors = _hooks(model)
    pruner.detach_collectors()
    pruner.detach_collectors()  # idempotent
    assert not pruner.collecting and not any(c.is_attached for c in pruner.collectors)
    assert _hooks(model) < with_collectors
    train_steps(model, x, y, 2, pruner)  # training forwards and backwards, nothing observed
    assert not any(_statistics(pruner).values())
    with pytest.raises(RuntimeError, match="before any training statistics exist"):
        pruner.update_masks()

    pruner.attach_collectors()
    pruner.attach_collectors()  # idempotent: no second set of hooks
    assert pruner.collecting and all(c.is_attached for c in pruner.collectors)
    assert _hooks(model) == with_collectors
    train_steps(model, x, y, 2, pruner)
    stats = _statistics(pruner)
    assert stats["growth"] and all(e["count"] == 2 for e in stats["growth"].values())
    assert all(stats.values())
    pruner.update_masks()
    assert pruner.num_updates == 2


def test_fixed_masks_keep_regrowth_gradients_off_after_attach_collectors(digits_batch):
    x, y = digits_batch
    model, pruner = _pruner(x)
    train_steps(model, x, y, 2, pruner)
    pruner.update_masks()
    pruner.detach_collectors()
    pruner.fix_masks()
    pruner.attach_collectors()
    growth = next(c for c in pruner.collectors if c.name == "growth")
    assert not growth.is_attached  # regrowth gradients belong to the dynamic phase only
    assert all(c.is_attached for c in pruner.collectors if c is not growth)


def test_redirected_parameters_are_reset_penalised_and_observed_instead_of_the_modules(digits_batch):
    x, y = digits_batch
    model, pruner = _pruner(x, masking="reset", regrow_ratio=0.0, l1=1e-3)
    train_steps(model, x, y, 2, pruner)
    shadows = {}  # where a framework would keep the trained tensors
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.BatchNorm2d)):
            for name in ("weight", "bias"):
                p = getattr(m, name, None)
                if p is not None:
                    shadows[(m, name)] = p.detach().clone().requires_grad_(True)
    own = {key: getattr(*key).detach().clone() for key in shadows}
    with pytest.raises(TypeError, match="resolver must be callable"):
        pruner.redirect_parameters({})
    pruner.redirect_parameters(lambda m, name: shadows.get((m, name), getattr(m, name)))
    assert pruner.parameter_of(model.features[0], "weight") is shadows[(model.features[0], "weight")]

    pruner.update_masks()  # commits, then resets the masked channels: in the shadows only
    assert any((~keep).any() for keep in pruner.masks)
    for (_, group), keep in zip(pruner.groups, pruner.masks):
        for bn, (local, root) in group_batchnorms(group).items():
            dropped = torch.tensor(local)[~keep[torch.tensor(root)]]
            if not len(dropped):
                continue
            for name in ("weight", "bias"):
                assert shadows[(bn, name)].detach()[dropped].abs().max() == 0
                assert torch.equal(getattr(bn, name).detach(), own[(bn, name)])  # the module's: untouched
            assert own[(bn, "weight")][dropped].abs().max() > 0  # so the reset did change the shadows

    # the L1 penalty goes to the shadows' gradients
    conv = model.features[0]
    shadows[(conv, "weight")].grad = torch.zeros_like(conv.weight)
    conv.weight.grad = torch.zeros_like(conv.weight)
    pruner.regularize(model)
    assert shadows[(conv, "weight")].grad.abs().max() > 0 and conv.weight.grad.abs().max() == 0

    pruner.redirect_parameters(None)  # the modules' own again
    assert pruner.parameter_of(conv, "weight") is conv.weight


def test_regrowth_gradients_follow_the_redirection(digits_batch):
    x, y = digits_batch
    model, pruner = _pruner(x)  # regrow_ratio > 0: GradientMagnitudes on the BatchNorm scales
    growth = next(c for c in pruner.collectors if c.name == "growth")
    bns = sorted({bn for _, g in pruner.groups for bn in group_batchnorms(g)}, key=lambda m: pruner.module_names[m])
    shadows = {bn: bn.weight.detach().clone().requires_grad_(True) for bn in bns}
    pruner.redirect_parameters(lambda m, name: shadows[m] if name == "weight" and m in shadows else getattr(m, name))
    train_steps(model, x, y, 1, pruner)  # gradients reach the modules' own scales only
    assert not growth
    (sum(s.sum() for s in shadows.values()) * 2).backward()  # a gradient of 2 on every shadow scale
    assert set(growth.counts) == set(bns)
    assert all(torch.equal(growth.last[bn], torch.full_like(shadows[bn], 2.0)) for bn in bns)
    pruner.redirect_parameters(None)
    growth.reset()
    train_steps(model, x, y, 1, pruner)
    assert set(growth.counts) == set(bns)  # back on the modules' own scales


def test_hooks_refuse_after_remove(digits_batch):
    x, _ = digits_batch
    model, pruner = _pruner(x)
    pruner.remove()
    for call in (lambda: pruner.set_forward_masks(True), pruner.attach_collectors,
                 lambda: pruner.redirect_parameters(None)):
        with pytest.raises(RuntimeError, match="after remove"):
            call()

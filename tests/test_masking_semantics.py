"""How masked channels act in training (issue 11): reset at every update, the reference code's soft
masking, a fixed final structure, the per-layer cap and per-layer ratios."""
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp

from tests.helpers import outputs, train_steps
from sca_plugin import SCAPruner
from sca_plugin.groups import channel_parameters
from sca_plugin.models import digits_cnn, preact_resnet18
from sca_plugin.selection import select_channels


def _setup(masking="reset", seed=0, **kw):
    torch.manual_seed(seed)
    model = digits_cnn(T=2, width=0.5)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(16, 1, 8, 8, generator=g) * 2
    y = torch.randint(0, 10, (16,), generator=g)
    kw.setdefault("pruning_ratio", 0.5)
    kw.setdefault("regrow_ratio", 0.1)
    pruner = SCAPruner(model, x[:2], ignored_layers=[model.classifier], masking=masking, **kw)
    return model, pruner, x, y


def _masked_slices(pruner, roles=("filter", "bn")):
    """Every (parameter, channel slice) of a masked channel: conv filter rows ("filter") and BN
    weight/bias ("bn")."""
    out = []
    for entries, keep in zip(pruner._channel_params, pruner.masks):
        for module, name, dim, local, root, role in entries:
            if role not in roles:
                continue
            p = getattr(module, name)
            for lo, ro in zip(local, root):
                if not keep[ro]:
                    out.append((f"{pruner.module_names[module]}.{name}[{lo}]", p.detach().select(dim, lo)))
    return out


def _bn_params(pruner):
    return [(e[0], e[1]) for entries in pruner._channel_params for e in entries if e[5] == "bn"]


@pytest.mark.parametrize("masking,roles", [("reset", ("bn",)), ("reset-filters", ("filter", "bn")),
                                           ("soft", ("filter", "bn"))])
def test_masked_channels_parameters_are_zero_after_every_update(masking, roles):
    model, pruner, x, y = _setup(masking)
    opt = train_steps(model, x, y, 3, pruner, lr=0.1)
    for _ in range(3):
        pruner.update_masks()
        slices = _masked_slices(pruner, roles)
        assert slices, "the update masked nothing"
        for name, t in slices:
            assert torch.count_nonzero(t) == 0, name
        if masking == "reset":  # filters are kept: the regrowth signal needs them
            assert any(torch.count_nonzero(t) for _, t in _masked_slices(pruner, ("filter",)))
        # and training moves them again (straight-through gradient / revival): the next reset is not a no-op
        train_steps(model, x, y, 3, pruner, optimizer=opt)
        assert any(torch.count_nonzero(t) for _, t in _masked_slices(pruner, roles))


def test_mask_mode_leaves_masked_parameters_alone():
    model, pruner, x, y = _setup("mask")
    opt = train_steps(model, x, y, 3, pruner, lr=0.1)
    pruner.update_masks()
    train_steps(model, x, y, 3, pruner, optimizer=opt)
    pruner.update_masks()
    assert any(torch.count_nonzero(t) for _, t in _masked_slices(pruner))


def test_a_regrown_channel_restarts_from_the_neutral_state():
    """With no parameter change between two updates, a channel regrown at the second update
    comes back with the zero BatchNorm weight and bias the first update gave it, so it outputs
    nothing until training moves it (in "mask" mode it comes back with its old values). Channels
    masked at the first update can come back: their BN-scale gradient is informative."""
    results = {}
    for masking in ("reset", "mask"):
        model, pruner, x, y = _setup(masking, mode="rebuild", pruning_ratio=0.5, regrow_ratio=0.25)
        opt = train_steps(model, x, y, 3, pruner, lr=0.1)
        pruner.update_masks()
        first = [k.clone() for k in pruner.masks]
        # gradients and statistics flow, parameters do not move (lr 0, no momentum)
        frozen = torch.optim.SGD(model.parameters(), lr=0.0)
        train_steps(model, x, y, 2, pruner, optimizer=frozen)
        sel = pruner.update_masks()
        regrown = [(i, int(c)) for i, (k0, k1) in enumerate(zip(first, pruner.masks))
                   for c in torch.nonzero(~k0 & k1).flatten()]
        assert regrown, "no channel masked at the first update came back at the second"
        values = []
        for i, c in regrown:
            for module, name, dim, local, root, role in pruner._channel_params[i]:
                if role != "bn":
                    continue
                for lo, ro in zip(local, root):
                    if ro == c:
                        values.append(getattr(module, name).detach().select(dim, lo).abs().sum().item())
        results[masking] = values
        del opt, sel
    assert all(v == 0 for v in results["reset"])
    assert any(v > 0 for v in results["mask"])


def test_soft_masking_lets_channels_revive_and_finalize_zeroes_them():
    model, pruner, x, y = _setup("soft", pruning_ratio=0.5, regrow_ratio=0.0)
    opt = train_steps(model, x, y, 3, pruner, lr=0.1)
    pruner.update_masks()
    zeroed = outputs(model.double(), x.double())
    model.float()
    # no forward mask: the zeroed channels take part again once training moves their parameters
    train_steps(model, x, y, 3, pruner, optimizer=opt)
    assert any(torch.count_nonzero(t) for _, t in _masked_slices(pruner))
    revived = outputs(model.double(), x.double())
    model.float()
    pruner.finalize()  # zeroes them again, then removes them (checked against the zeroed model)
    assert not torch.equal(zeroed, revived)
    assert sum(n for n, _ in pruner.channel_counts().values()) > sum(k for _, k in pruner.channel_counts().values())


@pytest.mark.parametrize("masking", ["reset", "reset-filters", "soft", "mask"])
def test_masked_equals_finalized_in_every_masking_mode(masking):
    torch.manual_seed(0)
    model = preact_resnet18(width=0.125, T=2)  # residual + pre-activation coupling
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(6, 3, 8, 8, generator=g) * 3, torch.randint(0, 10, (6,), generator=g)
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.1, ignored_layers=[model.classifier],
                       masking=masking, verify_atol=None)
    opt = train_steps(model, x, y, 2, pruner)
    pruner.update_masks()
    train_steps(model, x, y, 2, pruner, optimizer=opt)
    pruner.update_masks()
    if masking == "soft":
        pruner.fix_masks()  # the structure stops changing: from here on the masked model is the pruned one
    x_test = torch.rand(4, 3, 8, 8, generator=g).double() * 3
    before = outputs(model.double(), x_test)
    fired = [m for m in model.modules() if hasattr(m, "v")]
    assert fired
    pruner.finalize()
    after = outputs(model, x_test)
    assert torch.allclose(before, after, atol=1e-9)
    other = outputs(model, torch.rand(4, 3, 8, 8, generator=g).double() * 3)
    assert not torch.allclose(after, other)  # not vacuous: the output depends on the input


def test_fix_masks_masks_exactly_and_freezes_the_structure():
    model, pruner, x, y = _setup("reset")
    train_steps(model, x, y, 2, pruner)
    pruner.update_masks()
    pruner.fix_masks()
    assert all(torch.count_nonzero(t) == 0 for _, t in _masked_slices(pruner))
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    masked_bn = [(getattr(e[0], e[1]).grad, pruner.masks[i])
                 for i, entries in enumerate(pruner._channel_params) for e in entries
                 if e[5] == "bn" and e[1] == "weight"]
    for grad, keep in masked_bn:
        assert torch.count_nonzero(grad[~keep]) == 0  # exact mask: no straight-through gradient
        assert torch.count_nonzero(grad[keep]) > 0
    with pytest.raises(RuntimeError, match="fix_masks"):
        pruner.update_masks()
    state = pruner.state_dict()
    model2, pruner2, *_ = _setup("reset")
    model2.load_state_dict(model.state_dict())
    pruner2.load_state_dict(state)
    assert pruner2.fixed and not pruner2._masker.straight_through


def test_default_cap_keeps_every_layer_alive_under_global_ranking():
    """A layer whose scores are all below the others' would lose all but one channel under
    global ranking (the 1-of-64 outcome); the default max_pruning_ratio keeps half the network's
    kept fraction in every layer; 1.0 reproduces the uncapped collapse."""

    class LastLayerWeak(tp.importance.Importance):
        def __call__(self, group):
            n = len(group[0].idxs)
            weak = group[0].dep.target.module.out_channels == 64
            return torch.arange(n, dtype=torch.float) + (0.0 if weak else 1000.0)

    counts = {}
    for cap in (None, 1.0):
        torch.manual_seed(0)
        model = digits_cnn(T=2)
        x = torch.rand(2, 1, 8, 8)
        pruner = SCAPruner(model, x, importance=LastLayerWeak(), pruning_ratio=0.8, regrow_ratio=0.0,
                           ignored_layers=[model.classifier], max_pruning_ratio=cap)
        pruner.update_masks()
        counts[cap] = pruner.channel_counts()
    assert counts[1.0]["features.7"][1] == 1  # the collapse the cap rules out
    assert pruner.max_pruning_ratio == 1.0
    for name, (n, kept) in counts[None].items():
        assert kept >= n - int(n * 0.9), name
    assert counts[None]["features.7"][1] >= 7


def test_select_channels_max_pruning_ratio_floor():
    scores = [torch.tensor([5.0, 4, 3, 2]), torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0])]
    sel = select_channels(scores, None, None, 0.5, 0.0, True, max_pruning_ratio=0.5)
    assert int(sel.keep[1].sum()) == 5 and int(sel.keep[0].sum()) == 2
    sel = select_channels(scores, None, None, 0.5, 0.0, True)
    assert int(sel.keep[1].sum()) == 3 and int(sel.keep[0].sum()) == 4


def test_pruning_ratio_dict_sets_a_layer_ratio():
    torch.manual_seed(0)
    model = digits_cnn(T=2)
    x = torch.rand(8, 1, 8, 8)
    y = torch.randint(0, 10, (8,))
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.0, ignored_layers=[model.classifier],
                       pruning_ratio_dict={model.features[0]: 0.25})
    train_steps(model, x, y, 2, pruner)
    pruner.update_masks()
    counts = pruner.channel_counts()
    assert counts["features.0"] == (16, 12)
    rest = [k for name, (_, k) in counts.items() if name != "features.0"]
    assert sum(rest) == (32 + 64) - round(0.5 * (32 + 64))
    with pytest.raises(ValueError, match="not a submodule"):
        SCAPruner(digits_cnn(T=2), x[:2], pruning_ratio_dict={nn.Conv2d(1, 2, 3): 0.5})


def test_bad_masking_arguments_are_refused_before_anything_changes():
    torch.manual_seed(0)
    model = digits_cnn(T=2)
    hooks = sum(len(m._forward_hooks) for m in model.modules())
    x = torch.rand(2, 1, 8, 8)
    for kw, match in (({"masking": "hard"}, "masking must be one of"),
                      ({"regrow_signal": "max"}, "regrow_signal must be one of"),
                      ({"max_pruning_ratio": 0.3}, "below pruning_ratio"),
                      ({"max_pruning_ratio": 1.5}, "max_pruning_ratio must be")):
        with pytest.raises(ValueError, match=match):
            SCAPruner(model, x, ignored_layers=[model.classifier], **kw)
    assert sum(len(m._forward_hooks) for m in model.modules()) == hooks


def test_regrow_signal_last_is_the_last_steps_gradient():
    model, pruner, x, y = _setup("reset", regrow_signal="last")
    opt = train_steps(model, x, y, 2, pruner)
    model.zero_grad()
    nn.functional.cross_entropy(model(x), y).backward()
    last = {m: m.weight.grad.abs().clone() for m, n in _bn_params(pruner) if n == "weight"}
    opt.step()
    sig = pruner._growth.signal("last")
    for m, g in last.items():
        assert torch.allclose(sig[m], g)
    assert any(not torch.allclose(pruner._growth.signal("mean")[m], g) for m, g in last.items())


def test_channel_parameters_cover_producers_and_batchnorms():
    model, pruner, *_ = _setup()
    names = {(pruner.module_names[m], n) for entries in pruner._channel_params for m, n, *_ in entries}
    assert ("features.0", "weight") in names and ("features.1", "weight") in names and ("features.1", "bias") in names
    assert all(isinstance(e, list) for e in [channel_parameters(pruner.DG, g) for _, g in pruner.groups])

"""SCAPruner end to end: masked == finalized, the SCA rule, regrowth signal, resume, errors."""
import copy

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from spikingjelly.activation_based import functional

from tests.helpers import assert_not_silent, excite, outputs, train_steps
from sca_plugin import SCAPruner
from sca_plugin.groups import group_members
from sca_plugin.models import digits_cnn, preact_resnet18, resnet18, sew_resnet, vgg16
from sca_plugin.neurons import is_spiking_neuron

ARCHS = {
    "vgg16": (lambda **kw: vgg16(width=0.125, **kw), 16),
    "resnet18": (lambda **kw: resnet18(width=0.125, **kw), 8),
    "preact_resnet18": (lambda **kw: preact_resnet18(width=0.125, **kw), 8),
}


def make_batch(size, n=6, seed=0, channels=3):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, size, size, generator=g) * 3, torch.randint(0, 10, (n,), generator=g)


def conv_out_channels(model):
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


def masked_vs_finalized(model, size, channels=3, **pruner_kw):
    torch.manual_seed(0)
    x, y = make_batch(size, channels=channels)
    x_test, _ = make_batch(size, n=5, seed=1, channels=channels)
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.1, ignored_layers=[model.classifier],
                       verify_atol=None, **pruner_kw)
    opt = train_steps(model, x, y, 2, pruner)
    pruner.update_masks()
    train_steps(model, x, y, 1, pruner, optimizer=opt)
    pruner.update_masks()  # a second update exchanges channels (regrowth)
    params_before = sum(p.numel() for p in model.parameters())
    excite(model, x_test)  # a freshly initialised deep SNN is often silent in eval mode: make every layer spike
    # compare in float64: in float32 a potential within rounding of the threshold could flip a spike
    model.double()
    x_test = x_test.double()
    before = outputs(model, x_test)
    kept = pruner.channel_counts()
    pruner.finalize()
    after = outputs(model, x_test)
    return pruner, before, after, kept, params_before


@pytest.mark.parametrize("neuron_kind", ["if", "lif", "plif"])
@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("arch", list(ARCHS))
def test_masked_model_equals_finalized_model(arch, step_mode, neuron_kind):
    build, size = ARCHS[arch]
    torch.manual_seed(0)
    model = build(T=2, neuron=neuron_kind, step_mode=step_mode)
    pruner, before, after, kept, params_before = masked_vs_finalized(model, size)
    assert_not_silent(before)
    assert (after - before).abs().max() <= 1e-5
    channels = conv_out_channels(model)
    for name, (_, k) in kept.items():
        assert channels[name] == k
    assert sum(p.numel() for p in model.parameters()) < params_before
    assert pruner.sparsity() == pytest.approx(0.5, abs=0.02)


@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("build", [lambda **kw: sew_resnet(width=0.25, **kw), lambda **kw: digits_cnn(in_channels=3, **kw)])
def test_masked_model_equals_finalized_model_sew_and_plain(build, step_mode):
    torch.manual_seed(0)
    model = build(T=2, step_mode=step_mode)
    _, before, after, _, _ = masked_vs_finalized(model, 8)
    assert_not_silent(before)
    assert (after - before).abs().max() <= 1e-5


def test_pruned_model_is_an_ordinary_module_that_saves_and_loads(tmp_path):
    torch.manual_seed(0)
    model = digits_cnn(T=2)
    _, before, after, _, _ = masked_vs_finalized(model, 8, channels=1)
    torch.save(model, tmp_path / "pruned.pt")
    loaded = torch.load(tmp_path / "pruned.pt", weights_only=False)
    x_test, _ = make_batch(8, n=5, seed=1, channels=1)
    assert torch.equal(outputs(loaded, x_test.double()), after)


def test_residual_and_preactivation_channels_are_coupled_by_the_graph():
    model = preact_resnet18(width=0.125, T=2)
    x, _ = make_batch(8, n=2)
    pruner = SCAPruner(model, x, ignored_layers=[model.classifier])
    stream = next(g for _, g in pruner.groups if any(it.dep.target.module is model.conv1 for it in g))
    neurons = {pruner.module_names[m] for m in group_members(stream, is_spiking_neuron)}
    # the stem's channels are the residual stream of stage 1: every block's first neuron reads it
    assert {"layer1.0.sn1", "layer1.1.sn1", "layer2.0.sn1"} <= neurons
    modules = {pruner.module_names.get(it.dep.target.module) for it in stream}
    assert {"layer1.0.conv2", "layer1.1.conv2", "layer1.0.bn1", "layer2.0.bn1"} <= modules


def test_without_regrowth_the_masked_channels_are_the_lowest_scoring(digits_batch):
    torch.manual_seed(0)
    model = digits_cnn(T=2)
    x, y = digits_batch
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.0, ignored_layers=[model.classifier],
                       max_pruning_ratio=1.0)
    train_steps(model, x, y, 2, pruner)
    scores = torch.cat([pruner.importance(g) for _, g in pruner.groups])
    pruner.update_masks()
    masks = torch.cat(pruner.masks)
    n_masked = int((~masks).sum())
    assert n_masked == round(0.5 * len(masks))
    assert set(torch.nonzero(~masks).flatten().tolist()) == set(torch.argsort(scores, stable=True)[:n_masked].tolist())


def capture_bn_grads(model, pruner):
    bns = [next(m for m in group_members(g, lambda m: isinstance(m, nn.BatchNorm2d))) for _, g in pruner.groups]
    return [bn.weight.grad.abs().clone() for bn in bns]


def test_regrowth_picks_masked_channels_with_largest_accumulated_bn_gradient(digits_batch):
    torch.manual_seed(0)
    model = digits_cnn(T=2)
    x, y = digits_batch
    # the plain rule: no per-layer cap, the mean gradient (the defaults of masking / regrow_signal)
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.2, ignored_layers=[model.classifier], l1=0.0,
                       max_pruning_ratio=1.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    grads = []
    for i in range(2):  # two batches: regrowth must use both, not just the last
        train_steps(model, x[i * 8:(i + 1) * 8], y[i * 8:(i + 1) * 8], 1, pruner, optimizer=opt)
        grads.append(torch.cat(capture_bn_grads(model, pruner)))
    growth = (grads[0] + grads[1]) / 2
    assert not torch.allclose(grads[0].argsort(), grads[1].argsort())
    scores = torch.cat([pruner.importance(g) for _, g in pruner.groups])
    n = len(scores)
    by_score = set(torch.argsort(scores, descending=True, stable=True)[: n - round(0.5 * n) - round(0.2 * n)].tolist())
    rest = torch.tensor(sorted(set(range(n)) - by_score))
    regrown = set(rest[torch.argsort(growth[rest], descending=True, stable=True)[: round(0.2 * n)]].tolist())
    pruner.update_masks()
    kept = set(torch.nonzero(torch.cat(pruner.masks)).flatten().tolist())
    assert kept == by_score | regrown


def test_masked_channels_output_zero_but_keep_training(digits_batch):
    torch.manual_seed(0)
    model = digits_cnn(T=2)
    x, y = digits_batch
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.1, ignored_layers=[model.classifier])
    train_steps(model, x, y, 1, pruner)
    pruner.update_masks()
    bn = model.features[4]
    keep = pruner.masks[[pruner.module_names[r] for r, _ in pruner.groups].index("features.3")]
    seen = {}
    bn.register_forward_hook(lambda m, a, out: seen.update(out=out.detach()))
    model.train()
    loss = nn.functional.cross_entropy(model(x), y)
    loss.backward()
    functional.reset_net(model)
    assert seen["out"][:, :, ~keep].abs().max() == 0          # contributes nothing forward
    assert seen["out"][:, :, keep].abs().max() > 0
    conv = model.features[3]
    assert conv.weight.grad[~keep].abs().sum(dim=(1, 2, 3)).min() > 0  # ... but every masked filter learns
    assert bn.weight.grad[~keep].abs().min() > 0                        # and has a regrowth signal


def run(model, pruner, x, y, opt, updates, steps_per_update=2):
    for _ in range(updates):
        train_steps(model, x, y, steps_per_update, pruner, optimizer=opt)
        pruner.update_masks()


def test_resume_from_state_dict_reproduces_the_uninterrupted_masks(digits_batch, tmp_path):
    x, y = digits_batch
    kw = dict(pruning_ratio=0.5, regrow_ratio=0.1, schedule="linear", ramp_updates=3)

    torch.manual_seed(0)
    model = digits_cnn(T=2)
    pruner = SCAPruner(model, x[:2], ignored_layers=[model.classifier], **kw)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    run(model, pruner, x, y, opt, 2)
    train_steps(model, x, y, 1, pruner, optimizer=opt)   # mid-window: the accumulators are not empty
    torch.save({"model": model.state_dict(), "opt": opt.state_dict(), "pruner": pruner.state_dict()}, tmp_path / "ck.pt")
    train_steps(model, x, y, 1, pruner, optimizer=opt)
    pruner.update_masks()
    run(model, pruner, x, y, opt, 2)
    reference = [m.clone() for m in pruner.masks]

    torch.manual_seed(123)
    model2 = digits_cnn(T=2)
    pruner2 = SCAPruner(model2, x[:2], ignored_layers=[model2.classifier], **kw)
    opt2 = torch.optim.SGD(model2.parameters(), lr=0.05, momentum=0.9)
    ck = torch.load(tmp_path / "ck.pt", weights_only=True)
    model2.load_state_dict(ck["model"])
    opt2.load_state_dict(ck["opt"])
    pruner2.load_state_dict(ck["pruner"])
    train_steps(model2, x, y, 1, pruner2, optimizer=opt2)
    pruner2.update_masks()
    run(model2, pruner2, x, y, opt2, 2)
    assert all(torch.equal(a, b) for a, b in zip(reference, pruner2.masks))
    assert pruner2.history == pruner.history
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_state_dict_from_another_architecture_or_setting_is_refused(digits_batch):
    x, y = digits_batch
    model = digits_cnn(T=2)
    pruner = SCAPruner(model, x[:2], ignored_layers=[model.classifier])
    other = digits_cnn(T=2, width=0.5)
    other_pruner = SCAPruner(other, x[:2], ignored_layers=[other.classifier])
    with pytest.raises(ValueError, match="another architecture"):
        other_pruner.load_state_dict(pruner.state_dict())
    model3 = digits_cnn(T=2)
    p3 = SCAPruner(model3, x[:2], pruning_ratio=0.3, ignored_layers=[model3.classifier])
    with pytest.raises(ValueError, match="pruning_ratio"):
        p3.load_state_dict(pruner.state_dict())
    with pytest.raises(ValueError, match="not an SCAPruner state dict"):
        p3.load_state_dict({"masks": []})


def test_update_interval_and_history(digits_batch):
    x, y = digits_batch
    model = digits_cnn(T=2)
    pruner = SCAPruner(model, x[:2], ignored_layers=[model.classifier], update_interval=2,
                       schedule="linear", ramp_updates=2)
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    updated = []
    for _ in range(4):
        train_steps(model, x, y, 1, pruner, optimizer=opt)
        updated.append(pruner.maybe_update_masks())
    assert updated == [False, True, False, True]
    assert [h["step"] for h in pruner.history] == [2, 4]
    assert [h["target_sparsity"] for h in pruner.history] == [0.25, 0.5]
    n = sum(c for c, _ in pruner.channel_counts().values())
    assert sum(pruner.history[-1]["channels"].values()) == n - round(0.5 * n)


def test_rebuild_optimizer_after_finalize(digits_batch):
    x, y = digits_batch
    model = digits_cnn(T=2)
    pruner = SCAPruner(model, x[:2], ignored_layers=[model.classifier])
    opt = torch.optim.SGD([{"params": model.features.parameters(), "lr": 0.1},
                           {"params": model.classifier.parameters(), "lr": 0.01}], momentum=0.9)
    train_steps(model, x, y, 1, pruner, optimizer=opt)
    pruner.update_masks()
    with pytest.raises(RuntimeError, match="after finalize"):
        pruner.rebuild_optimizer(opt)
    pruner.finalize()
    new = pruner.rebuild_optimizer(opt)
    assert [g["lr"] for g in new.param_groups] == [0.1, 0.01]
    assert {id(p) for g in new.param_groups for p in g["params"]} == {id(p) for p in model.parameters()}
    train_steps(model, x, y, 1, optimizer=new)  # trains the pruned model


def test_any_torch_pruning_importance_can_rank(digits_batch):
    x, y = digits_batch
    model = digits_cnn(T=2)
    imp = tp.importance.GroupMagnitudeImportance(p=1, normalizer=None)
    pruner = SCAPruner(model, x[:2], importance=imp, regrow_ratio=0.0, ignored_layers=[model.classifier],
                       max_pruning_ratio=1.0)
    train_steps(model, x, y, 1, pruner)
    scores = torch.cat([imp(g) for _, g in pruner.groups])
    pruner.update_masks()
    masks = torch.cat(pruner.masks)
    assert set(torch.nonzero(~masks).flatten().tolist()) == set(torch.argsort(scores)[: int((~masks).sum())].tolist())


def test_scores_do_not_depend_on_the_step_mode(digits_batch):
    x, y = digits_batch
    torch.manual_seed(0)
    m_multi = digits_cnn(T=3)
    m_single = copy.deepcopy(m_multi)
    functional.set_step_mode(m_single, "s")
    p_multi = SCAPruner(m_multi, x[:2], ignored_layers=[m_multi.classifier])
    p_single = SCAPruner(m_single, x[:2], ignored_layers=[m_single.classifier])
    for model in (m_multi, m_single):
        model.train()
        for m in model.modules():  # batch statistics differ per step mode (T*B vs B samples); use running ones
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        model(x)
        functional.reset_net(model)
    for (_, ga), (_, gb) in zip(p_multi.groups, p_single.groups):
        torch.testing.assert_close(p_multi.importance(ga), p_single.importance(gb), rtol=1e-5, atol=1e-6)


def test_min_channels_and_round_to_in_the_pruner(digits_batch):
    x, y = digits_batch
    model = digits_cnn(T=2)
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.9, regrow_ratio=0.0, global_pruning=False, min_channels=4,
                       round_to=4, ignored_layers=[model.classifier])
    train_steps(model, x, y, 1, pruner)
    pruner.update_masks()
    for n, k in pruner.channel_counts().values():
        assert k >= 4 and k % 4 == 0
    pruner.finalize()
    assert all(c % 4 == 0 for c in conv_out_channels(model).values())


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_finalized_model_reloads_from_state_dict_and_pruning_history(step_mode, tmp_path):
    from sca_plugin import replay_pruning

    torch.manual_seed(0)
    model = preact_resnet18(width=0.125, T=2, step_mode=step_mode)
    pruner, _, after, _, _ = masked_vs_finalized(model, 8)
    torch.save({"state": model.state_dict(), "history": pruner.pruning_history()}, tmp_path / "p.pth")
    ck = torch.load(tmp_path / "p.pth", weights_only=True)
    fresh = replay_pruning(preact_resnet18(width=0.125, T=2, step_mode=step_mode), make_batch(8, 2)[0], ck["history"])
    fresh.load_state_dict(ck["state"])
    x_test, _ = make_batch(8, n=5, seed=1)
    assert torch.equal(outputs(fresh.double(), x_test.double()), after)


def test_regrow_schedule_values():
    from sca_plugin.schedule import regrow_at

    assert [regrow_at(u, 0.2) for u in range(4)] == [0.2] * 4
    cos = [regrow_at(u, 0.2, "cosine", 4) for u in range(6)]
    assert cos[0] == pytest.approx(0.2) and cos[2] == pytest.approx(0.1) and cos[4] == cos[5] == 0.0
    assert all(a >= b for a, b in zip(cos, cos[1:]))
    with pytest.raises(ValueError, match="needs regrow_decay_updates"):
        regrow_at(0, 0.2, "cosine", None)
    with pytest.raises(ValueError, match="unknown regrowth decay"):
        regrow_at(0, 0.2, "linear", 3)


def test_cosine_regrowth_decays_to_zero_and_the_structure_settles(digits_batch):
    torch.manual_seed(0)
    model = digits_cnn(T=2)
    x, y = digits_batch
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.25, ignored_layers=[model.classifier],
                       regrow_decay="cosine", regrow_decay_updates=2)
    opt = None
    masks = []
    for _ in range(4):
        opt = train_steps(model, x, y, 1, pruner, optimizer=opt)
        pruner.update_masks()
        masks.append(torch.cat(pruner.masks).clone())
    n = len(masks[0])
    assert [h["regrow_ratio"] for h in pruner.history] == pytest.approx([0.25, 0.125, 0.0, 0.0])
    assert [h["regrown"] for h in pruner.history] == [round(0.25 * n), round(0.125 * n), 0, 0]
    assert torch.equal(masks[2], masks[3])  # no regrowth, no change of the kept set in incremental mode
    # the settings belong to the state: another decay refuses to load it, a missing key means "constant"
    state = pruner.state_dict()
    fresh = digits_cnn(T=2)
    other = SCAPruner(fresh, x[:2], pruning_ratio=0.5, regrow_ratio=0.25, ignored_layers=[fresh.classifier])
    with pytest.raises(ValueError, match="regrow_decay"):
        other.load_state_dict(state)
    for key in ("regrow_decay", "regrow_decay_updates"):
        state["config"].pop(key)
    state["groups"], state["group_sizes"] = other.state_dict()["groups"], other.state_dict()["group_sizes"]
    other.load_state_dict(state)  # a state saved before these settings existed


def test_regrow_decay_argument_errors(digits_batch):
    x, _ = digits_batch
    model = digits_cnn(T=2)
    with pytest.raises(ValueError, match="regrow_decay must be one of"):
        SCAPruner(model, x[:2], ignored_layers=[model.classifier], regrow_decay="step")
    with pytest.raises(ValueError, match="needs regrow_decay_updates"):
        SCAPruner(model, x[:2], ignored_layers=[model.classifier], regrow_decay="cosine")


def test_pruner_built_right_after_a_training_forward_sees_the_same_graph(digits_batch):
    """A neuron state left by the user's forward (with autograd history) must not leak into the trace."""
    torch.manual_seed(0)
    x, y = digits_batch
    fresh = digits_cnn(T=2)
    used = copy.deepcopy(fresh)
    used.train()
    used(x)  # no reset_net: the neurons keep v with its autograd graph
    a = SCAPruner(fresh, x[:2], ignored_layers=[fresh.classifier], root_module_types=(nn.Conv2d, nn.Linear))
    b = SCAPruner(used, x[:2], ignored_layers=[used.classifier], root_module_types=(nn.Conv2d, nn.Linear))
    assert a.group_names() == b.group_names() and len(b.group_names()) == 3


@pytest.mark.parametrize("kind", ["sca", "sdsnn"])
def test_remove_takes_off_everything_the_pruner_installed(kind, digits_batch):
    from sca_plugin import SDSNNPruner

    x, y = digits_batch
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    hooks = lambda: sum(len(m._forward_hooks) + len(m._forward_pre_hooks) + len(m._backward_hooks)  # noqa: E731
                        for m in model.modules())
    before = hooks()
    if kind == "sca":
        pruner = SCAPruner(model, x[:2], ignored_layers=[model.classifier], pruning_ratio=0.5)
    else:
        pruner = SDSNNPruner(model, x[:2], ignored_layers=[model.classifier], N=1)
    assert hooks() > before
    train_steps(model, x, y, 1, pruner)
    pruner.update_masks()
    pruner.remove()
    pruner.remove()  # idempotent
    assert hooks() == before
    if kind == "sca":
        assert all(not bn.weight._backward_hooks for bn in model.modules() if isinstance(bn, nn.BatchNorm2d))
        pruner.importance.reset()
        train_steps(model, x, y, 1)
        assert not any(pruner.importance.has_statistics(g) for _, g in pruner.groups)  # nothing records any more
    for call in (pruner.update_masks, pruner.fix_masks, pruner.finalize):
        with pytest.raises(RuntimeError, match=r"after remove\(\)"):
            call()


def test_regrowth_relative_to_the_kept_channels(digits_batch):
    """``regrow_relative_to="kept"`` regrows ``q * (1 - s)`` of the channels at each update, follows a
    ramping schedule, belongs to the saved state, and is checked before anything is built."""
    torch.manual_seed(0)
    model = digits_cnn(T=2)
    x, y = digits_batch
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.8, regrow_ratio=0.5, ignored_layers=[model.classifier],
                       regrow_relative_to="kept", schedule="linear", ramp_updates=2, max_pruning_ratio=1.0)
    opt = None
    for _ in range(3):
        opt = train_steps(model, x, y, 1, pruner, optimizer=opt)
        pruner.update_masks()
    n = sum(len(m) for m in pruner.masks)
    assert [h["regrown"] for h in pruner.history] == [round(0.5 * 0.6 * n), round(0.5 * 0.2 * n), round(0.5 * 0.2 * n)]
    state = pruner.state_dict()
    fresh = digits_cnn(T=2)
    other = SCAPruner(fresh, x[:2], pruning_ratio=0.8, regrow_ratio=0.5, ignored_layers=[fresh.classifier],
                      schedule="linear", ramp_updates=2, max_pruning_ratio=1.0)
    with pytest.raises(ValueError, match="regrow_relative_to"):
        other.load_state_dict(state)
    # 0.5 of all channels would regrow more than 0.3 masks; 0.5 of the kept ones (0.35) would too
    with pytest.raises(ValueError, match=r"regrow_ratio \(0.5\) is larger than pruning_ratio"):
        SCAPruner(fresh, x[:2], pruning_ratio=0.3, regrow_ratio=0.5, ignored_layers=[fresh.classifier])
    with pytest.raises(ValueError, match=r"of the kept channels regrows 0.35 of all, more than pruning_ratio \(0.3\)"):
        SCAPruner(fresh, x[:2], pruning_ratio=0.3, regrow_ratio=0.5, ignored_layers=[fresh.classifier],
                  regrow_relative_to="kept")
    SCAPruner(fresh, x[:2], pruning_ratio=0.5, regrow_ratio=0.9, ignored_layers=[fresh.classifier],
              regrow_relative_to="kept").remove()  # 0.45 of all channels <= 0.5
    with pytest.raises(ValueError, match="regrow_relative_to must be one of"):
        SCAPruner(fresh, x[:2], ignored_layers=[fresh.classifier], regrow_relative_to="masked")

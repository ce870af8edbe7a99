"""sca_plugin.nni.pruner.SCAPruner: NNI 3.0 front end of SCA (validation, masks, core equivalence, STE, AGP)."""
import copy
import warnings

import nni
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from nni.compression import TorchEvaluator
from nni.compression.pruning import AGPPruner, LinearPruner
from spikingjelly.activation_based import functional, neuron
from spikingjelly.activation_based.model import parametric_lif_net

from tests.helpers import masked_copy, outputs64
from sca_plugin import SCAPruner as CoreSCAPruner
from sca_plugin.graph import SpikingMetaPruner
from sca_plugin.importance import SCAImportance
from sca_plugin.masking import output_channel_dim
from sca_plugin.models import digits_cnn, resnet18
from sca_plugin.nni import ModelSpeedup
from sca_plugin.nni.pruner import SCAPruner

CONFIG = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": 0}]


def batch(channels, n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 8, 8, generator=g) * 3, torch.randint(0, 10, (n,), generator=g)


def build(arch):
    torch.manual_seed(0)
    if arch == "digits":
        return digits_cnn(T=2), 1
    return resnet18(width=0.125, T=2), 3


def evaluator(model, x, y, dummy_input=None, readout=lambda out: out):
    def training_step(b, model):
        xb, yb = b
        return F.cross_entropy(readout(model(xb)), yb)

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        model.train()
        for _ in range(max_steps or 2 * (max_epochs or 1)):
            loss = training_step((x, y), model)
            optimizers.zero_grad()
            loss.backward()
            optimizers.step()
            functional.reset_net(model)

    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.05, momentum=0.9)
    return TorchEvaluator(training_func, optimizer, training_step, dummy_input=dummy_input)


def channel_keep(mask):
    """Per-output-channel keep vector of a weight/bias mask (all-or-nothing per channel)."""
    flat = mask.reshape(mask.shape[0], -1)
    assert bool(((flat == 0).all(1) | (flat == 1).all(1)).all()), "mask is not channel-structured"
    return flat[:, 0].bool()


def snapshot(model):
    return ({k: v.clone() for k, v in model.state_dict().items()},
            sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()))


def assert_unchanged(model, snap):
    state, hooks = snap
    now = model.state_dict()
    assert list(now) == list(state)
    assert all(torch.equal(now[k], v) for k, v in state.items())
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == hooks


# ---------------------------------------------------------------------- validation
BAD_CONFIGS = [
    ([{"op_types": ["Conv2d"]}], {}, "missing 'sparse_ratio'"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 1.0}], {}, r"sparse_ratio must be a number in \[0, 1\)"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": -0.1}], {}, r"sparse_ratio must be a number in \[0, 1\)"),
    ([{"op_types": ["Conv3d"], "sparse_ratio": 0.5}], {}, "matches no module"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.1}], {"regrow_ratio": 0.2}, "regrow_ratio .* larger than sparse_ratio"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.1}], {"regrow_ratio": 0.5, "regrow_relative_to": "kept"},
     r"regrow_ratio \(0.5\) of the kept channels regrows 0.45 of all, more than sparse_ratio"),
    (CONFIG, {"regrow_relative_to": "masked"}, "regrow_relative_to must be one of"),
    ([{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.5}], {}, "not convolutions or linear"),
    ([{"sparse_ratio": 0.5}], {}, "op_types"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "sparse_threshold": 0.1}], {}, "does not support the keys"),
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": 0},
      {"op_types": ["Linear"], "sparse_ratio": 0.3, "global_group_id": 0}], {}, "different sparse_ratio"),
    ([{"op_types": ["Linear"], "sparse_ratio": 0.5}], {}, "selects no layer that SCA can prune: classifier: its "
                                                          "channels are the model's output"),
    (CONFIG, {"example_inputs": None}, r"needs example inputs.*dummy_input=x\).* or pass example_inputs=x"),
    (CONFIG, {"regrow_ratio": 1.5}, r"regrow_ratio must be in \[0, 1\)"),
    (CONFIG, {"interval_steps": 0}, "interval_steps must be a positive integer"),
]


@pytest.mark.parametrize("config_list,kwargs,match", BAD_CONFIGS)
def test_invalid_arguments_raise_before_wrapping(config_list, kwargs, match):
    model, c = build("digits")
    x, _ = batch(c)
    snap = snapshot(model)
    kw = {"example_inputs": x[:2], **kwargs}
    with pytest.raises(ValueError, match=match):
        SCAPruner(model, config_list, None, **kw)
    assert_unchanged(model, snap)


def test_model_without_spiking_neurons_is_rejected():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    snap = snapshot(model)
    with pytest.raises(ValueError, match="no spiking neurons"):
        SCAPruner(model, CONFIG, None, example_inputs=torch.rand(2, 1, 8, 8))
    assert_unchanged(model, snap)


@pytest.mark.parametrize("config_list,match", [
    # conv1 and layer1.0.conv1 do not share channels in the graph
    ([{"op_names": ["conv1", "layer1.0.conv1"], "sparse_ratio": 0.5, "dependency_group_id": 0}],
     "not coupled in the model's dependency graph"),
    # conv1 and layer1.0.conv2 are added by a residual connection: they must get one mask
    ([{"op_names": ["conv1"], "sparse_ratio": 0.5, "dependency_group_id": 0},
      {"op_names": ["layer1.0.conv2"], "sparse_ratio": 0.5, "dependency_group_id": 1}],
     "different dependency_group_id"),
    ([{"op_names": ["conv1"], "sparse_ratio": 0.5},
      {"op_names": ["layer1.0.conv2"], "sparse_ratio": 0.3}],
     "share their output channels"),
])
def test_dependency_groups_contradicting_the_graph_are_rejected(config_list, match):
    model, c = build("resnet18")
    x, _ = batch(c)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        SCAPruner(model, config_list, None, example_inputs=x[:2])
    assert_unchanged(model, snap)


def test_compress_without_training_duration_raises():
    model, c = build("digits")
    x, y = batch(c)
    pruner = SCAPruner(model, CONFIG, evaluator(model, x, y), example_inputs=x[:2])
    with pytest.raises(ValueError, match="during training"):
        pruner.compress()
    pruner.unwrap_model()


# ---------------------------------------------------------------------- compress through the evaluator
def compressed(arch, steps=4, interval=2, **kw):
    model, c = build(arch)
    x, y = batch(c)
    pruner = SCAPruner(model, CONFIG, evaluator(model, x, y), regrow_ratio=0.1, interval_steps=interval,
                       example_inputs=x[:2], **kw)
    returned, masks = pruner.compress(max_steps=steps)
    assert returned is model
    return model, pruner, masks, x


@pytest.mark.parametrize("arch", ["digits", "resnet18"])
def test_compress_masks_have_the_requested_sparsity_and_agree_channelwise(arch):
    model, pruner, masks, x = compressed(arch)
    assert pruner.num_updates == 2
    modules = dict(model.named_modules())
    total = kept = 0
    for names in pruner.coupled_modules():
        keeps = []
        for name in names:
            for target in ("weight", "bias"):
                if masks[name].get(target) is not None:
                    keeps.append(channel_keep(masks[name][target]))
            if isinstance(modules[name], nn.BatchNorm2d):  # BN weight AND bias are masked
                assert masks[name]["weight"] is not None and masks[name]["bias"] is not None
        # every layer of a dependency group (conv weight, BN weight, BN bias) has the same channel mask
        assert all(torch.equal(k, keeps[0]) for k in keeps)
        total += keeps[0].numel()
        kept += int(keeps[0].sum())
    assert total - kept == round(0.5 * total)  # one global group: the requested sparsity over all channels
    assert sum(k for _, k in pruner.channel_counts().values()) == kept
    if arch == "resnet18":  # residual-coupled convolutions share a mask
        stem = channel_keep(masks["conv1"]["weight"])
        for name in ("layer1.0.conv2", "layer1.1.conv2"):
            assert torch.equal(channel_keep(masks[name]["weight"]), stem)
        assert torch.equal(channel_keep(masks["layer2.0.shortcut.0"]["weight"]),
                           channel_keep(masks["layer2.0.conv2"]["weight"]))
    pruner.unwrap_model()
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())


@pytest.mark.parametrize("arch", ["digits", "resnet18"])
def test_masked_model_equals_physically_pruned_model(arch):
    model, pruner, masks, x = compressed(arch)
    model.double()
    xd = x.double()

    def run(m):
        m.eval()
        functional.reset_net(m)
        with torch.no_grad():
            out = m(xd).clone()
        functional.reset_net(m)
        return out

    masked = run(model)
    pruner.unwrap_model()  # raw (unmasked) weights: only physical removal makes them equal
    meta = SpikingMetaPruner(model, xd[:2], SCAImportance())
    names = {n: m for n, m in model.named_modules()}
    for group_names in pruner.coupled_modules():
        root = names[group_names[0]]
        drop = torch.nonzero(~channel_keep(masks[group_names[0]]["weight"])).flatten().tolist()
        if drop:
            meta.DG.get_pruning_group(root, meta.DG.get_pruner_of_module(root).prune_out_channels, drop).prune()
    pruned = run(model)
    assert (masked - pruned).abs().max().item() < 1e-6


# ---------------------------------------------------------------------- same channels as the Torch-Pruning core
# (the NNI pruner is an adapter over the core: its selection is the core's update by construction; this
# checks the construction end to end, with the statistics of each front end's own training)
@pytest.mark.parametrize("arch", ["digits", "resnet18"])
@pytest.mark.parametrize("config,core_kw", [
    (CONFIG, {}),  # one global_group_id: the core's global ranking
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], {"global_pruning": False}),  # every layer on its own
    (CONFIG, {"regrow_relative_to": "kept"}),  # regrowth counted against the kept channels
], ids=["global", "per-layer", "regrow-of-kept"])
def test_nni_and_torch_pruning_front_ends_pick_the_same_channels(arch, config, core_kw):
    base, c = build(arch)
    x, y = batch(c)
    m_nni, m_tp = copy.deepcopy(base), copy.deepcopy(base)
    nni_kw = {k: v for k, v in core_kw.items() if k == "regrow_relative_to"}
    nni_pruner = SCAPruner(m_nni, config, None, regrow_ratio=0.1, example_inputs=x[:2], **nni_kw)
    nni_pruner.register_statistics_hooks()
    tp_pruner = CoreSCAPruner(m_tp, x[:2], pruning_ratio=0.5, regrow_ratio=0.1, verify_atol=None, **core_kw)
    assert [g[0] for g in nni_pruner.coupled_modules()] == tp_pruner.group_names()

    def step(model):
        model.train()
        F.cross_entropy(model(x), y).backward()
        functional.reset_net(model)

    for update in range(2):  # the second update after training on the first's masks
        for _ in range(2):
            step(m_nni)
            step(m_tp)
        masks = nni_pruner.generate_masks()
        nni_pruner.update_masks(masks)
        tp_pruner.update_masks()
        for names, keep in zip(nni_pruner.coupled_modules(), tp_pruner.masks):
            assert torch.equal(channel_keep(masks[names[0]]["weight"]), keep), f"update {update}, {names[0]}"
        ours, core = nni_pruner.history[-1], tp_pruner.history[-1]
        assert (ours["pruned"], ours["regrown"], ours["sparsity"]) == (core["pruned"], core["regrown"], core["sparsity"])
    nni_pruner.remove_statistics_hooks()
    nni_pruner.unwrap_model()


# ---------------------------------------------------------------------- straight-through masks
def _wrappers_after_backward(model, x):
    """One training backward pass, then ``(name, NNI wrapper)`` of every wrapped layer."""
    y = torch.randint(0, 10, (x.shape[0],))
    model.train()
    model.zero_grad()
    F.cross_entropy(model(x), y).backward()
    functional.reset_net(model)
    return [(n, m._nni_wrapper) for n, m in model.named_modules() if hasattr(m, "_nni_wrapper")]


def test_masked_channels_are_reset_and_keep_the_regrowth_signal():
    """masking='reset' (default): after an update the masked channels' BatchNorm weight and bias are
    zero in the parameters NNI trains, and their BN-scale gradient (the regrowth signal) is not."""
    model, pruner, masks, x = compressed("digits", steps=2, interval=2)  # the last step updated the masks
    checked = 0
    for name, wrapper in _wrappers_after_backward(model, x):
        if isinstance(wrapper.module, nn.BatchNorm2d):
            dead = ~channel_keep(masks[name]["weight"])
            if dead.any():
                weight = wrapper.pruning_target_spaces["weight"].target
                assert torch.count_nonzero(weight[dead]) == 0
                assert torch.count_nonzero(wrapper.pruning_target_spaces["bias"].target[dead]) == 0
                assert weight.grad[dead].abs().sum() > 0
                checked += 1
    assert checked > 0
    pruner.unwrap_model()


def test_masked_channels_still_receive_gradients():
    model, pruner, masks, x = compressed("digits", masking="mask")
    checked = 0
    for name, wrapper in _wrappers_after_backward(model, x):
        if not isinstance(wrapper.module, nn.BatchNorm2d):
            continue
        dead = ~channel_keep(masks[name]["weight"])
        if dead.any():
            param = wrapper.pruning_target_spaces["weight"].target  # the real leaf parameter
            assert isinstance(param, nn.Parameter) and param.grad is not None
            assert param.grad[dead].abs().sum() > 0  # regrowth signal for masked channels
            assert wrapper.pruning_target_spaces["bias"].target.grad[dead].abs().sum() > 0
            assert wrapper.pruning_target_spaces["_output_0"].apply_method == "sca_ste"
            checked += 1
    # the convolution feeding a masked BN keeps training too (gradient straight through the output mask)
    for name in ("features.3", "features.7"):
        dead = ~channel_keep(masks[name]["weight"])
        if dead.any():
            grad = model.get_submodule(name)._nni_wrapper.pruning_target_spaces["weight"].target.grad
            assert grad[dead].abs().sum() > 0
    assert checked > 0
    pruner.unwrap_model()


# ---------------------------------------------------------------------- scheduled NNI pruners
@pytest.mark.parametrize("scheduler", [AGPPruner, LinearPruner])
def test_scheduled_pruner_ramps_the_sca_sparsity(scheduler):
    model, c = build("digits")
    x, y = batch(c)
    pruner = SCAPruner(model, CONFIG, evaluator(model, x, y), regrow_ratio=0.1, example_inputs=x[:2])
    scheduled = scheduler(pruner, interval_steps=2, total_times=3)
    _, masks = scheduled.compress(max_steps=6, max_epochs=None)
    ratios = [next(iter(h["sparse_ratio"].values())) for h in pruner.history]
    assert len(ratios) == 3 and ratios == sorted(ratios) and ratios[-1] == pytest.approx(0.5)
    counts = pruner.channel_counts().values()
    total = sum(n for n, _ in counts)
    assert total - sum(k for _, k in counts) == round(0.5 * total)
    scheduled.unwrap_model()
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())


@pytest.mark.parametrize("arch", ["digits", "resnet18"])
def test_our_masks_through_model_speedup_equal_the_masked_model(arch):
    from sca_plugin.nni import ModelSpeedup

    model, channels = build(arch)
    x, y = batch(channels)
    pruner = SCAPruner(model, [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": 0}],
                       evaluator(model, x, y), regrow_ratio=0.1, interval_steps=2, example_inputs=x[:2])
    _, masks = pruner.compress(max_steps=4, max_epochs=None)
    pruner.unwrap_model()
    params = sum(p.numel() for p in model.parameters())
    speedup = ModelSpeedup(model, x[:2], masks)  # checks masked == sped-up in float64, else raises
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # BN weight AND bias are masked: no channel may be kept back
        speedup.speedup_model()
    assert sum(p.numel() for p in model.parameters()) < params
    assert not any(speedup.kept_candidates.values())


# ---------------------------------------------------------------------- NNI users' conventions (issue 12)
def masked_reference(model, masks):
    """What NNI computes with ``masks``, built independently of ModelSpeedup: a copy of ``model``
    with the parameter masks multiplied in and every ``_output_0`` mask multiplied into the layer's
    output (a forward hook; per channel ``[C]`` or in the output's shape)."""
    ref = masked_copy(model, {n: {t: m for t, m in ts.items() if not t.startswith("_")} for n, ts in masks.items()})
    for name, targets in masks.items():
        mask = targets.get("_output_0")
        if mask is None:
            continue
        module = ref.get_submodule(name)

        def hook(mod, args, out, mask=mask.detach().clone(), dim=output_channel_dim(module)):
            if mask.dim() == 1:
                shape = [1] * out.dim()
                shape[dim] = -1
                return out * mask.to(out.dtype).view(shape)
            return out * mask.to(out.dtype)
        module.register_forward_hook(hook)
    return ref


def test_example_inputs_default_to_the_evaluators_dummy_input():
    """As NNI users write it: the graph is traced with TorchEvaluator(..., dummy_input=x), and the
    pruner is the one that example_inputs=x builds (same groups, same masks after training)."""
    base, c = build("digits")
    x, y = batch(c)
    a, b = copy.deepcopy(base), copy.deepcopy(base)
    from_evaluator = SCAPruner(a, CONFIG, evaluator(a, x, y, dummy_input=x[:2]), regrow_ratio=0.1, interval_steps=2)
    explicit = SCAPruner(b, CONFIG, evaluator(b, x, y), regrow_ratio=0.1, interval_steps=2, example_inputs=x[:2])
    assert from_evaluator.coupled_modules() == explicit.coupled_modules()
    _, masks_a = from_evaluator.compress(max_steps=4)
    _, masks_b = explicit.compress(max_steps=4)
    assert from_evaluator.num_updates == 2
    assert masks_a.keys() == masks_b.keys()
    for name, targets in masks_a.items():
        assert targets.keys() == masks_b[name].keys()
        for t, m in targets.items():
            assert (m is None and masks_b[name][t] is None) or torch.equal(m, masks_b[name][t]), f"{name}.{t}"
    from_evaluator.unwrap_model()
    explicit.unwrap_model()


def test_without_example_inputs_or_dummy_input_the_error_names_both_fixes():
    model, c = build("digits")
    x, y = batch(c)
    ev = evaluator(model, x, y)  # no dummy_input
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"give the evaluator a dummy_input \(TorchEvaluator\(training_func, "
                                         r"optimizer, training_step, dummy_input=x\)\) or pass example_inputs=x"):
        SCAPruner(model, CONFIG, ev, regrow_ratio=0.1, interval_steps=2)
    assert_unchanged(model, snap)


@pytest.mark.parametrize("scheduler", [AGPPruner, LinearPruner])
def test_scheduled_pruner_masks_go_through_model_speedup(scheduler):
    """AGP/Linear return every target space's mask, SCA's training-time ``_output_0`` masks
    included; ModelSpeedup applies them and the removed model equals the masked one."""
    model, c = build("digits")
    x, y = batch(c)
    pruner = SCAPruner(model, CONFIG, evaluator(model, x, y), regrow_ratio=0.1, example_inputs=x[:2])
    scheduled = scheduler(pruner, interval_steps=2, total_times=2)
    _, masks = scheduled.compress(max_steps=4, max_epochs=None)
    scheduled.unwrap_model()
    assert any("_output_0" in targets for targets in masks.values())  # what made ModelSpeedup refuse them
    reference = masked_reference(model, masks)
    inputs = [x, batch(c, seed=5)[0]]
    expected = [outputs64(reference, xb) for xb in inputs]
    before = sum(p.numel() for p in model.parameters())
    speedup = ModelSpeedup(model, x[:2], masks)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # BN weight AND bias are masked: no channel may be kept back
        speedup.speedup_model()
    for xb, e in zip(inputs, expected):
        torch.testing.assert_close(outputs64(model, xb), e, atol=1e-6, rtol=0)
    assert sum(p.numel() for p in model.parameters()) < before
    assert not any(speedup.kept_candidates.values())
    for rep, (_, kept) in pruner.channel_counts().items():  # exactly the masked channels are gone
        assert model.get_submodule(rep).out_channels == kept


# NNI's quick-start config on SpikingJelly's MNISTNet: convs with BatchNorm, a hidden Linear with
# none (conv_fc.10), and the Linear before the voting layer (conv_fc.13, the output)
QUICK_START = [{"op_types": ["Linear", "Conv2d"], "exclude_op_names": ["conv_fc.13"], "sparse_ratio": 0.5}]


def mnist_net():
    torch.manual_seed(0)
    net = parametric_lif_net.MNISTNet(channels=4, spiking_neuron=neuron.IFNode)
    functional.set_step_mode(net, "m")
    return net


def mnist_batch():
    g = torch.Generator().manual_seed(0)
    return torch.rand(2, 4, 1, 28, 28, generator=g), torch.randint(0, 10, (4,), generator=g)


def mnist_evaluator(model, x, y):
    return evaluator(model, x, y, dummy_input=x, readout=lambda out: out.mean(0))


def _ours(record):
    return [str(w.message) for w in record if "SCAPruner leaves" in str(w.message)]


def test_nni_quick_start_config_prunes_what_sca_can_and_says_what_it_leaves():
    model = mnist_net()
    x, y = mnist_batch()
    with pytest.warns(UserWarning, match=r"SCAPruner leaves .*conv_fc\.10 \(its channels have no BatchNorm.*"
                                         r"config_list\[0\]\['exclude_op_names'\] = \['conv_fc\.13', 'conv_fc\.10'\]"):
        pruner = SCAPruner(model, QUICK_START, mnist_evaluator(model, x, y), regrow_ratio=0.1, interval_steps=2,
                           example_inputs=x)
    assert list(pruner.excluded) == ["conv_fc.10"] and "regrow_ratio=0.1" in pruner.excluded["conv_fc.10"]
    assert not hasattr(model.conv_fc[10], "_nni_wrapper")  # left dense: NNI does not even wrap it
    _, masks = pruner.compress(max_steps=4)
    assert "conv_fc.10" not in masks and "conv_fc.13" not in masks
    assert pruner.channel_counts() == {"conv_fc.0": (4, 2), "conv_fc.4": (4, 2)}
    pruner.unwrap_model()
    reference = outputs64(masked_copy(model, masks), x)
    ModelSpeedup(model, x, masks).speedup_model()
    widths = (model.conv_fc[0].out_channels, model.conv_fc[4].out_channels, model.conv_fc[10].out_features)
    assert widths == (2, 2, 2048)
    torch.testing.assert_close(outputs64(model, x), reference, atol=1e-6, rtol=0)

    # the fix the warning names silences it and builds the same pruner
    fixed = copy.deepcopy(QUICK_START)
    fixed[0]["exclude_op_names"] = ["conv_fc.13", "conv_fc.10"]
    model = mnist_net()
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        again = SCAPruner(model, fixed, mnist_evaluator(model, x, y), regrow_ratio=0.1, interval_steps=2)
    assert not _ours(record) and again.excluded == {}
    assert again.coupled_modules() == [["conv_fc.4", "conv_fc.5"], ["conv_fc.0", "conv_fc.1"]]
    again.unwrap_model()


def test_quick_start_without_excluding_the_output_layer_leaves_it_dense_too():
    model = mnist_net()
    x, y = mnist_batch()
    config = [{"op_types": ["Linear", "Conv2d"], "sparse_ratio": 0.5}]
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        pruner = SCAPruner(model, config, mnist_evaluator(model, x, y), regrow_ratio=0.0, interval_steps=2,
                           example_inputs=x)
    # regrow_ratio=0: the hidden Linear is pruned by activity alone; the output layer never is
    assert list(pruner.excluded) == ["conv_fc.13"] and "model's output" in pruner.excluded["conv_fc.13"]
    assert len(_ours(record)) == 1 and "no BatchNorm" not in _ours(record)[0]
    assert ["conv_fc.10"] in pruner.coupled_modules()
    pruner.unwrap_model()


@pytest.mark.parametrize("config,match", [
    ([{"op_names": ["conv_fc.10"], "sparse_ratio": 0.5}], "conv_fc.10 have no BatchNorm with a weight"),
    ([{"op_names": ["conv_fc.13"], "sparse_ratio": 0.5}], "conv_fc.13 are the model's output"),
    ([{"op_types": ["Linear"], "sparse_ratio": 0.5}], "config_list selects no layer that SCA can prune: conv_fc.10: .*"
                                                      "conv_fc.13: its channels are the model's output"),
])
def test_layers_sca_cannot_prune_raise_when_named_or_when_nothing_is_left(config, match):
    model = mnist_net()
    x, _ = mnist_batch()
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        SCAPruner(model, config, None, regrow_ratio=0.1, example_inputs=x)
    assert_unchanged(model, snap)


# ---------------------------------------------------------------------- ranking scopes, parameter redirection
def three_conv_net(affine_bn=True):
    """conv "0" -> BN "1" -> IF "2" -> conv "3" -> BN "4" -> IF "5" -> conv "6" -> BN "7" -> IF "8" -> classifier,
    four channels each (single-step)."""
    torch.manual_seed(0)
    layers = []
    for c_in in (1, 4, 4):
        layers += [nn.Conv2d(c_in, 4, 3, padding=1), nn.BatchNorm2d(4), neuron.IFNode()]
    return nn.Sequential(*layers, nn.Flatten(), nn.Linear(4 * 8 * 8, 10))


def set_activity(pruner, net, scores):
    """Statistics as if training had recorded these mean activities ``{neuron index: per-channel scores}``."""
    for i, values in scores.items():
        pruner.recorder.sums[net[i]] = torch.tensor(values, dtype=torch.float32)
        pruner.recorder.counts[net[i]] = torch.ones(1, dtype=torch.float64)


ACTIVITY = {2: [1.0, 2.0, 3.0, 4.0], 5: [5.0, 6.0, 7.0, 8.0], 8: [4.0, 1.0, 3.0, 2.0]}


def kept_channels(masks):
    return {name: torch.nonzero(channel_keep(t["weight"])).flatten().tolist()
            for name, t in sorted(masks.items()) if name in ("0", "3", "6")}


@pytest.mark.parametrize("config,expected,scopes", [
    # "0" and "3" share global_group_id "g": their 8 channels are ranked together and 4 kept; each keeps at least
    # 4 - floor(4 * 0.75) = 1 (max_sparse_ratio's default (1 + 0.5) / 2): "0" keeps its best, "3" the other three;
    # "6" has no global_group_id: ranked on its own, it keeps its best 2
    ([{"op_names": ["0", "3"], "sparse_ratio": 0.5, "global_group_id": "g"}, {"op_names": ["6"], "sparse_ratio": 0.5}],
     {"0": [3], "3": [1, 2, 3], "6": [0, 2]}, {("0", "3"): True, ("6",): False}),
    # no global_group_id: every layer keeps its own best half
    ([{"op_names": ["0", "3", "6"], "sparse_ratio": 0.5}],
     {"0": [2, 3], "3": [2, 3], "6": [0, 2]}, {("0",): False, ("3",): False, ("6",): False}),
    # one global group capped at 0.5: no layer may lose more than half, so the ranking cannot move channels
    ([{"op_names": ["0", "3", "6"], "sparse_ratio": 0.5, "max_sparse_ratio": 0.5, "global_group_id": 0}],
     {"0": [2, 3], "3": [2, 3], "6": [0, 2]}, {("0", "3", "6"): True}),
], ids=["global-group-and-single", "per-layer", "global-capped"])
def test_global_group_id_ranks_its_layers_together(config, expected, scopes):
    net = three_conv_net()
    pruner = SCAPruner(net, config, None, regrow_ratio=0.0, example_inputs=torch.rand(2, 1, 8, 8))
    set_activity(pruner, net, ACTIVITY)
    masks = pruner.generate_masks()
    pruner.update_masks(masks)
    assert kept_channels(masks) == expected
    names = [g[0] for g in pruner.coupled_modules()]
    assert {tuple(sorted(names[i] for i in s.groups)): s.global_ranking for s in pruner.core.scopes} == scopes
    assert pruner.history[-1]["channels"] == {n: len(k) for n, k in expected.items()}
    pruner.unwrap_model()


@pytest.mark.parametrize("masking", ["reset", "reset-filters", "mask"])
def test_the_core_resets_the_parameters_nni_trains(masking):
    """The core resets masked channels through the parameter redirection: in NNI's wrapper (the
    tensors the optimizer updates), not in the module attributes NNI recomputes at every forward."""
    net = three_conv_net()
    pruner = SCAPruner(net, [{"op_names": ["0", "3", "6"], "sparse_ratio": 0.5}], None, regrow_ratio=0.0,
                       example_inputs=torch.rand(2, 1, 8, 8), masking=masking)
    for i in (0, 1, 3, 4, 6, 7):  # the layers NNI trains, as the core sees them
        for name in ("weight", "bias"):
            held = net[i]._nni_wrapper.pruning_target_spaces[name].target
            assert pruner.core.parameter_of(net[i], name) is held and isinstance(held, nn.Parameter)
            with torch.no_grad():
                held.uniform_(0.5, 1.0)
    set_activity(pruner, net, ACTIVITY)
    pruner.update_masks(pruner.generate_masks())
    for conv, bn in ((0, 1), (3, 4), (6, 7)):
        dead = ~pruner.core.masks[[g[0] for g in pruner.coupled_modules()].index(str(conv))]
        assert int(dead.sum()) == 2
        for i, zeroed in ((bn, masking != "mask"), (conv, masking == "reset-filters")):
            for name in ("weight", "bias"):
                held = pruner.core.parameter_of(net[i], name)
                assert bool((held[dead] == 0).all()) == zeroed, (i, name)
                assert bool((held[~dead] != 0).all())  # kept channels untouched
    pruner.unwrap_model()
    assert pruner.core.parameter_of(net[1], "weight") is net[1].weight  # unwrapped: the module's own again


def test_the_model_carries_no_hook_of_the_core_outside_training():
    """The core's statistics collectors are on the model only while compress() trains (or between
    register_statistics_hooks() and remove_statistics_hooks()); its forward masks never are (NNI's
    output target spaces apply the masks)."""
    model, c = build("digits")
    x, y = batch(c)
    snap = snapshot(model)
    pruner = SCAPruner(model, CONFIG, evaluator(model, x, y), regrow_ratio=0.1, interval_steps=2, example_inputs=x[:2])
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules())
    assert hooks == snap[1] and not pruner.core.collecting
    pruner.register_statistics_hooks()
    assert pruner.core.collecting and pruner.recorder.is_attached
    pruner.remove_statistics_hooks()
    pruner.compress(max_steps=4)
    assert pruner.num_updates == 2 and not pruner.recorder.is_attached
    pruner.unwrap_model()
    assert sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in model.modules()) == snap[1]
    assert not any(hasattr(m, "_nni_wrapper") for m in model.modules())


@pytest.mark.parametrize("kwargs,match", [
    ({"mode": "fancy"}, "mode must be one of"),
    ({"min_channels": 0}, "min_channels must be a positive integer"),
    ({"l1": -1.0}, "l1 must be a non-negative"),
    ({"definition": "spikes"}, "unknown activity definition"),
    ({"regrow_signal": "max"}, "regrow_signal must be one of"),
    ({"masking": "soft"}, "'soft' needs no forward mask"),
    ({"total_times": 0}, "total_times must be a positive integer"),
])
def test_arguments_the_core_refuses_leave_the_model_unwrapped_and_unchanged(kwargs, match):
    model, c = build("digits")
    x, _ = batch(c)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        SCAPruner(model, CONFIG, None, example_inputs=x[:2], **kwargs)
    assert_unchanged(model, snap)

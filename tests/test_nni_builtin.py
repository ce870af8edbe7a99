"""NNI's built-in pruners on spiking networks (NNIBuiltinPruning) and `sca-prune train --method nni-*`."""
import json

import pytest
import torch
import torch.nn as nn

pytest.importorskip("nni")


from sca_plugin.config import ConfigError, TrainConfig  # noqa: E402
from sca_plugin.models import digits_cnn, preact_resnet18, resnet19  # noqa: E402
from sca_plugin.nni import NNIBuiltinPruning  # noqa: E402
from sca_plugin.reporting import model_stats  # noqa: E402
from sca_plugin.runner import run_training  # noqa: E402

from tests.helpers import assert_unchanged, masked_copy, nni_evaluator, outputs64, snapshot  # noqa: E402


def _x(T=2, B=4, C=1, H=8):
    return torch.rand(T, B, C, H, H, generator=torch.Generator().manual_seed(1))


def _evaluator(model, x, y):
    return nni_evaluator(model, x, y, lr=0.01, momentum=0.0)


@pytest.mark.parametrize("name", ["l1norm", "fpgm", "slim", "taylor"])
@pytest.mark.parametrize("arch", ["digits_cnn", "resnet19", "preact_resnet18"])
def test_per_layer_ratio_exact_and_pruned_equals_masked(name, arch):
    torch.manual_seed(0)
    model = {"digits_cnn": lambda: digits_cnn(T=2, width=0.5),
             "resnet19": lambda: resnet19(T=2, width=0.125, in_channels=1),
             "preact_resnet18": lambda: preact_resnet18(T=2, width=0.125, in_channels=1)}[arch]()
    x = _x()
    pruning = NNIBuiltinPruning(model, x, name, 0.5, ignored_layers=[model.classifier])
    evaluator = _evaluator(model, x, torch.randint(0, 10, (4,))) if name in ("slim", "taylor") else None
    masks = pruning.compute_masks(evaluator, 2)
    reference = outputs64(masked_copy(model, masks), x)
    before = model_stats(model, x)["channels"]
    from sca_plugin.nni import ModelSpeedup

    speedup = ModelSpeedup(model, x, masks)
    speedup.speedup_model()
    assert not speedup.kept_candidates  # every masked channel was removed
    after = model_stats(model, x)["channels"]
    for g in pruning.groups:  # every group keeps exactly half of its channels, all its layers alike
        kept = {after[n] for n in g.convs}
        assert kept == {g.size // 2}, (sorted(g.convs), kept, {n: before[n] for n in g.convs})
    torch.testing.assert_close(outputs64(model, x), reference, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ratio", [0.5, 0.8, 0.9])
def test_nearest_rounding_prunes_what_the_per_layer_selection_prunes(ratio):
    """NNI prunes int(n * ratio) channels per group (2 / 4 / 7 of 8 / 16 / 32 kept at 0.8);
    rounding="nearest" makes it keep exactly what sca_plugin's per-layer selection (SCA, the
    Torch-Pruning rows) keeps, so the benchmark rows compare at equal structure."""
    from sca_plugin.selection import select_channels

    x = _x()
    kept = {}
    for rounding in ("down", "nearest"):
        torch.manual_seed(0)
        model = digits_cnn(T=2, width=0.5)
        pruning = NNIBuiltinPruning(model, x, "l1norm", ratio, ignored_layers=[model.classifier], rounding=rounding)
        pruning.prune()
        after = model_stats(model, x)["channels"]
        kept[rounding] = [after[next(iter(g.convs))] for g in pruning.groups]
    sizes = [g.size for g in pruning.groups]
    assert sorted(sizes) == [8, 16, 32]
    assert kept["down"] == [n - int(n * ratio) for n in sizes]
    selection = select_channels([torch.rand(n) for n in sizes], None, None, ratio, 0.0, global_ranking=False,
                                max_pruning_ratio=(1 + ratio) / 2)
    assert kept["nearest"] == [int(k.sum()) for k in selection.keep]
    if ratio == 0.8:
        assert {r: sorted(k) for r, k in kept.items()} == {"down": [2, 4, 7], "nearest": [2, 3, 6]}


def test_nearest_rounding_refused_with_global_ranking_and_for_other_methods():
    model = digits_cnn(T=2, width=0.5)
    before = snapshot(model)
    with pytest.raises(ValueError, match="global_ranking"):
        NNIBuiltinPruning(model, _x(), "fpgm", 0.8, global_ranking=True, rounding="nearest")
    with pytest.raises(ValueError, match="unknown rounding 'up'"):
        NNIBuiltinPruning(model, _x(), "fpgm", 0.8, rounding="up")
    assert_unchanged(model, before)
    with pytest.raises(ConfigError, match="applies to the nni-\\* methods"):
        TrainConfig(method="sca", nni_rounding="nearest")
    with pytest.raises(ConfigError, match="--global-pruning"):
        TrainConfig(method="nni-fpgm", nni_rounding="nearest", global_pruning=True)
    assert TrainConfig(method="nni-fpgm", nni_rounding="nearest").nni_rounding == "nearest"


def test_l1norm_removes_exactly_the_lowest_norm_filters_and_couples_residual_layers():
    torch.manual_seed(0)
    model = resnet19(T=2, width=0.125, in_channels=1)
    x = _x()
    weights = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    pruning = NNIBuiltinPruning(model, x, "l1norm", 0.5, ignored_layers=[model.classifier])
    masks = pruning.compute_masks()
    coupled = [g for g in pruning.groups if len(g.convs) > 1]
    assert coupled, "the residual stages must form coupled groups"
    for g in pruning.groups:
        kept = {n: masks[n]["weight"].reshape(masks[n]["weight"].shape[0], -1).any(1) for n in g.convs}
        first = next(iter(kept.values()))
        assert all(torch.equal(k, first) for k in kept.values())  # one mask per coupled group
        for n in g.bns:  # the BatchNorms on the channels are masked too, weight and bias
            assert torch.equal(masks[n]["weight"].bool(), first) and torch.equal(masks[n]["bias"].bool(), first)
        if len(g.convs) == 1:
            (n,) = g.convs
            norms = weights[n].abs().flatten(1).sum(1)
            lowest = set(torch.argsort(norms)[: g.size // 2].tolist())
            assert set(torch.nonzero(~first).flatten().tolist()) == lowest


def test_bad_input_raises_before_anything_changes():
    model = digits_cnn(T=2, width=0.5)
    x = _x()
    before = snapshot(model)
    with pytest.raises(ValueError, match="unknown NNI pruner"):
        NNIBuiltinPruning(model, x, "l3norm", 0.5)
    for ratio in (0.0, 1.0, -0.1):
        with pytest.raises(ValueError, match="sparse_ratio must be in"):
            NNIBuiltinPruning(model, x, "fpgm", ratio)
    pruning = NNIBuiltinPruning(model, x, "taylor", 0.5, ignored_layers=[model.classifier])
    with pytest.raises(ValueError, match="needs an NNI evaluator"):
        pruning.prune()
    assert_unchanged(model, before)


def test_train_method_nni_resume_equals_uninterrupted(tmp_path):
    def cfg(out, **kw):
        return TrainConfig(method="nni-taylor", epochs=3, oneshot_epoch=1, nni_training_steps=3, width=0.25,
                           time_steps=2, progress=False, train_limit=256, test_limit=128, dense_baseline=False,
                           output_dir=str(out), **kw)

    a = run_training(cfg(tmp_path / "a"), log=lambda *_: None)
    assert a["parameters"]["after"] < a["parameters"]["before"]
    record = a["history"][0]
    assert record["epoch"] == 1 and record["pruner"] == "taylor" and record["training_steps"] == 3
    assert record["sparsity"] == pytest.approx(0.5, abs=0.05)
    assert all(e["sparsity"] == record["sparsity"] for e in a["epochs_log"])

    class Crash(Exception):
        pass

    def crash(epoch):
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):  # after the one-shot pruning: the resumed run must rebuild the structure
        run_training(cfg(tmp_path / "b"), log=lambda *_: None, on_epoch_end=crash)
    b = run_training(cfg(tmp_path / "b", resume=True), log=lambda *_: None)
    sa = torch.load(tmp_path / "a" / "model_state.pth", weights_only=True)
    sb = torch.load(tmp_path / "b" / "model_state.pth", weights_only=True)
    assert sa["history"] == sb["history"] and sa["history"]
    for k in sa["state"]:
        assert torch.equal(sa["state"][k], sb["state"][k]), k
    assert a["accuracy"] == b["accuracy"]
    # the saved history rebuilds the pruned structure from a fresh model
    from sca_plugin.graph import replay_pruning
    from sca_plugin.models import digits_cnn as build

    fresh = build(T=2, width=0.25)
    replay_pruning(fresh, _x(), sa["history"])
    fresh.load_state_dict(sa["state"])
    metrics = json.loads((tmp_path / "a" / "metrics.json").read_text())
    assert sum(p.numel() for p in fresh.parameters()) == metrics["parameters"]["after"]


@pytest.mark.parametrize("values, message", [
    (dict(method="nni-fpgm", regrow_ratio=0.1), "never regrows"),
    (dict(method="nni-l1norm", update_interval=10), "prunes once"),
    (dict(method="nni-slim", pruning_ratio=0.0), "pruning_ratio in"),
    (dict(method="nni-slim", nni_training_steps=0), "nni_training_steps must be at least 1"),
    (dict(method="bnscale", bn_l1=-1e-4), "bn_l1 must be >= 0"),
])
def test_config_errors(values, message):
    with pytest.raises(ConfigError, match=message):
        TrainConfig(**values)


def test_defaults_for_nni_methods():
    cfg = TrainConfig(method="nni-fpgm", epochs=12)
    assert cfg.effective_oneshot_epoch == 3 and cfg.effective_global_pruning is False
    # the dynamic SCA methods rank per layer (measured better on the long benchmarks); the paper's preset and
    # one-shot SCA rank globally, as do the Torch-Pruning criteria
    assert TrainConfig(method="sca").effective_global_pruning is False
    assert TrainConfig(method="sca-prune-only").effective_global_pruning is False
    assert TrainConfig.from_dict({"method": "sca", "preset": "paper"}).effective_global_pruning is True
    assert TrainConfig(method="sca", oneshot_epoch=2, epochs=4).effective_global_pruning is True
    assert TrainConfig(method="l1").effective_global_pruning is True
    assert TrainConfig(method="random-init").effective_global_pruning is True
    assert TrainConfig(method="bnscale").effective_bn_l1 == 1e-4 and TrainConfig(method="l1").effective_bn_l1 == 0.0

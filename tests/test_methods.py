"""The method registry (sca_plugin.methods): the built-ins are specs, and a user's own method
(any Torch-Pruning Importance) works in `sca-prune train --method` and the quality benchmark."""
import json
import sys

import pytest
import torch
import torch_pruning as tp

from sca_plugin import methods
from tests.helpers import importable_module, load_benchmark
from sca_plugin.cli import main
from sca_plugin.config import ConfigError, TrainConfig
from sca_plugin.methods import MethodSpec, build_pruner, get_method, method_names, register_method
from sca_plugin.runner import build_model

# keeps the lowest channel indices of every layer (score n, n-1, ..., 1), whatever the weights:
# which channels a run removed shows that this importance, and nothing else, chose them
MY_METHODS = '''
import torch
import torch_pruning as tp
from sca_plugin.methods import register_method

CALLS = []


class ByIndex(tp.importance.Importance):
    def __call__(self, group):
        CALLS.append(len(group[0].idxs))
        n = len(group[0].idxs)
        return torch.arange(n, 0, -1, dtype=torch.float32)


@register_method("by-index", description="keeps the lowest channel indices", regrows=False)
def by_index(cfg):
    return ByIndex()
'''

FAST = ["--epochs", "2", "--width", "0.25", "--time-steps", "2", "--no-progress", "--train-limit", "64",
        "--test-limit", "32", "--fixed-mask-epochs", "1", "--batch-size", "32", "--no-dense-baseline"]


@pytest.fixture
def my_methods(tmp_path, monkeypatch):
    """A folder with my_methods.py, the current folder; the registry, sys.path and sys.modules
    restored afterwards."""
    yield importable_module(tmp_path, monkeypatch, "my_methods", MY_METHODS)
    sys.modules.pop("my_methods", None)
    if "by-index" in method_names():
        methods.unregister_method("by-index")


def test_every_builtin_is_a_spec_whose_kind_builds_its_pruner():
    from sca_plugin import SCAPruner, SDSNNPruner
    from sca_plugin.nni import NNIBuiltinPruning

    expected = {"dense": type(None), "dynamic": SCAPruner, "init": SCAPruner, "nni": NNIBuiltinPruning,
                "sdsnn": SDSNNPruner}
    x = torch.rand(2, 2, 1, 8, 8)
    for name in method_names():
        spec = get_method(name)
        cfg = TrainConfig(method=name, pruning_ratio=0.5, width=0.25, time_steps=2)
        model = build_model(cfg, 10, 1, (8, 8))
        assert isinstance(build_pruner(cfg, model, x), expected[spec.kind]), name
    assert [m for m in method_names() if get_method(m).baseline] == [
        "l1", "l2", "bnscale", "taylor", "lamp", "random", "nni-l1norm", "nni-fpgm", "nni-slim", "nni-taylor"]
    assert [m for m in method_names() if get_method(m).emergent_sparsity] == ["dense", "sdsnn"]


def test_method_defaults_come_from_the_spec():
    assert TrainConfig(method="sca").effective_regrow_ratio == 0.1
    assert TrainConfig(method="sca", oneshot_epoch=3).effective_regrow_ratio == 0.0  # dynamic defaults only
    assert TrainConfig(method="bnscale").effective_bn_l1 == 1e-4 and TrainConfig(method="l1").effective_bn_l1 == 0
    cfg = TrainConfig(method="nni-fpgm", epochs=40)
    assert (cfg.effective_oneshot_epoch, cfg.effective_global_pruning) == (10, False)
    with pytest.raises(ConfigError, match="'sca-prune-only' never regrows channels: drop --regrow-ratio"):
        TrainConfig(method="sca-prune-only", regrow_ratio=0.1)  # was silently 0
    with pytest.raises(ConfigError, match="'random-init' never regrows"):
        TrainConfig(method="random-init", regrow_ratio=0.1)


def test_a_registered_method_trains_from_the_cli_and_its_importance_chooses_the_channels(my_methods, tmp_path):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--method", "my_methods:by-index", "--no-global-pruning",
                 "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "my_methods:by-index" and metrics["regrow_ratio"] == 0.0
    assert sys.modules["my_methods"].CALLS  # the user's importance scored the groups
    history = torch.load(out / "model_state.pth", weights_only=True)["history"]
    sizes = metrics["channels"]["before"]
    assert history and len(history) == len(sizes)
    assert sorted(root for root, _, _ in history) == sorted(sizes)
    for root, _, removed in history:
        n = sizes[root]
        assert sorted(removed) == list(range(n // 2, n)), root  # the highest indices went, half of each layer
    # and a resumed / reported run finds it again by the same name
    assert main(["train", *FAST, "--method", "my_methods:by-index", "--no-global-pruning", "--resume",
                 "--output-dir", str(out)]) == 0


def test_a_registered_method_runs_in_the_quality_benchmark_and_is_not_a_built_in(my_methods, tmp_path):
    quality = load_benchmark("quality")

    cfg_file = tmp_path / "bench.yaml"
    cfg_file.write_text("dataset: digits\nmodel: digits_cnn\nwidth: 0.25\ntime_steps: 2\nepochs: 2\n"
                        "batch_size: 32\ntrain_limit: 64\ntest_limit: 32\nseeds: [0]\nratios: [0.5]\n"
                        "methods: [l1, my_methods:by-index, mine]\n"
                        "variants: {mine: {method: my_methods:by-index, global_pruning: false}}\n")
    cfg = quality.load_bench_config(cfg_file)
    plan = quality.plan_runs(cfg, tmp_path / "runs")
    assert [(p["row"], p["config"].method) for p in plan] == [
        ("l1", "l1"), ("my_methods:by-index", "my_methods:by-index"), ("mine", "my_methods:by-index")]
    assert get_method("my_methods:by-index").baseline is False  # never "the best built-in"


def test_registration_errors_name_the_fix(my_methods):
    with pytest.raises(ValueError, match="'sca' is built in and cannot be replaced"):
        register_method("sca", importance=lambda cfg: tp.importance.RandomImportance())
    with pytest.raises(ValueError, match="can default only regrow_ratio, bn_l1"):
        register_method("x", importance=lambda cfg: None, defaults={"lr": 0.1})
    with pytest.raises(ValueError, match="needs importance=callable"):
        MethodSpec("x", "init", "no importance")
    assert "x" not in method_names()
    register_method("by-index", importance=lambda cfg: tp.importance.RandomImportance())
    with pytest.raises(ValueError, match="already registered; pass replace=True"):
        register_method("by-index", importance=lambda cfg: tp.importance.RandomImportance())
    spec = register_method("by-index", importance=lambda cfg: tp.importance.RandomImportance(), replace=True)
    assert isinstance(spec, MethodSpec) and spec.kind == "dynamic" and spec.regrows


@pytest.mark.parametrize("method, message", [
    ("nope", "unknown method 'nope'; use one of dense, sca"),
    ("no_such_module:x", "no module 'no_such_module' here; run from the folder that holds no_such_module.py"),
    ("my_methods:other", "registered no method 'other' (decorate its importance factory with "
                         "@sca_plugin.methods.register_method('other'))"),
])
def test_unknown_methods_are_refused_before_anything_is_written(my_methods, tmp_path, capsys, method, message):
    out = tmp_path / "run"
    assert main(["train", *FAST, "--method", method, "--output-dir", str(out)]) == 2
    assert message in capsys.readouterr().err and not out.exists()


def test_is_dense_label_reads_the_registry_and_report_labels():
    from sca_plugin.methods import is_dense_label
    assert is_dense_label("dense")
    assert is_dense_label("dense (lr=0.1)")  # reporting.label_runs' label for dense runs whose settings differ
    assert not is_dense_label("sca")
    assert not is_dense_label("sca (lr=0.1)")
    assert not is_dense_label("densenet")  # a user's label that merely starts like it
    assert not is_dense_label(None)


def test_a_dense_run_labelled_by_its_settings_stays_the_baseline():
    """Two dense runs with different lr get labels; they still count as dense (ratio 0), so a
    report computes the pruned rows' deltas against them instead of treating them as pruned."""
    from sca_plugin.plots.runs import _ratio, _relative_costs
    from sca_plugin.reporting import label_runs
    runs = [{"method": "dense", "dataset": "digits", "model": "m", "pruning_ratio": 0.5, "seed": 0,
             "config": {"method": "dense", "lr": lr}} for lr in (0.1, 0.03)]
    labelled = label_runs(runs)
    assert {r["method"] for r in labelled} == {"dense (lr=0.1)", "dense (lr=0.03)"}
    assert all(r["pruning_ratio"] == 0.0 for r in labelled)
    assert all(_ratio(r) == 0.0 for r in labelled)
    # costs relative to the dense baseline: 100% for a labelled dense row, not "% of unpruned"
    groups = [{"method": m, "parameters": p, "parameters_before": 1000} for m, p in
              (("dense (lr=0.1)", 1000), ("sca", 200))]
    values, unit = _relative_costs(groups, "parameters")
    assert unit == "% of dense" and values == [100.0, 20.0]

"""`sca-prune` end to end on digits: outputs, resume equivalence, and one-line errors (exit 2)."""
import json
import subprocess
import sys

import pytest
import torch

from tests.helpers import assert_not_silent, importable_module, outputs64
from sca_plugin.cli import main
from sca_plugin.config import TrainConfig
from sca_plugin.runner import run_training

# batch 16: enough steps in 3 epochs for the run to learn (65% masked, 82% dense), so that comparisons of
# its outputs and accuracies are not between networks that guess
TINY = ["--epochs", "3", "--width", "0.25", "--time-steps", "2", "--no-progress", "--train-limit", "256",
        "--test-limit", "128", "--fixed-mask-epochs", "1", "--batch-size", "16"]


def tiny_config(out, **kw):
    values = dict(epochs=3, width=0.25, time_steps=2, progress=False, train_limit=256, test_limit=128,
                  fixed_mask_epochs=1, batch_size=16, output_dir=str(out))
    values.update(kw)
    return TrainConfig(**values)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sca"
    assert main(["train", *TINY, "--output-dir", str(out)]) == 0
    return out


def test_train_writes_metrics_model_and_checkpoint(finished_run):
    metrics = json.loads((finished_run / "metrics.json").read_text())
    for key in ("accuracy", "parameters", "macs", "synops", "activation_sparsity", "firing_rates", "energy",
                "channels", "history", "epochs_log", "wall_time_s", "importance_scores"):
        assert key in metrics, key
    assert metrics["method"] == "sca" and metrics["dataset"] == "digits"
    assert metrics["accuracy"]["final"] > 0.2 and metrics["accuracy"]["dense"] > 0.2  # above chance (0.1)
    assert metrics["accuracy"]["masked"] == metrics["accuracy"]["final"]  # masked == finalized
    assert metrics["parameters"]["after"] < metrics["parameters"]["before"]
    assert len(metrics["history"]) == 2 and len(metrics["epochs_log"]) == 3
    # each epoch's own time (training, mask updates, evaluation) is recorded and fits in the run's wall time
    seconds = [e["seconds"] for e in metrics["epochs_log"]]
    assert all(s > 0 for s in seconds) and sum(seconds) < metrics["wall_time_s"]
    model = torch.load(finished_run / "model.pt", weights_only=False)
    state = torch.load(finished_run / "model_state.pth", weights_only=True)
    assert set(state["state"]) == set(model.state_dict())
    assert sum(p.numel() for p in model.parameters()) == metrics["parameters"]["after"]
    # the last checkpoint holds the masked model and its pruner: rebuilt from it, it computes what the
    # finalized model.pt computes, on every test image
    from sca_plugin.datasets import load_dataset
    from sca_plugin.methods import build_pruner
    from sca_plugin.runner import build_model

    checkpoint = torch.load(finished_run / "checkpoint.pt", weights_only=False)
    assert checkpoint["epoch"] == 3 and len(checkpoint["epochs_log"]) == 3
    cfg = TrainConfig.from_dict(checkpoint["config"])
    splits = load_dataset(cfg.dataset, time_steps=cfg.time_steps, seed=cfg.seed, train_limit=cfg.train_limit,
                          test_limit=cfg.test_limit)
    x = torch.stack([splits.test[i][0] for i in range(len(splits.test))])
    masked = build_model(cfg, splits.num_classes, splits.in_channels, splits.input_size, data_kind=splits.kind)
    pruner = build_pruner(cfg, masked, x[:2])
    masked.load_state_dict(checkpoint["model"])
    pruner.load_state_dict(checkpoint["pruner"])
    kept = {pruner.module_names[root]: int(k.sum()) for (root, _), k in zip(pruner.groups, pruner.masks)}
    assert kept == metrics["channels"]["after"]
    expected = outputs64(model, x)
    assert_not_silent(expected)
    torch.testing.assert_close(outputs64(masked, x), expected, atol=1e-6, rtol=0)


def test_eval_reproduces_the_final_accuracy(finished_run, capsys):
    assert main(["eval", str(finished_run)]) == 0
    result = json.loads(capsys.readouterr().out)
    metrics = json.loads((finished_run / "metrics.json").read_text())
    assert result["test_accuracy"] == pytest.approx(metrics["accuracy"]["final"])


def test_report_writes_figures(finished_run, tmp_path, capsys):
    assert main(["report", str(finished_run), "--out", str(tmp_path / "rep")]) == 0
    pngs = list((tmp_path / "rep").glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and p.stat().st_size > 2000 for p in pngs)


def test_resume_after_a_crash_equals_the_uninterrupted_run(tmp_path):
    run_training(tiny_config(tmp_path / "a", dense_baseline=False), log=lambda *_: None)

    class Crash(Exception):
        pass

    def crash_after_two(epoch):
        if epoch == 2:
            raise Crash

    with pytest.raises(Crash):
        run_training(tiny_config(tmp_path / "b", dense_baseline=False), log=lambda *_: None, on_epoch_end=crash_after_two)
    assert not (tmp_path / "b" / "metrics.json").exists()
    assert main(["train", *TINY, "--no-dense-baseline", "--output-dir", str(tmp_path / "b"), "--resume"]) == 0
    a = torch.load(tmp_path / "a" / "model_state.pth", weights_only=True)
    b = torch.load(tmp_path / "b" / "model_state.pth", weights_only=True)
    assert a["history"] == b["history"]
    for k in a["state"]:
        assert torch.equal(a["state"][k], b["state"][k]), k
    ma = json.loads((tmp_path / "a" / "metrics.json").read_text())
    mb = json.loads((tmp_path / "b" / "metrics.json").read_text())
    assert ma["history"] == mb["history"] and ma["accuracy"] == mb["accuracy"]


def test_config_file_mirrors_flags(tmp_path):
    cfg_file = tmp_path / "run.yaml"
    cfg_file.write_text("method: sca-prune-only\npruning-ratio: 0.3\nepochs: 2\nwidth: 0.25\ntime_steps: 2\n"
                        "train_limit: 128\ntest_limit: 64\nfixed_mask_epochs: 0\nprogress: false\ndense_baseline: false\n")
    out = tmp_path / "cfg"
    assert main(["train", "--config", str(cfg_file), "--pruning-ratio", "0.4", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "sca-prune-only" and metrics["pruning_ratio"] == 0.4  # the flag wins
    assert metrics["regrow_ratio"] == 0.0 and all(h["regrown"] == 0 for h in metrics["history"])


@pytest.mark.parametrize("args, needle", [
    (["train", "--dataset", "imagenet"], "unknown dataset"),
    (["train", "--method", "magic"], "unknown method"),
    (["train", "--model", "resnet1000"], "unknown model"),
    (["train", "--model", "no_such_module:build"], "cannot import model"),
    (["train", "--dataset", "fashion-mnist", "--data-root", "/nonexistent/fmnist"], "fashion"),
    (["train", "--pruning-ratio", "1.5"], "pruning_ratio"),
    (["eval", "/nonexistent/run"], "does not exist"),
])
def test_bad_input_is_one_line_and_exit_2(args, needle, tmp_path, capsys):
    code = main([*args, "--output-dir", str(tmp_path / "x")] if args[0] == "train" else args)
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert len(err.splitlines()) == 1 and err.startswith("sca-prune: error:") and needle in err.lower()
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_unknown_config_key(tmp_path, capsys):
    f = tmp_path / "bad.json"
    f.write_text(json.dumps({"epochz": 3}))
    assert main(["train", "--config", str(f), "--output-dir", str(tmp_path / "x")]) == 2
    assert "unknown setting(s) ['epochz']" in capsys.readouterr().err


def test_existing_run_is_never_overwritten(finished_run, capsys):
    before = (finished_run / "metrics.json").read_bytes()
    assert main(["train", *TINY, "--output-dir", str(finished_run)]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (finished_run / "metrics.json").read_bytes() == before


def test_corrupted_or_mismatched_checkpoint(tmp_path, capsys):
    out = tmp_path / "c"
    out.mkdir()
    (out / "checkpoint.pt").write_bytes(b"not a checkpoint")
    assert main(["train", *TINY, "--output-dir", str(out), "--resume"]) == 2
    assert "unreadable or truncated" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == b"not a checkpoint"
    torch.save({"config": tiny_config(out, pruning_ratio=0.3).to_dict()}, out / "checkpoint.pt")
    saved = (out / "checkpoint.pt").read_bytes()
    assert main(["train", *TINY, "--pruning-ratio", "0.5", "--output-dir", str(out), "--resume"]) == 2
    assert "other settings: --pruning-ratio 0.5 (the run has 0.3)" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == saved
    assert main(["train", *TINY, "--output-dir", str(out), "--resume"]) == 2  # settings agree; no weights in it
    assert "checkpoint.pt is incomplete (no epoch, model" in capsys.readouterr().err
    assert (out / "checkpoint.pt").read_bytes() == saved


def test_module_entry_point_help():
    res = subprocess.run([sys.executable, "-m", "sca_plugin", "--help"], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and "train" in res.stdout and "report" in res.stdout


def test_train_help_lists_the_names_a_setting_takes(capsys):
    """Settings that take one of a few names show them as argparse shows choices (TrainConfig checks them)."""
    from sca_plugin.config import SETTING_CHOICES

    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    assert "--nni-rounding {down,nearest}" in text and "--lr-schedule {cosine,step}" in text
    for name, allowed in SETTING_CHOICES.items():
        assert "--" + name.replace("_", "-") + " {" + ",".join(allowed) + "}" in text, name


def test_export_torchscript_loads_with_plain_torch(finished_run, tmp_path, capsys):
    out = tmp_path / "m.ts"
    assert main(["export", str(finished_run), "--format", "torchscript", "--out", str(out)]) == 0
    scripted = torch.jit.load(str(out))
    model = torch.load(finished_run / "model.pt", weights_only=False)
    model.eval()
    x = torch.rand(3, 1, 8, 8) * 2
    from spikingjelly.activation_based import functional

    with torch.no_grad():
        expected = model(x)
    functional.reset_net(model)
    assert torch.allclose(scripted(x), expected, atol=1e-5)


def test_export_nir_refuses_max_pooling_with_one_line(finished_run, tmp_path, capsys):
    pytest.importorskip("nir")
    assert main(["export", str(finished_run), "--format", "nir", "--out", str(tmp_path / "m.nir")]) == 2
    err = capsys.readouterr().err
    assert "max pooling" in err.lower() and len(err.strip().splitlines()) == 1


def test_event_data_run_exports_to_nir_and_round_trips(tmp_path):
    pytest.importorskip("nir")
    from spikingjelly.activation_based import functional

    from sca_plugin.datasets import load_dataset
    from sca_plugin.export import import_nir

    out = tmp_path / "dvs"
    assert main(["train", "--dataset", "nmnist-sim", "--model", "dvs_net", "--width", "0.125", "--epochs", "1",
                 "--time-steps", "4", "--train-limit", "64", "--test-limit", "32", "--fixed-mask-epochs", "0",
                 "--no-dense-baseline", "--no-progress", "--output-dir", str(out)]) == 0
    assert json.loads((out / "metrics.json").read_text())["simulated_data"] is True
    assert main(["export", str(out), "--format", "nir", "--out", str(tmp_path / "dvs.nir")]) == 0
    model = torch.load(out / "model.pt", weights_only=False).eval()
    imported = import_nir(str(tmp_path / "dvs.nir"))
    frames = torch.stack([load_dataset("nmnist-sim", time_steps=4, test_limit=4).test[i][0] for i in range(4)], 1)
    with torch.no_grad():
        expected = model(frames)
        functional.reset_net(model)
        got = imported(frames)
    assert got.shape == expected.shape and (got - expected).abs().max() <= 1e-5


def test_progress_bars_do_not_change_the_numbers(tmp_path):
    on = run_training(tiny_config(tmp_path / "on", progress=True, dense_baseline=False), log=lambda *_: None)
    off = run_training(tiny_config(tmp_path / "off", progress=False, dense_baseline=False), log=lambda *_: None)
    assert [e["loss"] for e in on["epochs_log"]] == [e["loss"] for e in off["epochs_log"]]
    assert on["history"] == off["history"]


@pytest.mark.parametrize("method", ["dense", "sca-prune-only", "random-init", "l1", "l2", "bnscale", "taylor",
                                    "lamp", "random"])
def test_every_method_trains_prunes_and_finalizes(method, tmp_path):
    m = run_training(tiny_config(tmp_path / method, method=method, epochs=2, dense_baseline=False),
                     log=lambda *_: None)
    assert m["method"] == method
    if method == "dense":
        assert m["history"] == [] and m["parameters"]["after"] == m["parameters"]["before"]
    else:
        assert m["accuracy"]["masked"] == m["accuracy"]["final"]
        assert m["parameters"]["after"] < m["parameters"]["before"]
        n = sum(m["channels"]["before"].values())
        assert sum(m["channels"]["after"].values()) == n - round(0.5 * n)
    if method == "random-init":  # the mask is drawn once, before training, and never changes
        assert len(m["history"]) == 1 and m["history"][0]["step"] == 0


def test_oneshot_then_finetune(tmp_path):
    m = run_training(tiny_config(tmp_path / "os", method="l1", oneshot_epoch=1, dense_baseline=False),
                     log=lambda *_: None)
    assert len(m["history"]) == 1 and [e["sparsity"] for e in m["epochs_log"]] == [0.5, 0.5, 0.5]


def test_user_model_from_module_callable_and_tensorboard(tmp_path, monkeypatch):
    import pathlib

    monkeypatch.syspath_prepend(str(pathlib.Path(__file__).resolve().parents[1] / "examples"))
    out = tmp_path / "own"
    tiny = [a for a in TINY if a not in ("--width", "0.25", "--time-steps", "2")]  # MySNN() takes no arguments
    assert main(["train", *tiny, "--model", "own_network:MySNN", "--no-dense-baseline", "--tensorboard",
                 "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "own_network:MySNN" and metrics["parameters"]["after"] < metrics["parameters"]["before"]
    assert metrics["model_settings_unused"] == ["time_steps", "width", "neuron", "step_mode"]
    assert any((out / "tb").iterdir())


def test_regrow_decay_cosine_reaches_zero_at_the_last_update(tmp_path):
    m = run_training(tiny_config(tmp_path / "run", epochs=4, fixed_mask_epochs=1, regrow_decay="cosine",
                                 dense_baseline=False), log=lambda *_: None)
    assert [h["regrow_ratio"] for h in m["history"]] == pytest.approx([0.1, 0.05, 0.0])
    from sca_plugin.config import ConfigError

    with pytest.raises(ConfigError, match="regrows nothing"):
        TrainConfig(method="sca-prune-only", regrow_decay="cosine")


def test_sca_normalizer_reaches_the_importance(tmp_path):
    from sca_plugin.config import ConfigError
    from sca_plugin.models import digits_cnn
    from sca_plugin.methods import build_pruner

    model = digits_cnn(T=2, width=0.25)
    pruner = build_pruner(TrainConfig(method="sca", sca_normalizer="mean", global_pruning=True), model,
                          torch.rand(2, 2, 1, 8, 8))
    assert pruner.importance.normalizer == "mean"
    # per-layer ranking (the dynamic default): a per-group rescale cannot change it, so it is refused
    with pytest.raises(ConfigError, match="add --global-pruning"):
        TrainConfig(method="sca", sca_normalizer="mean")
    with pytest.raises(ConfigError, match="add --global-pruning"):
        TrainConfig(method="sca", sca_normalizer="mean", global_pruning=False)
    with pytest.raises(ConfigError, match="applies to the SCA methods"):
        TrainConfig(method="l1", sca_normalizer="mean")
    with pytest.raises(ConfigError, match="sca_normalizer must be"):
        TrainConfig(method="sca", sca_normalizer="median")


# --------------------------------------------------------------------------- issue 12, CLI items 9-13
FAST = ["--epochs", "2", "--width", "0.25", "--time-steps", "2", "--no-progress", "--train-limit", "64",
        "--test-limit", "32", "--no-dense-baseline"]
MY_MODELS = """
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron


class CSNN(nn.Module):
    def __init__(self, num_classes, T):
        super().__init__()
        self.T = T
        self.features = nn.Sequential(layer.Conv2d(1, 8, 3, padding=1, bias=False), layer.BatchNorm2d(8),
                                      neuron.IFNode(), layer.Conv2d(8, 8, 3, padding=1, bias=False),
                                      layer.BatchNorm2d(8), neuron.IFNode())
        self.classifier = layer.Linear(8 * 8 * 8, num_classes)
        functional.set_step_mode(self, "m")

    def forward(self, x):
        x = x.unsqueeze(0).repeat(self.T, 1, 1, 1, 1)
        return self.classifier(self.features(x).flatten(2)).mean(0)


def csnn(num_classes, T):  # no width, neuron or step_mode
    return CSNN(num_classes, T)
"""


def _files(run):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in sorted(run.iterdir()) if p.is_file()}


def test_bad_pruner_settings_are_refused_before_the_dense_baseline(tmp_path, capsys):
    out = tmp_path / "run"
    args = ["train", *FAST[:-1], "--regrow-ratio", "0.6", "--pruning-ratio", "0.5", "--output-dir", str(out)]
    assert main(args) == 2  # with the dense baseline (the default)
    err = capsys.readouterr()
    assert "regrow_ratio (0.6) is larger than pruning_ratio (0.5)" in err.err
    assert "dense baseline" not in err.out and not out.exists()  # nothing trained, nothing written


def test_resume_of_a_finished_run_says_so_and_changes_nothing(finished_run, capsys):
    before = _files(finished_run)
    for args in (["train", *TINY, "--output-dir", str(finished_run), "--resume"],  # the flags again
                 ["train", "--output-dir", str(finished_run), "--resume"]):        # or none: the stored ones
        assert main(args) == 0, capsys.readouterr().err
        assert "is a finished run" in capsys.readouterr().out
        assert _files(finished_run) == before
    assert main(["train", "--output-dir", str(finished_run), "--resume", "--epochs", "5", "--lr", "0.5",
                 "--global-pruning"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1
    assert "--epochs 5 (the run has 3); --lr 0.5 (the run has 0.1); --global-pruning (the run has False, " \
           "the default)" in err
    assert _files(finished_run) == before


def test_resume_without_flags_continues_with_the_stored_settings(tmp_path):
    class Crash(Exception):
        pass

    def crash(epoch):
        raise Crash

    cfg = TrainConfig(epochs=2, width=0.25, time_steps=2, progress=False, train_limit=64, test_limit=32, lr=0.05,
                      dense_baseline=False, pruning_ratio=0.3, output_dir=str(tmp_path / "run"))
    with pytest.raises(Crash):
        run_training(cfg, log=lambda *_: None, on_epoch_end=crash)
    assert main(["train", "--output-dir", str(tmp_path / "run"), "--resume", "--progress"]) == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    stored = {k: v for k, v in metrics["config"].items() if k not in ("resume", "progress")}
    assert stored == {k: v for k, v in cfg.to_dict().items() if k not in ("resume", "progress")}
    assert metrics["config"]["resume"] and metrics["config"]["progress"]  # run-free settings may change


def test_wrong_type_in_a_config_file_names_the_key(tmp_path, capsys):
    f = tmp_path / "run.yaml"
    f.write_text("epochs: two\n")
    assert main(["train", "--config", str(f), "--output-dir", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"sca-prune: error: config file {f}: setting 'epochs' must be an integer, got 'two' (str)"
    from sca_plugin.cli import _train_config, build_parser
    from sca_plugin.config import ConfigError

    f.write_text("lr: 1e-3\n")  # YAML 1.1 reads this as a string; it is the number the user wrote
    assert _train_config(build_parser().parse_args(["train", "--config", str(f)])).lr == 0.001
    with pytest.raises(ConfigError, match="setting 'dense_baseline' must be true or false, got 1"):
        TrainConfig(dense_baseline=1)


def test_console_script_imports_a_model_module_from_the_current_folder(tmp_path):
    import shutil
    from pathlib import Path

    script = Path(sys.executable).with_name("sca-prune")
    if not script.is_file():
        script = shutil.which("sca-prune")
        if script is None:
            pytest.skip("the sca-prune console script is not installed")
    (tmp_path / "my_models.py").write_text("def csnn(num_classes):\n    raise ValueError('my_models.csnn called')\n")
    res = subprocess.run([str(script), "train", "--model", "my_models:csnn", "--no-dense-baseline",
                          "--output-dir", str(tmp_path / "run")], cwd=tmp_path, capture_output=True, text=True,
                         timeout=300)
    assert res.returncode == 2 and res.stderr.strip().splitlines()[-1] == "sca-prune: error: my_models.csnn called"


@pytest.fixture
def own_module(tmp_path, monkeypatch):
    """A folder with my_models.py, the current folder; sys.path and sys.modules restored afterwards."""
    yield importable_module(tmp_path, monkeypatch, "my_models", MY_MODELS)
    sys.modules.pop("my_models", None)


def test_model_flags_a_factory_does_not_take_are_refused_and_eval_names_a_missing_module(own_module, tmp_path,
                                                                                        monkeypatch, capsys):
    out = tmp_path / "run"
    fast = [a for a in FAST if a not in ("--width", "0.25")]
    assert main(["train", *fast, "--model", "my_models:csnn", "--step-mode", "s", "--neuron", "plif",
                 "--output-dir", str(out)]) == 2
    err = capsys.readouterr().err
    assert "model 'my_models:csnn' does not take neuron, step_mode, so --neuron plif, --step-mode s would be " \
           "recorded but not used" in err and not out.exists()
    assert main(["train", *fast, "--model", "my_models:csnn", "--output-dir", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model_settings_unused"] == ["width", "neuron", "step_mode"]  # at their defaults, not applied
    capsys.readouterr()
    monkeypatch.chdir(tmp_path)  # elsewhere: my_models is not importable
    monkeypatch.setattr(sys, "path", [p for p in sys.path if p not in ("", str(own_module))])
    monkeypatch.delitem(sys.modules, "my_models")
    assert main(["eval", str(out)]) == 2
    err = capsys.readouterr().err
    assert "the model's code is in module 'my_models', which is not importable here (the file itself is fine)" in err
    assert "PYTHONPATH" in err and "damaged" not in err


def test_report_separates_runs_whose_settings_differ_and_accepts_a_parent_folder(finished_run, tmp_path):
    template = json.loads((finished_run / "metrics.json").read_text())
    parent = tmp_path / "sweep"
    for name, seed, global_pruning, acc in (("g0", 0, None, 0.9), ("g1", 1, None, 0.8), ("l0", 0, True, 0.3)):
        run = json.loads(json.dumps(template))
        run["config"].update(seed=seed, global_pruning=global_pruning, output_dir=f"runs/{name}", device="cuda")
        run["seed"], run["accuracy"]["final"] = seed, acc
        (parent / name).mkdir(parents=True)
        (parent / name / "metrics.json").write_text(json.dumps(run))
    for given in ([str(parent / name) for name in ("g0", "g1", "l0")], [str(parent)]):  # runs, or their folder
        assert main(["report", *given, "--out", str(tmp_path / "rep")]) == 0
        rows = [line for line in (tmp_path / "rep" / "report.md").read_text().splitlines() if line.startswith("| sca")]
        assert len(rows) == 2
        assert rows[0].startswith("| sca (global_pruning=False) | 0.5 | 0, 1 | 85.00 ± 7.07 |")  # seeds averaged
        assert rows[1].startswith("| sca (global_pruning=True) | 0.5 | 0 | 30.00 |")

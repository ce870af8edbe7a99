"""End-to-end test of benchmarks/quality.py on a tiny config: outputs exist and parse, and a second
invocation reuses the finished runs instead of retraining them."""
from tests.helpers import load_benchmark
import json
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"

TINY = """
dataset: digits
model: digits_cnn
width: 0.25
time_steps: 2
epochs: 2
batch_size: 64
lr: 0.1
train_limit: 128
test_limit: 128
seeds: [0]
ratios: [0.5]
methods: [dense, sca]
"""


def _load():
    return load_benchmark("quality")


def test_quality_tiny_sweep_and_resume(tmp_path, capsys):
    quality = _load()
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY)
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--config", str(config), "--out", str(out), "--runs-dir", str(runs)]
    assert quality.main(argv) == 0

    metrics = {p.parent.name: p for p in runs.glob("*/metrics.json")}
    assert set(metrics) == {"dense-s0", "sca-r0.5-s0"}
    summary = json.loads((out / "summary.json").read_text())
    groups = {(g["method"], g["pruning_ratio"]): g for g in summary["groups"]}
    assert set(groups) == {("dense", 0.0), ("sca", 0.5)}
    for g in groups.values():
        assert g["n"] == 1 and 0.0 <= g["accuracy_mean"] <= 1.0 and g["accuracy_std"] == 0.0
        assert g["parameters"] > 0 and g["macs_per_step"] > 0 and g["synops"] is not None
        assert g["activation_sparsity"] is not None and g["channels_after_mean"]
    assert groups[("sca", 0.5)]["parameters"] < groups[("dense", 0.0)]["parameters"]
    assert sorted(summary["sweep"]["trained"]) == ["dense-s0", "sca-r0.5-s0"] and summary["sweep"]["reused"] == []
    for key in ("cpu_model", "cpu_cores", "torch_version", "date", "command"):
        assert summary["machine"][key]

    table = (out / "table.md").read_text()
    assert "Command:" in table and "Machine:" in table
    # each run records where it ran (threads change CPU results), and the table counts the runs per setting
    import torch
    env = json.loads(metrics["sca-r0.5-s0"].read_text())["environment"]
    assert env["torch_threads"] == torch.get_num_threads() and env["torch_version"] == torch.__version__
    assert f"{env['torch_threads']} torch thread(s), torch {torch.__version__} (2 runs)" in table
    assert "- `sca`: dynamic: masks updated each epoch for 1 of 2 epochs; per-layer ranking; regrow_ratio 0.1 of all channels" in table
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| method")]
    assert len(rows) == 2 and any(r.startswith("| sca | 0.5 | 1 |") for r in rows)

    for name in ("fig_accuracy_vs_params.png", "fig_accuracy_vs_synops.png", "fig_accuracy_vs_ratio.png"):
        data = (out / name).read_bytes()
        assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 5000
    for name in metrics:
        assert json.loads((out / "runs" / f"{name}.json").read_text())["method"] in ("dense", "sca")

    # second invocation: nothing retrained, metrics.json untouched
    mtimes = {n: p.stat().st_mtime_ns for n, p in metrics.items()}
    capsys.readouterr()
    assert quality.main(argv) == 0
    assert "not retrained" in capsys.readouterr().out
    assert {n: p.stat().st_mtime_ns for n, p in metrics.items()} == mtimes
    summary2 = json.loads((out / "summary.json").read_text())
    assert summary2["sweep"]["trained"] == [] and sorted(summary2["sweep"]["reused"]) == sorted(metrics)
    assert [g["accuracy_mean"] for g in summary2["groups"]] == [g["accuracy_mean"] for g in summary["groups"]]


def test_paired_differences_add_the_best_builtin_with_the_same_channels():
    quality = _load()

    def g(method, acc, chans, baseline=True):
        return {"method": method, "pruning_ratio": 0.8, "seeds": [0, 1], "accuracy_per_seed": [acc, acc + 0.01],
                "accuracy_mean": acc + 0.005, "channels_after_mean": chans, "baseline": baseline}

    sca = g("sca", 0.95, {"a": 2.0, "b": 3.0}, baseline=False)
    nni = g("nni-fpgm", 0.97, {"a": 2.0, "b": 4.0})               # the best, but one channel more
    nearest = g("nni-fpgm-nearest", 0.96, {"a": 2.0, "b": 3.0})
    worse = g("nni-l1norm-nearest", 0.90, {"a": 2.0, "b": 3.0})
    global_ = g("sca-global", 0.94, {"a": 2.5, "b": 2.5}, baseline=False)
    quality.paired_differences([sca, nni, nearest, worse, global_])
    assert sca["paired"]["best built-in"]["row"] == "nni-fpgm"
    same = sca["paired"]["best built-in, same channels"]
    assert same["row"] == "nni-fpgm-nearest" and abs(same["mean"] + 1.0) < 1e-9 and same["n"] == 2
    assert nearest["paired"]["best built-in, same channels"]["row"] == "nni-l1norm-nearest"  # never itself
    assert "best built-in, same channels" not in global_["paired"]   # no built-in keeps 2.5 / 2.5


def test_run_environments_counts_settings_and_unrecorded_runs():
    quality = _load()
    a = {"cpu_model": "A", "torch_threads": 1, "torch_version": "2"}
    text = quality.run_environments({"x": {"environment": a}, "y": {"environment": dict(a)},
                                     "z": {"environment": dict(a, torch_threads=2)}, "old": {}})
    assert text.startswith("A, 1 torch thread(s), torch 2 (2 runs); ")
    assert "A, 2 torch thread(s), torch 2 (1 run)" in text and "not recorded" in text


def test_quality_variants_are_rows_of_their_own(tmp_path):
    quality = _load()
    config = tmp_path / "variants.yaml"
    config.write_text(TINY.replace("methods: [dense, sca]", "methods: [l1, l1-once, nni-fpgm, sdsnn]") + (
        "variants:\n  l1-once: {method: l1, oneshot_epoch: 1}\n"))
    out, runs = tmp_path / "out", tmp_path / "runs"
    assert quality.main(["--config", str(config), "--out", str(out), "--runs-dir", str(runs)]) == 0
    assert {p.parent.name for p in runs.glob("*/metrics.json")} == {"l1-r0.5-s0", "l1-once-r0.5-s0", "nni-fpgm-r0.5-s0",
                                                                 "sdsnn-s0"}  # no ratio for SD-SNN
    assert json.loads((runs / "l1-once-r0.5-s0" / "metrics.json").read_text())["method"] == "l1"
    summary = json.loads((out / "summary.json").read_text())
    schedules = {g["method"]: g["schedule"] for g in summary["groups"]}
    assert set(schedules) == {"l1", "l1-once", "nni-fpgm", "sdsnn"}
    assert schedules["sdsnn"].startswith("SD-SNN structural development each epoch for 1 of 2 epochs")
    assert schedules["l1-once"].startswith("one-shot after epoch 1, then fine-tuning; global ranking")
    assert schedules["l1"].startswith("dynamic")
    assert schedules["nni-fpgm"].startswith("one-shot after epoch 1, then fine-tuning; per-layer ranking")
    nni_group = next(g for g in summary["groups"] if g["method"] == "nni-fpgm")
    assert all(v == 0.5 * b for v, b in zip(nni_group["channels_after_mean"].values(),
                                            nni_group["channels_before"].values()))
    table = (out / "table.md").read_text()
    assert "| l1-once | 0.5 | 1 |" in table and "variant {'method': 'l1', 'oneshot_epoch': 1}" in table
    assert "| sdsnn | (0.00) | 1 |" in table

    overview = load_benchmark("quality_overview")
    assert overview.main([str(out), "--out", str(tmp_path / "overview.md")]) == 0
    text = (tmp_path / "overview.md").read_text()
    accs = {g["method"]: 100 * g["accuracy_mean"] for g in summary["groups"] if g["method"] != "sdsnn"}
    assert "| variants | sdsnn |" in text
    best = max(accs, key=accs.get)
    assert f"| {best} | **{accs[best]:.2f} ± 0.00** (n=1" in text
    assert all(f"| {m} | " in text for m in accs)


def test_quality_refuses_stale_and_unfinished_runs(tmp_path):
    quality = _load()
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("methods: [dense, sca]", "methods: [dense]"))
    runs = tmp_path / "runs"
    argv = ["--config", str(config), "--out", str(tmp_path / "out"), "--runs-dir", str(runs)]
    assert quality.main(argv) == 0
    # the same runs folder with other settings: refused, not silently mixed
    config.write_text(TINY.replace("methods: [dense, sca]", "methods: [dense]").replace("epochs: 2", "epochs: 3"))
    assert quality.main(argv) == 2
    # an unfinished run (checkpoint, no metrics.json, no committed copy) needs --resume
    (runs / "dense-s0" / "metrics.json").unlink()
    (tmp_path / "out" / "runs" / "dense-s0.json").unlink()
    (runs / "dense-s0" / "checkpoint.pt").write_bytes(b"")
    config.write_text(TINY.replace("methods: [dense, sca]", "methods: [dense]"))
    assert quality.main(argv) == 2


def test_quality_config_errors(tmp_path):
    quality = _load()
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("methods: [dense, sca]", "methods: [dense, magic]"))
    with pytest.raises(quality.ConfigError, match="unknown method"):
        quality.load_bench_config(bad)
    bad.write_text(TINY + "overrides:\n  sca: {seed: 3}\n")
    with pytest.raises(quality.ConfigError, match="harness sets itself"):
        quality.load_bench_config(bad)


@pytest.mark.parametrize("variants, message", [
    ("  l1: {method: l2}\n", "has the name of a method"),
    ("  mine: {oneshot_epoch: 1}\n", "needs 'method: "),
    ("  mine: {method: l1, seed: 2}\n", "harness sets itself"),
])
def test_quality_variant_errors(tmp_path, variants, message):
    quality = _load()
    bad = tmp_path / "bad.yaml"
    bad.write_text(TINY.replace("methods: [dense, sca]", "methods: [dense, mine]") + "variants:\n" + variants)
    with pytest.raises(quality.ConfigError, match=message):
        quality.load_bench_config(bad)


def test_quality_counts_collapsed_runs_and_pairs_seeds(tmp_path):
    """A deliberately diverged row (lr 200) is flagged as collapsed in metrics.json, counted in its
    table row and not in the healthy row's; paired differences to the best built-in and to a
    named row are computed from the same seeds."""
    quality = _load()
    config = tmp_path / "collapse.yaml"
    config.write_text(TINY.replace("methods: [dense, sca]", "methods: [sca, sca-diverged, l1]")
                      .replace("seeds: [0]", "seeds: [0, 1]")
                      + "paired_with: [sca]\nvariants:\n  sca-diverged: {method: sca, lr: 200.0}\n")
    out, runs = tmp_path / "out", tmp_path / "runs"
    assert quality.main(["--config", str(config), "--out", str(out), "--runs-dir", str(runs)]) == 0
    m = json.loads((runs / "sca-diverged-r0.5-s0" / "metrics.json").read_text())
    assert m["collapse"]["collapsed"] and m["collapse"]["reasons"]
    groups = {g["method"]: g for g in json.loads((out / "summary.json").read_text())["groups"]}
    assert len(groups["sca-diverged"]["collapsed_runs"]) == 2
    assert groups["l1"]["paired"]["best built-in"]["row"] == "l1" and groups["l1"]["paired"]["best built-in"]["mean"] == 0
    pair = groups["sca-diverged"]["paired"]["sca"]
    acc = {k: dict(zip(g["seeds"], g["accuracy_per_seed"])) for k, g in groups.items()}
    assert pair["n"] == 2
    assert abs(pair["mean"] - 100 * sum(acc["sca-diverged"][s] - acc["sca"][s] for s in (0, 1)) / 2) < 1e-9
    assert pair["ci95"][0] <= pair["mean"] <= pair["ci95"][1]
    rows = {line.split(" | ")[0][2:]: line for line in (out / "table.md").read_text().splitlines()
            if line.startswith("| ") and not line.startswith("| method")}
    assert rows["sca-diverged"].startswith("| sca-diverged | 0.5 | 2 | 2 |")
    assert "Δ vs best built-in" in (out / "table.md").read_text()


def test_readme_shows_the_generated_tables():
    """The README's benchmark tables are copies of the files the benchmarks wrote (regenerate with
    python benchmarks/readme_tables.py), and a column subset keeps the header and rows aligned."""
    mod = load_benchmark("readme_tables")
    assert mod.main(["--check"]) == 0


def test_readme_tables_column_subset(tmp_path):
    mod = load_benchmark("readme_tables")
    f = tmp_path / "t.md"
    f.write_text("# title\n\n| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n\ntext\n\n| x |\n|---|\n| 9 |\n")
    assert mod.table_of(f) == "| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n\n| x |\n|---|\n| 9 |\n"
    f.write_text("| a | b | c |\n|---|---|---|\n| 1 | 2 | 3 |\n")
    assert mod.table_of(f, "1,3") == "| a | c |\n|---|---|\n| 1 | 3 |\n"


def test_quality_reuses_committed_run_copies_in_a_later_sitting(tmp_path):
    """Run folders are not committed; the copies in <out>/runs/ are. A later sitting with an empty
    runs folder reuses them instead of retraining, and refuses copies made with other settings."""
    import shutil

    quality = _load()
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("methods: [dense, sca]", "methods: [dense]"))
    out, runs = tmp_path / "out", tmp_path / "runs"
    argv = ["--config", str(config), "--out", str(out), "--runs-dir", str(runs)]
    assert quality.main(argv) == 0
    shutil.rmtree(runs)
    assert quality.main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep"]["trained"] == [] and summary["sweep"]["reused"] == ["dense-s0"]
    assert not runs.exists() or not any(runs.iterdir())
    config.write_text(TINY.replace("methods: [dense, sca]", "methods: [dense]").replace("epochs: 2", "epochs: 3"))
    assert quality.main(argv) == 2


def test_quality_trains_only_the_selected_runs_and_summarises_all_finished(tmp_path, capsys):
    """--rows/--seeds/--ratios train part of the plan; the summary covers every finished run, the
    rest is listed as missing, and the table's command is the one that trains the whole config."""
    quality = _load()
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("seeds: [0]", "seeds: [0, 1]").replace("ratios: [0.5]", "ratios: [0.5, 0.8]")
                      .replace("methods: [dense, sca]", "methods: [dense, random-init]"))
    out, runs = tmp_path / "out", tmp_path / "runs"
    base = ["--config", str(config), "--out", str(out), "--runs-dir", str(runs)]
    assert quality.main(base + ["--rows", "random-init", "--seeds", "1", "--ratios", "0.8"]) == 0
    assert {p.parent.name for p in runs.glob("*/metrics.json")} == {"random-init-r0.8-s1"}
    summary = json.loads((out / "summary.json").read_text())
    assert summary["sweep"]["trained"] == ["random-init-r0.8-s1"]
    assert len(summary["sweep"]["missing"]) == 5  # dense s0/s1, random-init 0.5 s0/s1 and 0.8 s0
    assert [(g["method"], g["pruning_ratio"], g["n"]) for g in summary["groups"]] == [("random-init", 0.8, 1)]
    assert "--rows" not in summary["machine"]["command"] and "--seeds" not in summary["machine"]["command"]
    # the ratio filter leaves dense in; a second filtered call trains only what it selects
    assert quality.main(base + ["--seeds", "0", "--ratios", "0.8"]) == 0
    assert {p.parent.name for p in runs.glob("*/metrics.json")} == {"random-init-r0.8-s1", "random-init-r0.8-s0",
                                                                 "dense-s0"}
    summary = json.loads((out / "summary.json").read_text())
    assert sorted(summary["sweep"]["reused"]) == ["random-init-r0.8-s1"]
    assert {(g["method"], g["n"]) for g in summary["groups"]} == {("dense", 1), ("random-init", 2)}


@pytest.mark.parametrize("flag, value, message", [
    ("--rows", "random-init,nope", "--rows nope not in the config; it has dense, random-init"),
    ("--seeds", "7", "--seeds 7 not in the config; it has 0"),
    ("--ratios", "0.3", "--ratios 0.3 not in the config; it has 0.5"),
])
def test_quality_refuses_filters_the_config_does_not_have(tmp_path, capsys, flag, value, message):
    quality = _load()
    config = tmp_path / "tiny.yaml"
    config.write_text(TINY.replace("methods: [dense, sca]", "methods: [dense, random-init]"))
    out, runs = tmp_path / "out", tmp_path / "runs"
    assert quality.main(["--config", str(config), "--out", str(out), "--runs-dir", str(runs), flag, value]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists() and not runs.exists()  # refused before anything was trained or written


def test_ablation_table_pairs_the_papers_rows_and_checks_their_order(tmp_path):
    overview = load_benchmark("quality_overview")

    def group(method, acc, paired=None, ratio=0.8):
        return {"method": method, "pruning_ratio": ratio, "n": 3, "accuracy_mean": acc, "accuracy_std": 0.01,
                "paired": paired or {}}

    def pair(row, mean, lo, hi):
        return {"row": row, "n": 3, "mean": mean, "ci95": [lo, hi]}

    def summary(name, groups):
        return {"config": {"name": name}, "groups": [{"method": "dense", "pruning_ratio": 0.0, "n": 3,
                                                      "accuracy_mean": 0.99, "accuracy_std": 0.0}] + groups}

    paper = summary("quality_a", [
        group("sca", 0.97, {"random-init": pair("random-init", 1.0, 0.5, 1.5),
                            "best built-in": pair("nni-fpgm", -0.5, -1.0, 0.0),
                            "best built-in, same channels": pair("nni-fpgm-nearest", 0.25, -0.25, 0.75)}),
        group("sca-prune-only", 0.965, {"sca": pair("sca", -0.5, -0.9, -0.1),
                                        "random-init": pair("random-init", 0.5, 0.1, 0.9)}),
        group("random-init", 0.96), group("nni-fpgm", 0.975), group("nni-fpgm-nearest", 0.9675)])
    reversed_ = summary("quality_b", [group("sca", 0.95), group("sca-prune-only", 0.96), group("random-init", 0.94)])
    incomplete = summary("quality_c", [group("sca", 0.95), group("random-init", 0.94)])
    text = overview.ablation([paper, reversed_, incomplete])
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| task")]
    assert len(rows) == 2  # the task without prune-only has no row
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:5] == ["a", "0.8", "97.00 ± 1.00 (n=3)", "96.50 ± 1.00 (n=3)", "96.00 ± 1.00 (n=3)"]
    # sca - prune-only is prune-only's paired difference to sca with its sign and interval turned
    assert cells[5:13] == ["+0.50 [+0.10, +0.90] (n=3)", "+1.00 [+0.50, +1.50] (n=3)", "+0.50 [+0.10, +0.90] (n=3)",
                           "nni-fpgm 97.50", "-0.50 [-1.00, +0.00] (n=3)", "yes",
                           "nni-fpgm-nearest 96.75", "+0.25 [-0.25, +0.75] (n=3)"]
    assert rows[1].startswith("| b | 0.8 |") and rows[1].endswith("| no | – | – |")

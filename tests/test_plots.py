"""Figures and report from synthetic metrics.json files (no training, matplotlib only)."""
import json

import numpy as np
import pytest

pytest.importorskip("matplotlib")

from sca_plugin import plots  # noqa: E402
from sca_plugin.plots import (  # noqa: E402
    group_runs,
    load_runs,
    make_report,
    plot_accuracy_vs_ratio,
    plot_channels_over_training,
    plot_final_channels,
    plot_importance_distribution,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
WIDTHS = {"features.0": 16, "features.3": 32, "features.7": 64}
ACC = {("dense", 0.0): [0.990], ("sca", 0.5): [0.985, 0.981], ("sca", 0.8): [0.962, 0.958]}


def _params(ch):
    c0, c1, c2 = ch["features.0"], ch["features.3"], ch["features.7"]
    return 9 * (1 * c0 + c0 * c1 + c1 * c2) + c0 + c1 + c2 + 10 * c2 + 10


def _macs(ch):
    c0, c1, c2 = ch["features.0"], ch["features.3"], ch["features.7"]
    return 9 * (64 * c0 + 64 * c0 * c1 + 16 * c1 * c2) + 10 * c2


def metrics(method="sca", ratio=0.5, seed=0, accuracy=None, updates=6):
    """A synthetic but internally consistent metrics.json dict."""
    rng = np.random.default_rng(seed + int(100 * ratio))
    if method == "dense":
        after = dict(WIDTHS)
    else:
        keep = {"features.0": 1 - 0.3 * ratio, "features.3": 1 - 0.8 * ratio, "features.7": 1 - 1.1 * ratio}
        after = {n: max(2, int(round(w * keep[n])) - seed) for n, w in WIDTHS.items()}
    history = []
    if method != "dense":
        for u in range(updates):
            frac = (u + 1) / updates
            history.append({
                "update": u, "step": 23 * (u + 1), "target_sparsity": round(ratio * frac, 4),
                "sparsity": round(ratio * frac, 4),
                "channels": {n: int(round(w + (after[n] - w) * frac)) for n, w in WIDTHS.items()},
                "pruned": 10, "regrown": 2,
            })
    acc = accuracy if accuracy is not None else ACC[(method, 0.0 if method == "dense" else ratio)][seed]
    return {
        "dataset": "digits", "model": "digits_cnn", "method": method,
        "pruning_ratio": 0.0 if method == "dense" else ratio, "regrow_ratio": 0.1, "seed": seed,
        "epochs": 30, "time_steps": 4,
        "accuracy": {"final": acc, "masked": None if method == "dense" else acc},
        "parameters": {"before": _params(WIDTHS), "after": _params(after)},
        "macs": {"before": {"per_step": _macs(WIDTHS), "total": 4 * _macs(WIDTHS)},
                 "after": {"per_step": _macs(after), "total": 4 * _macs(after)}},
        "synops": {"before": 0.2 * 4 * _macs(WIDTHS), "after": 0.2 * 4 * _macs(after)},
        "channels": {"before": dict(WIDTHS), "after": after},
        "history": history,
        "importance_scores": {} if method == "dense" else
        {n: rng.lognormal(-2, 1.6, w).tolist() for n, w in WIDTHS.items()},
        "epochs_log": [{"epoch": e, "loss": 1 / e, "test_accuracy": acc, "sparsity": ratio, "parameters": 1}
                       for e in (1, 2)],
        "wall_time_s": 19.5,
    }


def write_run(root, name, data):
    d = root / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps(data))
    return d


@pytest.fixture
def run_dirs(tmp_path):
    dirs = [write_run(tmp_path / "runs", "dense_s0", metrics("dense", 0.0, 0))]
    for ratio in (0.5, 0.8):
        for seed in (0, 1):
            dirs.append(write_run(tmp_path / "runs", f"sca_r{ratio}_s{seed}", metrics("sca", ratio, seed)))
    return dirs


def check_png(path, min_bytes=5000):
    from matplotlib.image import imread

    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    img = imread(str(path))
    h, w = img.shape[:2]
    assert 500 <= w <= 2500 and 400 <= h <= 2500, (w, h)
    # data were drawn: empty axes are black, white and grey only; every series is drawn in a colour
    rgb = img[..., :3]
    colored = float(((rgb.max(-1) - rgb.min(-1)) > 0.2).mean())
    assert colored > 1e-3, f"{path.name}: no coloured pixel (empty axes?)"
    return w, h


def test_load_runs_adds_path_and_accepts_files(run_dirs, tmp_path):
    runs = load_runs(run_dirs)
    assert [r["path"] for r in runs] == [str(d) for d in run_dirs]
    assert runs[1]["method"] == "sca"
    one = load_runs(run_dirs[0] / "metrics.json")
    assert one[0]["path"] == str(run_dirs[0]) and one[0]["method"] == "dense"
    with pytest.raises(FileNotFoundError, match="no metrics.json"):
        load_runs([tmp_path])
    with pytest.raises(ValueError, match="does not exist"):  # also a ValueError, for the CLI
        load_runs([tmp_path / "missing"])
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2")
    with pytest.raises(ValueError, match="is unreadable or not valid JSON"):
        load_runs([bad])


def test_group_runs_mean_std(run_dirs):
    groups = group_runs(load_runs(run_dirs))
    assert [(g["method"], g["pruning_ratio"], g["n"]) for g in groups] == [
        ("dense", 0.0, 1), ("sca", 0.5, 2), ("sca", 0.8, 2)]
    dense, half, most = groups
    assert dense["accuracy_mean"] == pytest.approx(0.990) and dense["accuracy_std"] == 0.0
    assert half["accuracy_mean"] == pytest.approx(0.983)
    assert half["accuracy_std"] == pytest.approx(np.std([0.985, 0.981], ddof=1))
    assert most["accuracy_mean"] == pytest.approx(0.960)
    assert half["seeds"] == [0, 1]
    p = [_params(m["channels"]["after"]) for m in (metrics("sca", 0.5, 0), metrics("sca", 0.5, 1))]
    assert half["parameters"] == pytest.approx(np.mean(p))
    assert half["synops"] < dense["synops"] and half["macs_per_step"] < dense["macs_per_step"]


def test_group_runs_dense_at_ratio_zero_and_order():
    runs = [metrics("sca", 0.8, 0), {**metrics("dense", 0.0, 0), "pruning_ratio": None}, metrics("sca", 0.5, 0),
            {**metrics("sca", 0.5, 0), "method": "l1", "accuracy": {"final": 0.9}}]
    groups = group_runs(runs)
    assert [(g["method"], g["pruning_ratio"]) for g in groups] == [
        ("dense", 0.0), ("sca", 0.5), ("sca", 0.8), ("l1", 0.5)]


def test_group_runs_called_directly_separates_runs_whose_settings_differ(tmp_path):
    """Called from Python (not through ``sca-prune report``), runs of one method and ratio whose
    settings differ are two labelled groups, not one average (issue 12, item 13)."""
    runs = []
    for seed, global_pruning, acc in ((0, True, 0.9), (1, True, 0.8), (0, False, 0.3)):
        run = metrics("sca", 0.5, seed, accuracy=acc)
        run["config"] = {"method": "sca", "pruning_ratio": 0.5, "seed": seed, "global_pruning": global_pruning}
        runs.append(run)
    groups = group_runs(runs)
    assert [(g["method"], g["n"]) for g in groups] == [("sca (global_pruning=False)", 1), ("sca (global_pruning=True)", 2)]
    assert groups[1]["accuracy_mean"] == pytest.approx(0.85)
    paths = plots.make_report(runs, tmp_path / "rep", verbose=False)
    table = (tmp_path / "rep" / "report.md").read_text()
    assert "| sca (global_pruning=False) |" in table and "| sca (global_pruning=True) |" in table
    assert paths[-1].name == "report.md"


def test_plot_accuracy_vs_ratio(run_dirs, tmp_path):
    p = plot_accuracy_vs_ratio(load_runs(run_dirs), tmp_path / "out" / "acc.png")
    assert p == tmp_path / "out" / "acc.png"
    check_png(p)


def test_plot_accuracy_without_dense_or_synops(run_dirs, tmp_path):
    runs = load_runs(run_dirs)[1:]
    for r in runs:
        r["synops"] = None
    check_png(plot_accuracy_vs_ratio(runs, tmp_path / "acc.png"))
    # no reference at all: absolute values on a log axis
    for r in runs:
        r["parameters"]["before"] = None
    check_png(plot_accuracy_vs_ratio(runs, tmp_path / "acc_abs.png"))


def test_plot_channels_over_training(run_dirs, tmp_path):
    run = load_runs(run_dirs[1])[0]
    check_png(plot_channels_over_training(run, tmp_path / "ch.png"))
    check_png(plot_channels_over_training(run, tmp_path / "ch_step.png", x="step", relative=True))


def test_plot_final_channels(run_dirs, tmp_path):
    check_png(plot_final_channels(load_runs(run_dirs), tmp_path / "final.png"))


def test_plot_importance_distribution(run_dirs, tmp_path):
    run = load_runs(run_dirs[-1])[0]
    check_png(plot_importance_distribution(run, tmp_path / "imp.png"))
    # zeros and a NaN among the scores, linear axis forced
    run["importance_scores"]["features.0"][:3] = [0.0, 0.0, float("nan")]
    check_png(plot_importance_distribution(run, tmp_path / "imp_zero.png"))
    check_png(plot_importance_distribution(run, tmp_path / "imp_lin.png", log=False))


def test_make_report(run_dirs, tmp_path, capsys):
    out = tmp_path / "report"
    paths = make_report(run_dirs, out)
    names = [p.name for p in paths]
    assert names == list(plots.FIGURE_FILES.values()) + ["report.md"]
    for p in paths[:-1]:
        check_png(p)
    md = (out / "report.md").read_text()
    rows = [line for line in md.splitlines() if line.startswith("| ") and "method" not in line]
    assert len(rows) == 3
    assert rows[0].startswith("| dense | – | 0 | 99.00 |")
    assert rows[1].startswith(f"| sca | 0.5 | 0, 1 | 98.30 ± {100 * np.std([0.985, 0.981], ddof=1):.2f} |")
    assert rows[2].startswith("| sca | 0.8 | 0, 1 | 96.00 ± 0.28 |")
    assert "%)" in rows[1]  # relative to dense
    for name in plots.FIGURE_FILES.values():
        assert f"]({name})" in md
    assert "Skipped" not in md
    assert capsys.readouterr().err == ""


def test_make_report_skips_what_dense_runs_cannot_show(run_dirs, tmp_path, capsys):
    paths = make_report([run_dirs[0]], tmp_path / "r")
    assert [p.name for p in paths] == ["fig_accuracy_vs_ratio.png", "report.md"]
    md = (tmp_path / "r" / "report.md").read_text()
    assert "## Skipped figures" in md and "mask-update history" in md and "importance scores" in md
    err = capsys.readouterr().err
    assert "skipped fig_channels_over_training.png" in err and "skipped fig_final_channels.png" in err


def test_make_report_notes_simulated_data(run_dirs, tmp_path):
    runs = load_runs(run_dirs)
    for r in runs:
        r["simulated_data"], r["data_description"] = True, "random digits"
    make_report(runs, tmp_path / "r", verbose=False)
    assert "simulated data (random digits)" in (tmp_path / "r" / "report.md").read_text()


def test_make_report_fails_when_nothing_can_be_made(tmp_path):
    data = metrics("dense", 0.0, 0)
    data["accuracy"]["final"] = None
    with pytest.raises(ValueError, match="no figure can be made"):
        make_report([data], tmp_path / "r", verbose=False)
    assert not (tmp_path / "r" / "report.md").exists()


def test_errors_for_missing_data(run_dirs, tmp_path):
    dense = load_runs(run_dirs[0])[0]
    with pytest.raises(ValueError, match=r"has no mask-update history \(dense run\?\)"):
        plot_channels_over_training(dense, tmp_path / "x.png")
    assert str(run_dirs[0]) in _message(plot_channels_over_training, dense, tmp_path / "x.png")
    with pytest.raises(ValueError, match="has no importance scores"):
        plot_importance_distribution(dense, tmp_path / "x.png")
    with pytest.raises(ValueError, match="no pruned runs"):
        plot_final_channels([dense], tmp_path / "x.png")
    no_acc = {**dense, "accuracy": {"final": None, "masked": None}}
    with pytest.raises(ValueError, match="has no final test accuracy"):
        plot_accuracy_vs_ratio([no_acc], tmp_path / "x.png")
    sca = metrics("sca", 0.5, 0)
    with pytest.raises(ValueError, match="mix several model/dataset"):
        plot_accuracy_vs_ratio([sca, {**sca, "dataset": "nmnist"}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="mix pruning methods"):
        plot_final_channels([{**sca, "method": "l1"}, {**sca, "method": "l2"}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="channel counts"):
        plot_final_channels([{**sca, "channels": {}}], tmp_path / "x.png")
    with pytest.raises(ValueError, match="one run"):
        plot_channels_over_training([sca, sca], tmp_path / "x.png")
    with pytest.raises(ValueError, match="no runs given"):
        plot_accuracy_vs_ratio([], tmp_path / "x.png")
    assert not (tmp_path / "x.png").exists()


def _message(fn, *args):
    with pytest.raises(ValueError) as e:
        fn(*args)
    msg = str(e.value)
    assert "\n" not in msg
    return msg


def test_importing_sca_plugin_does_not_import_matplotlib():
    import subprocess
    import sys

    code = "import sys, sca_plugin, sca_plugin.plots; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cli(run_dirs, tmp_path, capsys):
    assert plots.main([str(d) for d in run_dirs] + ["-o", str(tmp_path / "cli")]) == 0
    assert (tmp_path / "cli" / "report.md").exists()
    assert plots.main([str(tmp_path / "nothing"), "-o", str(tmp_path / "cli2")]) == 2  # as sca-prune report
    assert "does not exist" in capsys.readouterr().err


def test_check_png_fails_for_empty_axes(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 6), dpi=100)
    ax.set_xlabel("pruning ratio")
    ax.set_title("nothing drawn")
    fig.savefig(tmp_path / "empty.png")
    plt.close(fig)
    with pytest.raises(AssertionError, match="no coloured pixel"):
        check_png(tmp_path / "empty.png", min_bytes=0)

"""``make_report``: every figure the runs allow and a ``report.md`` table; ``report`` is what
``sca-prune report`` runs (``python -m sca_plugin.plots`` is its alias)."""
from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import List, Optional, Sequence, Tuple, Union

from ..methods import is_dense_label
from .figures import _run_title, plot_accuracy_vs_ratio, plot_channels_over_training, plot_final_channels, plot_importance_distribution
from .runs import PathLike, RunLike, _as_runs, _method, _method_key, _name, _ratio, group_runs, load_runs


# make_report's file names, in the order it writes them
FIGURE_FILES = {
    "accuracy_vs_ratio": "fig_accuracy_vs_ratio.png",
    "channels_over_training": "fig_channels_over_training.png",
    "final_channels": "fig_final_channels.png",
    "importance": "fig_importance.png",
}


def _fmt_count(v: Optional[float]) -> str:
    if v is None:
        return "–"
    if abs(v) < 1e6:
        return f"{v:,.0f}"
    for div, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M")):
        if abs(v) >= div:
            return f"{v / div:.2f} {suffix}"
    return f"{v:,.0f}"  # pragma: no cover


def _fmt_with_rel(v: Optional[float], ref: Optional[float]) -> str:
    s = _fmt_count(v)
    if v is not None and ref:
        s += f" ({100 * v / ref:.1f}%)"
    return s


def _pick_run(runs: Sequence[Mapping], has) -> Optional[Mapping]:
    """The run a one-run figure shows: of the runs that have the data, SCA first, then the highest
    pruning ratio, then the lowest seed."""
    cands = [r for r in runs if has(r)]
    if not cands:
        return None

    def key(r):
        seed = r.get("seed")
        return (_method(r) != "sca", _method_key(_method(r)), -_ratio(r),
                seed if isinstance(seed, (int, float)) else math.inf)

    return min(cands, key=key)


def _has_history(r: Mapping) -> bool:
    return any((h.get("channels") or {}) for h in (r.get("history") or []) if isinstance(h, Mapping))


def _has_scores(r: Mapping) -> bool:
    s = r.get("importance_scores")
    return isinstance(s, Mapping) and any(v is not None and len(v) for v in s.values())


def report_table(groups: List[dict]) -> str:
    """The markdown table of :func:`make_report` for :func:`group_runs` groups."""
    multi = len({(g["dataset"], g["model"]) for g in groups}) > 1
    head = (["dataset / model"] if multi else []) + [
        "method", "pruning ratio", "seed(s)", "accuracy (%, mean ± std)", "parameters", "MACs/step", "SynOps"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"]
    for g in groups:
        dense = next((d for d in groups if is_dense_label(d["method"]) and (d["dataset"], d["model"]) ==
                      (g["dataset"], g["model"])), None)
        if g["accuracy_mean"] is None:
            acc = "–"
        elif g["n_accuracy"] > 1:
            acc = f"{100 * g['accuracy_mean']:.2f} ± {100 * g['accuracy_std']:.2f}"
        else:
            acc = f"{100 * g['accuracy_mean']:.2f}"
        ref = (lambda k, d=dense, g=g: d[k] if d and not is_dense_label(g["method"]) else None)
        row = ([f"{g['dataset']} / {g['model']}"] if multi else []) + [
            g["method"],
            "–" if is_dense_label(g["method"]) else f"{g['pruning_ratio']:g}",
            ", ".join(str(s) for s in g["seeds"]),
            acc,
            _fmt_with_rel(g["parameters"], ref("parameters")),
            _fmt_with_rel(g["macs_per_step"], ref("macs_per_step")),
            _fmt_with_rel(g["synops"], ref("synops")),
        ]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def make_report(run_dirs: Union[RunLike, Sequence[RunLike]], out_dir: PathLike, *, verbose: bool = True) -> List[Path]:
    """Write every figure the runs allow (file names in ``FIGURE_FILES``) and ``report.md`` into
    ``out_dir``. ``run_dirs``: run directories, metrics.json paths or already loaded run dicts.

    Figures the runs cannot make are skipped, with the reason printed to stderr (``verbose``) and
    listed in ``report.md``; ValueError when no figure can be made. The one-run figures (channels
    over training, importance) show the SCA run with the highest pruning ratio (lowest seed) that
    has the data. Returns the written paths, figures first, ``report.md`` last.
    """
    runs = _as_runs(run_dirs)
    out = Path(out_dir)
    hist_run = _pick_run(runs, _has_history)
    score_run = _pick_run(runs, _has_scores)

    def need(run, what):
        if run is None:
            raise ValueError(f"no run has {what}")
        return run

    jobs = [
        ("accuracy_vs_ratio", "Test accuracy and model cost vs pruning ratio (SCA paper, Figure 2)",
         lambda p: plot_accuracy_vs_ratio(runs, p)),
        ("channels_over_training", "Channels kept per layer over training (Figure 3, left)",
         lambda p: plot_channels_over_training(need(hist_run, "a mask-update history (dense runs only?)"), p)),
        ("final_channels", "Channels per layer after pruning, per pruning ratio (Figure 3, right)",
         lambda p: plot_final_channels(runs, p)),
        ("importance", "Distribution of the last importance scores (Figure 4a)",
         lambda p: plot_importance_distribution(need(score_run, "importance scores (dense runs only?)"), p)),
    ]
    out.mkdir(parents=True, exist_ok=True)
    written: List[Path] = []
    made: List[Tuple[str, str, Path]] = []
    skipped: List[Tuple[str, str]] = []
    for key, caption, fn in jobs:
        target = out / FIGURE_FILES[key]
        try:
            p = fn(target)
        except ValueError as e:
            skipped.append((FIGURE_FILES[key], str(e)))
            if verbose:
                print(f"make_report: skipped {FIGURE_FILES[key]}: {e}", file=sys.stderr)
            continue
        written.append(p)
        made.append((key, caption, p))
    if not made:
        raise ValueError("no figure can be made from these runs: "
                         + "; ".join(f"{name}: {why}" for name, why in skipped))

    groups = group_runs(runs)
    md = ["# Pruning report", "",
          f"{len(runs)} run{'s' if len(runs) != 1 else ''}: "
          + ", ".join(f"`{_name(r)}`" for r in runs), "",
          ("Accuracy: final test accuracy (`accuracy.final`), mean ± sample std over seeds. Parameters, MACs per "
           "time step and SynOps per sample after pruning (mean over seeds; in parentheses: % of the dense run)."),
          ""]
    simulated = [r for r in runs if r.get("simulated_data")]
    if simulated:
        md += [f"> **Note:** {len(simulated)} of the {len(runs)} runs trained on simulated data "
               f"({simulated[0].get('data_description') or 'no description'}); their accuracies are not "
               "comparable to published results.", ""]
    md += [report_table(groups), "", "## Figures", ""]
    for key, caption, p in made:
        used = {"channels_over_training": hist_run, "importance": score_run}.get(key)
        md += [f"### {caption}", ""]
        if used is not None:
            md += [f"Run: `{_name(used)}` ({_run_title(used)})", ""]
        md += [f"![{caption}]({p.name})", ""]
    if skipped:
        md += ["## Skipped figures", ""] + [f"- `{name}`: {why}" for name, why in skipped] + [""]
    report = out / "report.md"
    report.write_text("\n".join(md))
    written.append(report)
    return written


def report(run_dirs: Sequence[PathLike], out_dir: Optional[PathLike] = None) -> List[Path]:
    """What ``sca-prune report`` does: the runs in ``run_dirs`` (run folders, metrics.json files,
    or folders holding run folders) reported into ``out_dir`` (default ``<first run>/report``) by
    :func:`make_report`; ValueError names what is missing."""
    from ..reporting import find_runs

    runs = load_runs(find_runs(run_dirs))
    return make_report(runs, out_dir if out_dir is not None else Path(run_dirs[0]) / "report")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """``python -m sca_plugin.plots``: an alias of ``sca-prune report`` kept for earlier scripts
    (same report, same exit codes: 2 on a user error)."""
    parser = argparse.ArgumentParser(prog="python -m sca_plugin.plots",
                                     description="Alias of `sca-prune report`: figures and a markdown report "
                                                 "from sca-prune run directories.")
    parser.add_argument("runs", nargs="+", help="run directories (holding metrics.json), metrics.json files, "
                                                "or folders holding run directories")
    parser.add_argument("-o", "--out", default="report", help="output directory (default: ./report)")
    args = parser.parse_args(argv)
    try:
        paths = report(args.runs, args.out)
    except ValueError as e:
        print(f"sca-prune: error: {e}", file=sys.stderr)
        return 2
    for p in paths:
        print(p)
    return 0

"""Figures of pruning runs, read from the ``metrics.json`` files that ``sca-prune train`` writes.

The figures follow the SCA paper (Li et al., ICML 2024):

* :func:`plot_accuracy_vs_ratio` (Figure 2): test accuracy per pruning ratio as bars (mean ± std
  over seeds, one colour per method, the dense run at ratio 0), and the parameters and SynOps (MACs
  per time step where SynOps were not measured) as lines on a second axis, in % of the dense model.
* :func:`plot_channels_over_training` (Figure 3, left): channels kept per layer at each mask update.
* :func:`plot_final_channels` (Figure 3, right): channels per layer after pruning, one bar per
  pruning ratio, the unpruned width as a dashed outline.
* :func:`plot_importance_distribution` (Figure 4a): the last importance scores, pooled histogram
  coloured by layer and a per-layer strip plot (log scale when they span more than two decades).
* :func:`make_report`: every figure the runs allow and a ``report.md`` table that embeds them.

matplotlib is imported inside the functions, never when ``sca_plugin`` is imported, and the figures
are drawn on their own Agg canvas (``matplotlib.figure.Figure``, not ``pyplot``): no global backend
switch, no figure left open in pyplot's registry, works on machines without a display.

Also a command line: ``python -m sca_plugin.plots RUN_DIR [RUN_DIR ...] -o OUT_DIR``.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

__all__ = [
    "load_runs",
    "group_runs",
    "plot_accuracy_vs_ratio",
    "plot_channels_over_training",
    "plot_final_channels",
    "plot_importance_distribution",
    "make_report",
    "report",
    "report_table",
    "FIGURE_FILES",
    "RunNotFoundError",
]

PathLike = Union[str, "os.PathLike[str]"]
RunLike = Union[Mapping, PathLike]

DPI = 130
_METHOD_COLORS = {
    "dense": "#8c8c8c",
    "sca": "#1f77b4",
    "sca-prune-only": "#17becf",
    "random-init": "#9467bd",
    "l1": "#ff7f0e",
    "l2": "#d62728",
    "bnscale": "#2ca02c",
    "taylor": "#8c564b",
    "lamp": "#e377c2",
    "random": "#bcbd22",
}
# make_report's file names, in the order it writes them
FIGURE_FILES = {
    "accuracy_vs_ratio": "fig_accuracy_vs_ratio.png",
    "channels_over_training": "fig_channels_over_training.png",
    "final_channels": "fig_final_channels.png",
    "importance": "fig_importance.png",
}


# --------------------------------------------------------------------------------------------------
# loading and small accessors
# --------------------------------------------------------------------------------------------------
class RunNotFoundError(FileNotFoundError, ValueError):
    """A run directory without ``metrics.json`` (or a missing file): a FileNotFoundError that is
    also a ValueError, so callers that report ValueErrors as one-line messages catch it."""


def load_runs(paths: Union[PathLike, Iterable[PathLike]]) -> List[dict]:
    """Read runs: each item is a run directory holding ``metrics.json`` or the path of a JSON file.

    Returns one dict per item (the JSON object) with ``"path"`` added: the run directory (the
    file's folder when a file was given).
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    runs = []
    for p in paths:
        p = Path(p)
        f = p / "metrics.json" if p.is_dir() else p
        if not f.is_file():
            raise RunNotFoundError(f"no metrics.json in {p}" if p.is_dir() else f"{p} does not exist")
        try:
            data = json.loads(f.read_text())
        except json.JSONDecodeError as e:
            raise ValueError(f"{f} is not valid JSON: {e}") from None
        if not isinstance(data, dict):
            raise ValueError(f"{f} does not hold a JSON object")
        data["path"] = str(f.parent)
        runs.append(data)
    return runs


def _get(run: Mapping, *keys):
    """``run[k0][k1]...`` or None where a level is missing or not a dict."""
    v: Any = run
    for k in keys:
        if not isinstance(v, Mapping) or k not in v:
            return None
        v = v[k]
    return v


def _name(run: Mapping) -> str:
    if run.get("path"):
        return str(run["path"])
    return f"<{run.get('method', '?')} ratio={run.get('pruning_ratio')} seed={run.get('seed')}>"


def _method(run: Mapping) -> str:
    return str(run.get("method") or "unknown")


def _ratio(run: Mapping) -> float:
    if _method(run) == "dense":
        return 0.0
    r = run.get("pruning_ratio")
    return 0.0 if r is None else round(float(r), 6)


def _method_key(m: str):
    """Registration order of the methods (``sca_plugin.methods``), then other labels by name."""
    from .methods import method_names

    order = method_names()
    return (order.index(m), "") if m in order else (len(order), m)


def _method_color(m: str) -> str:
    if m in _METHOD_COLORS:
        return _METHOD_COLORS[m]
    import matplotlib
    from matplotlib.colors import to_hex

    return to_hex(matplotlib.colormaps["tab20"](sum(map(ord, m)) % 20))


def _darker(color, factor: float = 0.6):
    from matplotlib.colors import to_rgb

    return tuple(c * factor for c in to_rgb(color))


def _as_runs(runs: Union[RunLike, Sequence[RunLike]]) -> List[Mapping]:
    """A list of run dicts from a run dict, a path, or a sequence of either."""
    if isinstance(runs, Mapping) or isinstance(runs, (str, os.PathLike)):
        runs = [runs]
    out: List[Mapping] = []
    for r in runs:
        if isinstance(r, Mapping):
            out.append(r)
        elif isinstance(r, (str, os.PathLike)):
            out.extend(load_runs([r]))
        else:
            raise TypeError(f"expected a run dict or a run directory, got {type(r).__name__}")
    if not out:
        raise ValueError("no runs given")
    return out


def _as_run(run: Union[RunLike, Sequence[RunLike]]) -> Mapping:
    runs = _as_runs(run)
    if len(runs) != 1:
        raise ValueError(f"this figure shows one run, got {len(runs)}")
    return runs[0]


def _setup_label(runs: Sequence[Mapping]) -> str:
    """``model / dataset`` of the runs; ValueError when they mix several."""
    setups = sorted({(str(r.get("model", "?")), str(r.get("dataset", "?"))) for r in runs})
    if len(setups) > 1:
        listed = ", ".join(f"{m}/{d}" for m, d in setups)
        raise ValueError(f"runs mix several model/dataset combinations ({listed}); plot them separately")
    return f"{setups[0][0]} / {setups[0][1]}"


def _layer_order(run: Mapping, names: Iterable[str]) -> List[str]:
    """``names`` in network order (the order of ``channels.before``), unknown names last."""
    names = list(dict.fromkeys(names))
    before = _get(run, "channels", "before") or {}
    order = [n for n in before if n in names]
    return order + [n for n in names if n not in before]


def _layer_colors(n: int) -> List:
    """tab10 for up to 10 layers, else a rainbow ordered by depth (tab20's light/dark pairs read badly)."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    return list(matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, n)))


def _run_title(run: Mapping) -> str:
    parts = [f"{run.get('model', '?')} / {run.get('dataset', '?')}", _method(run)]
    if _method(run) != "dense":
        parts.append(f"pruning ratio {_ratio(run):g}")
    if run.get("seed") is not None:
        parts.append(f"seed {run['seed']}")
    return ", ".join(parts)


def _figure(figsize: Tuple[float, float]):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=figsize, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: PathLike) -> Path:
    path = Path(path)
    if not path.suffix:
        path = path.with_suffix(".png")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI)
    return path


# --------------------------------------------------------------------------------------------------
# grouping
# --------------------------------------------------------------------------------------------------
def _mean(values) -> Optional[float]:
    vals = [float(v) for v in values if v is not None]
    return float(np.mean(vals)) if vals else None


def group_runs(runs: Union[RunLike, Sequence[RunLike]]) -> List[dict]:
    """Runs grouped by (dataset, model, method, pruning ratio); the dense method is put at ratio 0.

    One dict per group, sorted by dataset, model, method (registration order) and ratio, with
    ``dataset, model, method, pruning_ratio, seeds, n, runs``; ``accuracy_mean`` and
    ``accuracy_std`` (of ``accuracy.final``, a fraction; the sample standard deviation over seeds,
    ``ddof=1``, 0 for a single run; None when no run of the group has an accuracy) and
    ``n_accuracy``; and the means over the group of ``parameters``, ``macs_per_step``, ``synops``
    (after pruning) and ``parameters_before``, ``macs_per_step_before``, ``synops_before`` (None
    where no run of the group has the value). Runs of one row whose settings differ in more than
    the seed are told apart by :func:`sca_plugin.reporting.label_runs` (their ``method`` names the
    settings), never averaged together.
    """
    from .reporting import label_runs

    runs = label_runs(_as_runs(runs))
    buckets: Dict[tuple, List[Mapping]] = {}
    for run in runs:
        key = (str(run.get("dataset", "?")), str(run.get("model", "?")), _method(run), _ratio(run))
        buckets.setdefault(key, []).append(run)
    groups = []
    for key in sorted(buckets, key=lambda k: (k[0], k[1], _method_key(k[2]), k[3])):
        rs = buckets[key]
        acc = np.array([float(a) for a in (_get(r, "accuracy", "final") for r in rs) if a is not None])
        seeds = list(dict.fromkeys(r.get("seed") for r in rs))
        try:
            seeds = sorted(seeds)
        except TypeError:
            pass
        groups.append({
            "dataset": key[0],
            "model": key[1],
            "method": key[2],
            "pruning_ratio": key[3],
            "seeds": seeds,
            "n": len(rs),
            "n_accuracy": int(acc.size),
            "accuracy_mean": float(acc.mean()) if acc.size else None,
            "accuracy_std": float(acc.std(ddof=1)) if acc.size > 1 else (0.0 if acc.size else None),
            "parameters": _mean(_get(r, "parameters", "after") for r in rs),
            "parameters_before": _mean(_get(r, "parameters", "before") for r in rs),
            "macs_per_step": _mean(_get(r, "macs", "after", "per_step") for r in rs),
            "macs_per_step_before": _mean(_get(r, "macs", "before", "per_step") for r in rs),
            "synops": _mean(_get(r, "synops", "after") for r in rs),
            "synops_before": _mean(_get(r, "synops", "before") for r in rs),
            "runs": rs,
        })
    return groups


def _relative_costs(groups: List[dict], metric: str) -> Tuple[Optional[List[float]], str]:
    """``metric`` of every group in % of the dense group's value (of each run's own unpruned value
    without a dense run); ``(None, '')`` where some reference is missing."""
    dense = [g for g in groups if g["method"] == "dense" and g[metric]]
    if dense:
        ref = dense[0][metric]
        if all(g[metric] is not None for g in groups):
            return [100.0 * g[metric] / ref for g in groups], "% of dense"
        return None, ""
    if all(g[metric] is not None and g[metric + "_before"] for g in groups):
        return [100.0 * g[metric] / g[metric + "_before"] for g in groups], "% of unpruned"
    return None, ""


# --------------------------------------------------------------------------------------------------
# Figure 2: accuracy and cost vs pruning ratio
# --------------------------------------------------------------------------------------------------
def plot_accuracy_vs_ratio(runs: Union[RunLike, Sequence[RunLike]], path: PathLike, *,
                           title: Optional[str] = None) -> Path:
    """Bars: final test accuracy per pruning ratio and method (mean ± std over seeds; dense at 0).
    Lines on the right axis: parameters and SynOps (MACs per time step when some run has no SynOps)
    in % of the dense run (of each run's unpruned model without one; absolute on a log axis where
    neither is known). Returns the written path."""
    runs = _as_runs(runs)
    for r in runs:
        if _get(r, "accuracy", "final") is None:
            raise ValueError(f"run {_name(r)} has no final test accuracy (accuracy.final)")
    setup = _setup_label(runs)
    groups = group_runs(runs)

    cost = "synops" if all(g["synops"] is not None for g in groups) else "macs_per_step"
    cost_label = "SynOps" if cost == "synops" else "MACs/step"
    ratios = sorted({g["pruning_ratio"] for g in groups})
    has_dense = any(g["method"] == "dense" for g in groups)
    per_ratio = {r: [g for g in groups if g["pruning_ratio"] == r] for r in ratios}
    slots = max(len(v) for v in per_ratio.values())
    width = 0.8 / slots
    xpos = {}
    for i, r in enumerate(ratios):
        gs = per_ratio[r]
        for j, g in enumerate(gs):
            xpos[id(g)] = i + (j - (len(gs) - 1) / 2) * width

    fig = _figure((min(11.0, max(6.5, 0.9 * len(ratios) * max(1, slots) ** 0.5 + 3.5)), 4.8))
    ax = fig.add_subplot()
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    methods = list(dict.fromkeys(g["method"] for g in groups))
    lo = min(100 * (g["accuracy_mean"] - g["accuracy_std"]) for g in groups)
    hi = max(100 * (g["accuracy_mean"] + g["accuracy_std"]) for g in groups)
    for g in groups:
        m, s = 100 * g["accuracy_mean"], 100 * g["accuracy_std"]
        ax.bar(xpos[id(g)], m, width * 0.92, yerr=s if g["n"] > 1 else None, capsize=3,
               color=_method_color(g["method"]), edgecolor="black", linewidth=0.6, alpha=0.75, zorder=2,
               error_kw={"elinewidth": 1, "zorder": 3})
        if len(groups) <= 14:
            ax.annotate(f"{m:.1f}" if hi - lo > 5 else f"{m:.2f}", (xpos[id(g)], m + (s if g["n"] > 1 else 0)),
                        xytext=(0, 2), textcoords="offset points", ha="center", va="bottom", fontsize=7)
    span = max(hi - lo, 1.0)
    bottom = max(0.0, math.floor((lo - 1.5 * span) / 5) * 5)
    # the highest bar (with its error bar) ends at 3/4 of the axis height: its label fits above, and
    # the 100% cost markers (right axis, at 92% of the height) stay clear of both
    top = bottom + (hi - bottom) / 0.75
    ax.set_ylim(bottom, top)
    ax.set_yticks([t for t in ax.get_yticks() if bottom <= t <= 100])
    ax.set_ylim(bottom, top)
    ax.set_ylabel("test accuracy (%)")
    ax.set_xticks(range(len(ratios)))
    ax.set_xticklabels([f"{r:g}\n(dense)" if (r == 0 and has_dense) else f"{r:g}" for r in ratios])
    ax.set_xlabel("pruning ratio (fraction of channels removed)")
    ax.set_xlim(-0.6, len(ratios) - 0.4)
    ax.grid(axis="y", alpha=0.3, zorder=0)

    # cost lines
    ax2 = ax.twinx()
    rel_p, ref_p = _relative_costs(groups, "parameters")
    rel_c, ref_c = _relative_costs(groups, cost)
    relative = rel_p is not None and rel_c is not None and ref_p == ref_c
    if relative:
        vals_p, vals_c = dict(zip(map(id, groups), rel_p)), dict(zip(map(id, groups), rel_c))
    else:
        vals_p = {id(g): g["parameters"] for g in groups}
        vals_c = {id(g): g[cost] for g in groups}
    dense_groups = [g for g in groups if g["method"] == "dense"]
    line_methods = [m for m in methods if m != "dense"] or ["dense"]
    styles = {"parameters": ("-", "o"), cost: ("--", "s")}
    for m in line_methods:
        gs = [g for g in groups if g["method"] == m]
        if m != "dense":
            gs = dense_groups[:1] + gs
        color = _darker(_method_color(m))
        for metric, vals in (("parameters", vals_p), (cost, vals_c)):
            pts = [(xpos[id(g)], vals[id(g)]) for g in gs if vals[id(g)] is not None]
            if pts:
                ls, mk = styles[metric]
                # cost markers hollow and larger: a parameters marker at the same place stays visible
                hollow = metric != "parameters"
                ax2.plot(*zip(*pts), linestyle=ls, marker=mk, color=color, markersize=7 if hollow else 5,
                         markerfacecolor="white" if hollow else color, markeredgecolor=color if hollow else "black",
                         markeredgewidth=1.3 if hollow else 0.5, linewidth=1.5, zorder=3 if hollow else 4)
    if relative:
        ymax = max([v for v in list(vals_p.values()) + list(vals_c.values()) if v is not None] + [100])
        ax2.set_ylim(0, ymax / 0.92)
        ax2.set_ylabel(f"parameters, {cost_label} ({ref_p})")
    else:
        ax2.set_yscale("log")
        ax2.set_ylabel("parameters (count), " + ("SynOps per sample" if cost == "synops" else "MACs per time step")
                       + ", log scale")

    handles = [Patch(facecolor=_method_color(m), edgecolor="black", alpha=0.75, label=f"accuracy: {m}")
               for m in methods]
    handles += [Line2D([], [], color="#333333", linestyle="-", marker="o", markersize=5, label="parameters"),
                Line2D([], [], color="#333333", linestyle="--", marker="s", markersize=7, markerfacecolor="white",
                       markeredgewidth=1.3, label=cost_label)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles) if len(handles) <= 7 else 4,
               frameon=False, fontsize=8)
    n_seeds = sorted({g["n"] for g in groups if g["method"] != "dense"} or {groups[0]["n"]})
    seeds_note = "n=" + "/".join(map(str, n_seeds)) + (" seeds" if n_seeds != [1] else " seed")
    fig.suptitle(title or f"{setup}: accuracy and cost vs pruning ratio", fontsize=12)
    ax.set_title(f"bars: final test accuracy, mean ± std over seeds ({seeds_note}); "
                 f"lines: model size and cost", fontsize=8.5, color="#444444")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Figure 3 (left): channels per layer over training
# --------------------------------------------------------------------------------------------------
def plot_channels_over_training(run: Union[RunLike, Sequence[RunLike]], path: PathLike, *, x: str = "update",
                                relative: bool = False, show_sparsity: bool = True,
                                title: Optional[str] = None) -> Path:
    """One line per prunable layer: channels kept at each mask update (``history``). ``x`` is
    ``"update"`` (mask update index) or ``"step"`` (training step); ``relative`` plots the fraction
    of the unpruned width; ``show_sparsity`` adds the channel sparsity on a right axis."""
    if x not in ("update", "step"):
        raise ValueError(f"x must be 'update' or 'step', got {x!r}")
    run = _as_run(run)
    history = run.get("history") or []
    if not history:
        raise ValueError(f"run {_name(run)} has no mask-update history (dense run?)")
    names = [n for h in history for n in (h.get("channels") or {})]
    if not names:
        raise ValueError(f"run {_name(run)}: its mask-update history records no channel counts")
    layers = _layer_order(run, names)
    before = _get(run, "channels", "before") or {}
    after = _get(run, "channels", "after") or {}
    if relative and not all(before.get(n) for n in layers):
        raise ValueError(f"run {_name(run)} lacks unpruned widths (channels.before) for relative=True")
    xs = [h.get(x, i) if h.get(x) is not None else i for i, h in enumerate(history)]

    fig = _figure((8.5, 4.6))
    ax = fig.add_subplot()
    colors = _layer_colors(len(layers))
    marker = "o" if len(xs) <= 40 else None
    for i, (name, color) in enumerate(zip(layers, colors)):
        ys = np.array([(h.get("channels") or {}).get(name, np.nan) for h in history], dtype=float)
        if relative:
            ys = 100.0 * ys / before[name]
        label = name
        if name in before:
            final = after.get(name, int(ys[-1]) if not relative and np.isfinite(ys[-1]) else None)
            label += f" ({before[name]} → {final})" if final is not None else f" (of {before[name]})"
        ax.plot(xs, ys, marker=marker, markersize=3.5, linewidth=1.6, color=color, label=label, zorder=3,
                linestyle="-" if len(layers) <= 10 or i % 2 == 0 else "--")
    ax.set_xlabel("mask update (index)" if x == "update" else "training step (optimizer iterations)")
    ax.set_ylabel("channels kept (% of unpruned width)" if relative else "channels kept (count)")
    ax.set_ylim(bottom=0, top=105 if relative else None)
    ax.grid(alpha=0.3)
    if len(xs) <= 15 and x == "update":
        ax.set_xticks(xs)
    handles, labels = ax.get_legend_handles_labels()
    if show_sparsity:
        key = "sparsity" if all(h.get("sparsity") is not None for h in history) else "target_sparsity"
        sp = [h.get(key) for h in history]
        if all(v is not None for v in sp):
            ax2 = ax.twinx()
            (ln,) = ax2.plot(xs, [100 * float(v) for v in sp], color="#555555", linestyle=":", linewidth=1.5,
                             drawstyle="steps-post" if key == "target_sparsity" else "default",
                             label=("channel sparsity" if key == "sparsity" else "target sparsity") + " (right)")
            ax2.set_ylim(0, 105)
            ax2.set_ylabel("channel sparsity (%)", color="#555555")
            ax2.tick_params(axis="y", colors="#555555")
            handles.append(ln)
            labels.append(ln.get_label())
    fig.legend(handles, labels, loc="outside right upper", fontsize=8, title="layer (unpruned → final)",
               title_fontsize=8, frameon=False)
    fig.suptitle(title or "Channels kept per layer during training", fontsize=12)
    ax.set_title(_run_title(run), fontsize=8.5, color="#444444")
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Figure 3 (right): final channels per layer for several ratios
# --------------------------------------------------------------------------------------------------
def plot_final_channels(runs: Union[RunLike, Sequence[RunLike]], path: PathLike, *, method: Optional[str] = None,
                        title: Optional[str] = None) -> Path:
    """Grouped bars: x = layer (network order, ``channels.before``), one bar per pruning ratio
    (mean over seeds, std as error bar), the unpruned width as a dashed outline. Runs of one pruning
    method are shown: ``method``, by default ``sca`` or the only pruned method given."""
    runs = _as_runs(runs)
    pruned = [r for r in runs if _method(r) != "dense"]
    methods = list(dict.fromkeys(_method(r) for r in pruned))
    if method is None:
        if not methods:
            raise ValueError("no pruned runs given (only dense runs): final channels need runs with method != dense")
        if "sca" in methods:
            method = "sca"
        elif len(methods) == 1:
            method = methods[0]
        else:
            raise ValueError(f"runs mix pruning methods {methods}; pass method= to choose one")
    sel = [r for r in pruned if _method(r) == method]
    if not sel:
        raise ValueError(f"no runs with method {method!r} (methods given: {methods})")
    setup = _setup_label(sel)
    for r in sel:
        if not _get(r, "channels", "before") or not _get(r, "channels", "after"):
            raise ValueError(f"run {_name(r)} has no per-layer channel counts (channels.before/after)")
    before = dict(_get(sel[0], "channels", "before"))
    layers = list(before)
    for r in sel[1:]:
        if dict(_get(r, "channels", "before")) != before:
            raise ValueError(f"runs {_name(sel[0])} and {_name(r)} have different layers or unpruned widths")
    ratios = sorted({_ratio(r) for r in sel})

    fig = _figure((min(12.0, max(7.0, 0.55 * len(layers) * max(2, len(ratios)) ** 0.5 + 3.0)), 4.8))
    ax = fig.add_subplot()
    xs = np.arange(len(layers))
    width = 0.8 / len(ratios)
    import matplotlib

    cmap = matplotlib.colormaps["viridis"]
    ax.bar(xs, [before[n] for n in layers], 0.9, fill=False, edgecolor="black", linestyle="--", linewidth=1.0,
           label="unpruned width", zorder=1)
    for i, (ratio, color) in enumerate(zip(ratios, cmap(np.linspace(0.15, 0.8, len(ratios))))):
        rs = [r for r in sel if _ratio(r) == ratio]
        counts = np.array([[float(_get(r, "channels", "after").get(n, before[n])) for n in layers] for r in rs])
        mean = counts.mean(0)
        std = counts.std(0, ddof=1) if len(rs) > 1 else None
        ax.bar(xs + (i - (len(ratios) - 1) / 2) * width, mean, width * 0.92, yerr=std, capsize=2,
               color=color, edgecolor="black", linewidth=0.4, zorder=2, error_kw={"elinewidth": 0.8},
               label=f"ratio {ratio:g}" + (f" (mean of {len(rs)} seeds)" if len(rs) > 1 else ""))
    ax.set_xticks(xs)
    rotate = len(layers) > 6 or max(len(n) for n in layers) > 12
    ax.set_xticklabels(layers, rotation=35 if rotate else 0, ha="right" if rotate else "center", fontsize=8.5)
    ax.set_xlabel("layer (network order)")
    ax.set_ylabel("output channels (count)")
    ax.set_ylim(0, max(before.values()) * 1.08)
    ax.grid(axis="y", alpha=0.3, zorder=0)
    ax.legend(fontsize=8, loc="best", frameon=True, framealpha=0.9)
    fig.suptitle(title or f"{setup}, {method}: channels per layer after pruning", fontsize=12)
    return _save(fig, path)


# --------------------------------------------------------------------------------------------------
# Figure 4a: importance distribution
# --------------------------------------------------------------------------------------------------
def plot_importance_distribution(run: Union[RunLike, Sequence[RunLike]], path: PathLike, *,
                                 log: Optional[bool] = None, bins: int = 40, title: Optional[str] = None) -> Path:
    """Top: histogram of the run's last importance scores, all layers pooled and stacked, coloured by
    layer. Bottom: one strip per layer (every channel a dot, the box the interquartile range, the
    bar the median). ``log``: log x axis, by default when the positive scores span more than two
    decades (scores <= 0 are then counted in a note, not drawn)."""
    run = _as_run(run)
    scores = run.get("importance_scores") or {}
    data = {}
    dropped = 0
    for name, v in (scores.items() if isinstance(scores, Mapping) else []):
        a = np.asarray(v if v is not None else [], dtype=float).ravel()
        dropped += int((~np.isfinite(a)).sum())
        a = a[np.isfinite(a)]
        if a.size:
            data[name] = a
    if not data:
        raise ValueError(f"run {_name(run)} has no importance scores (dense run, or scores not recorded)")
    layers = _layer_order(run, data)
    pooled = np.concatenate([data[n] for n in layers])
    pos = pooled[pooled > 0]
    if log is None:
        log = pos.size > 0 and pos.max() / pos.min() > 100
    if log and pos.size == 0:
        raise ValueError(f"run {_name(run)}: no positive importance score, log=True impossible")
    nonpos = int((pooled <= 0).sum()) if log else 0
    shown = {n: (data[n][data[n] > 0] if log else data[n]) for n in layers}
    if log:
        edges = np.geomspace(pos.min(), pos.max(), bins + 1)
        if edges[0] == edges[-1]:
            edges = np.geomspace(edges[0] / 2, edges[0] * 2, bins + 1)
    else:
        lo, hi = float(pooled.min()), float(pooled.max())
        if lo == hi:
            lo, hi = lo - 0.5, hi + 0.5
        edges = np.linspace(lo, hi, bins + 1)

    colors = _layer_colors(len(layers))
    fig = _figure((8.0, 3.4 + 0.32 * len(layers) + 0.8))
    gs = fig.add_gridspec(2, 1, height_ratios=[3.0, 0.32 * len(layers) + 0.6])
    ax = fig.add_subplot(gs[0])
    ax_s = fig.add_subplot(gs[1], sharex=ax)
    ax.hist([shown[n] for n in layers], bins=edges, stacked=True, color=colors, label=layers,
            edgecolor="white", linewidth=0.3)
    if log:
        ax.set_xscale("log")
    ax.set_ylabel("channels (count)")
    ax.tick_params(labelbottom=False)
    ax.grid(alpha=0.3)
    if len(layers) <= 12:
        ax.legend(fontsize=8, title="layer", title_fontsize=8, ncol=1 if len(layers) <= 6 else 2, frameon=True,
                  framealpha=0.9)
    notes = []
    if nonpos:
        notes.append(f"{nonpos} channel{'s' if nonpos != 1 else ''} with score ≤ 0 not shown (log axis)")
    elif not log and (pooled == 0).any():
        notes.append(f"{int((pooled == 0).sum())} of {pooled.size} channels score exactly 0 (no activity)")
    if dropped:
        notes.append(f"{dropped} non-finite score{'s' if dropped != 1 else ''} dropped")

    rng = np.random.default_rng(0)
    for i, (n, c) in enumerate(zip(layers, colors)):
        v = shown[n]
        if not v.size:
            continue
        ax_s.scatter(v, i + rng.uniform(-0.22, 0.22, v.size), s=7, color=c, alpha=0.6, linewidths=0, zorder=3)
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        ax_s.add_patch(_rect(q1, i - 0.3, q3 - q1, 0.6, c))
        ax_s.plot([med, med], [i - 0.34, i + 0.34], color="black", linewidth=1.6, zorder=4)
    ax_s.set_yticks(range(len(layers)))
    ax_s.set_yticklabels([f"{n} (n={data[n].size})" for n in layers], fontsize=8)
    for lbl, c in zip(ax_s.get_yticklabels(), colors):
        lbl.set_color(_darker(c, 0.75))
    ax_s.set_ylim(len(layers) - 0.5, -0.5)
    ax_s.grid(axis="x", alpha=0.3)
    ax_s.set_xlabel("importance score" + (" (log scale)" if log else ""))
    fig.suptitle(title or "Distribution of the last channel importance scores", fontsize=12)
    ax.set_title(_run_title(run) + f"; {pooled.size} channels in {len(layers)} layers"
                 + ("\n" + "; ".join(notes) if notes else ""), fontsize=8.5, color="#444444")
    return _save(fig, path)


def _rect(x, y, w, h, color):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=color, alpha=0.25, edgecolor=color, linewidth=1.0, zorder=2)


# --------------------------------------------------------------------------------------------------
# report
# --------------------------------------------------------------------------------------------------
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
        dense = next((d for d in groups if d["method"] == "dense" and (d["dataset"], d["model"]) ==
                      (g["dataset"], g["model"])), None)
        if g["accuracy_mean"] is None:
            acc = "–"
        elif g["n_accuracy"] > 1:
            acc = f"{100 * g['accuracy_mean']:.2f} ± {100 * g['accuracy_std']:.2f}"
        else:
            acc = f"{100 * g['accuracy_mean']:.2f}"
        ref = (lambda k, d=dense, g=g: d[k] if d and g["method"] != "dense" else None)
        row = ([f"{g['dataset']} / {g['model']}"] if multi else []) + [
            g["method"],
            "–" if g["method"] == "dense" else f"{g['pruning_ratio']:g}",
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
    from .reporting import find_runs

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


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())

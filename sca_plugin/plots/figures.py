"""The paper's figures (SCA, Li et al., ICML 2024) drawn from runs, on their own Agg canvas
(``matplotlib.figure.Figure``; matplotlib is imported inside the functions)."""
from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..methods import is_dense_label
from .runs import PathLike, RunLike, _as_run, _as_runs, _get, _layer_order, _method, _name, _ratio, _relative_costs, _setup_label, group_runs


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


def method_color(m: str) -> str:
    """The colour a method's row gets in every figure (reports and the quality benchmark): a fixed
    one for the shipped methods, else one derived from the name, so a label keeps its colour."""
    if m in _METHOD_COLORS:
        return _METHOD_COLORS[m]
    import matplotlib
    from matplotlib.colors import to_hex

    return to_hex(matplotlib.colormaps["tab20"](sum(map(ord, m)) % 20))


def _darker(color, factor: float = 0.6):
    from matplotlib.colors import to_rgb

    return tuple(c * factor for c in to_rgb(color))


def _layer_colors(n: int) -> List:
    """tab10 for up to 10 layers, else a rainbow ordered by depth (tab20's light/dark pairs read badly)."""
    import matplotlib

    if n <= 10:
        return [matplotlib.colormaps["tab10"](i) for i in range(n)]
    return list(matplotlib.colormaps["turbo"](np.linspace(0.05, 0.95, n)))


def _run_title(run: Mapping) -> str:
    parts = [f"{run.get('model', '?')} / {run.get('dataset', '?')}", _method(run)]
    if not is_dense_label(_method(run)):
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
    xpos, width, slots = _bar_positions(groups, ratios)
    methods = list(dict.fromkeys(g["method"] for g in groups))

    fig = _figure((min(11.0, max(6.5, 0.9 * len(ratios) * max(1, slots) ** 0.5 + 3.5)), 4.8))
    ax = fig.add_subplot()
    _accuracy_bars(ax, groups, ratios, xpos, width)
    _cost_lines(ax.twinx(), groups, methods, xpos, cost, cost_label)
    _accuracy_legend(fig, methods, cost_label)
    n_seeds = sorted({g["n"] for g in groups if not is_dense_label(g["method"])} or {groups[0]["n"]})
    seeds_note = "n=" + "/".join(map(str, n_seeds)) + (" seeds" if n_seeds != [1] else " seed")
    fig.suptitle(title or f"{setup}: accuracy and cost vs pruning ratio", fontsize=12)
    ax.set_title(f"bars: final test accuracy, mean ± std over seeds ({seeds_note}); "
                 f"lines: model size and cost", fontsize=8.5, color="#444444")
    return _save(fig, path)


def _bar_positions(groups: List[dict], ratios: List[float]) -> Tuple[Dict[int, float], float, int]:
    """x of each group's bar (by ``id``): the groups of a ratio side by side around its tick."""
    per_ratio = {r: [g for g in groups if g["pruning_ratio"] == r] for r in ratios}
    slots = max(len(v) for v in per_ratio.values())
    width = 0.8 / slots
    xpos = {}
    for i, r in enumerate(ratios):
        gs = per_ratio[r]
        for j, g in enumerate(gs):
            xpos[id(g)] = i + (j - (len(gs) - 1) / 2) * width
    return xpos, width, slots


def _accuracy_bars(ax, groups: List[dict], ratios: List[float], xpos: Dict[int, float], width: float) -> None:
    lo = min(100 * (g["accuracy_mean"] - g["accuracy_std"]) for g in groups)
    hi = max(100 * (g["accuracy_mean"] + g["accuracy_std"]) for g in groups)
    for g in groups:
        m, s = 100 * g["accuracy_mean"], 100 * g["accuracy_std"]
        ax.bar(xpos[id(g)], m, width * 0.92, yerr=s if g["n"] > 1 else None, capsize=3,
               color=method_color(g["method"]), edgecolor="black", linewidth=0.6, alpha=0.75, zorder=2,
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
    has_dense = any(is_dense_label(g["method"]) for g in groups)
    ax.set_xticks(range(len(ratios)))
    ax.set_xticklabels([f"{r:g}\n(dense)" if (r == 0 and has_dense) else f"{r:g}" for r in ratios])
    ax.set_xlabel("pruning ratio (fraction of channels removed)")
    ax.set_xlim(-0.6, len(ratios) - 0.4)
    ax.grid(axis="y", alpha=0.3, zorder=0)


def _cost_lines(ax2, groups: List[dict], methods: List[str], xpos: Dict[int, float], cost: str,
                cost_label: str) -> None:
    """Parameters and ``cost`` per method on the right axis, from the dense run, in % of it where known."""
    rel_p, ref_p = _relative_costs(groups, "parameters")
    rel_c, ref_c = _relative_costs(groups, cost)
    relative = rel_p is not None and rel_c is not None and ref_p == ref_c
    if relative:
        vals_p, vals_c = dict(zip(map(id, groups), rel_p)), dict(zip(map(id, groups), rel_c))
    else:
        vals_p = {id(g): g["parameters"] for g in groups}
        vals_c = {id(g): g[cost] for g in groups}
    dense_groups = [g for g in groups if is_dense_label(g["method"])]
    line_methods = [m for m in methods if not is_dense_label(m)] or list(methods[:1])
    styles = {"parameters": ("-", "o"), cost: ("--", "s")}
    for m in line_methods:
        gs = [g for g in groups if g["method"] == m]
        if not is_dense_label(m):
            gs = dense_groups[:1] + gs
        color = _darker(method_color(m))
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


def _accuracy_legend(fig, methods: List[str], cost_label: str) -> None:
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    handles = [Patch(facecolor=method_color(m), edgecolor="black", alpha=0.75, label=f"accuracy: {m}")
               for m in methods]
    handles += [Line2D([], [], color="#333333", linestyle="-", marker="o", markersize=5, label="parameters"),
                Line2D([], [], color="#333333", linestyle="--", marker="s", markersize=7, markerfacecolor="white",
                       markeredgewidth=1.3, label=cost_label)]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles) if len(handles) <= 7 else 4,
               frameon=False, fontsize=8)


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


def plot_final_channels(runs: Union[RunLike, Sequence[RunLike]], path: PathLike, *, method: Optional[str] = None,
                        title: Optional[str] = None) -> Path:
    """Grouped bars: x = layer (network order, ``channels.before``), one bar per pruning ratio
    (mean over seeds, std as error bar), the unpruned width as a dashed outline. Runs of one pruning
    method are shown: ``method``, by default ``sca`` or the only pruned method given."""
    runs = _as_runs(runs)
    pruned = [r for r in runs if not is_dense_label(_method(r))]
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


def plot_importance_distribution(run: Union[RunLike, Sequence[RunLike]], path: PathLike, *,
                                 log: Optional[bool] = None, bins: int = 40, title: Optional[str] = None) -> Path:
    """Top: histogram of the run's last importance scores, all layers pooled and stacked, coloured by
    layer. Bottom: one strip per layer (every channel a dot, the box the interquartile range, the
    bar the median). ``log``: log x axis, by default when the positive scores span more than two
    decades (scores <= 0 are then counted in a note, not drawn)."""
    run = _as_run(run)
    data, dropped = _finite_scores(run)
    layers = _layer_order(run, data)
    pooled = np.concatenate([data[n] for n in layers])
    pos = pooled[pooled > 0]
    if log is None:
        log = pos.size > 0 and pos.max() / pos.min() > 100
    if log and pos.size == 0:
        raise ValueError(f"run {_name(run)}: no positive importance score, log=True impossible")
    nonpos = int((pooled <= 0).sum()) if log else 0
    shown = {n: (data[n][data[n] > 0] if log else data[n]) for n in layers}
    edges = _histogram_edges(pooled, pos, log, bins)

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

    _score_strips(ax_s, [shown[n] for n in layers], colors)
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


def _finite_scores(run: Mapping) -> Tuple[Dict[str, np.ndarray], int]:
    """``({layer: its finite last importance scores}, how many non-finite ones were dropped)``."""
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
    return data, dropped


def _histogram_edges(pooled: np.ndarray, pos: np.ndarray, log: bool, bins: int) -> np.ndarray:
    """``bins + 1`` bin edges over the scores: geometric over the positive ones on a log axis."""
    if log:
        edges = np.geomspace(pos.min(), pos.max(), bins + 1)
        if edges[0] == edges[-1]:
            edges = np.geomspace(edges[0] / 2, edges[0] * 2, bins + 1)
        return edges
    lo, hi = float(pooled.min()), float(pooled.max())
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    return np.linspace(lo, hi, bins + 1)


def _score_strips(ax, values: Sequence[np.ndarray], colors) -> None:
    """One strip per layer (row ``i``): every channel a jittered dot, the box the interquartile
    range, the bar the median."""
    rng = np.random.default_rng(0)
    for i, (v, c) in enumerate(zip(values, colors)):
        if not v.size:
            continue
        ax.scatter(v, i + rng.uniform(-0.22, 0.22, v.size), s=7, color=c, alpha=0.6, linewidths=0, zorder=3)
        q1, med, q3 = np.percentile(v, [25, 50, 75])
        ax.add_patch(_rect(q1, i - 0.3, q3 - q1, 0.6, c))
        ax.plot([med, med], [i - 0.34, i + 0.34], color="black", linewidth=1.6, zorder=4)


def _rect(x, y, w, h, color):
    from matplotlib.patches import Rectangle

    return Rectangle((x, y), w, h, facecolor=color, alpha=0.25, edgecolor=color, linewidth=1.0, zorder=2)

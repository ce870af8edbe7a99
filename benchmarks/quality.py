"""Quality benchmark: accuracy vs model cost of SCA and the built-in pruning criteria.

    python benchmarks/quality.py --config benchmarks/configs/quality_smoke.yaml \
        [--out DIR] [--runs-dir runs/quality] [--resume]

The YAML config lists one setting (dataset, model, width, time steps, epochs, optimizer, data
limits) shared by every row, the seeds, the pruning ratios and the rows (``methods``: method names
of ``sca-prune train --method``, or names of ``variants``; ``dense`` is trained once per seed, not
per ratio), plus optional per-row overrides (``regrow_ratio``, ``oneshot_epoch``, ...).  A variant
is a named row with its own method and settings, e.g. ``l1-oneshot: {method: l1, oneshot_epoch:
2}``.  Every (row, ratio, seed) is one ``run_training`` call into
``<runs-dir>/<row>-r<ratio>-s<seed>`` (``dense-s<seed>``); a run whose ``metrics.json`` exists
(in its run folder, or as the copy in ``<out>/runs/`` that an earlier invocation wrote and that
is committed with the results) is not retrained (an interrupted sweep continues where it stopped; with ``--resume`` a run that
was cut off mid-training continues from its last checkpoint).  ``--rows``, ``--seeds`` and
``--ratios`` train only part of the plan (a sweep that spans several sittings, most important runs
first); the outputs still cover every finished run of the config.  Writes into ``--out``:

* ``summary.json``: per (method, ratio) group: seeds, accuracy mean ± std, parameters, MACs per
  time step, SynOps, activation sparsity, final channels per layer; the config and the machine;
* ``table.md``: the same as a markdown table, with the command and the machine above it;
* ``fig_accuracy_vs_params.png``, ``fig_accuracy_vs_synops.png`` (the Pareto view: log x, one
  line per method through its pruning ratios, error bars = std over seeds) and
  ``fig_accuracy_vs_ratio.png`` (``sca_plugin.plots.plot_accuracy_vs_ratio``);
* ``runs/<run-name>.json``: a copy of each run's ``metrics.json`` (the model files stay in the runs
  folder).

Config keys: ``dataset, model, width, time_steps, epochs, batch_size, lr, seeds, ratios, methods``
and optionally ``train_limit, test_limit, overrides: {row: {TrainConfig field: value}}``,
``variants: {row: {method: name, TrainConfig field: value}}`` and ``train: {TrainConfig field:
value}`` (further settings shared by every run, e.g. ``optimizer``).
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import REPO_ROOT, _clean, machine_info  # noqa: E402  (also puts the repo on sys.path)
from paired import SAME_CHANNELS, paired_text  # noqa: E402

from sca_plugin.config import RUN_FREE_FIELDS, ConfigError, TrainConfig  # noqa: E402
from sca_plugin.methods import get_method, method_names  # noqa: E402
from sca_plugin.plots.runs import mean_std  # noqa: E402
from sca_plugin.records import read_run_metrics  # noqa: E402

SHARED_KEYS = ("dataset", "model", "width", "time_steps", "epochs", "batch_size", "lr", "train_limit", "test_limit")
REQUIRED_KEYS = ("dataset", "model", "seeds", "methods")
ALL_KEYS = set(SHARED_KEYS) | {"seeds", "ratios", "methods", "overrides", "variants", "train", "name", "paired_with"}
#: classes of the datasets, for the collapse check of runs made before metrics.json recorded it
_NUM_CLASSES = {"cifar100": 100, "dvs-gesture": 11}
# settings the harness controls itself; a config may not set them
HARNESS_FIELDS = {"method", "pruning_ratio", "seed", "output_dir", "resume", "progress", "dense_baseline"}
# fields that may differ between a finished run's config and the requested one
COPY_LIMIT_BYTES = 256 * 1024


# --------------------------------------------------------------------------------------------------
# config
# --------------------------------------------------------------------------------------------------
def load_bench_config(path) -> Dict[str, Any]:
    import yaml

    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    data = yaml.safe_load(p.read_text())
    if not isinstance(data, dict):
        raise ConfigError(f"{path} must hold a mapping")
    data = {k.replace("-", "_"): v for k, v in data.items()}
    unknown = sorted(set(data) - ALL_KEYS)
    if unknown:
        raise ConfigError(f"{path}: unknown key(s) {unknown}; valid: {', '.join(sorted(ALL_KEYS))}")
    missing = [k for k in REQUIRED_KEYS if k not in data]
    if missing:
        raise ConfigError(f"{path}: missing key(s) {missing}")
    variants = data.get("variants") or {}
    for row, v in variants.items():
        if _method_spec(row) is not None:
            raise ConfigError(f"{path}: variant {row!r} has the name of a method; give it another name")
        if not isinstance(v, dict) or _method_spec(v.get("method")) is None:
            raise ConfigError(f"{path}: variant {row!r} needs 'method: <one of {', '.join(method_names())}>' "
                              "(or module:name of a registered method)")
        clash = sorted(set(v) & (HARNESS_FIELDS - {"method"}))
        if clash:
            raise ConfigError(f"{path}: variant {row!r} sets {clash}, which the harness sets itself")
    bad = [m for m in data["methods"] if m not in variants and _method_spec(m) is None]
    if bad:
        raise ConfigError(f"{path}: unknown method(s) {bad}; use {', '.join(method_names())}, module:name of a "
                          "registered method, or a name from 'variants'")
    if any(not get_method(row_method(data, m)).emergent_sparsity for m in data["methods"]) and not data.get("ratios"):
        raise ConfigError(f"{path}: pruning methods need a non-empty 'ratios' list")
    for m, ov in (data.get("overrides") or {}).items():
        if m not in data["methods"]:
            raise ConfigError(f"{path}: overrides for {m!r}, which is not in 'methods'")
        clash = sorted(set(ov) & HARNESS_FIELDS)
        if clash:
            raise ConfigError(f"{path}: overrides for {m!r} set {clash}, which the harness sets itself")
    clash = sorted(set(data.get("train") or {}) & (HARNESS_FIELDS | set(SHARED_KEYS)))
    if clash:
        raise ConfigError(f"{path}: 'train' sets {clash}; set them at the top level (or not at all)")
    data.setdefault("name", p.stem)
    return data


def _method_spec(name: Any):
    """The registered method ``name`` (``sca_plugin.methods``), or None."""
    try:
        return get_method(name)
    except ValueError:
        return None


def row_method(cfg: Dict[str, Any], row: str) -> str:
    """The ``sca-prune train`` method of a row (a method name or a variant)."""
    return ((cfg.get("variants") or {}).get(row) or {}).get("method", row)


def run_name(row: str, ratio: Optional[float], seed: int) -> str:
    """``<row>-r<ratio>-s<seed>``; ``<row>-s<seed>`` for rows whose sparsity is not set (dense, sdsnn)."""
    return f"{row}-s{seed}" if ratio is None else f"{row}-r{ratio:g}-s{seed}"


def plan_runs(cfg: Dict[str, Any], runs_dir: Path) -> List[Dict[str, Any]]:
    """One entry per run: name, method, ratio, seed, whether the row's sparsity emerges (no ratio
    asked for: dense, sdsnn), and the TrainConfig (validated)."""
    shared = {k: cfg[k] for k in SHARED_KEYS if cfg.get(k) is not None}
    shared.update(cfg.get("train") or {})
    plan = []
    for row in cfg["methods"]:
        method = row_method(cfg, row)
        emergent = get_method(method).emergent_sparsity
        ratios = [0.0] if emergent else [float(r) for r in cfg["ratios"]]
        for ratio in ratios:
            for seed in cfg["seeds"]:
                name = run_name(row, None if emergent else ratio, seed)
                values = dict(shared, **((cfg.get("variants") or {}).get(row) or {}))
                values.update((cfg.get("overrides") or {}).get(row) or {})
                values.update(method=method, pruning_ratio=ratio, seed=int(seed), progress=False,
                              dense_baseline=False, output_dir=str(runs_dir / name))
                plan.append({"name": name, "row": row, "method": method, "ratio": ratio, "seed": int(seed),
                             "emergent": emergent, "config": TrainConfig.from_dict(values)})
    return plan


def _comparable(d: Dict[str, Any]) -> Dict[str, Any]:
    return {k: v for k, v in d.items() if k not in RUN_FREE_FIELDS}


# --------------------------------------------------------------------------------------------------
# the sweep
# --------------------------------------------------------------------------------------------------
def _init_worker(threads: int, parent: Optional[int] = None) -> None:
    import torch

    torch.set_num_threads(threads)
    if parent is not None:  # a worker must not outlive its sweep (it would go on writing runs nobody collects)
        import os
        import threading

        def watch() -> None:
            while os.getppid() == parent:
                time.sleep(2)
            os._exit(1)

        threading.Thread(target=watch, daemon=True).start()


def _train_one(cfg: TrainConfig) -> Dict[str, Any]:
    from sca_plugin.runner import run_training

    t0 = time.time()
    m = run_training(cfg, log=lambda s: None)
    m["_harness_s"] = time.time() - t0
    return m


def _finished(item: Dict[str, Any], results_dir: Optional[Path]) -> Optional[Path]:
    """The metrics of a finished run: its run folder's metrics.json, or the copy a previous
    invocation committed under ``<results_dir>/runs/`` (run folders are not kept in the repository,
    so a sweep continued in a later sitting reuses the committed copies)."""
    own = Path(item["config"].output_dir) / "metrics.json"
    if own.is_file():
        return own
    if results_dir is not None and (results_dir / "runs" / f"{item['name']}.json").is_file():
        return results_dir / "runs" / f"{item['name']}.json"
    return None


def select_runs(plan: List[Dict[str, Any]], rows: Optional[Sequence[str]] = None,
                seeds: Optional[Sequence[int]] = None, ratios: Optional[Sequence[float]] = None) -> set:
    """The names of the planned runs to train: those of the given rows, seeds and ratios (each None:
    all). Values the config does not have are refused with the valid ones (``ConfigError``); the
    ratio filter leaves rows without a ratio (dense, sdsnn) in."""
    def check(what: str, asked, valid) -> None:
        unknown = [v for v in asked or () if v not in valid]
        if unknown:
            raise ConfigError(f"--{what} {', '.join(map(str, unknown))} not in the config; "
                              f"it has {', '.join(map(str, valid))}")

    check("rows", rows, list(dict.fromkeys(it["row"] for it in plan)))
    check("seeds", seeds, sorted({it["seed"] for it in plan}))
    check("ratios", ratios, sorted({it["ratio"] for it in plan if not it["emergent"]}))
    return {it["name"] for it in plan
            if (rows is None or it["row"] in rows) and (seeds is None or it["seed"] in seeds)
            and (ratios is None or it["emergent"] or it["ratio"] in ratios)}


def run_sweep(plan: List[Dict[str, Any]], *, resume: bool = False, log=print, workers: int = 1,
              threads: Optional[int] = None, train: bool = True, results_dir: Optional[Path] = None,
              only: Optional[set] = None) -> Dict[str, Any]:
    """Train every planned run whose metrics.json does not exist yet; returns metrics per run name
    and what was trained / reused / missing. ``workers`` > 1 trains that many runs at once, in
    separate processes with ``threads`` torch threads each (small spiking nets use 2 cores better
    as 2 single-threaded runs than as one 2-threaded run); ``train=False`` only collects the
    finished runs (a sweep spanning several sittings: summarise what is done so far); ``only`` (run
    names, :func:`select_runs`) trains just those and collects the rest."""

    # check first, train later: a stale or half-finished folder stops the sweep before any work
    for item in plan:
        out = Path(item["config"].output_dir)
        metrics = _finished(item, results_dir)
        if metrics is not None:
            saved = read_run_metrics(metrics).get("config", {})
            try:  # settings added since that run was made count with their defaults; defaults that
                # depend on other settings count as the values the run used
                saved = TrainConfig.from_dict({k: v for k, v in saved.items() if k not in RUN_FREE_FIELDS}).effective_dict()
            except ConfigError:
                pass
            want = item["config"].effective_dict()
            diff = sorted(k for k in _comparable(want) if saved.get(k) != want[k])
            if diff:
                raise ConfigError(f"{metrics} is a finished run made with other settings ({', '.join(diff)}); "
                                  "use another --runs-dir / --out or delete it")
        elif (out / "checkpoint.pt").is_file() and not resume and train \
                and (only is None or item["name"] in only):  # runs that are not trained are only collected
            raise ConfigError(f"{out} holds an unfinished run; pass --resume to continue it "
                              "(or delete that folder to start it over)")

    results: Dict[str, Dict[str, Any]] = {}
    trained, reused, missing, todo = [], [], [], []
    for i, item in enumerate(plan, 1):
        cfg: TrainConfig = item["config"]
        out = Path(cfg.output_dir)
        done_before = _finished(item, results_dir)
        if done_before is not None:
            results[item["name"]] = dict(read_run_metrics(done_before))
            reused.append(item["name"])
            continue
        if not train or (only is not None and item["name"] not in only):
            missing.append(item["name"])
            continue
        if resume and (out / "checkpoint.pt").is_file():
            cfg.resume = True
        todo.append(item)
    # seed-major: a sweep cut off by the end of a sitting leaves every row with the same seeds done
    rank = {row: i for i, row in enumerate(dict.fromkeys(it["row"] for it in plan))}
    todo.sort(key=lambda it: (it["seed"], it["ratio"], rank[it["row"]]))
    log(f"{len(reused)} runs finished before (not retrained), {len(todo)} to train"
        + (f", {len(missing)} not finished yet" if missing else ""))

    def done(item, m, k):
        results[item["name"]] = m
        trained.append(item["name"])
        flag = " COLLAPSED" if (m.get("collapse") or {}).get("collapsed") else ""
        log(f"[{k}/{len(todo)}] {item['name']}: accuracy {100 * m['accuracy']['final']:.2f}%{flag}, "
            f"{m['parameters']['after']:,} parameters ({m.pop('_harness_s', 0.0):.1f} s)")

    if workers <= 1:
        if threads:
            _init_worker(threads)
        for k, item in enumerate(todo, 1):
            done(item, _train_one(item["config"]), k)
    elif todo:
        import multiprocessing as mp
        import os
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init_worker,
                                 initargs=(threads or 1, os.getpid())) as pool:
            futures = {pool.submit(_train_one, item["config"]): item for item in todo}
            for k, fut in enumerate(as_completed(futures), 1):
                done(futures[fut], fut.result(), k)
    return {"metrics": results, "trained": trained, "reused": reused, "missing": missing}


# --------------------------------------------------------------------------------------------------
# summary
# --------------------------------------------------------------------------------------------------
def _labelled_runs(metrics: Dict[str, Dict[str, Any]], rows: Optional[Dict[str, str]]) -> List[Dict[str, Any]]:
    """Run metrics with ``method`` set to the row label (variants are rows of their own)."""
    runs = []
    for name, m in metrics.items():
        r = dict(m)
        r["path"] = name
        if rows and name in rows:
            r["method"] = rows[name]
        runs.append(r)
    return runs


def summarize_runs(metrics: Dict[str, Dict[str, Any]], rows: Optional[Dict[str, str]] = None) -> List[Dict[str, Any]]:
    """One group per (row, ratio); ``rows`` maps run names to row labels (default: the method)."""
    from sca_plugin.plots import group_runs

    runs = _labelled_runs(metrics, rows)
    groups = []
    for g in group_runs(runs):
        rs = g["runs"]
        spec = _spec_of(rs[0])
        layers = list((rs[0].get("channels") or {}).get("before") or {})
        channels = {n: mean_std((r.get("channels") or {}).get("after", {}).get(n) for r in rs) for n in layers}
        groups.append({
            "method": g["method"],
            "pruning_ratio": g["pruning_ratio"],
            "n": g["n"],
            "seeds": g["seeds"],
            "runs": [r["path"] for r in rs],
            "accuracy_mean": g["accuracy_mean"],
            "accuracy_std": g["accuracy_std"],
            "accuracy_per_seed": [(r.get("accuracy") or {}).get("final") for r in rs],
            "parameters": g["parameters"],
            "parameters_before": g["parameters_before"],
            "macs_per_step": g["macs_per_step"],
            "macs_per_step_before": g["macs_per_step_before"],
            "synops": g["synops"],
            "synops_std": mean_std((r.get("synops") or {}).get("after") for r in rs)["std"],
            "activation_sparsity": mean_std(r.get("activation_sparsity") for r in rs)["mean"],
            "channels_before": dict((rs[0].get("channels") or {}).get("before") or {}),
            "channels_after_mean": {n: v["mean"] for n, v in channels.items()},
            "channels_after_std": {n: v["std"] for n, v in channels.items()},
            "regrow_ratio": rs[0].get("regrow_ratio"),
            "oneshot_epoch": _effective(rs[0], "effective_oneshot_epoch"),
            "schedule": _schedule(rs[0]),
            "emergent_sparsity": bool(spec and spec.emergent_sparsity),
            "baseline": bool(spec and spec.baseline),
            "channel_sparsity": mean_std(_channel_sparsity(r) for r in rs)["mean"],
            "connectivity": mean_std((r.get("connectivity") or {}).get("total") for r in rs)["mean"],
            "wall_time_s_mean": mean_std(r.get("wall_time_s") for r in rs)["mean"],
            "base_method": (rs[0].get("config") or {}).get("method", g["method"]),
            "collapsed_runs": [r["path"] for r in rs if run_collapse(r)["collapsed"]],
        })
    return groups


def run_collapse(run: Dict[str, Any]) -> Dict[str, Any]:
    """The collapse check of one run: recorded in its metrics.json, or computed for older runs."""
    if run.get("collapse"):
        return run["collapse"]
    from sca_plugin.collapse import collapse_check

    log = run.get("epochs_log") or []
    classes = run.get("num_classes") or _NUM_CLASSES.get(run.get("dataset"), 10)
    return collapse_check(log[-1]["loss"] if log else None, (run.get("accuracy") or {}).get("final"), classes)


def _same_channels(a: Dict[str, Any], b: Dict[str, Any]) -> bool:
    """Both rows keep the same number of channels in every layer (on every seed, for per-layer
    ranking; the means of unequal structures do not match by accident in practice)."""
    ca, cb = a.get("channels_after_mean") or {}, b.get("channels_after_mean") or {}
    return bool(ca) and ca == cb and not any(v is None for v in ca.values())


def paired_differences(groups: List[Dict[str, Any]], paired_with: Sequence[str] = ()) -> None:
    """Add to every group, per ratio, the paired (same seeds) difference of its accuracy to the best
    built-in row (highest mean among the methods registered as ``baseline``: Torch-Pruning's and NNI's
    built-ins), to the best built-in that keeps the same channels per layer (:data:`SAME_CHANNELS`,
    where one does) and to each row in ``paired_with``:
    mean and 95% t-interval of the per-seed differences, in ``group["paired"][reference]``."""
    import numpy as np
    from scipy import stats

    by_ratio: Dict[float, List[Dict[str, Any]]] = {}
    for g in groups:
        if not g.get("emergent_sparsity"):
            by_ratio.setdefault(g["pruning_ratio"], []).append(g)
    for ratio, gs in by_ratio.items():
        builtins = [g for g in gs if g.get("baseline") and g["accuracy_mean"] is not None]
        refs = {}
        if builtins:
            best = max(builtins, key=lambda g: g["accuracy_mean"])
            refs["best built-in"] = best
        for name in paired_with:
            ref = next((g for g in gs if g["method"] == name), None)
            if ref is not None:
                refs[name] = ref
        for g in gs:
            g["paired"] = {}
            own_refs = dict(refs)
            same = [b for b in builtins if b is not g and _same_channels(b, g)]
            if same:  # the comparison at equal structure (NNI's rounding keeps more channels: --nni-rounding)
                own_refs = {"best built-in": refs["best built-in"],
                            SAME_CHANNELS: max(same, key=lambda b: b["accuracy_mean"]), **refs}
            for label, ref in own_refs.items():
                acc = dict(zip(g["seeds"], g["accuracy_per_seed"]))
                ref_acc = dict(zip(ref["seeds"], ref["accuracy_per_seed"]))
                seeds = [s for s in g["seeds"] if s in ref_acc and acc[s] is not None and ref_acc[s] is not None]
                d = np.array([100 * (acc[s] - ref_acc[s]) for s in seeds])
                entry = {"row": ref["method"], "n": len(seeds), "mean": float(d.mean()) if len(d) else None,
                         "ci95": None}
                if len(d) > 1:
                    half = float(stats.t.ppf(0.975, len(d) - 1) * d.std(ddof=1) / np.sqrt(len(d)))
                    entry["ci95"] = [entry["mean"] - half, entry["mean"] + half]
                g["paired"][label] = entry


def _paired_text(entry: Optional[Dict[str, Any]], self_row: str) -> str:
    """A row's paired difference to a reference row; none to itself."""
    if entry and entry["row"] == self_row:
        return "–"
    return paired_text(entry)


def _count(v: Optional[float]) -> str:
    if v is None:
        return "–"
    return f"{v:,.0f}"


def _rel(v: Optional[float], ref: Optional[float]) -> str:
    s = _count(v)
    if v is not None and ref:
        s += f" ({100 * v / ref:.0f}%)"
    return s


def _channel_sparsity(run: Dict[str, Any]) -> Optional[float]:
    ch = run.get("channels") or {}
    before, after = sum((ch.get("before") or {}).values()), sum((ch.get("after") or {}).values())
    return 1.0 - after / before if before else None


def _spec_of(run: Dict[str, Any]):
    """The registered method of a finished run (None if it is not registered in this process)."""
    return _method_spec((run.get("config") or {}).get("method", run.get("method")))


def _effective(run: Dict[str, Any], prop: str):
    """A derived TrainConfig setting of a finished run (from its saved config)."""
    try:
        return getattr(TrainConfig.from_dict(run.get("config") or {}), prop)
    except ConfigError:
        return None


def _schedule(run: Dict[str, Any]) -> str:
    try:
        c = TrainConfig.from_dict(run.get("config") or {})
    except ConfigError:
        return "?"
    spec = c.spec
    if spec.kind == "dense":
        return "no pruning"
    if spec.kind == "sdsnn":
        return (f"SD-SNN structural development each epoch for {c.epochs - c.effective_fixed_mask_epochs} of "
                f"{c.epochs} epochs (sparsity emerges; N = {c.effective_sdsnn_n}, "
                f"initial conv rate {c.sdsnn_initial_rate:g}%, regeneration cap {c.sdsnn_regen_cap:g}, "
                f"ranges on {c.sdsnn_range_layers} layers)")
    rank = "global ranking" if c.effective_global_pruning else "per-layer ranking"
    extra = []
    if c.effective_regrow_ratio:
        extra.append(f"regrow_ratio {c.effective_regrow_ratio:g} of {c.regrow_relative_to} channels")
    if c.effective_bn_l1:
        extra.append(f"BN-scale L1 {c.effective_bn_l1:g}")
    if spec.nni_training:
        extra.append(f"+{c.nni_training_steps} NNI scoring steps")
    if spec.kind == "init":
        what = spec.description
    elif c.effective_oneshot_epoch is not None:
        what = f"one-shot after epoch {c.effective_oneshot_epoch}, then fine-tuning"
    else:
        what = f"dynamic: masks updated each epoch for {c.epochs - c.effective_fixed_mask_epochs} of {c.epochs} epochs"
        if c.effective_schedule != "constant" and (c.effective_ramp_updates or 2) > 1:  # a 1-update ramp is constant
            what += (f", target reached by a {c.effective_schedule} ramp over "
                     f"{c.effective_ramp_updates or '?'} updates")
    return "; ".join([what, rank] + extra)


def run_environments(metrics: Dict[str, Dict[str, Any]]) -> str:
    """Where the table's runs were trained, from each run's own record: a sweep collected over several
    sittings mixes machines and thread counts, which the invocation's machine line cannot say."""
    counts: Dict[str, int] = {}
    for m in metrics.values():
        env = m.get("environment")
        key = (f"{env.get('cpu_model', '?')}, {env.get('torch_threads', '?')} torch thread(s), "
               f"torch {env.get('torch_version', '?')}") if env else "not recorded (runs made before the record existed)"
        counts[key] = counts.get(key, 0) + 1
    return "; ".join(f"{k} ({n} run{'s' if n != 1 else ''})" for k, n in sorted(counts.items(), key=lambda kv: -kv[1])) or "–"


def table_markdown(groups: List[Dict[str, Any]], cfg: Dict[str, Any], info: Dict[str, Any],
                   sweep: Dict[str, Any]) -> str:
    dense = next((g for g in groups if g["method"] == "dense"), None)
    epochs = int(cfg.get("epochs") or TrainConfig.epochs)
    layers = list(groups[0]["channels_before"]) if groups else []
    lines = [
        f"# Quality benchmark: `{cfg['name']}`",
        "",
        f"Command: `{info['command']}`  ",
        f"Machine: {info['cpu_model']}, {info['cpu_cores']} cores, this invocation ({info.get('workers', 1)} run(s) at once, "
        f"{info['torch_threads']} torch thread(s) each), "
        f"torch {info['torch_version']}, Python {info['python_version']}, device `{info['device']}`, {info['date']}.  ",
        f"Sweep: {len(sweep['trained'])} runs trained, {len(sweep['reused'])} reused from earlier invocations; "
        f"{sweep['elapsed_s']:.1f} s wall time for this invocation "
        f"(sum of the runs' own wall times: {sweep['run_wall_time_sum_s']:.1f} s).  ",
        f"Runs trained on: {run_environments(sweep['metrics'])}.",
        "",
        f"Setting (the same for every row): dataset `{cfg['dataset']}`, model `{cfg['model']}`, width "
        f"{cfg.get('width', 1.0)}, T = {cfg.get('time_steps', 4)}, {epochs} epochs, batch {cfg.get('batch_size', 64)}, "
        f"lr {cfg.get('lr', 0.1)} ({(cfg.get('train') or {}).get('optimizer', 'sgd')} + {(cfg.get('train') or {}).get('lr_schedule', 'cosine')} LR), "
        f"train_limit {cfg.get('train_limit') or 'all'}, test_limit {cfg.get('test_limit') or 'all'}, seeds {cfg['seeds']}; "
        f"no dense baseline inside the pruned runs (the `dense` row is its own run per seed).",
        "",
        "Rows: `sca` = SCA prune-and-regrow, `sca-prune-only` = SCA without regrowth, `random-init` = random "
        "mask fixed at initialisation (the paper's ablation); `l1, l2, bnscale, taylor, lamp, random` = Torch-Pruning's "
        "built-in importance criteria in the same pruner; `nni-*` = NNI 3.0's built-in pruners, one-shot, removed "
        "through `sca_plugin.nni.ModelSpeedup`, then fine-tuned. Total training epochs are the same for every row "
        "(NNI's Slim/Taylor additionally run their own scoring steps, listed). Schedule of each row:",
        "",
    ]
    for m in dict.fromkeys(g["method"] for g in groups):
        g0 = next(g for g in groups if g["method"] == m)
        variant = (cfg.get("variants") or {}).get(m)
        ov = (cfg.get("overrides") or {}).get(m)
        lines.append(f"- `{m}`: {g0['schedule']}" + (f"; variant {variant}" if variant else "")
                     + (f"; overrides {ov}" if ov else ""))
    lines += [
        "",
        "Ratio: the channel pruning ratio asked for; in parentheses the channel sparsity reached by methods that "
        "do not take one (sdsnn). "
        "Accuracy: final test accuracy of the finalized (physically pruned) model, mean ± sample std over seeds; "
        "Δ: difference of the means to `dense`. Parameters, MACs per time step and SynOps per sample (mean over "
        "seeds, % of dense in parentheses). Activation sparsity: fraction of zero spikes. Channels: mean kept "
        f"channels per layer ({' / '.join(layers)}; dense: {' / '.join(str(v) for v in groups[0]['channels_before'].values()) if groups else ''}).",
        "",
    ]
    references = list(dict.fromkeys(k for g in groups for k in (g.get("paired") or {})))
    if references:
        lines += ["Paired differences (accuracy points; same seeds; mean and 95% t-interval of the per-seed "
                  "differences) to " + ", ".join(f"`{r}`" for r in references)
                  + (" (`best built-in`: the Torch-Pruning or NNI row with the highest mean accuracy at that ratio"
                     + (f"; `{SAME_CHANNELS}`: the same among the rows that keep the row's channel count in every "
                        "layer (NNI's own rounding keeps more: `nni-*-nearest` rows have the per-layer counts)"
                        if SAME_CHANNELS in references else "") + "). "
                     if "best built-in" in references else ". ") +
                  "Collapsed: runs whose final training loss is at or above 0.8 ln(classes) or whose accuracy is "
                  "within 5 points of chance (`sca_plugin.collapse`); they are counted here and included in the "
                  "mean, never dropped silently.", ""]
    lines += [
        "| method | ratio | n | collapsed | accuracy (%) | Δ vs dense (pt) | "
        + "".join(f"Δ vs {r} (pt) | " for r in references)
        + "parameters | MACs/step | SynOps | act. sparsity | channels |",
        "|---|---|---|---|---|---|" + "---|" * len(references) + "---|---|---|---|---|",
    ]
    for g in groups:
        acc = "–" if g["accuracy_mean"] is None else f"{100 * g['accuracy_mean']:.2f} ± {100 * g['accuracy_std']:.2f}"
        delta = "–"
        if dense and g is not dense and g["accuracy_mean"] is not None and dense["accuracy_mean"] is not None:
            delta = f"{100 * (g['accuracy_mean'] - dense['accuracy_mean']):+.2f}"
        ref = (lambda k: dense[k] if dense and g is not dense else None)
        chans = " / ".join("–" if v is None else f"{v:.1f}".rstrip("0").rstrip(".")
                           for v in g["channels_after_mean"].values())
        sp = "–" if g["activation_sparsity"] is None else f"{g['activation_sparsity']:.3f}"
        ratio = "–" if g["method"] == "dense" else format(g["pruning_ratio"], "g")
        if g.get("emergent_sparsity") and g["method"] != "dense" and g.get("channel_sparsity") is not None:
            ratio = f"({g['channel_sparsity']:.2f})"
        paired = "".join(f"{_paired_text((g.get('paired') or {}).get(r), g['method'])} | " for r in references)
        lines.append(f"| {g['method']} | {ratio} | "
                     f"{g['n']} | {len(g.get('collapsed_runs') or [])} | {acc} | {delta} | {paired}"
                     f"{_rel(g['parameters'], ref('parameters'))} | "
                     f"{_rel(g['macs_per_step'], ref('macs_per_step'))} | {_rel(g['synops'], ref('synops'))} | "
                     f"{sp} | {chans} |")
    lines += ["", "Figures: `fig_accuracy_vs_params.png`, `fig_accuracy_vs_synops.png` (log x; error bars: std "
              "over seeds), `fig_accuracy_vs_ratio.png`.", ""]
    return "\n".join(lines)


# --------------------------------------------------------------------------------------------------
# figures
# --------------------------------------------------------------------------------------------------
def plot_pareto(groups: List[Dict[str, Any]], cost: str, path: Path, *, title: str) -> Path:
    """Accuracy (mean ± std) against ``cost`` ("parameters" or "synops") on a log x axis, one line
    per method through its pruning ratios, dense as a star and a dotted reference line."""
    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from sca_plugin.plots.figures import method_color

    label = {"parameters": "parameters (log scale)", "synops": "SynOps per sample (log scale)"}[cost]
    pts = [g for g in groups if g[cost] and g["accuracy_mean"] is not None]
    if not pts:
        raise ValueError(f"no group has both {cost} and an accuracy")
    fig = Figure(figsize=(8.6, 5.4), layout="constrained")
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    methods = list(dict.fromkeys(g["method"] for g in pts))
    markers = ["o", "s", "^", "v", "D", "P", "X", "<", ">", "h", "p", "*"]
    for i, m in enumerate(methods):
        gs = sorted((g for g in pts if g["method"] == m), key=lambda g: g[cost])
        x = np.array([g[cost] for g in gs])
        y = np.array([100 * g["accuracy_mean"] for g in gs])
        e = np.array([100 * (g["accuracy_std"] or 0.0) for g in gs])
        color = method_color(m)
        if m == "dense":
            ax.errorbar(x, y, yerr=e, fmt="*", ms=15, color=color, mec="black", mew=0.6, capsize=3, zorder=5,
                        label="dense")
            ax.axhline(y[0], color=color, ls=":", lw=1, zorder=1)
            continue
        ratios = ", ".join(f"{g['pruning_ratio']:g}" for g in gs)
        ax.errorbar(x, y, yerr=e, fmt="-" + markers[i % len(markers)], ms=7, lw=1.4, color=color, mec="black",
                    mew=0.5, capsize=3, alpha=0.9, zorder=3, label=f"{m} (ratios {ratios})")
    ax.set_xscale("log")
    from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter

    ax.xaxis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:,.0f}"))
    ax.xaxis.set_minor_formatter(NullFormatter())
    ax.set_xlabel(label)
    ax.set_ylabel("test accuracy (%, mean ± std over seeds)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5), frameon=True)
    ax.set_title(title, fontsize=10.5)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=130)
    return path


def make_figures(groups, metrics: Dict[str, Dict[str, Any]], out: Path, cfg: Dict[str, Any],
                 rows: Optional[Dict[str, str]] = None) -> List[Path]:
    from sca_plugin.plots import plot_accuracy_vs_ratio

    n_seeds = len(cfg["seeds"])
    setup = f"{cfg['model']} (width {cfg.get('width', 1.0)}) / {cfg['dataset']}, T={cfg.get('time_steps', 4)}, " \
            f"{cfg.get('epochs')} epochs, {n_seeds} seed{'s' if n_seeds != 1 else ''}"
    paths = []
    for cost, fname, what in (("parameters", "fig_accuracy_vs_params.png", "parameters"),
                              ("synops", "fig_accuracy_vs_synops.png", "SynOps")):
        try:
            paths.append(plot_pareto(groups, cost, out / fname, title=f"Accuracy vs {what}: {setup}"))
        except ValueError as e:
            print(f"quality: skipped {fname}: {e}", file=sys.stderr)
    runs = _labelled_runs(metrics, rows)
    try:
        paths.append(plot_accuracy_vs_ratio(runs, out / "fig_accuracy_vs_ratio.png",
                                            title=f"Accuracy and cost vs pruning ratio: {setup}"))
    except ValueError as e:
        print(f"quality: skipped fig_accuracy_vs_ratio.png: {e}", file=sys.stderr)
    return paths


# --------------------------------------------------------------------------------------------------
# main
# --------------------------------------------------------------------------------------------------
def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python benchmarks/quality.py", description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True, help="benchmark YAML (benchmarks/configs/quality_*.yaml)")
    parser.add_argument("--out", help="output folder (default benchmarks/results/<config name>)")
    parser.add_argument("--runs-dir", help="folder of the run folders (default runs/<config name>)")
    parser.add_argument("--resume", action="store_true",
                        help="continue runs that were cut off mid-training from their checkpoint "
                             "(finished runs are always reused)")
    parser.add_argument("--workers", type=int, default=1,
                        help="runs trained at once, each in its own process (default 1)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch threads per run (default: torch's choice with 1 worker, 1 with several)")
    parser.add_argument("--no-train", action="store_true",
                        help="train nothing: summarise the finished runs (a sweep that spans several sittings)")
    parser.add_argument("--rows", type=lambda v: [r for r in v.split(",") if r],
                        help="train only these rows (comma-separated names from the config's methods); "
                             "the outputs still cover every finished run")
    parser.add_argument("--seeds", type=lambda v: [int(x) for x in v.split(",") if x],
                        help="train only these seeds (comma-separated)")
    parser.add_argument("--ratios", type=lambda v: [float(x) for x in v.split(",") if x],
                        help="train only these pruning ratios (comma-separated; dense is not filtered)")
    args = parser.parse_args(argv)
    if args.workers < 1 or (args.threads is not None and args.threads < 1):
        print("quality: error: --workers and --threads must be at least 1", file=sys.stderr)
        return 2
    start = time.time()
    try:
        cfg = load_bench_config(args.config)
        out = Path(args.out or REPO_ROOT / "benchmarks" / "results" / cfg["name"])
        runs_dir = Path(args.runs_dir or REPO_ROOT / "runs" / cfg["name"])
        plan = plan_runs(cfg, runs_dir)
        filtered = any(v is not None for v in (args.rows, args.seeds, args.ratios))
        only = select_runs(plan, args.rows, args.seeds, args.ratios) if filtered else None
        print(f"quality: {len(plan)} runs into {runs_dir}, results into {out}"
              + (f"; training only {len(only)} of them (--rows/--seeds/--ratios)" if filtered else ""), flush=True)
        sweep = run_sweep(plan, resume=args.resume, log=lambda s: print(s, flush=True), workers=args.workers,
                          threads=args.threads, train=not args.no_train, results_dir=out, only=only)
    except ConfigError as e:
        print(f"quality: error: {e}", file=sys.stderr)
        return 2
    sweep["elapsed_s"] = time.time() - start
    sweep["run_wall_time_sum_s"] = sum(float(m.get("wall_time_s") or 0.0) for m in sweep["metrics"].values())

    info = machine_info("cpu")
    if args.threads is not None:  # the runs' own thread count, not this process's
        info["torch_threads"] = args.threads
    info["workers"] = args.workers
    info["device"] = ", ".join(sorted({str(it["config"].device) for it in plan}))
    if argv is not None:  # called from Python (tests): record the equivalent command line
        info["command"] = "python benchmarks/quality.py " + " ".join(argv)
    # the command that trains every run of the table (--no-train only collected the finished ones,
    # --rows/--seeds/--ratios trained part of them)
    info["command"] = re.sub(r" --(rows|seeds|ratios)[ =]\S+", "", info["command"].replace(" --no-train", ""))
    rows = {item["name"]: item["row"] for item in plan}
    groups = summarize_runs(sweep["metrics"], rows)
    paired_differences(groups, cfg.get("paired_with") or [])
    out.mkdir(parents=True, exist_ok=True)
    runs_out = out / "runs"
    runs_out.mkdir(exist_ok=True)
    for item in plan:
        src = Path(item["config"].output_dir) / "metrics.json"
        if item["name"] not in sweep["metrics"]:
            continue  # not finished yet (--no-train)
        if not src.is_file():
            continue  # reused from the committed copy, which is already there
        if src.stat().st_size <= COPY_LIMIT_BYTES:
            shutil.copyfile(src, runs_out / f"{item['name']}.json")
        else:  # keep the copy small: drop the per-update history and the raw scores
            m = {k: v for k, v in sweep["metrics"][item["name"]].items() if k not in ("history", "importance_scores")}
            (runs_out / f"{item['name']}.json").write_text(json.dumps(m, indent=2))
    summary = {
        "benchmark": "quality",
        "config_file": str(args.config),
        "config": cfg,
        "machine": info,
        "sweep": {k: sweep[k] for k in ("trained", "reused", "missing", "elapsed_s", "run_wall_time_sum_s")},
        "runs_dir": str(runs_dir),
        "groups": groups,
    }
    (out / "summary.json").write_text(json.dumps(_clean(summary), indent=2) + "\n")
    (out / "table.md").write_text(table_markdown(groups, cfg, info, sweep))
    figs = make_figures(groups, sweep["metrics"], out, cfg, rows)
    print(table_markdown(groups, cfg, info, sweep))
    for p in [out / "summary.json", out / "table.md", *figs]:
        print(p)
    print(f"quality: done in {time.time() - start:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

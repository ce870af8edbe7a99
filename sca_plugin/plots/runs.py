"""The runs a report reads: ``metrics.json`` files loaded, and runs of one setting grouped (mean
and std over seeds; runs whose settings differ are labelled apart)."""
from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

import numpy as np

from ..records import read_run_metrics
from ..methods import is_dense_label



PathLike = Union[str, "os.PathLike[str]"]


RunLike = Union[Mapping, PathLike]


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
        data = dict(read_run_metrics(f))
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
    if is_dense_label(_method(run)):
        return 0.0
    r = run.get("pruning_ratio")
    return 0.0 if r is None else round(float(r), 6)


def _method_key(m: str):
    """Registration order of the methods (``sca_plugin.methods``), then other labels by name."""
    from ..methods import method_names

    order = method_names()
    return (order.index(m), "") if m in order else (len(order), m)


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


def mean_std(values) -> Dict[str, Optional[float]]:
    """``{"mean", "std"}`` of the values that are not None: the sample standard deviation over seeds
    (``ddof=1``), 0 for one value, both None for none. How every report and benchmark aggregates."""
    vals = [float(v) for v in values if v is not None]
    if not vals:
        return {"mean": None, "std": None}
    return {"mean": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0}


def _mean(values) -> Optional[float]:
    return mean_std(values)["mean"]


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
    from ..reporting import label_runs

    runs = label_runs(_as_runs(runs))
    buckets: Dict[tuple, List[Mapping]] = {}
    for run in runs:
        key = (str(run.get("dataset", "?")), str(run.get("model", "?")), _method(run), _ratio(run))
        buckets.setdefault(key, []).append(run)
    groups = []
    for key in sorted(buckets, key=lambda k: (k[0], k[1], _method_key(k[2]), k[3])):
        rs = buckets[key]
        accs = [a for a in (_get(r, "accuracy", "final") for r in rs) if a is not None]
        acc = mean_std(accs)
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
            "n_accuracy": len(accs),
            "accuracy_mean": acc["mean"],
            "accuracy_std": acc["std"],
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
    dense = [g for g in groups if is_dense_label(g["method"]) and g[metric]]
    if dense:
        ref = dense[0][metric]
        if all(g[metric] is not None for g in groups):
            return [100.0 * g[metric] / ref for g in groups], "% of dense"
        return None, ""
    if all(g[metric] is not None and g[metric + "_before"] for g in groups):
        return [100.0 * g[metric] / g[metric + "_before"] for g in groups], "% of unpruned"
    return None, ""

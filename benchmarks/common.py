"""Shared helpers for the benchmarks: timing, robust statistics, machine info, result files.

Timing uses ``time.perf_counter`` around single calls; variants are interleaved (A B A B ...) so
that drift of the machine (turbo, other load) affects them alike, and each is summarised by its
median and interquartile range.  Ratios are ratios of medians.
"""
from __future__ import annotations

import datetime as _dt
import json
import math
import os
import platform
import shlex
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Sequence

import torch

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:  # run as `python benchmarks/x.py` from anywhere
    sys.path.insert(0, str(REPO_ROOT))

from sca_plugin.environment import run_environment  # noqa: E402


def summarize(samples: Sequence[float]) -> Dict[str, float]:
    """Median, quartiles, IQR, min and count of ``samples`` (seconds)."""
    xs = sorted(float(s) for s in samples)
    if len(xs) >= 2:
        q1, _, q3 = statistics.quantiles(xs, n=4, method="inclusive")
    else:
        q1 = q3 = xs[0]
    return {"median": statistics.median(xs), "q1": q1, "q3": q3, "iqr": q3 - q1,
            "min": xs[0], "n": len(xs)}


def ratio(a: float, b: float) -> float:
    return float(a) / float(b) if b else float("nan")


def sync(device: str) -> None:
    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str = "cpu") -> float:
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def interleave(fns: Dict[str, Callable[[], object]], reps: int, warmup: int = 1,
               device: str = "cpu") -> Dict[str, List[float]]:
    """Run each of ``fns`` ``warmup`` times, then ``reps`` rounds of one call each, in turn
    (A B A B ...; the order alternates between rounds to cancel first-in-round effects)."""
    names = list(fns)
    for _ in range(warmup):
        for n in names:
            fns[n]()
    times: Dict[str, List[float]] = {n: [] for n in names}
    for r in range(reps):
        order = names if r % 2 == 0 else names[::-1]
        for n in order:
            times[n].append(timed(fns[n], device))
    return times


def train_step(model, opt, x, y, pruner=None, net=None) -> None:
    """One training step as a user writes it with an SCA pruner (``sca_plugin.training.train_step``)."""
    from sca_plugin.training import train_step as step

    step(model, opt, x, y, pruner, net)


def machine_info(device: str = "cpu") -> dict:
    import spikingjelly
    import torch_pruning

    # what each run records (CPU, threads, versions, GPU), plus what describes the invocation
    info = run_environment(device)
    cpu_count = info.pop("cpu_count")
    info.update({
        "cpu_cores": cpu_count,
        "cpu_affinity": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "spikingjelly_version": getattr(spikingjelly, "__version__", "unknown"),
        "torch_pruning_version": getattr(torch_pruning, "__version__", "unknown"),
        "platform": platform.platform(),
        "device": device,
        "date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "command": " ".join(shlex.quote(a) for a in [Path(sys.executable).name] + sys.argv),
    })
    return info


def _clean(obj):
    """JSON-safe copy: non-finite floats become None."""
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_results(out_dir, name: str, data: dict, markdown: str) -> Dict[str, Path]:
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    jpath, mpath = out / f"{name}.json", out / f"{name}.md"
    jpath.write_text(json.dumps(_clean(data), indent=2) + "\n")
    mpath.write_text(markdown)
    return {"json": jpath, "md": mpath}


def md_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.3g}" if abs(v) < 1000 else f"{v:,.0f}"
        return str(v)
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def ms(seconds: float) -> float:
    return 1000.0 * seconds


def machine_md(info: dict) -> str:
    return (f"Machine: {info['cpu_model']}, {info['cpu_cores']} cores, {info['torch_threads']} torch threads, "
            f"torch {info['torch_version']}, device `{info['device']}`, {info['date']}.  \n"
            f"Command: `{info['command']}`\n")

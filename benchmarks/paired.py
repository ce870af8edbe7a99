"""How the benchmark tables print a paired difference between two rows.

``benchmarks/quality.py`` computes a row's paired differences (mean over the seeds both rows
finished, with a 95% t-interval from two seeds on) and prints them in each task's table;
``benchmarks/quality_overview.py`` prints them again across tasks. Both use this one formatter so
the two tables cannot drift apart. No torch import: the overview runs without the training stack.
"""
from __future__ import annotations

from typing import Any, Mapping, Optional

#: the paired reference at equal structure: the best Torch-Pruning / NNI row that keeps the same
#: channels per layer as the row compared (NNI's own rounding keeps one channel more in some layers)
SAME_CHANNELS = "best built-in, same channels"


def paired_text(entry: Optional[Mapping[str, Any]], sign: float = 1.0, with_n: bool = False) -> str:
    """``mean [lo, hi]`` of a paired difference (``sign=-1``: the other row minus this one); ``–``
    when there is none; the mean alone when one seed gives no interval; ``(n=…)`` on request."""
    if not entry or entry.get("mean") is None:
        return "–"
    n = f" (n={entry['n']})" if with_n else ""
    if entry.get("ci95") is None:
        return f"{sign * entry['mean']:+.2f}{n}"
    lo, hi = sorted(sign * v for v in entry["ci95"])
    return f"{sign * entry['mean']:+.2f} [{lo:+.2f}, {hi:+.2f}]{n}"

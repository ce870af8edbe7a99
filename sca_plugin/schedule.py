"""Per-update schedules: the target sparsity (the paper's constant target, or an AGP-like ramp)
and the regrowth fraction (the paper's constant q, or RigL's cosine decay to zero)."""
from __future__ import annotations

import math
from typing import Optional

__all__ = ["SCHEDULES", "REGROW_DECAYS", "sparsity_at", "regrow_at"]

SCHEDULES = ("constant", "linear", "cubic")
REGROW_DECAYS = ("constant", "cosine")


def sparsity_at(update: int, target: float, schedule: str = "constant", ramp_updates: int = 1) -> float:
    """Sparsity for the ``update``-th mask update (0-based).

    ``constant``: the full target from the first update (paper and reference code).
    ``linear`` / ``cubic``: ramp from ``target / ramp_updates`` (linear) to ``target`` over
    ``ramp_updates`` updates; cubic follows Zhu & Gupta's AGP, ``s * (1 - (1 - t)^3)``.
    """
    if schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {schedule!r}; use one of {SCHEDULES}")
    if schedule == "constant" or ramp_updates <= 1:
        return target
    t = min(1.0, (update + 1) / ramp_updates)
    if schedule == "linear":
        return target * t
    return target * (1.0 - (1.0 - t) ** 3)


def regrow_at(update: int, regrow_ratio: float, decay: str = "constant", decay_updates: Optional[int] = None) -> float:
    """Regrowth fraction for the ``update``-th mask update (0-based).

    ``constant``: ``regrow_ratio`` at every update (paper and reference code).
    ``cosine``: ``regrow_ratio * (1 + cos(pi * update / decay_updates)) / 2``, reaching 0 at update
    ``decay_updates`` and staying there (the drop-fraction decay of RigL, Evci et al., ICML 2020):
    the structure explores early and settles before training ends, so the last channels regrown
    still get trained.
    """
    if decay not in REGROW_DECAYS:
        raise ValueError(f"unknown regrowth decay {decay!r}; use one of {REGROW_DECAYS}")
    if decay == "constant":
        return regrow_ratio
    if not isinstance(decay_updates, int) or decay_updates < 1:
        raise ValueError(f"regrow_decay='cosine' needs regrow_decay_updates >= 1 (the update at which regrowth "
                         f"reaches 0), got {decay_updates!r}")
    t = min(update, decay_updates) / decay_updates
    return regrow_ratio * 0.5 * (1.0 + math.cos(math.pi * t))

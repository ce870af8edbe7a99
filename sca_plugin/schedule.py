"""Target sparsity per mask update: the paper's constant target, or an AGP-like ramp."""
from __future__ import annotations

__all__ = ["SCHEDULES", "sparsity_at"]

SCHEDULES = ("constant", "linear", "cubic")


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

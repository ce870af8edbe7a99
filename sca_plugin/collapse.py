"""Telling a collapsed training run from a result.

A run whose training loss ends near that of guessing (``ln(classes)``), or whose accuracy is
within a few points of chance, did not learn: it is a bug report, not a data point. The check is
recorded in every run's ``metrics.json`` and counted in the benchmark tables, so such runs are
never averaged in silently.
"""
from __future__ import annotations

import math
from typing import Any, Dict, Optional

__all__ = ["LOSS_FRACTION", "ACCURACY_MARGIN", "collapse_check"]

#: a final training loss at or above this fraction of ln(classes) counts as collapsed
LOSS_FRACTION = 0.8
#: an accuracy within this many points (fraction) of chance counts as collapsed
ACCURACY_MARGIN = 0.05


def collapse_check(final_train_loss: Optional[float], accuracy: Optional[float], num_classes: int,
                   loss_fraction: float = LOSS_FRACTION, accuracy_margin: float = ACCURACY_MARGIN) -> Dict[str, Any]:
    """``{"collapsed": bool, "reasons": [...], "chance_accuracy", "chance_loss"}`` for one run.

    ``final_train_loss``: the mean training loss of the last epoch; ``accuracy``: test accuracy
    in [0, 1]; either may be None (not checked)."""
    if not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
    chance_acc, chance_loss = 1.0 / num_classes, math.log(num_classes)
    reasons = []
    if final_train_loss is not None:
        if not math.isfinite(final_train_loss):
            reasons.append(f"the training loss is {final_train_loss}")
        elif final_train_loss >= loss_fraction * chance_loss:
            reasons.append(f"the final training loss {final_train_loss:.3f} is not below {loss_fraction:g} x the "
                           f"loss of guessing (ln {num_classes} = {chance_loss:.3f})")
    if accuracy is not None and accuracy <= chance_acc + accuracy_margin:
        reasons.append(f"the accuracy {100 * accuracy:.2f}% is within {100 * accuracy_margin:.0f} points of chance "
                       f"({100 * chance_acc:.2f}%)")
    return {"collapsed": bool(reasons), "reasons": reasons, "chance_accuracy": chance_acc, "chance_loss": chance_loss}

"""Carry an optimizer over to a model whose layers were pruned (their parameters are new tensors)."""
from __future__ import annotations

from typing import Dict

import torch
import torch.nn as nn

__all__ = ["rebuild_optimizer"]


def rebuild_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module,
                      names_before: Dict[int, str]) -> torch.optim.Optimizer:
    """A new optimizer of the same class and hyper-parameters (current learning rates included)
    over ``model``'s parameters after pruning.

    ``names_before`` maps ``id(parameter)`` to its name, taken before pruning; param groups are
    matched by name. Per-parameter state (momentum, Adam moments) is not carried over: its shapes
    belonged to the unpruned layers.
    """
    new_params = dict(model.named_parameters())
    groups = []
    for group in optimizer.param_groups:
        settings = {k: v for k, v in group.items() if k != "params"}
        names = [names_before.get(id(p)) for p in group["params"]]
        if any(n is None or n not in new_params for n in names):
            raise ValueError("the optimizer holds parameters that are not in the pruned model; "
                             "build it from model.parameters() of the same model")
        groups.append({**settings, "params": [new_params[n] for n in names]})
    return type(optimizer)(groups, **optimizer.defaults)

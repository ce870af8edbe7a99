"""Undoing a failed structural change exactly, and comparing models in float64.

Torch-Pruning replaces tensors instead of editing them in place, so keeping references to the old
ones is enough to restore a model (the same Parameter objects come back: optimizers stay valid).
float32 -> float64 -> float32 is exact, so a model can be compared in float64 and cast back.
"""
from __future__ import annotations

from typing import Any, Dict

import torch
import torch.nn as nn
import torch_pruning as tp

__all__ = ["ModuleSnapshot", "float_dtypes", "restore_dtypes", "to_double"]


def float_dtypes(model: nn.Module) -> Dict[str, torch.dtype]:
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return {name: t.dtype for name, t in tensors if t.is_floating_point()}


def restore_dtypes(model: nn.Module, dtypes: Dict[str, torch.dtype]) -> None:
    """Cast parameters and buffers back (float32 -> float64 -> float32 is exact), in place, so
    Parameter objects (and optimizers holding them) stay valid."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name in dtypes and t.dtype != dtypes[name]:
            t.data = t.data.to(dtypes[name])


def to_double(inputs: Any) -> Any:
    if isinstance(inputs, torch.Tensor):
        return inputs.double() if inputs.is_floating_point() else inputs
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(to_double(x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: to_double(v) for k, v in inputs.items()}
    return inputs


class ModuleSnapshot:
    """References to every submodule's parameters, buffers and attributes, to undo a failed prune.

    Torch-Pruning replaces tensors instead of editing them in place, so holding the old references
    is enough: restoring gives back the very same Parameter objects (an optimizer built on them
    stays valid) without copying any data.
    """

    def __init__(self, model: nn.Module, DG: tp.DependencyGraph, neuron_pruner) -> None:
        self.modules = [(m, {k: (dict(v) if k in ("_parameters", "_buffers") else v)
                             for k, v in m.__dict__.items() if k != "_modules"})
                        for m in model.modules()]
        self.DG, self.history_len = DG, len(DG._pruning_history)
        self.neuron_pruner, self.neuron_channels = neuron_pruner, dict(neuron_pruner._channels)

    def restore(self) -> None:
        for module, saved in self.modules:
            module.__dict__.update(saved)
        del self.DG._pruning_history[self.history_len:]
        self.neuron_pruner._channels.update(self.neuron_channels)

"""Physical removal as one transaction: verified against the model before it, undone exactly on failure.

Every path that removes channels (``SCAPruner.finalize``, ``nni.ModelSpeedup.speedup_model``,
``replay_pruning``) runs inside :class:`RemovalTransaction`, so "a failed call changes nothing" (no
half-pruned model, no float64 left behind, no changed parameter values) holds for all of them alike.

Torch-Pruning replaces tensors instead of editing them in place, so keeping references to the old
ones is enough to restore a model's structure (the same Parameter objects come back: optimizers stay
valid); values edited in place are restored from copies. float32 -> float64 -> float32 is exact, so
a model can be compared in float64 and cast back.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn
import torch_pruning as tp
from spikingjelly.activation_based import functional

__all__ = ["ModuleSnapshot", "RemovalTransaction", "float_dtypes", "map_tensors", "restore_dtypes", "to_double"]


def float_dtypes(model: nn.Module) -> Dict[str, torch.dtype]:
    tensors = list(model.named_parameters()) + list(model.named_buffers())
    return {name: t.dtype for name, t in tensors if t.is_floating_point()}


def restore_dtypes(model: nn.Module, dtypes: Dict[str, torch.dtype]) -> None:
    """Cast parameters and buffers back (float32 -> float64 -> float32 is exact), in place, so
    Parameter objects (and optimizers holding them) stay valid."""
    for name, t in list(model.named_parameters()) + list(model.named_buffers()):
        if name in dtypes and t.dtype != dtypes[name]:
            t.data = t.data.to(dtypes[name])


def map_tensors(fn: Callable[[torch.Tensor], torch.Tensor], inputs: Any) -> Any:
    """``inputs`` (a tensor, or lists/tuples/dicts of them) with ``fn`` applied to every tensor."""
    if isinstance(inputs, torch.Tensor):
        return fn(inputs)
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(map_tensors(fn, x) for x in inputs)
    if isinstance(inputs, dict):
        return {k: map_tensors(fn, v) for k, v in inputs.items()}
    return inputs


def to_double(inputs: Any) -> Any:
    return map_tensors(lambda t: t.double() if t.is_floating_point() else t, inputs)


class ModuleSnapshot:
    """References to every submodule's parameters, buffers and attributes, to undo a failed prune.

    Torch-Pruning replaces tensors instead of editing them in place, so holding the old references
    is enough: restoring gives back the very same Parameter objects (an optimizer built on them
    stays valid) without copying any data.
    """

    def __init__(self, model: nn.Module, DG: tp.DependencyGraph, neuron_pruner=None) -> None:
        self.modules = [(m, {k: (dict(v) if k in ("_parameters", "_buffers") else v)
                             for k, v in m.__dict__.items() if k != "_modules"})
                        for m in model.modules()]
        self.DG, self.history_len = DG, len(DG._pruning_history)
        self.neuron_pruner = neuron_pruner
        self.neuron_channels = dict(neuron_pruner._channels) if neuron_pruner is not None else {}

    def restore(self) -> None:
        for module, saved in self.modules:
            module.__dict__.update(saved)
        del self.DG._pruning_history[self.history_len:]
        if self.neuron_pruner is not None:
            self.neuron_pruner._channels.clear()
            self.neuron_pruner._channels.update(self.neuron_channels)


class RemovalTransaction:
    """A structural change of ``model``, all or nothing (a context manager).

    On entry it records the modules' structure (:class:`ModuleSnapshot`), every parameter's and
    buffer's values and dtype. Inside, the caller may edit values (zero masked channels), call
    :meth:`record_reference` (casts the model to float64 and keeps its outputs), remove channels
    through ``DG``, then :meth:`verify`. If the block raises, everything recorded is restored, the
    ``on_rollback`` callbacks run (e.g. re-installing hooks the caller removed) and the error
    propagates; on success the model is cast back to its own dtypes. Neuron states are reset either way.
    """

    def __init__(self, model: nn.Module, DG: tp.DependencyGraph, neuron_pruner=None, *,
                 inputs: Any = None, forward_fn: Optional[Callable] = None,
                 verify_atol: Optional[float] = None) -> None:
        self.model, self.DG, self.neuron_pruner = model, DG, neuron_pruner
        self.inputs, self.forward_fn, self.verify_atol = inputs, forward_fn, verify_atol
        self.on_rollback: List[Callable[[], None]] = []
        self.reference: Optional[List[torch.Tensor]] = None

    def __enter__(self) -> "RemovalTransaction":
        model = self.model
        self._dtypes = float_dtypes(model)
        self._snapshot = ModuleSnapshot(model, self.DG, self.neuron_pruner)
        tensors = list(model.parameters()) + list(model.buffers())
        self._values = [(t, t.data.clone()) for t in tensors]
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc_type is not None:
            self._snapshot.restore()
            for t, data in self._values:
                t.data = data  # the original values, in the original dtype
            restore_dtypes(self.model, self._dtypes)
            for undo in reversed(self.on_rollback):
                undo()
        else:
            restore_dtypes(self.model, self._dtypes)
        functional.reset_net(self.model)
        self._values = []
        return False

    @property
    def verifying(self) -> bool:
        return self.verify_atol is not None

    def record_reference(self) -> None:
        """Cast the model to float64 and keep its outputs (eval mode, fresh state) for :meth:`verify`.

        float64: removing channels changes the summation order, and in float32 a membrane potential
        within rounding of the threshold could flip a spike. Nothing is done when not verifying.
        """
        if not self.verifying:
            return
        from .graph import eval_outputs

        self.model.double()
        self.reference = eval_outputs(self.model, to_double(self.inputs), self.forward_fn)

    def verify(self) -> None:
        """Raise (so the block rolls back) unless the outputs now equal the reference within ``verify_atol``."""
        if not self.verifying:
            return
        from .graph import eval_outputs

        if self.reference is None:
            raise RuntimeError("RemovalTransaction.verify() before record_reference()")
        functional.reset_net(self.model)
        after = eval_outputs(self.model, to_double(self.inputs), self.forward_fn)
        if len(after) != len(self.reference) or any(a.shape != b.shape for a, b in zip(self.reference, after)):
            raise RuntimeError(
                "the pruned model's outputs have other shapes than the model's before removal ("
                f"{[tuple(t.shape) for t in self.reference]} -> {[tuple(t.shape) for t in after]}); the model was "
                "restored. A layer that feeds the output was pruned: add it to ignored_layers")
        diff = max(((a - b).abs().max().item() for a, b in zip(self.reference, after) if a.numel()), default=0.0)
        if not diff <= self.verify_atol:
            raise RuntimeError(
                f"the pruned model's outputs differ from the masked model's by {diff:.3g} "
                f"(> verify_atol={self.verify_atol}); the model was restored. Please report this "
                f"architecture; use verify_atol=None to skip the check")

"""SCA channel importance as a Torch-Pruning ``Importance``.

``SCAImportance()(group)`` returns one score per channel of the group's root: the mean membrane
activity (see :mod:`sca_plugin.activity`) of every spiking-neuron layer coupled to the group. A
residual stream's group therefore aggregates every neuron fed by that stream.
"""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch_pruning as tp

from .activity import MembraneActivityRecorder
from .groups import group_channel_mean, group_neurons
from .neurons import is_spiking_neuron

__all__ = ["SCAImportance"]


class SCAImportance(tp.importance.Importance):
    """Spiking Channel Activity importance (Li et al., ICML 2024).

    Args:
        definition: ``"spike_plus_v"`` (reference code, default) or ``"membrane_l1"`` (paper text).
            See :mod:`sca_plugin.activity` for why the reference definition is the default.
        normalizer: optional Torch-Pruning style normaliser applied per group (``"mean"``, ``"max"``,
            ``"sum"``, ``"standarization"``) or None. SCA ranks raw scores across layers: membrane
            potentials share the firing threshold as a common scale.

    Statistics are collected by hooks once the importance is attached to a model
    (``attach(model)``; :class:`~sca_plugin.SCAPruner` does it for you). Inside Torch-Pruning's
    own pruners::

        imp = SCAImportance().attach(model)
        for x, y in loader: ...  # training-mode forward passes
        pruner = SpikingMetaPruner(model, example_inputs, importance=imp, pruning_ratio=0.5)
        pruner.step()
    """

    NORMALIZERS = (None, "mean", "max", "sum", "standarization")

    def __init__(self, definition: str = "spike_plus_v", normalizer: Optional[str] = None) -> None:
        if normalizer not in self.NORMALIZERS:
            raise ValueError(f"unknown normalizer {normalizer!r}; use one of {self.NORMALIZERS}")
        self.recorder = MembraneActivityRecorder(definition)
        self.normalizer = normalizer

    @property
    def definition(self) -> str:
        return self.recorder.definition

    @property
    def collectors(self) -> tuple:
        """What this importance needs attached to the model (the pruners attach, reset, save and
        remove it): its :class:`~sca_plugin.activity.MembraneActivityRecorder`."""
        return (self.recorder,)

    def attach(self, model: nn.Module) -> "SCAImportance":
        self.recorder.attach(model)
        return self

    def detach(self) -> None:
        self.recorder.detach()

    def reset(self) -> None:
        self.recorder.reset()

    def has_statistics(self, group) -> bool:
        return any(self.recorder.score(m) is not None for m in group_neurons(group))

    @torch.no_grad()
    def __call__(self, group) -> Optional[torch.Tensor]:
        members = group_neurons(group)
        if not members:
            return None  # no spiking neuron in this group: nothing to score
        DG = getattr(group, "_DG", None)
        if DG is not None and not getattr(DG, "_sca_time_repaired", False) \
                and any(getattr(m, "step_mode", "s") == "m" for m in members):
            raise RuntimeError(
                "this multi-step network's dependency graph was not repaired for the time dimension, so its channel "
                "groups are wrong (Torch-Pruning takes the time loop for a channel split): call "
                "sca_plugin.repair_time_dimension(pruner.DG) right after building a tp.pruner.MetaPruner, or use "
                "sca_plugin.SpikingMetaPruner, which does it (build the pruner again: Torch-Pruning has counted this step)")
        scores = {m: self.recorder.score(m) for m in members}
        if all(s is None for s in scores.values()):
            raise RuntimeError(
                "SCAImportance has no training statistics for this group: attach it to the model "
                "(SCAImportance().attach(model)) and run training-mode forward passes first"
            )
        imp = group_channel_mean(group, scores, is_spiking_neuron)
        return self._normalize(imp)

    def _normalize(self, imp: torch.Tensor) -> torch.Tensor:
        if self.normalizer is None:
            return imp
        if self.normalizer == "mean":
            return imp / imp.mean().clamp_min(1e-12)
        if self.normalizer == "max":
            return imp / imp.max().clamp_min(1e-12)
        if self.normalizer == "sum":
            return imp / imp.sum().clamp_min(1e-12)
        return (imp - imp.min()) / (imp.max() - imp.min()).clamp_min(1e-12)  # "standarization"

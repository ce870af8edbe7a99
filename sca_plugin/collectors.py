"""The statistics-collector protocol: what a pruner gathers during the user's own training steps.

Modelled on SpikingJelly's monitors (``spikingjelly.activation_based.monitor``): a collector is
attached to a model (it installs hooks), records while enabled, can be paused (``disable()``) without
removing its hooks, forgets what it recorded with ``reset()``, and is removed with ``detach()`` (also
``close()``, idempotent; ``with collector.attach(model): ...`` detaches on exit). For the pruners it
also sums its statistics over torch.distributed processes (``synchronize``) and saves them for
``--resume`` (``state_dict`` / ``load_state_dict``, by module name).

The collectors here: :class:`~sca_plugin.activity.MembraneActivityRecorder` (SCA's membrane
activity, attached to every spiking neuron) and :class:`~sca_plugin.regrowth.GradientMagnitudes`
(the regrowth signal |dL/dgamma|, attached to the BatchNorm scales of the prunable channels). An
``Importance`` that needs statistics lists its collectors in ``importance.collectors``; the pruner
attaches, synchronises, resets, saves and removes them without knowing their type.
"""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional

import torch.nn as nn

__all__ = ["StatisticsCollector", "collectors_of"]


class StatisticsCollector:
    """Base of the statistics collectors (see the module docstring).

    Subclasses implement :meth:`_install` (return the hook handles, each with ``.remove()``),
    :meth:`reset`, :meth:`state_dict`, :meth:`load_state_dict`, and :meth:`synchronize` where their
    statistics are per process; :meth:`check` refuses a model before anything is installed. ``name``:
    the key of the collector's entry in a pruner's state dict."""

    name = "statistics"

    def __init__(self) -> None:
        self._handles: List[Any] = []
        self.model: Optional[nn.Module] = None
        self.enabled = True

    # ------------------------------------------------------------------ lifecycle
    def check(self, model: nn.Module, modules: Optional[Iterable[nn.Module]] = None) -> None:
        """Raise ``ValueError`` naming the problem if this collector cannot observe ``model``
        (nothing is installed yet)."""

    def attach(self, model: nn.Module, modules: Optional[Iterable[nn.Module]] = None) -> "StatisticsCollector":
        """Install the hooks on ``model`` (``modules``: the ones to observe, where the collector
        needs to be told); statistics accumulate from now on. Refused while attached."""
        if self.model is not None:
            raise RuntimeError(f"this {type(self).__name__} is already attached to a model; call detach() first")
        self.check(model, modules)
        self._handles = list(self._install(model, modules))
        self.model = model
        return self

    def detach(self) -> None:
        """Remove every hook this collector installed (idempotent); the statistics stay."""
        for h in self._handles:
            h.remove()
        self._handles.clear()
        if self.model is not None:
            self._uninstall()
        self.model = None

    close = detach

    @property
    def is_attached(self) -> bool:
        return self.model is not None

    def enable(self) -> None:
        """Record again after :meth:`disable`."""
        self.enabled = True

    def disable(self) -> None:
        """Pause recording; the hooks stay installed (SpikingJelly's ``monitor.disable()``)."""
        self.enabled = False

    def is_enabled(self) -> bool:
        return self.enabled

    def __enter__(self) -> "StatisticsCollector":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.detach()

    # ------------------------------------------------------------------ to implement
    def _install(self, model: nn.Module, modules: Optional[Iterable[nn.Module]]) -> Iterable[Any]:
        raise NotImplementedError

    def _uninstall(self) -> None:
        """Undo whatever :meth:`_install` did besides its hooks (listeners, flags)."""

    def reset(self) -> None:
        """Forget the statistics (after every mask update)."""
        raise NotImplementedError

    def synchronize(self, order: Iterable[nn.Module]) -> None:
        """Combine the statistics of all torch.distributed processes; ``order``: the modules in one
        fixed order (the same on every process). Default: nothing to combine."""

    def state_dict(self, names: Dict[nn.Module, str]) -> dict:
        raise NotImplementedError

    def load_state_dict(self, state: dict, modules: Dict[str, nn.Module], device=None) -> None:
        raise NotImplementedError


def collectors_of(importance: Any) -> List[StatisticsCollector]:
    """The collectors an ``Importance`` needs attached (``importance.collectors``; none for
    Torch-Pruning's own criteria, which read weights and gradients)."""
    found = list(getattr(importance, "collectors", ()) or ())
    bad = [type(c).__name__ for c in found if not isinstance(c, StatisticsCollector)]
    if bad:
        raise TypeError(f"{type(importance).__name__}.collectors holds {bad}, which are not "
                        "sca_plugin.collectors.StatisticsCollector instances")
    return found

"""The state-dict skeleton of :class:`~sca_plugin.dynamic.DynamicChannelPruner` and its extension
points: what a dynamic pruner saves to resume training with the same future masks, and how a saved
state is checked (settings, architecture, finalized or not, every collector's and the method's own
entries) before anything changes.

:class:`DynamicPrunerState` is a mixin of :class:`~sca_plugin.dynamic.DynamicChannelPruner`; it
reads the pruner's groups, masks, counters, history and statistics collectors and restores them
through the pruner's ``_apply_mask`` / ``_set_fixed``. A method supplies ``_config`` (the settings
a saved state must match; ``_COMPARED_KEYS`` / ``_LEGACY_DEFAULTS`` for settings that earlier
formats lack) and ``_extra_state`` / ``_check_state`` / ``_load_state`` for its own entries.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn

from .groups import group_size

__all__ = ["DynamicPrunerState"]


class DynamicPrunerState:
    """``state_dict()`` / ``load_state_dict()`` of a dynamic pruner, with the method's extension points."""

    #: the ``format`` entry of :meth:`state_dict`
    _STATE_FORMAT = "sca_plugin.DynamicChannelPruner/1"
    #: what the settings compared on loading a state dict are called in its error
    _SETTINGS_NAME = "pruner"
    #: the settings of :meth:`_config` a loaded state must match (None: all of them), and the value
    #: of a setting that states written by earlier versions lack (their behaviour)
    _COMPARED_KEYS: Optional[Sequence[str]] = None
    _LEGACY_DEFAULTS: Dict[str, Any] = {}

    # ------------------------------------------------------------------ extension points
    def _config(self) -> dict:
        """The settings a state dict must have been made with (compared on loading)."""
        return {}

    def _extra_state(self) -> Dict[str, Any]:
        """Extension point: the method's own entries of :meth:`state_dict`."""
        return {}

    def _check_state(self, state: dict) -> Any:
        """Extension point: check the method's entries before anything changes; what it returns
        is passed to :meth:`_load_state`."""
        return None

    def _load_state(self, state: dict, checked: Any) -> None:
        """Extension point: restore the method's entries (after the common ones)."""

    # ------------------------------------------------------------------ saving and loading
    def state_dict(self) -> dict:
        """Masks, statistics accumulators, counters and history: enough to resume training with
        the same future masks."""
        return {
            "format": self._STATE_FORMAT,
            "config": self._config(),
            "groups": self.group_names(),
            "group_sizes": [group_size(group) for _, group in self.groups],
            "masks": [None if m is None else m.clone() for m in self.masks],
            "num_updates": self.num_updates,
            "num_steps": self.num_steps,
            "finalized": self.finalized,
            "fixed": self.fixed,
            **self._collectors_state(),
            **self._extra_state(),
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; everything is checked before anything changes."""
        if not isinstance(state, dict) or not self._accepts_format(state):
            raise ValueError(f"not an {type(self).__name__} state dict (expected format {self._STATE_FORMAT!r})")
        mismatched = self._config_mismatches(state["config"])
        if mismatched:
            raise ValueError(f"the state dict was made with other {self._SETTINGS_NAME} settings (" + "; ".join(mismatched)
                             + "); build the pruner with the same settings")
        sizes = [group_size(group) for _, group in self.groups]
        if state["groups"] != self.group_names() or state["group_sizes"] != sizes:
            raise ValueError("the state dict belongs to another architecture: its prunable layers "
                             f"{list(zip(state['groups'], state['group_sizes']))[:4]}... do not match this model's "
                             f"{list(zip(self.group_names(), sizes))[:4]}...")
        if bool(state["finalized"]) != self.finalized:
            raise ValueError("the state dict was saved after finalize() and this pruner is not finalized (or the "
                             "reverse); load the finalized model with torch.load instead")
        modules = self._check_collectors_state(state)
        checked = self._check_state(state)
        self.masks = [None if m is None else m.clone().bool().cpu() for m in state["masks"]]
        for i, keep in enumerate(self.masks):
            if keep is not None:
                self._apply_mask(i, keep)
        if bool(state.get("fixed", False)) != self.fixed:
            self._set_fixed(bool(state.get("fixed", False)))
        self.num_updates = int(state["num_updates"])
        self.num_steps = int(state["num_steps"])
        self.history = copy.deepcopy(state["history"])
        self._load_collectors_state(state, modules)
        self._load_state(state, checked)

    # ------------------------------------------------------------------ the common entries
    def _config_mismatches(self, saved: dict) -> List[str]:
        here = self._config()
        keys = here if self._COMPARED_KEYS is None else self._COMPARED_KEYS
        return [f"{k}: saved {saved.get(k, self._LEGACY_DEFAULTS.get(k))!r}, here {here[k]!r}"
                for k in keys if saved.get(k, self._LEGACY_DEFAULTS.get(k)) != here[k]]

    def _accepts_format(self, state: dict) -> bool:
        return state.get("format") == self._STATE_FORMAT

    def _collectors_state(self) -> Dict[str, Any]:
        names = self.module_names
        return {c.name: c.state_dict(names) for c in self.collectors}

    def _check_collectors_state(self, state: dict) -> Dict[str, nn.Module]:
        modules = {n: m for m, n in self.module_names.items()}
        unknown = [n for c in self.collectors for n in (state.get(c.name) or {}) if n not in modules]
        if unknown:
            raise ValueError(f"the state dict refers to layers this model does not have: {unknown[:5]}")
        return modules

    def _load_collectors_state(self, state: dict, modules: Dict[str, nn.Module]) -> None:
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        for c in self.collectors:
            c.load_state_dict(state.get(c.name) or {}, modules, device)

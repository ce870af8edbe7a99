"""SCAPruner: dynamic prune-and-regrow of whole channels during training, then physical removal
(the masking, counters, removal and state skeleton it shares with SD-SNN are in :mod:`sca_plugin.dynamic`).

Built on Torch-Pruning: the dependency graph (with spiking neurons registered and the time
dimension repaired, see :mod:`sca_plugin.graph`) decides which layers share a channel, so residual
adds, concatenations and pre-activation blocks are coupled by the graph, and ``finalize()``
removes the masked channels through it.
"""
from __future__ import annotations

from dataclasses import replace
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .dynamic import DynamicChannelPruner, NonFiniteStatisticsError
from .groups import group_batchnorms, group_channel_mean, group_modules, group_neurons, group_size, is_batchnorm
from .importance import SCAImportance
from .masking import MASKINGS
from .regrowth import REGROW_SIGNALS, GradientMagnitudes
from .schedule import REGROW_DECAYS, SCHEDULES, regrow_at, sparsity_at
from .selection import MODES, REGROW_BASES, RankingScope, Selection, regrow_problem, select_in_scopes

__all__ = ["SCAPruner", "NonFiniteStatisticsError"]


_CONFIG_KEYS = ("pruning_ratio", "regrow_ratio", "global_pruning", "mode", "schedule",
                "ramp_updates", "min_channels", "round_to", "definition", "regrow_decay", "regrow_decay_updates",
                "masking", "regrow_signal", "max_pruning_ratio", "pruning_ratio_dict", "regrow_relative_to")
# settings added after the first state-dict format: their value when a saved state lacks them (the
# behaviour of the versions that wrote such states)
_CONFIG_DEFAULTS = {"regrow_decay": "constant", "regrow_decay_updates": None, "masking": "mask",
                    "regrow_signal": "mean", "max_pruning_ratio": 1.0, "pruning_ratio_dict": {},
                    "regrow_relative_to": "all"}


class SCAPruner(DynamicChannelPruner):
    """Spiking Channel Activity pruning (Li et al., ICML 2024) as a Torch-Pruning pruner.

    Args:
        model: a SpikingJelly network (multi-step or single-step).
        example_inputs: inputs exactly as ``model`` takes them (used to trace the graph and to
            check ``finalize()``).
        importance: channel importance; :class:`SCAImportance` by default. Any
            ``tp.importance.Importance`` works (it then ranks the channels instead of SCA).
        pruning_ratio: target fraction ``s`` of prunable channels that are masked, in [0, 1).
        regrow_ratio: fraction ``q`` of the prunable channels regrown at each update: of all of them
            (``regrow_relative_to="all"``, the paper; ``q <= s``) or of the kept ones (``"kept"``).
        regrow_relative_to: ``"all"`` (paper: ``q * N`` channels regrown, which is ``q / (1 - s)`` of
            the kept channels: half of them at ``s = 0.8`` for ``q = 0.1``) or ``"kept"``
            (``q * (1 - s) * N``, RigL's drop fraction of the active units: the same share of the
            kept channels exchanged at every sparsity); see :mod:`sca_plugin.selection`.
        global_pruning: rank all channels of the network together (paper) or per group.
        ignored_layers: modules whose output channels are never pruned (e.g. the classifier).
        l1: strength of the L1 penalty that :meth:`regularize` adds to conv-weight gradients.
        bn_l1: strength of the L1 penalty that :meth:`regularize` adds to the BatchNorm-scale
            gradients of the prunable channels: network slimming's sparse-training regulariser
            (Liu et al., ICCV 2017: 1e-4), the companion of ``tp.importance.BNScaleImportance``.
        mode: ``"rebuild"`` (default; the reference code: the mask is rebuilt from scratch at every
            update) or ``"incremental"``; see :mod:`sca_plugin.selection`.
        masking: how masked channels act while the masks still change (:data:`~sca_plugin.masking.MASKINGS`):
            ``"reset"`` (default): their outputs are masked (the masked model is the pruned one at
            every step) with a straight-through gradient (their parameters keep a training signal,
            which regrowth reads), and at every update their BatchNorm weight and bias are zeroed,
            so they cannot drift while the loss does not see them and a regrown channel comes back
            contributing nothing (RigL's zero initialisation, at channel level). Their filters are
            kept: with a zero filter the normalised input is zero, so ``|dL/dgamma|`` is zero and a
            channel masked for one update could never be regrown. ``"reset-filters"``: the
            reference code's full reset (filter rows and bias zeroed too) with the forward mask.
            ``"soft"``: the reference code's training: zeroed at every update, no forward mask, so
            they revive and take part in training until the next update (soft filter pruning);
            :meth:`finalize` zeroes them again before removing them. ``"mask"``: forward mask only,
            never reset (earlier versions; masked parameters drift; for ablations). BatchNorm
            running statistics and optimizer state (momentum) are left alone in every mode, as in
            the reference: the running statistics keep following the channel's input, and in
            ``"soft"`` mode the momentum is what revives a zeroed channel. After :meth:`fix_masks`
            every mode masks exactly (no straight-through gradient).
        regrow_signal: ``"mean"`` (default): ``|dL/dgamma|`` averaged over the steps since the last
            update; ``"last"``: the last step's, as the reference code reads ``bn.weight.grad``.
        max_pruning_ratio: no group loses more than this fraction of its channels (Torch-Pruning's
            argument). Default None: ``(1 + pruning_ratio) / 2``, i.e. every group keeps at least half
            the network's kept fraction, which rules out a layer left with 1 of its 64 channels
            under global ranking. ``1.0`` lifts the cap (the reference code has none).
        pruning_ratio_dict: ``{module or tuple of modules: ratio}`` (Torch-Pruning's argument and ranking
            scopes): the groups of a key's layers (submodules included) are pruned to its ratio, ranked
            together under ``global_pruning`` and each on its own otherwise; the rest follow
            ``pruning_ratio`` (globally ranked among themselves with ``global_pruning``). See
            :attr:`scopes` and :meth:`set_ranking_scopes`.
        schedule: ``"constant"`` (paper: full target from the first update), ``"linear"`` or
            ``"cubic"`` (AGP-like ramp over ``ramp_updates`` updates).
        update_interval: with :meth:`maybe_update_masks`, update the masks every this many steps.
        regrow_decay: ``"constant"`` (paper: ``regrow_ratio`` at every update) or ``"cosine"``
            (RigL-style decay of the regrown fraction to 0 at update ``regrow_decay_updates``; see
            :func:`sca_plugin.schedule.regrow_at`).
        regrow_decay_updates: the update (0-based count) at which cosine decay reaches 0.
        min_channels: never keep fewer channels than this in a group.
        round_to: kept channel counts are multiples of this (as in Torch-Pruning).
        root_module_types: module types whose output channels are pruned (default: convolutions).
        verify_atol: ``finalize()`` checks, in float64, that the pruned model's outputs equal the
            masked model's within this tolerance and rolls back otherwise; None skips the check.
        **kwargs: ``forward_fn``, ``output_transform``, ``customized_pruners`` or
            ``unwrapped_parameters``, passed on to ``tp.pruner.BasePruner``.
    """

    _STATE_FORMAT = "sca_plugin.SCAPruner/1"
    _COMPARED_KEYS = _CONFIG_KEYS
    _LEGACY_DEFAULTS = _CONFIG_DEFAULTS

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance: Optional[tp.importance.Importance] = None,
        pruning_ratio: float = 0.5,
        regrow_ratio: float = 0.1,
        global_pruning: bool = True,
        ignored_layers: Optional[Sequence[nn.Module]] = None,
        l1: float = 3e-5,
        *,
        mode: str = "rebuild",
        schedule: str = "constant",
        ramp_updates: int = 1,
        update_interval: Optional[int] = None,
        min_channels: int = 1,
        round_to: Optional[int] = None,
        root_module_types: Sequence[type] = (ops.TORCH_CONV,),
        verify_atol: Optional[float] = 1e-5,
        bn_l1: float = 0.0,
        regrow_decay: str = "constant",
        regrow_decay_updates: Optional[int] = None,
        masking: str = "reset",
        regrow_signal: str = "mean",
        max_pruning_ratio: Optional[float] = None,
        pruning_ratio_dict: Optional[Dict[Any, float]] = None,
        regrow_relative_to: str = "all",
        **kwargs: Any,
    ) -> None:
        importance = SCAImportance() if importance is None else importance
        self._validate_common(model, ignored_layers, update_interval, min_channels, round_to, kwargs)
        self._validate_arguments(model, importance, pruning_ratio, regrow_ratio, l1, bn_l1, mode, schedule,
                                 ramp_updates, regrow_relative_to)
        if regrow_decay not in REGROW_DECAYS:
            raise ValueError(f"regrow_decay must be one of {REGROW_DECAYS}, got {regrow_decay!r}")
        if regrow_decay == "cosine":
            regrow_at(0, regrow_ratio, regrow_decay, regrow_decay_updates)  # validates regrow_decay_updates
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
        if regrow_signal not in REGROW_SIGNALS:
            raise ValueError(f"regrow_signal must be one of {REGROW_SIGNALS}, got {regrow_signal!r}")
        if max_pruning_ratio is None:
            max_pruning_ratio = (1.0 + pruning_ratio) / 2.0
        if isinstance(max_pruning_ratio, bool) or not isinstance(max_pruning_ratio, (int, float)) \
                or not 0.0 < max_pruning_ratio <= 1.0:
            raise ValueError(f"max_pruning_ratio must be in (0, 1] or None, got {max_pruning_ratio!r}")
        if max_pruning_ratio < pruning_ratio:
            raise ValueError(f"max_pruning_ratio ({max_pruning_ratio}) is below pruning_ratio ({pruning_ratio}): no "
                             "layer could reach the target; use max_pruning_ratio >= pruning_ratio")
        ratio_dict = self._validate_ratio_dict(model, pruning_ratio_dict, regrow_ratio, max_pruning_ratio,
                                               regrow_relative_to)
        self.regrow_ratio = regrow_ratio  # the group checks of the base's constructor read it
        self.regrow_relative_to = regrow_relative_to
        super().__init__(model, example_inputs, importance, ignored_layers=ignored_layers,
                         global_pruning=global_pruning, pruning_ratio=pruning_ratio, round_to=round_to,
                         root_module_types=root_module_types, min_channels=min_channels,
                         update_interval=update_interval, verify_atol=verify_atol, masking=masking, **kwargs)
        self.l1 = l1
        self.bn_l1 = bn_l1
        self.regrow_decay = regrow_decay
        self.regrow_decay_updates = regrow_decay_updates
        self.mode = mode
        self.schedule = schedule
        self.ramp_updates = ramp_updates
        self.regrow_signal = regrow_signal
        self.max_pruning_ratio = float(max_pruning_ratio)
        # the conv modules regularize() touches every step (pruning replaces their tensors, not them)
        ignored = set(self.ignored_layers)
        self._l1_convs = [m for m in model.modules() if isinstance(m, ops.TORCH_CONV) and m not in ignored]
        self.pruning_ratio_dict = ratio_dict
        #: how the groups are ranked (:meth:`set_ranking_scopes`)
        self.scopes: List[RankingScope] = self._scopes_from_arguments(ratio_dict)
        self._l1_bns = sorted({m for _, group in self.groups for m in group_batchnorms(group, with_weight=True)
                               if m not in ignored}, key=lambda m: self.module_names[m])
        # attached in the dynamic phase of a regrowing run, to the scales wherever parameter_of() finds them
        self._growth = GradientMagnitudes(parameter=self.parameter_of)
        self._own_collectors.append(self._growth)
        self._install()

    @staticmethod
    def _validate_ratio_dict(model, ratio_dict, regrow_ratio, max_pruning_ratio,
                             regrow_relative_to: str = "all") -> Dict[tuple, float]:
        """``{tuple of modules: ratio}`` from Torch-Pruning's ``pruning_ratio_dict``, checked."""
        out: Dict[tuple, float] = {}
        members = set(model.modules())
        for key, ratio in (ratio_dict or {}).items():
            modules = tuple(key) if isinstance(key, (tuple, list)) else (key,)
            for m in modules:
                if not isinstance(m, nn.Module) or m not in members:
                    raise ValueError(f"pruning_ratio_dict key {m!r:.80} is not a submodule of the model; "
                                     "key it by the model's modules (or tuples of them), as in Torch-Pruning")
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
                raise ValueError(f"pruning_ratio_dict ratio for {type(modules[0]).__name__} must be in [0, 1), got {ratio!r}")
            problem = regrow_problem(regrow_ratio, ratio, regrow_relative_to, "the pruning_ratio_dict ratio")
            if problem:
                raise ValueError(f"pruning_ratio_dict entry for {type(modules[0]).__name__}: {problem}")
            if ratio > max_pruning_ratio:
                raise ValueError(f"pruning_ratio_dict ratio {ratio} exceeds max_pruning_ratio ({max_pruning_ratio})")
            out[modules] = float(ratio)
        return out

    def _scopes_from_arguments(self, ratio_dict: Dict[tuple, float]) -> List[RankingScope]:
        """Torch-Pruning's ranking scopes: a ``pruning_ratio_dict`` key (a module, its submodules
        included, or a tuple of them) is one scope at its ratio, ranked globally under
        ``global_pruning`` and per group otherwise; the remaining groups form one scope at
        ``pruning_ratio``."""
        scopes: List[RankingScope] = []
        taken: set = set()
        for key, ratio in ratio_dict.items():
            modules = {sub for m in key for sub in m.modules()}
            idx = tuple(i for i, (_, group) in enumerate(self.groups) if i not in taken
                        and modules & group_modules(group))
            if not idx:
                name = self.module_names.get(key[0], repr(key[0]))
                raise ValueError(f"pruning_ratio_dict names {name}, which belongs to no prunable group (it is ignored, "
                                 "computes no channel of a root layer, or an earlier key took its groups); remove it")
            taken.update(idx)
            parts = [idx] if self.global_pruning else [(i,) for i in idx]
            scopes += [RankingScope(part, ratio, self.global_pruning, self.max_pruning_ratio, regrow_within_ratio=True)
                       for part in parts]
        rest = tuple(i for i in range(len(self.groups)) if i not in taken)
        if rest:
            scopes.insert(0, RankingScope(rest, self.pruning_ratio, self.global_pruning, self.max_pruning_ratio))
        return scopes

    def set_ranking_scopes(self, scopes: Sequence[RankingScope]) -> None:
        """Rank the groups in these :class:`~sca_plugin.selection.RankingScope`\ s from the next update
        on, instead of the ones ``global_pruning`` and ``pruning_ratio_dict`` give (what
        :class:`sca_plugin.nni.SCAPruner` builds from ``config_list``; a scheduler may change their
        sparsities between updates). The schedule ramps every scope to its own sparsity."""
        scopes = list(scopes)
        for scope in scopes:
            if not isinstance(scope, RankingScope):
                raise TypeError(f"ranking scopes must be sca_plugin.selection.RankingScope, got {type(scope).__name__}")
            if not 0.0 <= scope.sparsity < 1.0:
                raise ValueError(f"a ranking scope's sparsity must be in [0, 1), got {scope.sparsity!r}")
            cap = scope.max_pruning_ratio
            if cap is not None and not scope.sparsity <= cap <= 1.0:
                raise ValueError(f"a ranking scope's max_pruning_ratio must be in [sparsity, 1], got {cap!r}")
        covered = sorted(i for scope in scopes for i in scope.groups)
        if covered != list(range(len(self.groups))):
            raise ValueError(f"ranking scopes must cover each of the {len(self.groups)} groups exactly once (indices "
                             f"into pruner.groups), got {covered}")
        self.scopes = scopes

    # ------------------------------------------------------------------ validation
    _NEEDS_NEURONS = "SCA scores channels by membrane activity, so it prunes spiking networks only"

    @staticmethod
    def _validate_arguments(model, importance, pruning_ratio, regrow_ratio, l1, bn_l1, mode, schedule,
                            ramp_updates, regrow_relative_to) -> None:
        if not isinstance(importance, tp.importance.Importance):
            raise TypeError(f"importance must be a torch_pruning.importance.Importance, got {type(importance).__name__}")
        for name, value in (("pruning_ratio", pruning_ratio), ("regrow_ratio", regrow_ratio)):
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if regrow_relative_to not in REGROW_BASES:
            raise ValueError(f"regrow_relative_to must be one of {REGROW_BASES}, got {regrow_relative_to!r}")
        problem = regrow_problem(regrow_ratio, pruning_ratio, regrow_relative_to, "pruning_ratio")
        if problem:
            raise ValueError(problem)
        for name, value in (("l1", l1), ("bn_l1", bn_l1)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        if not isinstance(ramp_updates, int) or isinstance(ramp_updates, bool) or ramp_updates < 1:
            raise ValueError(f"ramp_updates must be a positive integer, got {ramp_updates!r}")

    def _check_groups(self) -> None:
        super()._check_groups()
        for root, group in self.groups:
            name = self.module_names.get(root, repr(root))
            if isinstance(self.importance, SCAImportance) and not group_neurons(group):
                raise ValueError(
                    f"the channels of {name} reach no spiking neuron, so they have no SCA score; "
                    f"add {name} to ignored_layers or use another importance")
            if self.regrow_ratio > 0 and not group_batchnorms(group, with_weight=True):
                raise ValueError(
                    f"the channels of {name} have no BatchNorm with a weight, but regrowth ranks masked channels "
                    f"by |dL/dgamma|; add a BatchNorm after {name}, ignore it, or use regrow_ratio=0")

    # ------------------------------------------------------------------ collectors
    def _on_parameters_redirected(self) -> None:
        self._on_phase_change()  # the regrowth hooks go onto the parameters where they now live

    def _on_phase_change(self) -> None:
        """Regrowth gradients are recorded in the dynamic phase only (their tensor hooks run in the
        autograd engine, outside a compiled graph, so they may come and go)."""
        self._growth.detach()
        if self.regrow_ratio > 0 and not self.fixed and self.collecting:
            bns = {m for _, group in self.groups for m in group_batchnorms(group, with_weight=True)}
            self._growth.attach(self.model, modules=sorted(bns, key=lambda m: self.module_names[m]))

    # ------------------------------------------------------------------ training-loop API
    def regularize(self, model: nn.Module, reg: Optional[float] = None) -> None:
        """Add ``l1 * sign(W)`` to the gradient of every conv weight (reference code; ``reg``
        overrides ``l1`` for this call) and ``bn_l1 * sign(gamma)`` to the BatchNorm scales of the
        prunable channels (network slimming); call after ``loss.backward()`` and before
        ``optimizer.step()``."""
        super().regularize(model)
        for modules, strength in ((self._l1_convs, self.l1 if reg is None else reg), (self._l1_bns, self.bn_l1)):
            if strength == 0:
                continue
            for m in modules:
                weight = self.parameter_of(m, "weight")
                if weight.grad is not None:
                    weight.grad.add_(torch.sign(weight.detach()), alpha=strength)

    def current_sparsity_target(self) -> float:
        return sparsity_at(self.num_updates, self.pruning_ratio, self.schedule, self.ramp_updates)

    def current_regrow_ratio(self) -> float:
        return regrow_at(self.num_updates, self.regrow_ratio, self.regrow_decay, self.regrow_decay_updates)

    @torch.no_grad()
    def update_masks(self) -> Selection:
        """Prune by activity and regrow by BN-scale gradient now, from the statistics gathered since
        the previous update. Returns the :class:`~sca_plugin.selection.Selection`."""
        self._begin_update()
        self._synchronize_collectors()  # DDP: score on the statistics of all processes
        has_statistics = getattr(self.importance, "has_statistics", None)
        if has_statistics is not None:
            missing = [self.module_names[root] for root, group in self.groups if not has_statistics(group)]
            if missing:
                raise RuntimeError(
                    "update_masks() before any training statistics exist for "
                    f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}: run training-mode "
                    "forward passes (model.train()) through the model first")
        if self.regrow_ratio > 0 and not self._growth:
            raise RuntimeError("update_masks() needs BatchNorm gradients for regrowth but none were recorded: "
                               "call loss.backward() in training before updating the masks")
        scores = []
        for root, group in self.groups:
            imp = self.importance(group)
            name, n = self.module_names[root], group_size(group)
            if imp is None:
                raise RuntimeError(f"importance {type(self.importance).__name__} returned None for the group of "
                                   f"{name}; ignore that layer or use another importance")
            if not isinstance(imp, torch.Tensor) or imp.dim() != 1 or imp.numel() != n:
                shape = tuple(imp.shape) if isinstance(imp, torch.Tensor) else type(imp).__name__
                raise ValueError(f"importance {type(self.importance).__name__} returned {shape} for the group of "
                                 f"{name}, which has {n} channels: an Importance returns one score per channel of "
                                 f"the group's root layer, a 1-D tensor of length {n}")
            scores.append(imp)
        growth = None
        if self.regrow_ratio > 0:
            grads = self._growth.signal(self.regrow_signal)
            growth = []
            for (_, group), s in zip(self.groups, scores):
                g = group_channel_mean(group, grads, is_batchnorm)
                growth.append(torch.zeros_like(s) if g is None else g)
        self._check_finite(scores, "channel scores (the activity statistics since the last update)")
        if growth is not None:
            self._check_finite(growth, "regrowth gradients (|dL/dgamma| since the last update)")
        sparsity = self.current_sparsity_target()
        regrow = self.current_regrow_ratio()
        selection = self._select(scores, growth, regrow)
        self._commit(selection.keep,
                     head={"target_sparsity": sparsity, "regrow_ratio": regrow},
                     tail={"pruned": int(sum(len(p) for p in selection.pruned)),
                           "regrown": int(sum(len(r) for r in selection.regrown))})
        self._reset_collectors()
        return selection

    def _select(self, scores, growth, regrow: float) -> Selection:
        """One selection over all groups, scope by scope, each scope at its sparsity for this update."""
        previous = None if self.masks[0] is None else self.masks
        scopes = [replace(scope, sparsity=sparsity_at(self.num_updates, scope.sparsity, self.schedule,
                                                        self.ramp_updates)) for scope in self.scopes]
        return select_in_scopes(scores, growth, previous, scopes, regrow, min_channels=self.min_channels,
                                round_to=self.round_to, mode=self.mode, regrow_relative_to=self.regrow_relative_to)

    # ------------------------------------------------------------------ state
    def _config(self) -> dict:
        definition = getattr(self.importance, "definition", None)  # SCAImportance's activity definition
        return {"pruning_ratio": self.pruning_ratio, "regrow_ratio": self.regrow_ratio,
                "global_pruning": self.global_pruning, "mode": self.mode, "schedule": self.schedule,
                "ramp_updates": self.ramp_updates, "min_channels": self.min_channels,
                "round_to": self.round_to, "definition": definition, "l1": self.l1,
                "bn_l1": self.bn_l1, "update_interval": self.update_interval,
                "regrow_decay": self.regrow_decay, "regrow_decay_updates": self.regrow_decay_updates,
                "masking": self.masking, "regrow_signal": self.regrow_signal,
                "max_pruning_ratio": self.max_pruning_ratio, "regrow_relative_to": self.regrow_relative_to,
                "pruning_ratio_dict": {",".join(self.module_names[m] for m in key): r
                                       for key, r in self.pruning_ratio_dict.items()}}


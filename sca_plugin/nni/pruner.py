"""SCA as an NNI 3.0 pruner: ``sca_plugin.nni.pruner.SCAPruner``, an adapter over the core.

A real ``nni.compression.base.compressor.Pruner``: NNI wraps the configured modules, keeps the
masks in its target spaces and trains through an ``Evaluator``. The algorithm is the Torch-Pruning
core :class:`sca_plugin.SCAPruner` (``pruner.core``), built before NNI wraps the model:

* the core traces the dependency graph once (:mod:`sca_plugin.graph`); ``config_list`` picks
  among its groups and says how they are ranked (:mod:`sca_plugin.nni.config_list`: the groups
  of one ``global_group_id`` together, every other group on its own, as the core's
  :class:`~sca_plugin.selection.RankingScope`\\ s);
* the core's collectors gather the statistics (membrane activity, ``|dL/dgamma|``) while the
  evaluator trains, its update scores and selects the channels, resets the masked channels and
  records the history; it works on the parameters NNI trains through the public hook
  ``core.redirect_parameters`` (:func:`~sca_plugin.nni.driver.wrapped_parameter`);
* NNI's pipeline ``generate_masks() = _collect_data -> _calculate_metrics -> _generate_sparsity``
  runs one core update and translates its channel masks into NNI masks, so this pruner picks the
  channels the core picks by construction. During ``compress()`` the shared
  :class:`~sca_plugin.nni.driver.TrainingDriver` runs it every ``interval_steps`` optimizer steps
  (at most ``total_times`` times).

Masking. Every layer of a configured convolution's Torch-Pruning group gets the same channel mask
(residual-coupled convolutions included; ``dependency_group_id`` is implied by the graph). The
BatchNorms of the group are added as internal config entries with targets ``weight`` and ``bias``.
``get_masks()`` / ``compress()`` return these parameter masks (conv/linear ``weight``/``bias``, BN
``weight``/``bias``), which remove exactly the channels a physical pruning removes.

During training the masks act where the core's own forward masks act (which the adapter switches
off, ``core.set_forward_masks(False)``): on the *outputs* of the group's BatchNorms (and of
conv/linear layers not followed only by such a BatchNorm), through internal ``_output_0`` target
spaces whose apply method is ``'sca_ste'`` (registered in NNI's ``pruning_apply_methods``:
forward ``y * mask``, gradient passed straight through), the core's masking function. The
parameter target spaces use ``'sca_defer'`` (mask kept, not multiplied in): the masked channels'
conv filters and BN parameters keep training, so ``dL/dgamma`` (the regrowth signal) stays
informative, as in the core.
"""
from __future__ import annotations

import warnings
from collections import OrderedDict
from copy import deepcopy
from typing import Any, Dict, List, Literal, Optional, Tuple

import torch
import torch.nn as nn

from nni.compression.base.apply_method import pruning_apply_methods
from nni.compression.base.compressor import Pruner
from nni.compression.base.setting import OUTPUT_PREFIX
from nni.compression.base.target_space import TargetType
from nni.compression.base.wrapper import ModuleWrapper
from nni.compression.utils.evaluator import Evaluator

from ..groups import PRODUCER_TYPES, group_size, parameter_channel_dim
from ..importance import SCAImportance
from ..masking import StraightThroughMask, mask_targets, out_channels, output_channel_dim
from ..pruner import SCAPruner as _CoreSCAPruner
from ..selection import REGROW_BASES
from .config_list import ConfiguredGroup, choose_groups, ranking_scopes, root_module_types, validate_config_list
from .driver import TrainingDriver, check_driver_arguments, evaluator_dummy_input, \
    missing_example_inputs_message, module_channels, wrapped_parameter

__all__ = ["SCAPruner", "STE_APPLY_METHOD", "DEFER_APPLY_METHOD", "evaluator_dummy_input",
           "missing_example_inputs_message"]

STE_APPLY_METHOD = "sca_ste"
DEFER_APPLY_METHOD = "sca_defer"
_MASKINGS = ("reset", "reset-filters", "mask")


# ---------------------------------------------------------------------- apply methods
def sca_ste_mask(target: torch.Tensor, target_space) -> torch.Tensor:
    """Parameter targets: ``param * mask`` with a straight-through gradient. Output targets
    (``_output_0``): the mask is a per-channel vector, broadcast over the layer's channel dim."""
    mask = target_space.mask
    assert mask is not None
    if target_space.type is TargetType.OUTPUT:
        dim = output_channel_dim(target_space._wrapper.module) % target.dim()
        shape = [1] * target.dim()
        shape[dim] = -1
        mask = mask.to(dtype=target.dtype).view(shape)
    return StraightThroughMask.apply(target, mask)


def sca_deferred_mask(target: torch.Tensor, target_space) -> torch.Tensor:
    # the mask is recorded (get_masks(), speedup) but enforced on the layer's output; see the module docstring
    return target * 1.


pruning_apply_methods[STE_APPLY_METHOD] = sca_ste_mask
pruning_apply_methods[DEFER_APPLY_METHOD] = sca_deferred_mask


# ---------------------------------------------------------------------- the core on the configured groups
class _ConfiguredCore(_CoreSCAPruner):
    """The core :class:`sca_plugin.SCAPruner` on the groups ``config_list`` makes prunable: the graph
    is traced once, in the core's constructor, and :func:`~sca_plugin.nni.config_list.choose_groups`
    picks among its groups before anything is installed (layers outside them count as ignored, so
    the L1 penalty, like the masks, reaches only the configured groups)."""

    def __init__(self, model: nn.Module, example_inputs: Any, configs, **kwargs: Any) -> None:
        self._configs = configs
        super().__init__(model, example_inputs, **kwargs)

    def _check_groups(self) -> None:
        self.choice = choose_groups(self.DG, self.groups, self._configs, self.module_names, self.regrow_ratio)
        self.groups = [self.groups[i] for i in self.choice.kept]
        pruned = {m for g in self.choice.groups for m in g.producers}
        self.ignored_layers.extend(m for m in self.model.modules() if isinstance(m, PRODUCER_TYPES) and m not in pruned)
        super()._check_groups()


# ---------------------------------------------------------------------- the pruner
class SCAPruner(TrainingDriver, Pruner):
    """Spiking Channel Activity pruning (Li et al., ICML 2024) for NNI 3.0.

    Args:
        model: a SpikingJelly network.
        config_list: NNI 3.0 config list. Each entry selects convolutions (or linear layers) with
            ``op_types``/``op_names``/``op_names_re`` (+ ``exclude_*``) and gives ``sparse_ratio``
            (fraction of channels masked, in [0, 1)); optional ``global_group_id`` (rank the
            channels of all modules with that id together, as in the paper; without it every
            layer's group is ranked on its own), ``dependency_group_id`` (accepted; the dependency
            graph decides coupling and must not be contradicted), ``target_names`` (subset of
            ``['weight', 'bias']``), ``granularity`` (``'default'`` or ``'out_channel'``),
            ``max_sparse_ratio`` (no group loses more than this fraction of its channels; default
            ``(1 + sparse_ratio) / 2``, as the core's ``max_pruning_ratio``). BatchNorms and spiking
            neurons are never configured: they are found from the graph.
        evaluator: an NNI ``Evaluator`` (e.g. ``TorchEvaluator``) that trains the model; required by
            ``compress()``.
        regrow_ratio: fraction ``q`` of channels regrown by ``|dL/dgamma|`` at each update
            (``q <= sparse_ratio`` of every config).
        interval_steps: optimizer steps between mask updates.
        total_times: how many mask updates at most (``'unlimited'`` by default; an AGP/Linear
            scheduled pruner sets it).
        example_inputs: inputs exactly as ``model`` takes them, to trace the dependency graph. Default:
            the evaluator's ``dummy_input`` (``TorchEvaluator(..., dummy_input=x)``), as NNI's tools use it.
        definition, mode, min_channels, round_to, l1, masking, regrow_signal, regrow_relative_to, forward_fn: the core
            :class:`sca_plugin.SCAPruner`'s arguments, with its defaults (``l1``: the penalty
            ``l1 * sign(W)`` on conv-weight gradients, added before every optimizer step of
            ``compress()``). ``masking`` is ``'reset'``, ``'reset-filters'`` or ``'mask'``: the
            core's ``'soft'`` has no forward mask, which NNI's target spaces cannot express.

    Layers that ``op_types`` / ``op_names_re`` select but SCA cannot prune (channels that are the
    model's output or reach no spiking neuron, channels without a BatchNorm while ``regrow_ratio > 0``)
    are left dense, listed with the reason in :attr:`excluded` ``{name: reason}`` and in one warning,
    so NNI's quick-start ``[{'op_types': ['Linear', 'Conv2d'], 'exclude_op_names': [...], 'sparse_ratio': 0.5}]``
    runs; a layer named in ``op_names`` is an explicit request and raises instead. Any error is
    raised before NNI wraps the model, which is then left as it was.

    ``generate_masks()`` runs one core update on the statistics gathered since the previous one
    (the next update starts from it in ``'incremental'`` mode); :attr:`core` is the core pruner,
    :attr:`history` one entry per update.
    """

    _NO_DURATION = ("SCA learns the channel structure during training (prune by activity, regrow by BN-scale "
                    "gradient, every interval_steps optimizer steps): pass max_steps or max_epochs to compress()")

    def __init__(self, model: nn.Module, config_list: List[Dict], evaluator: Optional[Evaluator] = None,
                 regrow_ratio: float = 0.1, interval_steps: int = 100,
                 total_times: int | Literal["unlimited"] = "unlimited", example_inputs: Any = None, *,
                 definition: str = "spike_plus_v", mode: str = "rebuild", min_channels: int = 1,
                 round_to: Optional[int] = None, l1: float = 3e-5, forward_fn=None, masking: str = "reset",
                 regrow_signal: str = "mean", regrow_relative_to: str = "all",
                 existed_wrappers: Optional[Dict[str, ModuleWrapper]] = None):
        # ---- checked before the model is traced or wrapped
        example_inputs = check_driver_arguments("SCAPruner", model, evaluator, interval_steps, total_times,
                                                example_inputs)
        if isinstance(regrow_ratio, bool) or not isinstance(regrow_ratio, (int, float)) or not 0.0 <= regrow_ratio < 1.0:
            raise ValueError(f"regrow_ratio must be in [0, 1), got {regrow_ratio!r}")
        if masking not in _MASKINGS:
            raise ValueError(f"masking must be 'reset', 'reset-filters' or 'mask' for the NNI pruner, got {masking!r} "
                             "('soft' needs no forward mask: use sca_plugin.SCAPruner)")
        if regrow_relative_to not in REGROW_BASES:
            raise ValueError(f"regrow_relative_to must be one of {REGROW_BASES}, got {regrow_relative_to!r}")
        configs = validate_config_list(model, config_list, regrow_ratio, regrow_relative_to)
        ratios = [c["sparse_ratio"] for c, _ in configs]
        # ---- the algorithm: it checks its own arguments, traces the graph and picks the groups
        self.core = _ConfiguredCore(
            model, example_inputs, configs, importance=SCAImportance(definition), pruning_ratio=max(ratios),
            regrow_ratio=regrow_ratio, l1=l1, mode=mode, min_channels=min_channels, round_to=round_to,
            masking=masking, regrow_signal=regrow_signal, regrow_relative_to=regrow_relative_to,
            root_module_types=root_module_types(configs),
            forward_fn=forward_fn)
        # NNI applies the masks (output target spaces) and gathers statistics only while it trains
        self.core.set_forward_masks(False)
        self.core.detach_collectors()
        choice = self.core.choice
        self._groups: List[ConfiguredGroup] = choice.groups  # aligned with core.groups
        self.core.set_ranking_scopes(ranking_scopes(self._groups, lambda g: g.sparse_ratio))
        #: layers config_list selects by type or pattern that SCA cannot prune: ``{name: reason}``
        self.excluded: Dict[str, str] = choice.excluded
        self.user_config_list = deepcopy(config_list)
        self.module_names: Dict[nn.Module, str] = self.core.module_names
        self.regrow_ratio = float(regrow_ratio)
        self.interval_steps = interval_steps
        self.total_times = total_times
        self.example_inputs = example_inputs
        self.definition, self.selection_mode, self.masking, self.regrow_signal = definition, mode, masking, regrow_signal
        self.regrow_relative_to = regrow_relative_to
        self.min_channels, self.round_to, self.l1 = min_channels, round_to, float(l1)
        #: one entry per update: ``{update, pruned, regrown, sparse_ratio: {group: ratio}, sparsity, channels}``
        self.history: List[dict] = []
        self._by_hand = False  # register_statistics_hooks()

        # ---- NNI wraps the model; the core works on the parameters NNI trains
        super().__init__(model, [cfg for cfg, _ in choice.configs] + self._internal_config_entries(choice.configs),
                         evaluator, existed_wrappers)
        self._set_apply_methods()
        self.core.redirect_parameters(wrapped_parameter)
        if self.excluded:
            self._warn_excluded(choice.exclusion_fix)

    def _warn_excluded(self, fixes: Dict[int, List[str]]) -> None:
        fix = "exclude them to silence this: " + ", ".join(
            f"config_list[{i}]['exclude_op_names'] = {names}" for i, names in fixes.items())
        if any("BatchNorm" in r for r in self.excluded.values()):
            fix += "; to prune the layers without BatchNorm, add one after them or use regrow_ratio=0 (no regrowth)"
        warnings.warn("SCAPruner leaves layers that config_list selects by type dense, because SCA cannot prune "
                      "them: " + "; ".join(f"{n} ({r})" for n, r in sorted(self.excluded.items())) + ". Fix: "
                      + fix, stacklevel=3)

    def _internal_config_entries(self, configs) -> List[dict]:
        """Config entries for the layers the graph couples to the configured ones (no sparse_ratio:
        their masks come from the group's selection), and for the layers whose outputs carry the
        masks during training (the core's mask targets)."""
        configured = {n for _, modules in configs for n in modules}
        names = self.core.module_names
        extra = OrderedDict()
        for g in self._groups:
            for m in list(g.producers) + list(g.bns):
                if names[m] not in configured:
                    extra[names[m]] = m
        entries = [{"op_names": [name], "target_names": ["weight", "bias"]} for name in extra]
        outputs = sorted({names[m] for _, group in self.core.groups
                          for m, _, _ in mask_targets(self.core.DG, group, names)})
        entries += [{"op_names": [name], "target_names": [OUTPUT_PREFIX],
                     "target_settings": {OUTPUT_PREFIX: {"apply_method": "mul"}}} for name in outputs]
        return entries

    def _set_apply_methods(self) -> None:
        for g in self._groups:
            for m in list(g.producers) + list(g.bns):
                for space in self._target_spaces.get(self.core.module_names[m], {}).values():
                    space.apply_method = STE_APPLY_METHOD if space.type is TargetType.OUTPUT else DEFER_APPLY_METHOD

    # ------------------------------------------------------------------ statistics
    @property
    def recorder(self):
        """The membrane-activity recorder (the core importance's collector)."""
        return self.core.importance.recorder

    @property
    def num_updates(self) -> int:
        return self.core.num_updates

    def register_statistics_hooks(self) -> list:
        """Start gathering SCA statistics without an evaluator (for a hand-written training loop that
        calls ``update_masks(generate_masks())`` itself); ``compress()`` does this while the evaluator
        trains. Returns the core's statistics collectors; undo with :meth:`remove_statistics_hooks`."""
        if self._by_hand:
            raise RuntimeError("statistics hooks are already registered")
        self.core.attach_collectors()
        self._by_hand = True
        return self.core.collectors

    def remove_statistics_hooks(self) -> None:
        """Take the statistics hooks off the model (what was gathered stays for the next update)."""
        self.core.detach_collectors()
        self._by_hand = False

    def _start_gathering(self) -> None:
        self.core.attach_collectors()
        self._by_hand = False

    def _stop_gathering(self) -> None:
        self.core.detach_collectors()

    def _before_step_tasks(self) -> list:
        model = self.core.model
        return [lambda: self.core.regularize(model)] if self.l1 > 0 else []

    def _driver_update(self) -> None:
        self.update_masks(self.generate_masks())

    # ------------------------------------------------------------------ NNI pipeline
    def _collect_data(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """Nothing leaves the core (its collectors hold the statistics); checks that there are some."""
        has_statistics = self.core.importance.has_statistics
        missing = [g.rep for g, (_, group) in zip(self._groups, self.core.groups) if not has_statistics(group)]
        if missing:
            raise RuntimeError(
                f"no SCA activity statistics for {', '.join(missing[:5])}: masks need training-mode forward passes "
                "since the last update (compress() gathers them through the evaluator; in a hand-written loop call "
                "pruner.register_statistics_hooks() first)")
        return {}

    def _calculate_metrics(self, data: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        """Nothing: the core scores the channels in its update."""
        return {}

    def _generate_sparsity(self, metrics: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        """One core update, ranked in the scopes ``config_list`` gives at the current ``sparse_ratio``
        values (which AGP/Linear change between updates); the NNI masks of its channel masks."""
        scopes = ranking_scopes(self._groups, self._current_sparse_ratio)
        self.core.set_ranking_scopes(scopes)
        self.core.update_masks()
        entry = self.core.history[-1]
        self.history.append({
            "update": entry["update"], "pruned": entry["pruned"], "regrown": entry["regrown"],
            "sparse_ratio": {self._groups[s.groups[0]].rep: s.sparsity for s in scopes},
            "sparsity": entry["sparsity"], "channels": {g.rep: int(k.sum()) for g, k in zip(self._groups, self.core.masks)},
        })
        return self._nni_masks()

    def _current_sparse_ratio(self, g: ConfiguredGroup) -> float:
        # read from the target space, so that AGP/Linear scheduled pruners can change it
        space = self._target_spaces[g.rep].get("weight")
        ratio = space.sparse_ratio if space is not None else None
        return g.sparse_ratio if ratio is None else float(ratio)

    def _nni_masks(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """NNI masks of the core's: per channel for ``_output_0``, the channel rows of every parameter."""
        masks: Dict[str, Dict[str, torch.Tensor]] = {}
        for g, keep in zip(self._groups, self.core.masks):
            for module, (local, root) in list(g.producers.items()) + list(g.bns.items()):
                name = self.core.module_names[module]
                channel = module_channels(keep, local, root, out_channels(module))
                for target_name, space in self._target_spaces.get(name, {}).items():
                    if space.type is TargetType.OUTPUT:
                        masks.setdefault(name, {})[target_name] = channel.float()
                    elif space.target is not None:
                        target = space.target
                        dim = parameter_channel_dim(module)
                        shape = [1] * target.dim()
                        shape[dim] = -1
                        masks.setdefault(name, {})[target_name] = channel.to(
                            device=target.device, dtype=target.dtype).view(shape).expand_as(target).clone()
        return masks

    def update_masks(self, masks: Dict[str, Dict[str, torch.Tensor]]) -> None:
        """NNI's ``update_masks``, then :meth:`reset_masked_channels` (the core's update has reset them
        already; a hand-written loop calling ``pruner.update_masks(pruner.generate_masks())`` resets as
        ``compress()`` does)."""
        super().update_masks(masks)
        self.reset_masked_channels()

    def reset_masked_channels(self) -> int:
        """Zero the masked channels' BatchNorm weight and bias (``masking='reset-filters'``: and the
        filter rows) in the parameters NNI trains: the core's reset, through the parameter
        redirection. Returns the slices zeroed."""
        return self.core.reset_masked_channels()

    # ------------------------------------------------------------------ queries
    def get_masks(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """NNI's ``{module: {'weight'|'bias': mask}}`` (what ``ModelSpeedup`` takes): the parameter masks.
        The internal per-channel output masks (``_output_0``) that enforce them during training are left out
        (NNI's ``AGPPruner`` / ``LinearPruner`` return them too; :class:`sca_plugin.nni.ModelSpeedup` applies
        them as the same weight and bias masks, so either set of masks gives the same pruned model)."""
        masks = super().get_masks()
        return {name: {t: m for t, m in targets.items() if not t.startswith(OUTPUT_PREFIX)}
                for name, targets in masks.items()
                if any(not t.startswith(OUTPUT_PREFIX) for t in targets)}

    def channel_counts(self) -> Dict[str, Tuple[int, int]]:
        """``{representative configured module: (channels, kept)}`` per pruned group."""
        sizes = [group_size(group) for _, group in self.core.groups]
        return {g.rep: (n, n if keep is None else int(keep.sum()))
                for g, n, keep in zip(self._groups, sizes, self.core.masks)}

    def coupled_modules(self) -> List[List[str]]:
        """The names of the layers masked together, one list per Torch-Pruning group."""
        return [[self.core.module_names[m] for m in list(g.producers) + list(g.bns)] for g in self._groups]

    def unwrap_model(self, apply_masks: bool = False) -> None:
        """NNI's ``unwrap_model`` (statistics hooks taken off too); with ``apply_masks=True`` the masks
        are multiplied into the parameters first, so the unwrapped dense model computes the masked
        function (otherwise use the masks with ``ModelSpeedup``, as with every NNI pruner)."""
        if apply_masks and self._is_wrapped:
            with torch.no_grad():
                for spaces in self._target_spaces.values():
                    for space in spaces.values():
                        if space.type is TargetType.PARAMETER and space.target is not None and space.mask is not None:
                            space.target.mul_(space.mask)
        self.remove_statistics_hooks()
        super().unwrap_model()

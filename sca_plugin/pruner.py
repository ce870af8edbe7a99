"""SCAPruner: dynamic prune-and-regrow of whole channels during training, then physical removal.

Built on Torch-Pruning: the dependency graph (with spiking neurons registered and the time
dimension repaired, see :mod:`sca_plugin.graph`) decides which layers share a channel, so residual
adds, concatenations and pre-activation blocks are coupled by the graph, and ``finalize()``
removes the masked channels through it.
"""
from __future__ import annotations

import copy
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .graph import SpikingMetaPruner, reaches_output
from .importance import SCAImportance, group_channel_mean, group_members
from .masking import MASKINGS, ChannelMasker, channel_parameters, is_batchnorm, mask_targets, out_channels, zero_channels
from .regrowth import REGROW_SIGNALS, GradientMagnitudes
from .rollback import RemovalTransaction
from .distributed import broadcast_
from .neurons import is_spiking_neuron, untraced_neurons_message
from .optim import rebuild_optimizer
from .schedule import REGROW_DECAYS, SCHEDULES, regrow_at, sparsity_at
from .selection import MODES, Selection, select_channels

__all__ = ["SCAPruner", "NonFiniteStatisticsError"]


class NonFiniteStatisticsError(RuntimeError):
    """``update_masks()`` found NaN or Inf in what it ranks by (activity statistics, regrowth gradients,
    SD-SNN's weights); nothing was changed."""

_STATE_FORMAT = "sca_plugin.SCAPruner/1"
# BasePruner arguments passed on unchanged; pruning_ratio_dict and max_pruning_ratio are SCAPruner's
# own arguments (same meaning); the others (iterative_steps, head pruning, ...) concern Torch-Pruning's
# own one-shot schedule
_PASSED_TO_TORCH_PRUNING = {"forward_fn", "output_transform", "customized_pruners", "unwrapped_parameters"}
_CONFIG_KEYS = ("pruning_ratio", "regrow_ratio", "global_pruning", "mode", "schedule",
                "ramp_updates", "min_channels", "round_to", "definition", "regrow_decay", "regrow_decay_updates",
                "masking", "regrow_signal", "max_pruning_ratio", "pruning_ratio_dict")
# settings added after the first state-dict format: their value when a saved state lacks them (the
# behaviour of the versions that wrote such states)
_CONFIG_DEFAULTS = {"regrow_decay": "constant", "regrow_decay_updates": None, "masking": "mask",
                    "regrow_signal": "mean", "max_pruning_ratio": 1.0, "pruning_ratio_dict": {}}


class SCAPruner(SpikingMetaPruner):
    """Spiking Channel Activity pruning (Li et al., ICML 2024) as a Torch-Pruning pruner.

    Args:
        model: a SpikingJelly network (multi-step or single-step).
        example_inputs: inputs exactly as ``model`` takes them (used to trace the graph and to
            check ``finalize()``).
        importance: channel importance; :class:`SCAImportance` by default. Any
            ``tp.importance.Importance`` works (it then ranks the channels instead of SCA).
        pruning_ratio: target fraction ``s`` of prunable channels that are masked, in [0, 1).
        regrow_ratio: fraction ``q`` of all prunable channels regrown at each update, ``q <= s``.
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
        pruning_ratio_dict: ``{module or tuple of modules: ratio}`` (Torch-Pruning's argument): those
            groups are pruned to their own ratio, ranked within the group; the rest follow
            ``pruning_ratio`` (globally ranked among themselves with ``global_pruning``).
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
        **kwargs: Any,
    ) -> None:
        importance = SCAImportance() if importance is None else importance
        unsupported = sorted(set(kwargs) - _PASSED_TO_TORCH_PRUNING)
        if unsupported:
            raise TypeError(f"SCAPruner does not support {unsupported}: it has its own schedule and ranking; "
                            f"extra arguments may be {sorted(_PASSED_TO_TORCH_PRUNING)}")
        self._validate_arguments(model, importance, pruning_ratio, regrow_ratio, ignored_layers, l1, bn_l1,
                                 mode, schedule, ramp_updates, update_interval, min_channels, round_to)
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
        ratio_dict = self._validate_ratio_dict(model, pruning_ratio_dict, regrow_ratio, max_pruning_ratio)
        super().__init__(model, example_inputs, importance, global_pruning=global_pruning,
                         pruning_ratio=pruning_ratio, ignored_layers=list(ignored_layers or []),
                         round_to=round_to, root_module_types=list(root_module_types), **kwargs)
        self.example_inputs = example_inputs
        self.forward_fn = kwargs.get("forward_fn")
        self.regrow_ratio = regrow_ratio
        self.l1 = l1
        self.bn_l1 = bn_l1
        self.regrow_decay = regrow_decay
        self.regrow_decay_updates = regrow_decay_updates
        self.mode = mode
        self.schedule = schedule
        self.ramp_updates = ramp_updates
        self.update_interval = update_interval
        self.min_channels = min_channels
        self.verify_atol = verify_atol
        self.masking = masking
        self.regrow_signal = regrow_signal
        self.max_pruning_ratio = float(max_pruning_ratio)
        self.fixed = False  # fix_masks(): the structure no longer changes

        self.module_names: Dict[nn.Module, str] = {m: n for n, m in model.named_modules()}
        # the conv modules regularize() touches every step (pruning replaces their tensors, not them)
        ignored = set(self.ignored_layers)
        self._l1_convs = [m for m in model.modules() if isinstance(m, ops.TORCH_CONV) and m not in ignored]
        self.groups = [
            (group[0].dep.target.module, group)
            for group in self.DG.get_all_groups(ignored_layers=self.ignored_layers,
                                                root_module_types=self.root_module_types)
        ]
        self._check_groups()
        self.pruning_ratio_dict = ratio_dict
        self._local_ratio = self._group_ratios(ratio_dict)
        self._channel_params = [channel_parameters(self.DG, group) for _, group in self.groups]
        self._l1_bns = sorted({m for _, group in self.groups for m in group_members(group, is_batchnorm)
                               if m.weight is not None and m not in ignored}, key=lambda m: self.module_names[m])
        self.masks: List[Optional[torch.Tensor]] = [None] * len(self.groups)
        self.num_updates = 0
        self.num_steps = 0
        self.history: List[dict] = []
        self.finalized = False
        self._growth = GradientMagnitudes()
        self._mask_targets = [mask_targets(self.DG, group, self.module_names) for _, group in self.groups]
        # what the graph was traced on: a layer replaced or resized later invalidates the groups
        self._traced = {self.module_names[m]: (m, _param_shapes(m)) for m in self.DG.module2node
                        if m in self.module_names and m is not model}
        self._masker = ChannelMasker()
        self._grad_hooks: List = []
        self._install()

    @staticmethod
    def _validate_ratio_dict(model, ratio_dict, regrow_ratio, max_pruning_ratio) -> Dict[tuple, float]:
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
            if regrow_ratio > ratio:
                raise ValueError(f"pruning_ratio_dict ratio {ratio} is below regrow_ratio ({regrow_ratio}): only masked "
                                 "channels can be regrown; use ratios >= regrow_ratio")
            if ratio > max_pruning_ratio:
                raise ValueError(f"pruning_ratio_dict ratio {ratio} exceeds max_pruning_ratio ({max_pruning_ratio})")
            out[modules] = float(ratio)
        return out

    def _group_ratios(self, ratio_dict: Dict[tuple, float]) -> List[Optional[float]]:
        """Per group, its own ratio from ``pruning_ratio_dict`` (a key naming any member of the
        group), or None (the group follows ``pruning_ratio``)."""
        out: List[Optional[float]] = []
        used = set()
        for _, group in self.groups:
            modules = {it.dep.target.module for it in group}
            ratio = None
            for key, r in ratio_dict.items():
                if modules & set(key):
                    ratio = r
                    used.add(key)
            out.append(ratio)
        unused = [k for k in ratio_dict if k not in used]
        if unused:
            name = self.module_names.get(unused[0][0], repr(unused[0][0]))
            raise ValueError(f"pruning_ratio_dict names {name}, which belongs to no prunable group (it is ignored or "
                             "computes no channel of a root layer); remove it from the dict")
        return out

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate_arguments(model, importance, pruning_ratio, regrow_ratio, ignored_layers, l1, bn_l1,
                            mode, schedule, ramp_updates, update_interval, min_channels, round_to) -> None:
        if not isinstance(importance, tp.importance.Importance):
            raise TypeError(f"importance must be a torch_pruning.importance.Importance, got {type(importance).__name__}")
        for name, value in (("pruning_ratio", pruning_ratio), ("regrow_ratio", regrow_ratio)):
            if not isinstance(value, (int, float)) or not 0.0 <= value < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {value!r}")
        if regrow_ratio > pruning_ratio:
            raise ValueError(
                f"regrow_ratio ({regrow_ratio}) is larger than pruning_ratio ({pruning_ratio}): only masked "
                f"channels can be regrown, so use regrow_ratio <= pruning_ratio")
        for name, value in (("l1", l1), ("bn_l1", bn_l1)):
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative number, got {value!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        if schedule not in SCHEDULES:
            raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
        for name, value, allow_none in (("ramp_updates", ramp_updates, False), ("update_interval", update_interval, True),
                                        ("min_channels", min_channels, False), ("round_to", round_to, True)):
            if value is None and allow_none:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
        members = set(model.modules())
        for layer in ignored_layers or []:
            if isinstance(layer, nn.Module) and layer not in members:
                raise ValueError(
                    f"ignored layer {layer.__class__.__name__} ({layer!r:.80}) is not a submodule of the model; "
                    f"pass modules of the model being pruned (e.g. ignored_layers=[model.classifier])")
            if not isinstance(layer, (nn.Module, nn.Parameter)):
                raise TypeError(f"ignored_layers must hold nn.Module or nn.Parameter objects, got {type(layer).__name__}")
        neurons = [m for m in model.modules() if is_spiking_neuron(m)]
        if not neurons:
            raise ValueError("the model has no spiking neurons (spikingjelly.activation_based.neuron): "
                             "SCA scores channels by membrane activity, so it prunes spiking networks only")
        if isinstance(importance, SCAImportance):
            if importance.recorder.model is not None:
                raise ValueError("this SCAImportance is already attached to a model; give each pruner its own")
            importance.recorder.check_supported(neurons)

    def _check_groups(self) -> None:
        if not self.groups:
            untraced = untraced_neurons_message(self.model, self.DG, self.neuron_pruner)
            raise ValueError("no prunable channel groups: every convolution is ignored or the model has none "
                             f"of the root module types {self.root_module_types}" + (f"; {untraced}" if untraced else ""))
        for root, group in self.groups:
            name = self.module_names.get(root, repr(root))
            if reaches_output(self.DG, group):
                raise ValueError(
                    f"the channels of {name} are the model's output (pruning them would change the output's size, "
                    f"e.g. the number of classes); add it to ignored_layers (Torch-Pruning's convention: "
                    f"ignored_layers=[<the classifier>]) or leave {type(root).__name__} out of root_module_types")
            if isinstance(self.importance, SCAImportance) and not group_members(group, is_spiking_neuron):
                raise ValueError(
                    f"the channels of {name} reach no spiking neuron, so they have no SCA score; "
                    f"add {name} to ignored_layers or use another importance")
            if self.regrow_ratio > 0 and not any(
                    getattr(m, "weight", None) is not None for m in group_members(group, is_batchnorm)):
                raise ValueError(
                    f"the channels of {name} have no BatchNorm with a weight, but regrowth ranks masked channels "
                    f"by |dL/dgamma|; add a BatchNorm after {name}, ignore it, or use regrow_ratio=0")

    # ------------------------------------------------------------------ hooks
    # The set of forward hooks stays the same from construction to finalize(): torch.compile does not
    # guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``), so a compiled
    # training forward would silently ignore a hook added, removed or replaced after its first call.
    # Masks and the straight-through switch are tensors updated in place instead.
    def _install(self) -> None:
        if isinstance(self.importance, SCAImportance):
            self.importance.attach(self.model)
        self._set_fixed(self.fixed)

    def _uninstall(self) -> None:
        if isinstance(self.importance, SCAImportance):
            self.importance.detach()
        self._remove_growth_hooks()
        self._masker.remove()

    def _install_growth_hooks(self) -> None:
        """Tensor hooks on the BatchNorm weights (the regrowth signal); they run in the autograd
        engine, outside a compiled graph, so they may come and go."""
        if self.regrow_ratio > 0 and not self.fixed:
            bns = {m for _, group in self.groups for m in group_members(group, is_batchnorm) if m.weight is not None}
            for bn in sorted(bns, key=lambda m: self.module_names[m]):
                self._grad_hooks.append(bn.weight.register_hook(self._growth.hook_for(bn)))

    def _remove_growth_hooks(self) -> None:
        for h in self._grad_hooks:
            h.remove()
        self._grad_hooks.clear()

    def _set_fixed(self, fixed: bool) -> None:
        """Switch between the dynamic phase (straight-through masks, regrowth signal recorded) and
        fixed masks (exact masks), changing tensors in place and no forward hook."""
        self.fixed = fixed
        self._remove_growth_hooks()
        self._install_growth_hooks()
        self._masker.straight_through = not fixed
        for i, keep in enumerate(self.masks):
            self._apply_mask(i, keep)

    def _apply_mask(self, i: int, keep: Optional[torch.Tensor]) -> None:
        """Set group ``i``'s forward masks (all ones while it has no mask yet, and under ``soft``
        masking before the masks are fixed: the reference code zeroes channels only at updates)."""
        soft = self.masking == "soft" and not self.fixed
        for module, local, root in self._mask_targets[i]:
            n = out_channels(module)
            module_keep = torch.ones(n, dtype=torch.bool)
            if keep is not None and not soft:
                module_keep[torch.tensor(local)] = keep[torch.tensor(root)]
            device = next((p.device for p in module.parameters()), torch.device("cpu"))
            self._masker.set_mask(module, module_keep.to(device))

    # ------------------------------------------------------------------ training-loop API
    def regularize(self, model: nn.Module, reg: Optional[float] = None) -> None:
        """Add ``l1 * sign(W)`` to the gradient of every conv weight (reference code; ``reg``
        overrides ``l1`` for this call) and ``bn_l1 * sign(gamma)`` to the BatchNorm scales of the
        prunable channels (network slimming); call after ``loss.backward()`` and before
        ``optimizer.step()``."""
        if model is not self.model:
            raise ValueError("regularize() got a different model than the one this pruner was built for")
        for modules, strength in ((self._l1_convs, self.l1 if reg is None else reg), (self._l1_bns, self.bn_l1)):
            if strength == 0:
                continue
            for m in modules:
                if m.weight.grad is not None:
                    m.weight.grad.add_(torch.sign(m.weight.detach()), alpha=strength)

    def maybe_update_masks(self) -> bool:
        """Count one training step; every ``update_interval`` steps run :meth:`update_masks`.
        Call once per step after ``optimizer.step()``. Returns True when the masks were updated."""
        if self.update_interval is None:
            raise RuntimeError("maybe_update_masks() needs update_interval=N when the pruner is built; "
                               "or call update_masks() yourself")
        self.num_steps += 1
        if self.num_steps % self.update_interval == 0:
            self.update_masks()
            return True
        return False

    def current_sparsity_target(self) -> float:
        return sparsity_at(self.num_updates, self.pruning_ratio, self.schedule, self.ramp_updates)

    def current_regrow_ratio(self) -> float:
        return regrow_at(self.num_updates, self.regrow_ratio, self.regrow_decay, self.regrow_decay_updates)

    @torch.no_grad()
    def update_masks(self) -> Selection:
        """Prune by activity and regrow by BN-scale gradient now, from the statistics gathered since
        the previous update. Returns the :class:`~sca_plugin.selection.Selection`."""
        if self.finalized:
            raise RuntimeError("update_masks() after finalize(): the masked channels are already removed")
        if self.fixed:
            raise RuntimeError("update_masks() after fix_masks(): the structure is fixed; train it and finalize()")
        self.check_model_unchanged()
        if isinstance(self.importance, SCAImportance):
            # DDP: score on the statistics of all processes (the recorder's modules in model order)
            self.importance.recorder.synchronize(list(self.module_names))
            missing = [self.module_names[root] for root, group in self.groups if not self.importance.has_statistics(group)]
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
            name, n = self.module_names[root], len(group[0].idxs)
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
        selection = self._select(scores, growth, sparsity, regrow)
        for i, keep in enumerate(selection.keep):
            self.masks[i] = broadcast_(keep.clone())  # DDP: every process applies rank 0's masks
            self._apply_mask(i, self.masks[i])
        self.reset_masked_channels()
        self.history.append({
            "update": self.num_updates,
            "step": self.num_steps,
            "target_sparsity": sparsity,
            "regrow_ratio": regrow,
            "sparsity": self.sparsity(),
            "channels": {self.module_names[root]: int(keep.sum()) for (root, _), keep in zip(self.groups, self.masks)},
            "pruned": int(sum(len(p) for p in selection.pruned)),
            "regrown": int(sum(len(r) for r in selection.regrown)),
        })
        self.num_updates += 1
        if isinstance(self.importance, SCAImportance):
            self.importance.reset()
        self._growth.clear()
        return selection

    def _check_finite(self, values: List[torch.Tensor], what: str) -> None:
        """Refuse NaN/Inf before any mask changes: ranking them would pick channels at random."""
        bad = [self.module_names[root] for (root, _), v in zip(self.groups, values) if not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteStatisticsError(
                f"non-finite {what} for {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: a training step "
                "diverged or a batch held NaN/Inf. The masks were left as they were; lower the learning rate, "
                "check the data, or call importance.reset() to drop the statistics")

    def _select(self, scores, growth, sparsity: float, regrow: float) -> Selection:
        """One selection over all groups: the groups of ``pruning_ratio_dict`` ranked each within
        itself at its own ratio, the others as ``global_pruning`` says at ``sparsity``."""
        previous = None if self.masks[0] is None else self.masks
        common = dict(min_channels=self.min_channels, round_to=self.round_to, mode=self.mode,
                      max_pruning_ratio=self.max_pruning_ratio)
        own = [i for i, r in enumerate(self._local_ratio) if r is not None]
        if not own:
            return select_channels(scores, growth, previous, sparsity, regrow, self.global_pruning, **common)
        rest = [i for i, r in enumerate(self._local_ratio) if r is None]
        scale = sparsity / self.pruning_ratio if self.pruning_ratio > 0 else 1.0  # the ramp of a schedule
        own_ratios = [self._local_ratio[i] * scale for i in own]
        parts = []
        for idx, global_ranking, ratio, q in ((rest, self.global_pruning, sparsity, regrow),
                                              (own, False, own_ratios, [min(regrow, r) for r in own_ratios])):
            if not idx:
                continue
            pick = lambda seq: None if seq is None else [seq[i] for i in idx]  # noqa: E731
            parts.append((idx, select_channels(pick(scores), pick(growth), pick(previous), ratio, q,
                                               global_ranking, **common)))
        out = Selection(keep=[None] * len(scores), pruned=[None] * len(scores), regrown=[None] * len(scores))
        for idx, sel in parts:
            for j, i in enumerate(idx):
                out.keep[i], out.pruned[i], out.regrown[i] = sel.keep[j], sel.pruned[j], sel.regrown[j]
        return out

    @torch.no_grad()
    def reset_masked_channels(self) -> int:
        """Zero the parameters of every masked channel, as the reference code does at every update:
        BatchNorm weight and bias, and (``masking="reset-filters"``, ``"soft"``, and once the masks
        are fixed) the filter rows and bias of the layers computing it; returns the number of
        slices zeroed. :meth:`update_masks` calls it; it changes no output of a forward-masked model."""
        if self.masking == "mask" and not self.fixed:
            return 0
        filters = self.fixed or self.masking != "reset"
        return sum(zero_channels(entries, keep, self.parameter_of, filters=filters)
                   for entries, keep in zip(self._channel_params, self.masks) if keep is not None)

    def parameter_of(self, module: nn.Module, name: str) -> torch.Tensor:
        """A layer's parameter ``name``; an adapter whose framework holds parameters elsewhere while
        it wraps the model (NNI) replaces this."""
        return getattr(module, name)

    def fix_masks(self) -> None:
        """Fix the structure for the rest of training (the final epochs, or fine-tuning before
        :meth:`finalize`): the masked channels are zeroed once, masked exactly from now on (no
        straight-through gradient; in ``"soft"`` mode they no longer revive), regrowth gradients are
        no longer recorded, and :meth:`update_masks` refuses (activity statistics go on, for reports). Training then trains exactly the network
        that :meth:`finalize` will keep."""
        if self.finalized:
            raise RuntimeError("fix_masks() after finalize(): the masked channels are already removed")
        if self.masks[0] is None:
            raise RuntimeError("fix_masks() before any mask exists: call update_masks() at least once")
        if self.fixed:
            return
        self._set_fixed(True)
        self.reset_masked_channels()

    def check_model_unchanged(self) -> None:
        """Raise if a layer the dependency graph was traced on has been replaced, removed or
        resized since the pruner was built (its groups and masks would no longer fit)."""
        if self.finalized:
            return
        for name, (module, shapes) in self._traced.items():
            try:
                now = self.model.get_submodule(name)
            except AttributeError:
                now = None
            if now is not module:
                raise RuntimeError(f"the model changed after the pruner was built: {name} was replaced or removed; "
                                   "build a new pruner for the changed model (its state cannot carry over)")
            if _param_shapes(module) != shapes:
                raise RuntimeError(f"the model changed after the pruner was built: the parameters of {name} now have "
                                   f"shapes {_param_shapes(module)} instead of {shapes}; build a new pruner for the "
                                   "changed model")

    # ------------------------------------------------------------------ queries
    def group_names(self) -> List[str]:
        return [self.module_names[root] for root, _ in self.groups]

    def channel_counts(self) -> Dict[str, tuple]:
        """``{layer: (channels, kept)}`` for every prunable group, named by its root layer."""
        out = {}
        for (root, group), keep in zip(self.groups, self.masks):
            n = len(group[0].idxs)
            out[self.module_names[root]] = (n, n if keep is None else int(keep.sum()))
        return out

    def sparsity(self) -> float:
        """Fraction of prunable channels currently masked."""
        counts = self.channel_counts().values()
        total = sum(n for n, _ in counts)
        return 1.0 - sum(k for _, k in counts) / total

    def step(self, interactive: bool = False):
        raise RuntimeError("SCAPruner prunes softly during training: call update_masks() to change the masks "
                           "and finalize() to remove the masked channels (tp.pruner.MetaPruner.step() is one-shot)")

    # ------------------------------------------------------------------ physical removal
    def finalize(self, example_inputs: Any = None) -> nn.Module:
        """Remove the masked channels physically, in place, through Torch-Pruning; return the model.

        The masked model's outputs before and the pruned model's after (eval mode, fresh neuron
        state) must agree within ``verify_atol``; otherwise every change is rolled back and a
        RuntimeError is raised. Afterwards rebuild the optimizer (:meth:`rebuild_optimizer`): the
        pruned layers hold new parameter tensors.
        """
        if self.finalized:
            raise RuntimeError("finalize() was already called: the masked channels are removed")
        if self.masks[0] is None:
            raise RuntimeError("finalize() before any mask exists: call update_masks() at least once")
        self.check_model_unchanged()
        model = self.model
        inputs = self.example_inputs if example_inputs is None else example_inputs
        self._param_names = {id(p): n for n, p in model.named_parameters()}
        with RemovalTransaction(model, self.DG, self.neuron_pruner, inputs=inputs, forward_fn=self.forward_fn,
                                verify_atol=self.verify_atol) as removal:
            # the masked channels' parameters are zeroed before removal ("soft" masking: this is the
            # reference code's final zeroing, which makes the model equal the pruned one; otherwise it
            # changes no output)
            for entries, keep in zip(self._channel_params, self.masks):
                zero_channels(entries, keep, self.parameter_of)
            removal.record_reference()
            self._uninstall()
            removal.on_rollback.append(self._install)
            for (root, _), keep in zip(self.groups, self.masks):
                idxs = torch.nonzero(~keep).flatten().tolist()
                if idxs:
                    pruning_fn = self.DG.get_pruner_of_module(root).prune_out_channels
                    self.DG.get_pruning_group(root, pruning_fn, idxs).prune()
            removal.verify()
        self.finalized = True
        return model

    def rebuild_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """A new optimizer of the same class and hyper-parameters over the finalized model's parameters.

        Param groups are matched by parameter name. Per-parameter state (momentum, Adam moments)
        is not carried over: its shapes belonged to the unpruned layers.
        """
        if not self.finalized:
            raise RuntimeError("rebuild_optimizer() is for after finalize(); before it the parameters are unchanged")
        return rebuild_optimizer(optimizer, self.model, self._param_names)

    # ------------------------------------------------------------------ state
    def _config(self) -> dict:
        definition = self.importance.definition if isinstance(self.importance, SCAImportance) else None
        return {"pruning_ratio": self.pruning_ratio, "regrow_ratio": self.regrow_ratio,
                "global_pruning": self.global_pruning, "mode": self.mode, "schedule": self.schedule,
                "ramp_updates": self.ramp_updates, "min_channels": self.min_channels,
                "round_to": self.round_to, "definition": definition, "l1": self.l1,
                "bn_l1": self.bn_l1, "update_interval": self.update_interval,
                "regrow_decay": self.regrow_decay, "regrow_decay_updates": self.regrow_decay_updates,
                "masking": self.masking, "regrow_signal": self.regrow_signal,
                "max_pruning_ratio": self.max_pruning_ratio,
                "pruning_ratio_dict": {",".join(self.module_names[m] for m in key): r
                                       for key, r in self.pruning_ratio_dict.items()}}

    def state_dict(self) -> dict:
        """Masks, statistics accumulators, counters and history: enough to resume training with
        the same future masks."""
        names = self.module_names
        return {
            "format": _STATE_FORMAT,
            "config": self._config(),
            "groups": self.group_names(),
            "group_sizes": [len(group[0].idxs) for _, group in self.groups],
            "masks": [None if m is None else m.clone() for m in self.masks],
            "num_updates": self.num_updates,
            "num_steps": self.num_steps,
            "finalized": self.finalized,
            "fixed": self.fixed,
            "activity": (self.importance.recorder.state_dict(names)
                         if isinstance(self.importance, SCAImportance) else {}),
            "growth": self._growth.state_dict(names),
            "history": copy.deepcopy(self.history),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; everything is checked before anything changes."""
        if not isinstance(state, dict) or state.get("format") != _STATE_FORMAT:
            raise ValueError(f"not an SCAPruner state dict (expected format {_STATE_FORMAT!r})")
        cfg = state["config"]
        mismatched = [f"{k}: saved {cfg.get(k, _CONFIG_DEFAULTS.get(k))!r}, here {self._config()[k]!r}"
                      for k in _CONFIG_KEYS if cfg.get(k, _CONFIG_DEFAULTS.get(k)) != self._config()[k]]
        if mismatched:
            raise ValueError("the state dict was made with other pruner settings (" + "; ".join(mismatched)
                             + "); build the pruner with the same settings")
        sizes = [len(group[0].idxs) for _, group in self.groups]
        if state["groups"] != self.group_names() or state["group_sizes"] != sizes:
            raise ValueError("the state dict belongs to another architecture: its prunable layers "
                             f"{list(zip(state['groups'], state['group_sizes']))[:4]}... do not match this model's "
                             f"{list(zip(self.group_names(), sizes))[:4]}...")
        if bool(state["finalized"]) != self.finalized:
            raise ValueError("the state dict was saved after finalize() and this pruner is not finalized (or the "
                             "reverse); load the finalized model with torch.load instead")
        modules = {n: m for m, n in self.module_names.items()}
        unknown = [n for n in list(state["activity"]) + list(state["growth"]) if n not in modules]
        if unknown:
            raise ValueError(f"the state dict refers to layers this model does not have: {unknown[:5]}")
        device = next((p.device for p in self.model.parameters()), torch.device("cpu"))
        self.masks = [None if m is None else m.clone().bool().cpu() for m in state["masks"]]
        for i, keep in enumerate(self.masks):
            if keep is not None:
                self._apply_mask(i, keep)
        if bool(state.get("fixed", False)) != self.fixed:
            self._set_fixed(bool(state.get("fixed", False)))
        self.num_updates = int(state["num_updates"])
        self.num_steps = int(state["num_steps"])
        self.history = copy.deepcopy(state["history"])
        if isinstance(self.importance, SCAImportance):
            self.importance.recorder.load_state_dict(state["activity"], modules, device)
        self._growth.load_state_dict(state["growth"], modules, device)


def _param_shapes(module: nn.Module) -> Dict[str, tuple]:
    # by leaf name: a framework that re-hosts the parameters in a child (NNI's wrapper) changes nothing
    return {n.rsplit(".", 1)[-1]: tuple(p.shape) for n, p in module.named_parameters()}



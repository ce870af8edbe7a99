"""DynamicChannelPruner: the shared base of the pruners that mask whole channels during training
and remove them at the end (:class:`~sca_plugin.SCAPruner`, :class:`~sca_plugin.SDSNNPruner`).

It owns what every such method needs and nothing method-specific: the dependency graph's channel
groups, one boolean mask per group and the forward masks that apply it (:mod:`sca_plugin.masking`),
the step and update counters with the update cadence (:meth:`maybe_update_masks`), one commit
step per update (distributed broadcast, forward masks, reset of the masked channels' parameters,
history), the switch to fixed masks for the final epochs, physical removal through one
:class:`~sca_plugin.rollback.RemovalTransaction`, the optimizer rebuild, and a state-dict skeleton
(:class:`~sca_plugin.dynamic_state.DynamicPrunerState`, in :mod:`sca_plugin.dynamic_state`). The
queries on the groups (their producers, BatchNorms, parameters, whether they reach the output) are
in :mod:`sca_plugin.groups`.

Statistics gathered during training are :class:`~sca_plugin.collectors.StatisticsCollector`\ s:
the importance's (``importance.collectors``, attached for the pruner's lifetime) and the method's
own (``_own_collectors``, attached when the method says, e.g. per phase in ``_on_phase_change``);
the base synchronises, resets, saves, restores and removes them all without knowing their type.

A method supplies its keep-selection in ``update_masks()`` (computing the new masks, then
:meth:`_commit`) and its own settings and state through the extension points ``_config``,
``_extra_state`` / ``_check_state`` / ``_load_state`` and ``_on_phase_change``, as Torch-Pruning's
pruners are thin subclasses over ``BasePruner``.

A framework that wraps the model and trains it itself (NNI, :mod:`sca_plugin.nni`) drives a pruner
through three public hooks: :meth:`~DynamicChannelPruner.redirect_parameters` (where the trained
parameters are), :meth:`~DynamicChannelPruner.set_forward_masks` (the framework applies the masks)
and :meth:`~DynamicChannelPruner.detach_collectors` / :meth:`~DynamicChannelPruner.attach_collectors`
(statistics hooks only while it trains).
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch_pruning import ops

from .collectors import StatisticsCollector, collectors_of
from .distributed import broadcast_
from .dynamic_state import DynamicPrunerState
from .graph import SpikingMetaPruner, TracedLayers
from .groups import channel_parameters, group_root, group_size, reaches_output
from .masking import MASKINGS, ChannelMasker, mask_targets, out_channels, zero_channels
from .neurons import is_spiking_neuron, untraced_neurons_message
from .optim import rebuild_optimizer
from .rollback import RemovalTransaction

__all__ = ["DynamicChannelPruner", "NonFiniteStatisticsError"]

# BasePruner arguments passed on unchanged; the others (iterative_steps, head pruning, ...) concern
# Torch-Pruning's own one-shot schedule
_PASSED_TO_TORCH_PRUNING = {"forward_fn", "output_transform", "customized_pruners", "unwrapped_parameters"}


class NonFiniteStatisticsError(RuntimeError):
    """``update_masks()`` found NaN or Inf in what it ranks by (activity statistics, regrowth gradients,
    SD-SNN's weights); nothing was changed."""


class DynamicChannelPruner(DynamicPrunerState, SpikingMetaPruner):
    """Masks whole channels of a spiking network during training and removes them at the end.

    Subclasses implement ``update_masks()`` (compute the new keep masks, then :meth:`_commit`)
    and call :meth:`_install` at the end of their ``__init__``.

    Args:
        model, example_inputs, importance, ignored_layers, global_pruning, pruning_ratio, round_to,
            root_module_types: as Torch-Pruning's ``BasePruner`` (the graph is traced with spiking
            neurons registered and the time dimension repaired, :mod:`sca_plugin.graph`).
        min_channels: never keep fewer channels than this in a group.
        update_interval: with :meth:`maybe_update_masks`, update the masks every this many steps.
        verify_atol: ``finalize()`` checks, in float64, that the pruned model's outputs equal the
            masked model's within this tolerance and rolls back otherwise; None skips the check.
        masking: how masked channels act while the masks still change (:data:`~sca_plugin.masking.MASKINGS`).
        **kwargs: ``forward_fn``, ``output_transform``, ``customized_pruners`` or
            ``unwrapped_parameters``, passed on to ``tp.pruner.BasePruner``.
    """

    #: why the method needs spiking neurons (the error for a model without any)
    _NEEDS_NEURONS = "it prunes spiking networks only"

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        importance,
        *,
        ignored_layers: Optional[Sequence[nn.Module]] = None,
        global_pruning: bool = False,
        pruning_ratio: float = 0.0,
        round_to: Optional[int] = None,
        root_module_types: Sequence[type] = (ops.TORCH_CONV,),
        min_channels: int = 1,
        update_interval: Optional[int] = None,
        verify_atol: Optional[float] = 1e-5,
        masking: str = "reset",
        **kwargs: Any,
    ) -> None:
        self._validate_common(model, ignored_layers, update_interval, min_channels, round_to, kwargs)
        self._validate_collectors(model, importance)
        if masking not in MASKINGS:
            raise ValueError(f"masking must be one of {MASKINGS}, got {masking!r}")
        super().__init__(model, example_inputs, importance, global_pruning=global_pruning,
                         pruning_ratio=pruning_ratio, ignored_layers=list(ignored_layers or []),
                         round_to=round_to, root_module_types=list(root_module_types), **kwargs)
        self.example_inputs = example_inputs
        self.forward_fn = kwargs.get("forward_fn")
        self.update_interval = update_interval
        self.min_channels = min_channels
        self.verify_atol = verify_atol
        self.masking = masking
        self.fixed = False  # fix_masks(): the structure no longer changes

        self.module_names: Dict[nn.Module, str] = {m: n for n, m in model.named_modules()}
        self.groups = [
            (group_root(group), group)
            for group in self.DG.get_all_groups(ignored_layers=self.ignored_layers,
                                                root_module_types=self.root_module_types)
        ]
        self._check_groups()
        self._channel_params = [channel_parameters(self.DG, group) for _, group in self.groups]
        self.masks: List[Optional[torch.Tensor]] = [None] * len(self.groups)
        self.num_updates = 0
        self.num_steps = 0
        self.history: List[dict] = []
        self.finalized = False
        self._mask_targets = [mask_targets(self.DG, group, self.module_names) for _, group in self.groups]
        # what the graph was traced on: a layer replaced or resized later invalidates the groups
        self._traced = TracedLayers(model, self.DG, self.module_names)
        self._masker = ChannelMasker()
        self._forward_masks = True  # set_forward_masks(): whether this pruner masks the layers' outputs itself
        self._collecting = True     # detach_collectors() / attach_collectors(): statistics hooks on the model
        #: the method's own statistics collectors (besides the importance's); attached by the method
        self._own_collectors: List[StatisticsCollector] = []

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate_collectors(model: nn.Module, importance: Any) -> None:
        """The importance's collectors are free and can observe ``model`` (nothing installed yet)."""
        for c in collectors_of(importance):
            if c.is_attached:
                raise ValueError(f"this {type(importance).__name__} is already attached to a model (its "
                                 f"{type(c).__name__}); give each pruner its own")
            c.check(model)

    def _validate_common(self, model, ignored_layers, update_interval, min_channels, round_to, kwargs) -> None:
        """The checks of every dynamic pruner's arguments (subclasses may run them first, before
        their own: they are cheap and change nothing)."""
        unsupported = sorted(set(kwargs) - _PASSED_TO_TORCH_PRUNING)
        if unsupported:
            raise TypeError(f"{type(self).__name__} does not support {unsupported}: it has its own schedule and "
                            f"ranking; extra arguments may be {sorted(_PASSED_TO_TORCH_PRUNING)}")
        for name, value, allow_none in (("update_interval", update_interval, True),
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
        if not any(is_spiking_neuron(m) for m in model.modules()):
            raise ValueError("the model has no spiking neurons (spikingjelly.activation_based.neuron): "
                             f"{self._NEEDS_NEURONS}")

    def _check_groups(self) -> None:
        """Refuse a model with no prunable group, or a group whose channels are the model's output."""
        if not self.groups:
            untraced = untraced_neurons_message(self.model, self.DG, self.neuron_pruner)
            raise ValueError("no prunable channel groups: every convolution is ignored or the model has none "
                             f"of the root module types {self.root_module_types}" + (f"; {untraced}" if untraced else ""))
        for root, group in self.groups:
            if reaches_output(self.DG, group):
                name = self.module_names.get(root, repr(root))
                raise ValueError(
                    f"the channels of {name} are the model's output (pruning them would change the output's size, "
                    f"e.g. the number of classes); add it to ignored_layers (Torch-Pruning's convention: "
                    f"ignored_layers=[<the classifier>]) or leave {type(root).__name__} out of root_module_types")

    # ------------------------------------------------------------------ what the pruner installs
    # The set of forward hooks stays the same from construction to finalize(): torch.compile does not
    # guard on module hooks (``torch._dynamo.config.skip_nnmodule_hook_guards``), so a compiled
    # training forward would silently ignore a hook added, removed or replaced after its first call.
    # Masks and the straight-through switch are tensors updated in place instead.
    def _install(self) -> None:
        """Attach the method's statistics collectors and every forward mask (all ones until the
        first update); subclasses call it at the end of their ``__init__``."""
        self._attach_collectors()
        self._set_fixed(self.fixed)

    def _uninstall(self) -> None:
        """Remove everything the pruner installed on the model (collectors, hooks, forward masks)."""
        self._detach_collectors()
        self._masker.remove()

    def remove(self) -> None:
        """Remove every hook, forward mask and statistics collector this pruner installed, leaving
        the model a plain module (as SpikingJelly's monitors' ``remove_hooks``). Parameters stay as
        they are: masked channels are no longer masked. The pruner is unusable afterwards; to keep
        the pruned structure, call :meth:`finalize` instead. Idempotent."""
        if not getattr(self, "_removed", False) and not self.finalized:
            self._uninstall()
        self._removed = True

    def _check_usable(self, what: str) -> None:
        if getattr(self, "_removed", False):
            raise RuntimeError(f"{what} after remove(): this pruner removed its hooks; build a new one")

    # ------------------------------------------------------------------ statistics collectors
    @property
    def collectors(self) -> List[StatisticsCollector]:
        """Every statistics collector of this pruner: the importance's, then the method's own."""
        return collectors_of(self.importance) + list(self._own_collectors)

    @property
    def collecting(self) -> bool:
        """Whether the statistics collectors are on the model (see :meth:`detach_collectors`); a
        method attaches its own collectors only while this holds."""
        return self._collecting

    def attach_collectors(self) -> None:
        """Put the statistics collectors back on the model after :meth:`detach_collectors` (the
        importance's, and the method's own as the current phase needs them); idempotent."""
        self._check_usable("attach_collectors()")
        if self._collecting:
            return
        self._collecting = True
        self._attach_collectors()
        self._on_phase_change()

    def detach_collectors(self) -> None:
        """Take every statistics collector's hooks off the model, keeping what they gathered, until
        :meth:`attach_collectors`. For a framework that gathers statistics only while it trains
        (:class:`sca_plugin.nni.SCAPruner` around NNI's evaluator): the model carries no hook of this
        pruner outside those stretches. Idempotent."""
        self._collecting = False
        self._detach_collectors()

    def _attach_collectors(self) -> None:
        if not self._collecting:
            return
        for c in collectors_of(self.importance):
            c.attach(self.model)

    def _detach_collectors(self) -> None:
        for c in self.collectors:
            c.detach()

    def _synchronize_collectors(self) -> None:
        """DDP: every collector combines the statistics of all processes (modules in model order)."""
        order = list(self.module_names)
        for c in self.collectors:
            c.synchronize(order)

    def _reset_collectors(self) -> None:
        for c in self.collectors:
            c.reset()

    def _on_phase_change(self) -> None:
        """Extension point: the masks switched between the dynamic phase and fixed masks."""

    def _set_fixed(self, fixed: bool) -> None:
        """Switch between the dynamic phase (straight-through masks) and fixed masks (exact
        masks), changing tensors in place and no forward hook."""
        self.fixed = fixed
        self._on_phase_change()
        self._masker.straight_through = not fixed
        for i, keep in enumerate(self.masks):
            self._apply_mask(i, keep)

    def set_forward_masks(self, enabled: bool) -> None:
        """Whether this pruner applies its masks to the layers' outputs (default True). A framework
        that applies the same masks itself while it wraps the model (NNI's output target spaces in
        :class:`sca_plugin.nni.SCAPruner`) switches them off: the pruner's forward hooks are removed
        and it goes on computing, committing and resetting the masks. ``True`` installs them again
        with the current masks."""
        self._check_usable("set_forward_masks()")
        self._forward_masks = bool(enabled)
        if not self._forward_masks:
            self._masker.remove()
            return
        for i, keep in enumerate(self.masks):
            self._apply_mask(i, keep)

    def _apply_mask(self, i: int, keep: Optional[torch.Tensor]) -> None:
        """Set group ``i``'s forward masks (all ones while it has no mask yet, and under ``soft``
        masking before the masks are fixed: the reference code zeroes channels only at updates);
        nothing while :meth:`set_forward_masks` has them off."""
        if not self._forward_masks:
            return
        soft = self.masking == "soft" and not self.fixed
        for module, local, root in self._mask_targets[i]:
            module_keep = torch.ones(out_channels(module), dtype=torch.bool)
            if keep is not None and not soft:
                module_keep[torch.tensor(local)] = keep[torch.tensor(root)]
            device = next((p.device for p in module.parameters()), torch.device("cpu"))
            self._masker.set_mask(module, module_keep.to(device))

    # ------------------------------------------------------------------ training-loop API
    def regularize(self, model: nn.Module, reg: Optional[float] = None) -> None:
        """Add the method's gradient penalty (none here); call after ``loss.backward()`` and before
        ``optimizer.step()``."""
        if model is not self.model:
            raise ValueError("regularize() got a different model than the one this pruner was built for")

    def maybe_update_masks(self) -> bool:
        """Count one training step; every ``update_interval`` steps run ``update_masks()``.
        Call once per step after ``optimizer.step()``. Returns True when the masks were updated."""
        if self.update_interval is None:
            raise RuntimeError("maybe_update_masks() needs update_interval=N when the pruner is built; "
                               "or call update_masks() yourself")
        self.num_steps += 1
        if self.num_steps % self.update_interval == 0:
            self.update_masks()
            return True
        return False

    def update_masks(self):
        raise NotImplementedError

    def _begin_update(self) -> None:
        """The checks every update starts with."""
        self._check_usable("update_masks()")
        if self.finalized:
            raise RuntimeError("update_masks() after finalize(): the masked channels are already removed")
        if self.fixed:
            raise RuntimeError("update_masks() after fix_masks(): the structure is fixed; train it and finalize()")
        self.check_model_unchanged()

    def _check_finite(self, values: List[torch.Tensor], what: str, names: Optional[List[str]] = None) -> None:
        """Refuse NaN/Inf before any mask changes: ranking them would pick channels at random."""
        names = names if names is not None else self.group_names()
        bad = [n for n, v in zip(names, values) if not torch.isfinite(v).all()]
        if bad:
            raise NonFiniteStatisticsError(
                f"non-finite {what} for {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: a training step "
                "diverged or a batch held NaN/Inf. The masks were left as they were; lower the learning rate, "
                "check the data, or call importance.reset() to drop the statistics")

    @torch.no_grad()
    def _commit(self, keeps: Sequence[torch.Tensor], head: Dict[str, Any], tail: Dict[str, Any]) -> None:
        """Make ``keeps`` the masks: the same on every process (rank 0's), applied, the masked
        channels' parameters reset; one history entry ``{update, step, **head, sparsity,
        channels, **tail}``; the update counted."""
        for i, keep in enumerate(keeps):
            self.masks[i] = broadcast_(keep.clone())  # DDP: every process applies rank 0's masks
            self._apply_mask(i, self.masks[i])
        self.reset_masked_channels()
        self.history.append({
            "update": self.num_updates, "step": self.num_steps, **head, "sparsity": self.sparsity(),
            "channels": {self.module_names[root]: int(keep.sum()) for (root, _), keep in zip(self.groups, self.masks)},
            **tail,
        })
        self.num_updates += 1

    @torch.no_grad()
    def reset_masked_channels(self) -> int:
        """Zero the parameters of every masked channel, as the reference code does at every update:
        BatchNorm weight and bias, and (``masking="reset-filters"``, ``"soft"``, and once the masks
        are fixed) the filter rows and bias of the layers computing it; returns the number of
        slices zeroed. Updates call it; it changes no output of a forward-masked model."""
        if self.masking == "mask" and not self.fixed:
            return 0
        filters = self.fixed or self.masking != "reset"
        return sum(zero_channels(entries, keep, self.parameter_of, filters=filters)
                   for entries, keep in zip(self._channel_params, self.masks) if keep is not None)

    #: :meth:`redirect_parameters`' resolver (None: the modules' own parameters)
    _parameter_resolver: Optional[Callable[[nn.Module, str], torch.Tensor]] = None

    def parameter_of(self, module: nn.Module, name: str) -> torch.Tensor:
        """The trained tensor of a layer's parameter ``name`` (what resets zero, the regulariser
        penalises and the regrowth hooks observe): the module's own, unless
        :meth:`redirect_parameters` says where a framework keeps it."""
        resolver = self._parameter_resolver
        return getattr(module, name) if resolver is None else resolver(module, name)

    def redirect_parameters(self, resolver: Optional[Callable[[nn.Module, str], torch.Tensor]]) -> None:
        """Tell the pruner where the trained parameters are while a framework wraps the model:
        ``resolver(module, name)`` returns the tensor the optimizer updates (NNI keeps it in its
        wrapper's target space, the module's attribute being recomputed from it at every forward).
        Collectors that observe parameters move onto them; ``None`` restores the modules' own."""
        self._check_usable("redirect_parameters()")
        if resolver is not None and not callable(resolver):
            raise TypeError(f"resolver must be callable as resolver(module, name), got {type(resolver).__name__}")
        self._parameter_resolver = resolver
        self._on_parameters_redirected()

    def _on_parameters_redirected(self) -> None:
        """Extension point: :meth:`redirect_parameters` changed where the parameters are."""

    def fix_masks(self) -> None:
        """Fix the structure for the rest of training (the final epochs, or fine-tuning before
        :meth:`finalize`): the masked channels are zeroed once, masked exactly from now on (no
        straight-through gradient; in ``"soft"`` mode they no longer revive), and ``update_masks()``
        refuses. Training then trains exactly the network that :meth:`finalize` will keep."""
        self._check_usable("fix_masks()")
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
        change = self._traced.first_change(self.model)
        if change is None:
            return
        name, now, then = change
        if now is None:
            raise RuntimeError(f"the model changed after the pruner was built: {name} was replaced or removed; "
                               "build a new pruner for the changed model (its state cannot carry over)")
        raise RuntimeError(f"the model changed after the pruner was built: the parameters of {name} now have "
                           f"shapes {now} instead of {then}; build a new pruner for the changed model")

    # ------------------------------------------------------------------ queries
    def group_names(self) -> List[str]:
        return [self.module_names[root] for root, _ in self.groups]

    def channel_counts(self) -> Dict[str, tuple]:
        """``{layer: (channels, kept)}`` for every prunable group, named by its root layer."""
        out = {}
        for (root, group), keep in zip(self.groups, self.masks):
            n = group_size(group)
            out[self.module_names[root]] = (n, n if keep is None else int(keep.sum()))
        return out

    def sparsity(self) -> float:
        """Fraction of prunable channels currently masked."""
        counts = self.channel_counts().values()
        total = sum(n for n, _ in counts)
        return 1.0 - sum(k for _, k in counts) / total

    def step(self, interactive: bool = False):
        raise RuntimeError(f"{type(self).__name__} prunes softly during training: call update_masks() to change the "
                           "masks and finalize() to remove the masked channels (tp.pruner.MetaPruner.step() is one-shot)")

    # ------------------------------------------------------------------ physical removal
    def finalize(self, example_inputs: Any = None) -> nn.Module:
        """Remove the masked channels physically, in place, through Torch-Pruning; return the model.

        The masked model's outputs before and the pruned model's after (eval mode, fresh neuron
        state) must agree within ``verify_atol``; otherwise every change is rolled back and a
        RuntimeError is raised. Afterwards rebuild the optimizer (:meth:`rebuild_optimizer`): the
        pruned layers hold new parameter tensors.
        """
        self._check_usable("finalize()")
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

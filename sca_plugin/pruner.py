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
from spikingjelly.activation_based import functional

from .graph import SpikingMetaPruner, eval_outputs
from .importance import SCAImportance, group_channel_mean, group_members
from .masking import ChannelMasker, mask_targets
from .regrowth import GradientMagnitudes
from .rollback import ModuleSnapshot, float_dtypes, restore_dtypes, to_double
from .distributed import broadcast_
from .neurons import is_spiking_neuron
from .optim import rebuild_optimizer
from .schedule import REGROW_DECAYS, SCHEDULES, regrow_at, sparsity_at
from .selection import MODES, Selection, select_channels

__all__ = ["SCAPruner"]

_STATE_FORMAT = "sca_plugin.SCAPruner/1"
# BasePruner arguments that keep their meaning here; the others (pruning_ratio_dict,
# iterative_steps, head pruning, ...) concern Torch-Pruning's own one-shot schedule
_PASSED_TO_TORCH_PRUNING = {"forward_fn", "output_transform", "customized_pruners", "unwrapped_parameters"}
_CONFIG_KEYS = ("pruning_ratio", "regrow_ratio", "global_pruning", "mode", "schedule",
                "ramp_updates", "min_channels", "round_to", "definition", "regrow_decay", "regrow_decay_updates")
# settings added after the first state-dict format: their value when a saved state lacks them
_CONFIG_DEFAULTS = {"regrow_decay": "constant", "regrow_decay_updates": None}


def _is_bn(m: nn.Module) -> bool:
    return isinstance(m, ops.TORCH_BATCHNORM)


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
        mode: ``"incremental"`` (default) or ``"rebuild"`` (reference code); see
            :mod:`sca_plugin.selection`.
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
        mode: str = "incremental",
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
        self._l1_bns = sorted({m for _, group in self.groups for m in group_members(group, _is_bn)
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
            raise ValueError("no prunable channel groups: every convolution is ignored or the model has none "
                             f"of the root module types {self.root_module_types}")
        for root, group in self.groups:
            name = self.module_names.get(root, repr(root))
            if isinstance(self.importance, SCAImportance) and not group_members(group, is_spiking_neuron):
                raise ValueError(
                    f"the channels of {name} reach no spiking neuron, so they have no SCA score; "
                    f"add {name} to ignored_layers or use another importance")
            if self.regrow_ratio > 0 and not any(
                    getattr(m, "weight", None) is not None for m in group_members(group, _is_bn)):
                raise ValueError(
                    f"the channels of {name} have no BatchNorm with a weight, but regrowth ranks masked channels "
                    f"by |dL/dgamma|; add a BatchNorm after {name}, ignore it, or use regrow_ratio=0")

    # ------------------------------------------------------------------ hooks
    def _install(self) -> None:
        if isinstance(self.importance, SCAImportance):
            self.importance.attach(self.model)
        if self.regrow_ratio > 0:
            bns = {m for _, group in self.groups for m in group_members(group, _is_bn) if m.weight is not None}
            for bn in sorted(bns, key=lambda m: self.module_names[m]):
                self._grad_hooks.append(bn.weight.register_hook(self._growth.hook_for(bn)))
        for i, keep in enumerate(self.masks):
            if keep is not None:
                self._apply_mask(i, keep)

    def _uninstall(self) -> None:
        if isinstance(self.importance, SCAImportance):
            self.importance.detach()
        for h in self._grad_hooks:
            h.remove()
        self._grad_hooks.clear()
        self._masker.remove()

    def _apply_mask(self, i: int, keep: torch.Tensor) -> None:
        for module, local, root in self._mask_targets[i]:
            n = _out_channels(module)
            module_keep = torch.ones(n, dtype=torch.bool)
            module_keep[torch.tensor(local)] = keep[torch.tensor(root)]
            device = next((p.device for p in module.parameters()), keep.device)
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
            if imp is None:
                raise RuntimeError(f"importance {type(self.importance).__name__} returned None for the group of "
                                   f"{self.module_names[root]}; ignore that layer or use another importance")
            scores.append(imp)
        growth = None
        if self.regrow_ratio > 0:
            mean_grads = self._growth.means()
            growth = []
            for (_, group), s in zip(self.groups, scores):
                g = group_channel_mean(group, mean_grads, _is_bn)
                growth.append(torch.zeros_like(s) if g is None else g)
        previous = None if self.masks[0] is None else self.masks
        sparsity = self.current_sparsity_target()
        regrow = self.current_regrow_ratio()
        selection = select_channels(scores, growth, previous, sparsity, regrow, self.global_pruning,
                                    self.min_channels, self.round_to, self.mode)
        for i, keep in enumerate(selection.keep):
            self.masks[i] = broadcast_(keep.clone())  # DDP: every process applies rank 0's masks
            self._apply_mask(i, self.masks[i])
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
        verify = self.verify_atol is not None
        dtypes = float_dtypes(model) if verify else {}
        if verify:
            # compare in float64: removing channels changes the summation order, and in float32 a
            # membrane potential within rounding of the threshold could flip a spike
            model.double()
            reference = eval_outputs(model, to_double(inputs), self.forward_fn)
        self._uninstall()
        saved = ModuleSnapshot(model, self.DG, self.neuron_pruner)
        try:
            for (root, _), keep in zip(self.groups, self.masks):
                idxs = torch.nonzero(~keep).flatten().tolist()
                if idxs:
                    pruning_fn = self.DG.get_pruner_of_module(root).prune_out_channels
                    group = self.DG.get_pruning_group(root, pruning_fn, idxs)
                    group.prune()
            functional.reset_net(model)
            if verify:
                diff = max((a - b).abs().max().item() for a, b in zip(reference, eval_outputs(model, to_double(inputs), self.forward_fn)))
                if not diff <= self.verify_atol:
                    raise RuntimeError(
                        f"the pruned model's outputs differ from the masked model's by {diff:.3g} "
                        f"(> verify_atol={self.verify_atol}); the model was restored. Please report this "
                        f"architecture; finalize with verify_atol=None to skip the check")
        except Exception:
            saved.restore()
            restore_dtypes(model, dtypes)
            self._install()
            raise
        restore_dtypes(model, dtypes)
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
                "regrow_decay": self.regrow_decay, "regrow_decay_updates": self.regrow_decay_updates}

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
        self.num_updates = int(state["num_updates"])
        self.num_steps = int(state["num_steps"])
        self.history = copy.deepcopy(state["history"])
        if isinstance(self.importance, SCAImportance):
            self.importance.recorder.load_state_dict(state["activity"], modules, device)
        self._growth.load_state_dict(state["growth"], modules, device)


def _param_shapes(module: nn.Module) -> Dict[str, tuple]:
    # by leaf name: a framework that re-hosts the parameters in a child (NNI's wrapper) changes nothing
    return {n.rsplit(".", 1)[-1]: tuple(p.shape) for n, p in module.named_parameters()}


def _out_channels(module: nn.Module) -> int:
    for attr in ("num_features", "out_channels", "out_features"):
        if hasattr(module, attr):
            return int(getattr(module, attr))
    raise TypeError(f"cannot mask the outputs of {type(module).__name__}")

"""SCA as an NNI 3.0 pruner: ``sca_plugin.nni.pruner.SCAPruner``.

A real ``nni.compression.base.compressor.Pruner``: NNI wraps the configured modules, keeps the
masks in its target spaces and trains through an ``Evaluator``. The SCA rule itself is not copied:

* the dependency graph (which layers share a channel) is traced once, before NNI wraps the model,
  with :func:`sca_plugin.graph.build_graph` (spiking neurons registered, time dimension repaired),
  the graph the Torch-Pruning core :class:`sca_plugin.SCAPruner` prunes on;
* activity statistics come from :class:`sca_plugin.activity.MembraneActivityRecorder` (hooks on the
  spiking neurons; only training forwards count);
* channel scores are :func:`sca_plugin.importance.group_channel_mean` over the neurons (activity)
  and BatchNorms (``|dL/dgamma|``) of each Torch-Pruning group;
* the prune-by-activity / regrow-by-gradient decision is :func:`sca_plugin.selection.select_channels`.

Pipeline (NNI's): ``generate_masks() = _collect_data -> _calculate_metrics -> _generate_sparsity``.
During ``compress()`` a trigger patched onto the evaluator's optimizer step regenerates and
applies the masks every ``interval_steps`` optimizer steps (at most ``total_times`` times).

Masking. Every layer of a configured convolution's Torch-Pruning group gets the same channel mask
(residual-coupled convolutions included; ``dependency_group_id`` is implied by the graph). The
BatchNorms of the group are added as internal config entries with targets ``weight`` and ``bias``;
their masks come from this pruner's own mask generation (NNI's BN-bias "align" step is never used).
``get_masks()`` / ``compress()`` return these parameter masks (conv/linear ``weight``/``bias``, BN
``weight``/``bias``), which remove exactly the channels a physical pruning removes.

During training the masks are enforced where the core enforces them: on the *outputs* of the
group's BatchNorms (and of conv/linear layers not followed only by such a BatchNorm), through
internal ``_output_0`` target spaces whose apply method is ``'sca_ste'`` (registered in NNI's
``pruning_apply_methods``: forward ``y * mask``, gradient passed straight through). The parameter
target spaces use ``'sca_defer'`` (mask kept, not multiplied in). Zeroing BN weight and bias is the
same forward function, but then a masked channel's conv filter gets no gradient, and zeroing the
filter makes the BN input constant so ``dL/dgamma`` (the regrowth signal) is exactly zero. With the
output STE the masked channels' conv filters and BN parameters keep training, and the selection
equals the Torch-Pruning core's update for update.
"""
from __future__ import annotations

import logging
import warnings
from collections import OrderedDict, defaultdict
from copy import deepcopy
from typing import Any, Dict, List, Literal, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from torch_pruning import ops

from nni.compression.base.apply_method import pruning_apply_methods
from nni.compression.base.compressor import Pruner
from nni.compression.base.config import default_config_schema, select_modules_by_config, trans_legacy_config_list
from nni.compression.base.setting import OUTPUT_PREFIX
from nni.compression.base.target_space import TargetType
from nni.compression.base.wrapper import ModuleWrapper
from nni.compression.utils.evaluator import Evaluator, Hook, TensorHook

from ..activity import DEFINITIONS, MembraneActivityRecorder
from ..graph import build_graph, reaches_output
from ..importance import group_channel_mean, group_members
from ..masking import StraightThroughMask, group_producers, is_batchnorm, mask_targets, out_channels, \
    output_channel_dim, parameter_entries, zero_channels
from ..regrowth import REGROW_SIGNALS, GradientMagnitudes
from ..neurons import is_spiking_neuron
from ..selection import MODES, select_channels

__all__ = ["SCAPruner", "STE_APPLY_METHOD", "DEFER_APPLY_METHOD", "evaluator_dummy_input"]

_logger = logging.getLogger(__name__)

STE_APPLY_METHOD = "sca_ste"
DEFER_APPLY_METHOD = "sca_defer"

_PRODUCER_TYPES = (ops.TORCH_CONV, ops.TORCH_LINEAR)
_ALLOWED_KEYS = {"op_types", "op_names", "op_names_re", "exclude_op_names", "exclude_op_types",
                 "exclude_op_names_re", "target_names", "sparse_ratio", "global_group_id",
                 "dependency_group_id", "granularity", "max_sparse_ratio"}


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


# ---------------------------------------------------------------------- helpers


def evaluator_dummy_input(evaluator: Optional[Evaluator]) -> Any:
    """The ``dummy_input`` the user gave the NNI evaluator (``TorchEvaluator(..., dummy_input=x)``,
    ``LightningEvaluator(..., dummy_input=x)``), or None.

    NNI's graph-based tools trace the model with it, so a pruner built as NNI users write it
    (no ``example_inputs``) traces its dependency graph with the same input. Only an explicitly
    given one counts: ``LightningEvaluator.get_dummy_input()`` otherwise falls back to a training
    batch, which usually holds the labels too and is not what the model takes."""
    if evaluator is None:
        return None
    if hasattr(evaluator, "_dummy_input"):  # LightningEvaluator keeps the user's value here
        return evaluator._dummy_input
    try:
        return evaluator.get_dummy_input()
    except NotImplementedError:  # an Evaluator subclass without a dummy input
        return None


def missing_example_inputs_message(pruner: str) -> str:
    """The error for a pruner built with neither ``example_inputs`` nor an evaluator ``dummy_input``."""
    return (f"{pruner} needs example inputs to trace the dependency graph (which layers share channels): give the "
            "evaluator a dummy_input (TorchEvaluator(training_func, optimizer, training_step, dummy_input=x)) or pass "
            "example_inputs=x, with x exactly as the model takes it")


class _RecorderHook(Hook):
    """An NNI ``Hook`` that attaches a :class:`MembraneActivityRecorder` to the model's neurons,
    so the evaluator removes it together with its other hooks."""

    class _Handle:
        def __init__(self, recorder: MembraneActivityRecorder) -> None:
            self.recorder = recorder

        def remove(self) -> None:
            self.recorder.detach()

    def __init__(self, model: nn.Module, recorder: MembraneActivityRecorder) -> None:
        super().__init__(model, "spiking_neurons", lambda buffer: None)
        self.recorder = recorder

    def _register(self, hook_func) -> Any:
        self.recorder.attach(self.target)
        return _RecorderHook._Handle(self.recorder)


class _Group:
    """One Torch-Pruning group that SCA prunes."""

    def __init__(self, root: nn.Module, group, producers: Dict[nn.Module, tuple], bns: Dict[nn.Module, tuple],
                 output_masked: set) -> None:
        self.root = root
        self.group = group
        self.size = len(group[0].idxs)
        self.producers = producers  # conv/linear whose out-channels are the group's: {module: (local, root)}
        self.bns = bns              # {bn: (local, root)}
        self.output_masked = output_masked  # layers whose outputs are masked during training (STE)
        self.parameters = parameter_entries(producers, bns)  # what a reset zeroes (masking.channel_parameters)
        self.configured: List[str] = []
        self.sparse_ratio: float = 0.0
        self.max_sparse_ratio: float = 1.0
        self.global_group_id = None
        self.rep: str = ""          # the configured module whose target space holds the sparse_ratio


# ---------------------------------------------------------------------- the pruner
class SCAPruner(Pruner):
    """Spiking Channel Activity pruning (Li et al., ICML 2024) for NNI 3.0.

    Args:
        model: a SpikingJelly network.
        config_list: NNI 3.0 config list. Each entry selects convolutions (or linear layers) with
            ``op_types``/``op_names``/``op_names_re`` (+ ``exclude_*``) and gives ``sparse_ratio``
            (fraction of channels masked, in [0, 1)); optional ``global_group_id`` (rank the
            channels of all modules with that id together, as in the paper), ``dependency_group_id``
            (accepted; the dependency graph decides coupling and must not be contradicted),
            ``target_names`` (subset of ``['weight', 'bias']``), ``granularity`` (``'default'`` or
            ``'out_channel'``), ``max_sparse_ratio`` (no group loses more than this fraction of its
            channels; default ``(1 + sparse_ratio) / 2``, as the core's ``max_pruning_ratio``). BatchNorms and spiking neurons are never configured: they are found
            from the graph.
        evaluator: an NNI ``Evaluator`` (e.g. ``TorchEvaluator``) that trains the model; required by
            ``compress()``.
        regrow_ratio: fraction ``q`` of channels regrown by ``|dL/dgamma|`` at each update
            (``q <= sparse_ratio`` of every config).
        interval_steps: optimizer steps between mask updates.
        total_times: how many mask updates at most (``'unlimited'`` by default; an AGP/Linear
            scheduled pruner sets it).
        example_inputs: inputs exactly as ``model`` takes them, to trace the dependency graph. Default:
            the evaluator's ``dummy_input`` (``TorchEvaluator(..., dummy_input=x)``), as NNI's tools use it.
        definition: SCA activity definition, ``'spike_plus_v'`` (reference code) or ``'membrane_l1'``.
        mode: ``'rebuild'`` (default, reference code) or ``'incremental'`` (see :mod:`sca_plugin.selection`).
        masking: ``'reset'`` (default), ``'reset-filters'`` or ``'mask'``, as for the core
            :class:`sca_plugin.SCAPruner`: at every update the masked channels' BatchNorm weight and
            bias (``'reset-filters'``: and conv filter rows) are zeroed, so their parameters cannot
            drift while the straight-through mask hides them; ``'mask'`` never resets. (The core's
            ``'soft'`` has no forward mask, which NNI's target spaces cannot express.)
        regrow_signal: ``'mean'`` (default) or ``'last'`` ``|dL/dgamma|`` since the last update.
        min_channels / round_to: floors of the kept channel count per group.
        l1: L1 penalty ``l1 * sign(W)`` added to conv-weight gradients before every optimizer step
            during ``compress()``; default 3e-5, as the core pruner and the reference code (0 disables).
        forward_fn: ``forward_fn(model, example_inputs)`` for models not called as ``model(x)``.

    Layers that ``op_types`` / ``op_names_re`` select but SCA cannot prune (channels that are the
    model's output or reach no spiking neuron, channels without a BatchNorm while ``regrow_ratio > 0``) are left
    dense, listed with the reason in :attr:`excluded` ``{name: reason}`` and in one warning, so NNI's
    quick-start ``[{'op_types': ['Linear', 'Conv2d'], 'exclude_op_names': [...], 'sparse_ratio': 0.5}]``
    runs; a layer named in ``op_names`` is an explicit request and raises instead.

    ``generate_masks()`` consumes the statistics gathered since the previous update and records
    the new channel selection (the next update starts from it in ``'incremental'`` mode).
    """

    def __init__(self, model: nn.Module, config_list: List[Dict], evaluator: Optional[Evaluator] = None,
                 regrow_ratio: float = 0.1, interval_steps: int = 100,
                 total_times: int | Literal["unlimited"] = "unlimited", example_inputs: Any = None, *,
                 definition: str = "spike_plus_v", mode: str = "rebuild", min_channels: int = 1,
                 round_to: Optional[int] = None, l1: float = 3e-5, forward_fn=None, masking: str = "reset",
                 regrow_signal: str = "mean",
                 existed_wrappers: Optional[Dict[str, ModuleWrapper]] = None):
        # ---- everything below is checked before the model is traced or wrapped
        if evaluator is not None and not isinstance(evaluator, Evaluator):
            raise TypeError(f"evaluator must be an nni.compression Evaluator (e.g. TorchEvaluator), got "
                            f"{type(evaluator).__name__}")
        if example_inputs is None:  # NNI's convention: the graph is traced with the evaluator's dummy_input
            example_inputs = evaluator_dummy_input(evaluator)
        self._validate_arguments(model, evaluator, regrow_ratio, interval_steps, total_times, example_inputs,
                                 definition, mode, min_channels, round_to, l1)
        if masking not in ("reset", "reset-filters", "mask"):
            raise ValueError(f"masking must be 'reset', 'reset-filters' or 'mask' for the NNI pruner, got {masking!r} "
                             "('soft' needs no forward mask: use sca_plugin.SCAPruner)")
        if regrow_signal not in REGROW_SIGNALS:
            raise ValueError(f"regrow_signal must be one of {REGROW_SIGNALS}, got {regrow_signal!r}")
        self.masking = masking
        self.regrow_signal = regrow_signal
        user_configs = self._validate_config_list(model, config_list, regrow_ratio)
        self.user_config_list = deepcopy(config_list)
        self.regrow_ratio = float(regrow_ratio)
        self.interval_steps = interval_steps
        self.total_times = total_times
        self.example_inputs = example_inputs
        self.definition = definition
        self.selection_mode = mode
        self.min_channels = min_channels
        self.round_to = round_to
        self.l1 = float(l1)

        # ---- the dependency graph, traced on the unwrapped model
        self.module_names: Dict[nn.Module, str] = {m: n for n, m in model.named_modules()}
        self._groups, self.excluded, user_configs = self._build_groups(model, example_inputs, forward_fn,
                                                                       user_configs)
        internal = self._internal_config_entries(user_configs)

        super().__init__(model, [cfg for cfg, _ in user_configs] + internal, evaluator, existed_wrappers)
        self._set_apply_methods()

        self.recorder = MembraneActivityRecorder(definition)
        self._growth = GradientMagnitudes()
        self._keep: List[Optional[torch.Tensor]] = [None] * len(self._groups)
        self._manual_hooks: List[Hook] = []
        self.num_updates = 0
        self.history: List[dict] = []
        if self.excluded:
            fix = "exclude them to silence this: " + ", ".join(
                f"config_list[{i}]['exclude_op_names'] = {names}" for i, names in self._exclusion_fix.items())
            if any("BatchNorm" in r for r in self.excluded.values()):
                fix += "; to prune the layers without BatchNorm, add one after them or use regrow_ratio=0 (no regrowth)"
            warnings.warn("SCAPruner leaves layers that config_list selects by type dense, because SCA cannot prune "
                          "them: " + "; ".join(f"{n} ({r})" for n, r in sorted(self.excluded.items())) + ". Fix: "
                          + fix, stacklevel=2)

    # ------------------------------------------------------------------ validation
    @staticmethod
    def _validate_arguments(model, evaluator, regrow_ratio, interval_steps, total_times, example_inputs,
                            definition, mode, min_channels, round_to, l1) -> None:
        if not isinstance(model, nn.Module):
            raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
        if any(hasattr(m, "_nni_wrapper") for m in model.modules()):
            raise ValueError("the model is already wrapped by another NNI compressor; unwrap it first "
                             "(compressor.unwrap_model()) or use SCAPruner.from_compressor")
        if example_inputs is None:
            raise ValueError(missing_example_inputs_message("SCAPruner"))
        if isinstance(regrow_ratio, bool) or not isinstance(regrow_ratio, (int, float)) or not 0.0 <= regrow_ratio < 1.0:
            raise ValueError(f"regrow_ratio must be in [0, 1), got {regrow_ratio!r}")
        if isinstance(interval_steps, bool) or not isinstance(interval_steps, int) or interval_steps < 1:
            raise ValueError(f"interval_steps must be a positive integer, got {interval_steps!r}")
        if total_times != "unlimited" and (isinstance(total_times, bool) or not isinstance(total_times, int)
                                           or total_times < 1):
            raise ValueError(f"total_times must be a positive integer or 'unlimited', got {total_times!r}")
        if definition not in DEFINITIONS:
            raise ValueError(f"definition must be one of {DEFINITIONS}, got {definition!r}")
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        for name, value, allow_none in (("min_channels", min_channels, False), ("round_to", round_to, True)):
            if value is None and allow_none:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, got {value!r}")
        if isinstance(l1, bool) or not isinstance(l1, (int, float)) or l1 < 0:
            raise ValueError(f"l1 must be a non-negative number, got {l1!r}")
        neurons = [m for m in model.modules() if is_spiking_neuron(m)]
        if not neurons:
            raise ValueError("the model has no spiking neurons (spikingjelly.activation_based.neuron): SCA scores "
                             "channels by membrane activity, so it prunes spiking networks only")
        MembraneActivityRecorder(definition).check_supported(neurons)

    def _validate_config_list(self, model: nn.Module, config_list, regrow_ratio) -> List[Tuple[dict, Dict[str, nn.Module]]]:
        if not isinstance(config_list, (list, tuple)) or not config_list:
            raise ValueError("config_list must be a non-empty list of dicts, e.g. "
                             "[{'op_types': ['Conv2d'], 'sparse_ratio': 0.5, 'global_group_id': 0}]")
        if not all(isinstance(c, dict) for c in config_list):
            raise ValueError("every config_list entry must be a dict")
        configs = trans_legacy_config_list(deepcopy(list(config_list)))
        schema = default_config_schema("pruning")
        out, seen = [], {}
        for i, config in enumerate(configs):
            where = f"config_list[{i}] ({config!r:.120})"
            if not any(k in config for k in ("op_types", "op_names", "op_names_re")):
                raise ValueError(f"{where}: select modules with 'op_types', 'op_names' or 'op_names_re'")
            unsupported = sorted(set(config) - _ALLOWED_KEYS)
            if unsupported:
                raise ValueError(f"{where}: SCAPruner does not support the keys {unsupported}; it uses "
                                 f"{sorted(_ALLOWED_KEYS)} ('sparse_threshold', 'min_sparse_ratio', "
                                 "'apply_method' and 'target_settings' have no meaning for SCA)")
            if "sparse_ratio" not in config:
                raise ValueError(f"{where}: missing 'sparse_ratio' (the fraction of channels to mask, in [0, 1))")
            ratio = config["sparse_ratio"]
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 <= ratio < 1.0:
                raise ValueError(f"{where}: sparse_ratio must be a number in [0, 1), got {ratio!r}")
            config["sparse_ratio"] = float(ratio)  # NNI's schema wants a float
            cap = config.setdefault("max_sparse_ratio", (1.0 + float(ratio)) / 2.0)
            if isinstance(cap, bool) or not isinstance(cap, (int, float)) or not ratio <= cap <= 1.0:
                raise ValueError(f"{where}: max_sparse_ratio must be in [sparse_ratio, 1], got {cap!r}")
            config["max_sparse_ratio"] = float(cap)
            if regrow_ratio > config["sparse_ratio"]:
                raise ValueError(
                    f"{where}: regrow_ratio ({regrow_ratio}) is larger than sparse_ratio ({ratio}): only masked "
                    "channels can be regrown, so use regrow_ratio <= sparse_ratio")
            targets = config.get("target_names")
            if targets is not None and (not targets or set(targets) - {"weight", "bias"}):
                raise ValueError(f"{where}: target_names must be a non-empty subset of ['weight', 'bias'], "
                                 f"got {targets!r}")
            if config.get("granularity", "default") not in ("default", "out_channel"):
                raise ValueError(f"{where}: SCA prunes whole output channels; granularity must be 'default' or "
                                 f"'out_channel', got {config['granularity']!r}")
            try:
                schema.validate(config)
            except Exception as e:  # schema.SchemaError
                raise ValueError(f"{where} is not a valid NNI pruning config: {e}") from e
            modules, _, _ = select_modules_by_config(model, config)
            if not modules:
                raise ValueError(f"{where} matches no module of the model (op_types are class names such as "
                                 f"'Conv2d'; op_names are names from model.named_modules())")
            bad = sorted(n for n, m in modules.items() if not isinstance(m, _PRODUCER_TYPES))
            if bad:
                raise ValueError(
                    f"{where} selects {bad[:5]}, which are not convolutions or linear layers: configure the "
                    "layers whose output channels are pruned; their BatchNorms and spiking neurons are found "
                    "from the dependency graph and masked with them")
            for name in modules:
                if name in seen:
                    raise ValueError(f"module {name!r} is selected by config_list[{seen[name]}] and config_list[{i}]; "
                                     "select each module once")
                seen[name] = i
            out.append((config, dict(sorted(modules.items()))))
        ratios: Dict[Any, float] = {}
        for config, _ in out:
            gid = config.get("global_group_id")
            if gid is not None and ratios.setdefault(gid, config["sparse_ratio"]) != config["sparse_ratio"]:
                raise ValueError(f"configs with global_group_id {gid!r} have different sparse_ratio values "
                                 f"({ratios[gid]} and {config['sparse_ratio']}); a global group has one target")
        return out

    # ------------------------------------------------------------------ graph
    def _build_groups(self, model, example_inputs, forward_fn, user_configs
                      ) -> Tuple[List[_Group], Dict[str, str], List[Tuple[dict, Dict[str, nn.Module]]]]:
        """The Torch-Pruning groups of the configured layers, the layers left out and the config
        entries without them.

        A layer SCA cannot prune (its channels are the model output, reach no spiking neuron, have no
        BatchNorm while ``regrow_ratio > 0``, or have no pruning group) raises a ValueError when
        ``op_names`` names it. Selected only by ``op_types`` / ``op_names_re`` (NNI's quick-start
        ``{'op_types': ['Linear', 'Conv2d'], ...}``), it is left out (dense, not wrapped): returned in
        ``excluded`` as ``{name: reason}``, and ``__init__`` warns once with the fix."""
        configured: Dict[nn.Module, Tuple[str, dict]] = {}
        named = set()  # listed by name in op_names: an explicit request, never left out silently
        for config, modules in user_configs:
            for name, module in modules.items():
                configured[module] = (name, config)
                if name in (config.get("op_names") or []):
                    named.add(name)
        root_types = [t for t in _PRODUCER_TYPES if any(isinstance(m, t) for m in configured)]
        DG, _ = build_graph(model, example_inputs, forward_fn)
        groups: List[_Group] = []
        covered: Dict[nn.Module, _Group] = {}
        excluded: Dict[str, str] = {}
        for group in DG.get_all_groups(ignored_layers=[], root_module_types=root_types):
            root = group[0].dep.target.module
            producers = group_producers(DG, group, _PRODUCER_TYPES)
            members = [m for m in producers if m in configured]
            if not members:
                continue
            output_masked = {m for m, _, _ in mask_targets(DG, group, self.module_names)}
            g = _Group(root, group, producers, group_members(group, is_batchnorm), output_masked)
            g.configured = [configured[m][0] for m in members]
            configs = [configured[m][1] for m in members]
            names = ", ".join(g.configured)
            if len({(c["sparse_ratio"], c["max_sparse_ratio"]) for c in configs}) > 1 \
                    or len({c.get("global_group_id") for c in configs}) > 1:
                raise ValueError(
                    f"{names} share their output channels (one Torch-Pruning dependency group: e.g. convolutions "
                    "added by a residual connection), so they are pruned together, but their configs give different "
                    "sparse_ratio, max_sparse_ratio or global_group_id values; configure them identically")
            g.sparse_ratio = configs[0]["sparse_ratio"]
            g.max_sparse_ratio = configs[0]["max_sparse_ratio"]
            g.global_group_id = configs[0].get("global_group_id")
            g.rep = g.configured[0]
            reason = error = None
            if reaches_output(DG, group):
                reason = "its channels are the model's output; pruning them would change the output's size"
                error = (f"the channels of {names} are the model's output (pruning them would change the output's "
                         "size, e.g. the number of classes); exclude them from config_list (exclude_op_names)")
            elif not group_members(group, is_spiking_neuron):
                reason = "its output channels reach no spiking neuron, so they have no SCA score"
                error = (f"the output channels of {names} reach no spiking neuron, so they have no SCA score "
                         "(e.g. the classifier); exclude them from config_list")
            elif self.regrow_ratio > 0 and not any(getattr(m, "weight", None) is not None for m in g.bns):
                reason = (f"its channels have no BatchNorm, and regrowth (regrow_ratio={self.regrow_ratio}) ranks "
                          "masked channels by |dL/dgamma|")
                error = (f"the channels of {names} have no BatchNorm with a weight, but regrowth ranks masked "
                         "channels by |dL/dgamma|; exclude them or use regrow_ratio=0")
            if reason is not None:
                if any(n in named for n in g.configured):
                    raise ValueError(error)
                excluded.update({n: reason for n in g.configured})
                continue
            for m in members:
                covered[m] = g
            groups.append(g)
        missing = sorted(configured[m][0] for m in configured
                         if m not in covered and configured[m][0] not in excluded)
        if any(n in named for n in missing):
            raise ValueError(f"the output channels of {[n for n in missing if n in named][:5]} cannot be pruned (the "
                             "dependency graph has no pruning group for them, e.g. they produce the model output); "
                             "exclude them")
        excluded.update({n: "the dependency graph has no pruning group for its output channels (e.g. it produces "
                            "the model output)" for n in missing})
        if not groups:
            raise ValueError("config_list selects no layer that SCA can prune: " + "; ".join(
                f"{n}: {r}" for n, r in sorted(excluded.items())[:5]) + ". Select the convolutions followed by "
                "BatchNorms and spiking neurons (e.g. {'op_types': ['Conv2d'], ...})"
                + (", or use regrow_ratio=0 for layers without BatchNorm"
                   if any("BatchNorm" in r for r in excluded.values()) else ""))
        kept_configs = []
        self._exclusion_fix: Dict[int, List[str]] = {}  # config_list index -> the exclude_op_names that silence it
        for i, (config, modules) in enumerate(user_configs):
            left_out = sorted(n for n in modules if n in excluded)
            if left_out:
                names = list(config.get("exclude_op_names") or [])
                config = {**config, "exclude_op_names": names + [n for n in left_out if n not in names]}
                self._exclusion_fix[i] = config["exclude_op_names"]
                modules = {n: m for n, m in modules.items() if n not in excluded}
                if not modules:
                    continue  # every layer of this entry is left out: NNI wraps nothing for it
            kept_configs.append((config, modules))
        self._check_dependency_groups(kept_configs, covered)
        return groups, excluded, kept_configs

    def _check_dependency_groups(self, user_configs, covered) -> None:
        by_id: Dict[Any, List[str]] = defaultdict(list)
        id_of: Dict[str, Any] = {}
        for config, modules in user_configs:
            if config.get("dependency_group_id") is None:
                continue
            for name in modules:
                by_id[config["dependency_group_id"]].append(name)
                id_of[name] = config["dependency_group_id"]
        modules_by_name = {n: m for m, n in self.module_names.items()}
        for dep_id, names in by_id.items():
            tp_groups = {id(covered[modules_by_name[n]]) for n in names}
            if len(tp_groups) > 1:
                raise ValueError(
                    f"dependency_group_id {dep_id!r} joins {sorted(names)[:6]}, whose output channels are not coupled "
                    "in the model's dependency graph; the graph decides which layers share a channel mask, so use one "
                    "dependency_group_id per coupled set (or leave it out)")
        for g in covered.values():
            ids = {id_of[n] for n in g.configured if n in id_of}
            if len(ids) > 1:
                raise ValueError(
                    f"{sorted(g.configured)} share their output channels in the dependency graph (they must get one "
                    f"channel mask) but the config gives them different dependency_group_id values {sorted(map(str, ids))}")

    def _internal_config_entries(self, user_configs) -> List[dict]:
        """Config entries for the layers the graph couples to the configured ones (no sparse_ratio:
        their masks come from the group's selection)."""
        configured = {n for _, modules in user_configs for n in modules}
        extra = OrderedDict()
        for g in self._groups:
            for m in list(g.producers) + list(g.bns):
                name = self.module_names[m]
                if name not in configured and name not in extra:
                    extra[name] = m
                    if not is_batchnorm(m):
                        _logger.info("%s is coupled to %s by the dependency graph and is masked with it", name, g.rep)
        entries = [{"op_names": [name], "target_names": ["weight", "bias"]} for name in extra]
        # the layers whose outputs carry the mask during training (the core's mask targets)
        outputs = sorted({self.module_names[m] for g in self._groups for m in g.output_masked})
        entries += [{"op_names": [name], "target_names": [OUTPUT_PREFIX],
                     "target_settings": {OUTPUT_PREFIX: {"apply_method": "mul"}}} for name in outputs]
        return entries

    def _set_apply_methods(self) -> None:
        for g in self._groups:
            for m in list(g.producers) + list(g.bns):
                for target_space in self._target_spaces.get(self.module_names[m], {}).values():
                    target_space.apply_method = (STE_APPLY_METHOD if target_space.type is TargetType.OUTPUT
                                                 else DEFER_APPLY_METHOD)

    # ------------------------------------------------------------------ statistics hooks
    def _bn_weight_space(self, bn: nn.Module):
        spaces = self._target_spaces.get(self.module_names[bn], {})
        return spaces.get("weight")

    def _make_hooks(self) -> List[Hook]:
        hooks: List[Hook] = [_RecorderHook(self.bound_model, self.recorder)]
        if self.regrow_ratio > 0:
            bns = {bn for g in self._groups for bn in g.bns if getattr(bn, "weight", None) is not None}
            for bn in sorted(bns, key=lambda m: self.module_names[m]):
                space = self._bn_weight_space(bn)
                # the trained leaf parameter lives on the NNI wrapper (target_space.target); the module's
                # `weight` is a buffer recomputed from it (and the mask) at every forward
                param = space.target if space is not None else bn.weight
                hooks.append(TensorHook(param, f"{self.module_names[bn]}.weight", self._growth_hook_factory(bn)))
        return hooks

    def _growth_hook_factory(self, bn: nn.Module):
        return lambda buffer: self._growth.hook_for(bn)

    def register_statistics_hooks(self) -> List[Hook]:
        """Start gathering SCA statistics without an evaluator (for a hand-written training loop that
        calls ``generate_masks()``/``update_masks()`` itself). ``compress()`` does this through the
        evaluator. Undo with :meth:`remove_statistics_hooks`."""
        if self._manual_hooks:
            raise RuntimeError("statistics hooks are already registered")
        self._manual_hooks = self._make_hooks()
        for hook in self._manual_hooks:
            hook.register()
        return self._manual_hooks

    def remove_statistics_hooks(self) -> None:
        for hook in self._manual_hooks:
            hook.remove()
        self._manual_hooks = []

    # ------------------------------------------------------------------ NNI pipeline
    def _collect_data(self) -> Dict[str, Dict[str, torch.Tensor]]:
        """``{neuron_name: {'_activity': mean activity per channel}, bn_name: {'_weight_grad': mean |dL/dgamma|}}``
        of the layers coupled to the configured modules, since the last update."""
        data: Dict[str, Dict[str, torch.Tensor]] = defaultdict(dict)
        missing = []
        for g in self._groups:
            neurons = group_members(g.group, is_spiking_neuron)
            found = False
            for n in neurons:
                score = self.recorder.score(n)
                if score is not None:
                    data[self.module_names[n]]["_activity"] = score.detach().clone()
                    found = True
            if not found:
                missing.append(g.rep)
        if missing:
            raise RuntimeError(
                f"no SCA activity statistics for {', '.join(missing[:5])}: masks need training-mode forward passes "
                "since the last update (compress() gathers them through the evaluator; in a hand-written loop call "
                "pruner.register_statistics_hooks() first)")
        if self.regrow_ratio > 0:
            if not self._growth:
                raise RuntimeError("no BatchNorm gradients were recorded for regrowth: call loss.backward() in "
                                   "training before the masks are generated")
            for bn, mean in self._growth.signal(self.regrow_signal).items():
                data[self.module_names[bn]]["_weight_grad"] = mean
        return dict(data)

    def _calculate_metrics(self, data: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        """``{configured_module: {'weight': SCA score per output channel, 'weight_growth': |dL/dgamma| per
        output channel}}``: the means over the neurons / BatchNorms of the module's Torch-Pruning group."""
        modules = {n: m for m, n in self.module_names.items()}
        activity = {modules[n]: d["_activity"] for n, d in data.items() if "_activity" in d}
        grads = {modules[n]: d["_weight_grad"] for n, d in data.items() if "_weight_grad" in d}
        metrics: Dict[str, Dict[str, torch.Tensor]] = {}
        for g in self._groups:
            score = group_channel_mean(g.group, activity, is_spiking_neuron)
            growth = group_channel_mean(g.group, grads, is_batchnorm) if self.regrow_ratio > 0 else None
            if growth is None:
                growth = torch.zeros_like(score)
            for name in g.configured:
                local, root = g.producers[modules[name]]
                metrics[name] = {"weight": _to_local(score, local, root, out_channels(modules[name])),
                                 "weight_growth": _to_local(growth, local, root, out_channels(modules[name]))}
        return metrics

    def _generate_sparsity(self, metrics: Dict[str, Dict[str, torch.Tensor]]) -> Dict[str, Dict[str, torch.Tensor]]:
        modules = {n: m for m, n in self.module_names.items()}
        scores, growth = [], []
        for g in self._groups:
            local, root = g.producers[modules[g.rep]]
            scores.append(_to_root(metrics[g.rep]["weight"], local, root, g.size))
            growth.append(_to_root(metrics[g.rep]["weight_growth"], local, root, g.size))
        # global ranking over modules sharing a global_group_id, else per module (per Torch-Pruning group)
        buckets: Dict[Any, List[int]] = OrderedDict()
        for i, g in enumerate(self._groups):
            key = ("global", g.global_group_id) if g.global_group_id is not None else ("single", i)
            buckets.setdefault(key, []).append(i)
        new_keep: List[Optional[torch.Tensor]] = [None] * len(self._groups)
        summary = {"pruned": 0, "regrown": 0, "sparse_ratio": {}}
        for key, idx in buckets.items():
            sparsity = self._current_sparse_ratio(self._groups[idx[0]])
            summary["sparse_ratio"][self._groups[idx[0]].rep] = sparsity
            previous = None if self._keep[idx[0]] is None else [self._keep[i] for i in idx]
            selection = select_channels([scores[i] for i in idx], [growth[i] for i in idx], previous, sparsity,
                                        self.regrow_ratio, key[0] == "global", self.min_channels, self.round_to,
                                        self.selection_mode, max(self._groups[i].max_sparse_ratio for i in idx))
            for i, keep in zip(idx, selection.keep):
                new_keep[i] = keep
            summary["pruned"] += int(sum(len(p) for p in selection.pruned))
            summary["regrown"] += int(sum(len(r) for r in selection.regrown))
        masks = self._masks_from_keep(new_keep)
        # commit: the next update starts from this selection and from fresh statistics
        self._keep = new_keep
        self.history.append({"update": self.num_updates, **summary,
                             "channels": {g.rep: int(k.sum()) for g, k in zip(self._groups, new_keep)}})
        self.num_updates += 1
        self.recorder.reset()
        self._growth.clear()
        return masks

    def update_masks(self, masks: Dict[str, Dict[str, torch.Tensor]]) -> None:
        """NNI's ``update_masks``, then :meth:`reset_masked_channels` (so a hand-written loop calling
        ``pruner.update_masks(pruner.generate_masks())`` resets as ``compress()`` does)."""
        super().update_masks(masks)
        self.reset_masked_channels()

    @torch.no_grad()
    def reset_masked_channels(self) -> int:
        """Zero the masked channels' BatchNorm weight and bias (``masking='reset-filters'``: and the
        filter rows) in the parameters NNI trains; :meth:`update_masks` calls it. Returns the slices zeroed."""
        if self.masking == "mask":
            return 0
        zeroed = 0
        for g, keep in zip(self._groups, self._keep):
            if keep is not None:
                zeroed += zero_channels(g.parameters, keep, self._parameter, filters=self.masking == "reset-filters")
        return zeroed

    def _parameter(self, module: nn.Module, name: str) -> torch.Tensor:
        """A layer's parameter ``name``, wherever NNI keeps it while the model is wrapped."""
        space = self._target_spaces.get(self.module_names[module], {}).get(name)
        return getattr(module, name) if space is None or space.target is None else space.target

    def _current_sparse_ratio(self, g: _Group) -> float:
        # read from the target space so that AGP/Linear scheduled pruners can change it
        space = self._target_spaces[g.rep].get("weight")
        ratio = space.sparse_ratio if space is not None else None
        return g.sparse_ratio if ratio is None else float(ratio)

    def _masks_from_keep(self, keep: Sequence[torch.Tensor]) -> Dict[str, Dict[str, torch.Tensor]]:
        masks: Dict[str, Dict[str, torch.Tensor]] = defaultdict(dict)
        for g, k in zip(self._groups, keep):
            for module, (local, root) in list(g.producers.items()) + list(g.bns.items()):
                name = self.module_names[module]
                channel = torch.ones(out_channels(module), dtype=torch.bool)
                channel[torch.tensor(local)] = k.cpu()[torch.tensor(root)]
                for target_name, space in self._target_spaces.get(name, {}).items():
                    if space.type is TargetType.OUTPUT:
                        masks[name][target_name] = channel.float()
                        continue
                    if space.target is None:
                        continue
                    target = space.target
                    dim = 1 if isinstance(module, ops.TORCH_CONV) and getattr(module, "transposed", False) else 0
                    shape = [1] * target.dim()
                    shape[dim] = -1
                    masks[name][target_name] = channel.to(device=target.device, dtype=target.dtype).view(shape) \
                        .expand_as(target).clone()
        return dict(masks)

    # ------------------------------------------------------------------ training-aware compression
    def _register_trigger(self, evaluator: Evaluator) -> None:
        self._current_step = 0
        self._remaining_times = self.total_times

        def optimizer_task():
            self._current_step += 1
            if self._current_step < self.interval_steps:
                return
            self._current_step = 0
            if self._remaining_times != "unlimited" and self._remaining_times <= 0:
                return
            self.update_masks(self.generate_masks())
            if self._remaining_times != "unlimited":
                self._remaining_times -= 1
            _logger.debug("%s generated masks, remaining times %s", type(self).__name__, self._remaining_times)

        before = [self._l1_task()] if self.l1 > 0 else []
        evaluator.patch_optimizer_step(before_step_tasks=before, after_step_tasks=[optimizer_task])

    def _l1_task(self):
        params = []
        for g in self._groups:
            for m in g.producers:
                space = self._target_spaces.get(self.module_names[m], {}).get("weight")
                if isinstance(m, ops.TORCH_CONV) and space is not None:
                    params.append(space.target)

        def task():
            with torch.no_grad():
                for p in params:
                    if p.grad is not None:
                        p.grad.add_(torch.sign(p), alpha=self.l1)
        return task

    def _fuse_preprocess(self, evaluator: Evaluator) -> None:
        if self._manual_hooks:
            self.remove_statistics_hooks()
        evaluator.register_hooks(self._make_hooks())
        self._register_trigger(evaluator)

    def _fuse_postprocess(self, evaluator: Evaluator) -> None:
        pass

    def _single_compress(self, max_steps: Optional[int], max_epochs: Optional[int]) -> None:
        if max_steps is None and max_epochs is None:
            raise ValueError("SCA learns the channel structure during training (prune by activity, regrow by "
                             "BN-scale gradient, every interval_steps optimizer steps): pass max_steps or max_epochs "
                             "to compress()")
        if self.evaluator is None:
            raise ValueError("SCAPruner.compress() trains the model through an NNI Evaluator (e.g. "
                             "nni.compression.TorchEvaluator); pass evaluator= when building the pruner")
        self._fusion_compress(max_steps, max_epochs)

    def compress(self, max_steps: Optional[int] = None, max_epochs: Optional[int] = None):
        """Train through the evaluator, updating the masks every ``interval_steps`` steps;
        returns ``(model, masks)`` as NNI's pruners do."""
        return super().compress(max_steps, max_epochs)

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
        return {g.rep: (g.size, g.size if k is None else int(k.sum())) for g, k in zip(self._groups, self._keep)}

    def coupled_modules(self) -> List[List[str]]:
        """The names of the layers masked together, one list per Torch-Pruning group."""
        return [[self.module_names[m] for m in list(g.producers) + list(g.bns)] for g in self._groups]

    def unwrap_model(self, apply_masks: bool = False) -> None:
        """NNI's ``unwrap_model``; with ``apply_masks=True`` the masks are multiplied into the parameters
        first, so the unwrapped dense model computes the masked function (otherwise use the masks with
        ``ModelSpeedup``, as with every NNI pruner)."""
        if apply_masks and self._is_wrapped:
            with torch.no_grad():
                for spaces in self._target_spaces.values():
                    for space in spaces.values():
                        if space.type is TargetType.PARAMETER and space.target is not None and space.mask is not None:
                            space.target.mul_(space.mask)
        super().unwrap_model()


def _to_local(values: torch.Tensor, local: List[int], root: List[int], n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    out[torch.tensor(local, device=values.device)] = values[torch.tensor(root, device=values.device)]
    return out


def _to_root(values: torch.Tensor, local: List[int], root: List[int], n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=values.dtype, device=values.device)
    out[torch.tensor(root, device=values.device)] = values[torch.tensor(local, device=values.device)]
    return out

"""Physical channel removal for NNI masks, through Torch-Pruning's dependency graph.

A drop-in for ``nni.compression.speedup.ModelSpeedup`` (whose tracer crashes on torch 2.x and does
not know SpikingJelly layers)::

    pruner = L1NormPruner(model, [{'op_types': ['Conv2d'], 'sparse_ratio': 0.5}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    ModelSpeedup(model, dummy_input, masks).speedup_model()
"""
from __future__ import annotations

import os
import pickle
import warnings
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
from nni.compression.base.setting import INPUT_PREFIX, OUTPUT_PREFIX
from torch_pruning import ops

from ..graph import build_graph, eval_outputs
from ..groups import feeds_only, first_layers, group_root, group_size, parameter_channel_dim
from ..masking import out_channels, output_channel_dim
from ..neurons import is_spiking_neuron
from ..rollback import RemovalTransaction, to_double

__all__ = ["ModelSpeedup", "load_masks"]

_FLOWS = "data still flows: coupled layers are not masked alike"
_CONSTANT = "non-zero constant where it is used (e.g. BN(0) makes the neuron fire)"

_T = ops.OPTYPE
# op types that only move channels around or act channel by channel without parameters
_CHANNEL_PRESERVING_OPS = {_T.ELEMENTWISE, _T.CONCAT, _T.SPLIT, _T.RESHAPE, _T.UNBIND, _T.EXPAND, _T.SLICE}
# NNI ModelSpeedup arguments accepted for drop-in compatibility (only map_location is used)
_IGNORED_NNI_ARGS = ("batch_dim", "batch_size", "customized_mask_updaters", "customized_replacers",
                     "graph_module", "garbage_collect_values", "logger")


def _output_parameters(module: nn.Module) -> List[Tuple[str, int]]:
    """``(parameter, output-channel dim)`` of the layers whose output channel is exactly zero when its
    weight slice and bias entry are (conv, linear, affine BatchNorm); [] for any other layer."""
    if isinstance(module, ops.TORCH_CONV):
        if getattr(module, "transposed", False) and module.groups != 1:
            return []
        params = [("weight", parameter_channel_dim(module))]
    elif isinstance(module, ops.TORCH_LINEAR) or (isinstance(module, ops.TORCH_BATCHNORM)
                                                  and getattr(module, "weight", None) is not None):
        params = [("weight", 0)]
    else:
        return []
    if getattr(module, "bias", None) is not None:
        params.append(("bias", 0))
    return params


def _output_channel_keep(name: str, module: nn.Module, target: str, keep: torch.Tensor) -> torch.Tensor:
    """Bool per output channel of ``module`` from NNI's output mask ``target`` (``keep``: bool,
    per channel ``[C]`` or in the output's shape, e.g. ``[B, C, H, W]``, ``[T, B, C, H, W]``)."""
    where = f"mask {name}.{target}"
    if not _output_parameters(module):
        raise ValueError(
            f"{where} masks the output of {type(module).__name__}, which ModelSpeedup cannot express as a parameter "
            "mask (it applies output masks of convolutions, linear layers and affine BatchNorms by zeroing the masked "
            "channels' weight and bias); mask the weight and bias of the layer producing those channels instead")
    if target != f"{OUTPUT_PREFIX}0":
        raise ValueError(f"{where}: {type(module).__name__} has one output; its output mask is '{OUTPUT_PREFIX}0'")
    n = out_channels(module)
    dim = 0 if keep.dim() == 1 else output_channel_dim(module) % keep.dim()
    if keep.dim() == 0 or keep.shape[dim] != n:
        raise ValueError(f"{where}: shape {tuple(keep.shape)} has no channel dimension of size {n} (expected [{n}] or "
                         f"the output's shape, channels in dim {output_channel_dim(module)})")
    flat = keep.movedim(dim, 0).reshape(n, -1)
    channels = flat.any(dim=1)
    partial = torch.nonzero(channels & ~flat.all(dim=1)).flatten().tolist()
    if partial:
        raise ValueError(f"{where} zeroes only some positions of channels {partial[:8]}; ModelSpeedup removes whole "
                         "channels, so an output mask must keep or zero each channel entirely")
    return channels


def _channel_dim(module: nn.Module, x: torch.Tensor) -> int:
    """Input-channel dimension of a conv ([..., C, *spatial]) or linear ([..., F]) input."""
    if isinstance(module, ops.TORCH_CONV):
        return x.dim() - len(module.kernel_size) - 1
    return x.dim() - 1


def _defaultdict_as_dict(default_factory: Any = None) -> dict:
    """Stands in for ``collections.defaultdict`` when a masks file is unpickled with ``weights_only``."""
    return {}


def load_masks(path: "str | os.PathLike", map_location: Any = None, weights_only: bool = True
               ) -> Dict[str, Dict[str, torch.Tensor]]:
    """Load a masks file written by ``torch.save(masks, path)``.

    NNI's ``get_masks()`` / ``compress()`` return a ``collections.defaultdict(dict)``, which
    ``torch.load(weights_only=True)`` refuses. With ``weights_only=True`` (the default) such a file is
    still loaded by the safe unpickler, reading ``defaultdict(dict)`` as a plain ``dict``: no other
    class or function is allowed. If the file holds anything else, the ValueError's first line says
    how to load it (``weights_only=False``, only for a file you trust) and the next names what torch
    refused. ``weights_only=False`` loads with plain pickle."""
    where = os.fspath(path)
    if not weights_only:
        return torch.load(path, map_location=map_location, weights_only=False)
    allow = getattr(torch.serialization, "safe_globals", None)  # torch >= 2.5
    try:
        if allow is None:
            return torch.load(path, map_location=map_location, weights_only=True)
        with allow([(_defaultdict_as_dict, "collections.defaultdict"), dict]):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        cause = next((ln for ln in lines if "WeightsUnpickler error" in ln or "Unsupported global" in ln),
                     lines[-1] if lines else type(e).__name__)
        raise ValueError(
            f"cannot load the masks file {where!r} safely; if you trust the file, pass weights_only=False: "
            f"ModelSpeedup(model, dummy_input, {where!r}, weights_only=False)\n"
            f"(it holds objects that torch.load(weights_only=True) does not allow: {cause})") from e


class ModelSpeedup:
    """Remove the channels that NNI masks prune, physically and exactly, in place.

    Same call shape as ``nni.compression.speedup.ModelSpeedup``:
    ``ModelSpeedup(model, dummy_input, masks).speedup_model()`` returns ``model`` with the pruned
    channels removed. ``masks`` is NNI's ``{module_name: {target_name: mask}}`` (1 keep, 0 prune,
    same shape as the target; ``None`` entries are skipped) for the UNWRAPPED model
    (``pruner.unwrap_model()`` first), or a file holding it. Works on SpikingJelly networks in both
    step modes and on plain networks.

    Activation masks. NNI's ``_output_*`` / ``_input_*`` targets mask a layer's output / input
    (``AGPPruner`` / ``LinearPruner`` around ``sca_plugin.nni.SCAPruner`` return the ``_output_0``
    masks that enforce its channel masks in training). They are applied, as NNI's own speed-up
    applies them: an ``_output_0`` mask of a conv, linear layer or affine BatchNorm (per channel,
    ``[C]``, or in the output's shape) is folded into the layer's weight and bias masks, since
    zeroing a channel's weight slice and bias entry zeroes exactly that output channel; it must keep
    or zero each channel entirely. An activation mask that masks nothing is skipped. Any other
    activation mask (an ``_input_*`` mask, the output of a neuron or pooling layer) cannot be
    expressed as parameter masks and raises a ValueError naming the fix (mask the producing
    layer's weight and bias).

    Removal rule. The masks are first applied to the parameters (``target *= mask``): that masked
    model is the reference. Torch-Pruning's dependency graph (spiking neurons registered, time
    dimension repaired) couples layers that share channels (residual adds, concatenations,
    pre-activation blocks) into groups. In a group, a channel is a *candidate* when the mask of any
    member removes it (conv/linear: weight-mask slice all zero; BatchNorm: weight mask 0). A
    candidate is removed only when both hold:

    1. it carries no data: every member that computes the channel from other channels (conv,
       linear, depthwise conv) has an all-zero masked weight slice for it, or feeds only
       BatchNorms of the group whose masked weight for it is 0. The channel is then a function of
       biases and BatchNorm constants only, e.g. ``BN(0) = beta - gamma * mean / sqrt(var + eps)``
       followed by the neuron (or ReLU);
    2. it is exactly zero wherever it is consumed: at the input of every conv/linear of the group
       that reads it, in a float64 eval-mode forward pass of the masked model on ``dummy_input``
       (the neurons run on the constant for the time steps of ``dummy_input``: an IF/LIF neuron
       fed a constant <= 0 never fires, a ReLU outputs 0). By 1 the value does not depend on the
       data, so this holds for every input with the same number of time steps (and size).

    Channels that reach the model output are never removed, nor channels in groups with members
    whose channel semantics are not analysed here (LayerNorm, GroupNorm, attention, ...), and one
    channel of a group is always kept. Candidates that are kept keep their masked (zeroed) weights,
    so the model still equals the masked model; ONE warning lists the layers concerned. The usual
    cause is NNI masking only conv weights: its BatchNorm then outputs a constant that makes the
    neuron fire, or coupled layers (residual branches) were masked differently. The fix is to mask
    the BatchNorm weight AND bias too (NNI never applies its BN bias masks), mask coupled layers
    alike, or use sca_plugin's pruner, whose masks include the BatchNorm bias.

    Finally the outputs of the masked model and of the pruned model on ``dummy_input`` are compared
    in float64 (``verify_atol``); on a mismatch every change is undone and a RuntimeError raised.
    The masks are validated before anything changes (ValueError).

    Args:
        model: the unwrapped model (changed in place).
        dummy_input: inputs exactly as ``model`` takes them (a tensor, or a tuple/dict of them), used
            to trace the graph, to find the zero channels and to verify the result.
        masks_or_file: NNI masks, or a path to a file written by ``torch.save(masks, path)`` (NNI's
            ``defaultdict`` included), loaded with :func:`load_masks`.
        map_location: as in ``torch.load``, for a masks file.
        weights_only: load a masks file with torch's safe unpickler (default; plain and NNI's
            ``defaultdict`` mask dicts load); ``False`` for a trusted file holding other objects.
        verify_atol: float64 tolerance of the final check; None skips it.
        forward_fn: ``forward_fn(model, dummy_input)`` when calling the model is not ``model(x)``.
        customized_pruners: extra Torch-Pruning pruners by module type (spiking neurons are built in).
        batch_dim, batch_size, ...: NNI ``ModelSpeedup`` arguments, accepted and ignored.

    After :meth:`speedup_model`, ``removed_channels`` maps each group's root layer to the channel
    indices removed and ``kept_candidates`` to ``{reason: channel indices}`` of masked channels
    that had to stay.
    """

    def __init__(self, model: nn.Module, dummy_input: Any, masks_or_file: Any, map_location=None, *,
                 verify_atol: Optional[float] = 1e-5, forward_fn=None, customized_pruners: Optional[dict] = None,
                 weights_only: bool = True, **nni_kwargs: Any) -> None:
        unknown = sorted(set(nni_kwargs) - set(_IGNORED_NNI_ARGS))
        if unknown:
            raise TypeError(f"ModelSpeedup got unexpected arguments {unknown}")
        if isinstance(masks_or_file, (str, os.PathLike)):
            masks_or_file = load_masks(masks_or_file, map_location, weights_only)
        if not isinstance(masks_or_file, dict):
            raise ValueError(f"masks must be a dict {{module_name: {{target_name: mask}}}} or a file, "
                             f"got {type(masks_or_file).__name__}")
        self.model = model
        self.dummy_input = dummy_input
        self.masks = masks_or_file
        self.verify_atol = verify_atol
        self.forward_fn = forward_fn
        self.customized_pruners = dict(customized_pruners or {})
        self.removed_channels: Dict[str, List[int]] = {}
        self.kept_candidates: Dict[str, Dict[str, List[int]]] = {}

    # ------------------------------------------------------------------ validation
    def _validate(self) -> Dict[nn.Module, Dict[str, torch.Tensor]]:
        """``{module: {parameter: bool keep mask}}`` from :attr:`masks`, with NNI's activation masks
        (``_output_*``, ``_input_*``) folded in; raises ValueError (nothing changed yet) on a bad mask."""
        modules = dict(self.model.named_modules())
        checked: Dict[nn.Module, Dict[str, torch.Tensor]] = {}
        activations: List[Tuple[str, nn.Module, str, torch.Tensor]] = []
        for name, targets in self.masks.items():
            if name not in modules:
                raise ValueError(f"mask for module {name!r}: the model has no such module (names are those of "
                                 f"model.named_modules() of the unwrapped model; call pruner.unwrap_model() first)")
            if not isinstance(targets, dict):
                raise ValueError(f"mask for module {name!r}: expected {{target_name: mask}}, got {type(targets).__name__}")
            module = modules[name]
            for target, mask in targets.items():
                if mask is None:
                    continue
                activation = isinstance(target, str) and target.startswith((OUTPUT_PREFIX, INPUT_PREFIX))
                tensor = getattr(module, target, None) if isinstance(target, str) and not activation else None
                if not activation and not isinstance(tensor, torch.Tensor):
                    raise ValueError(f"mask for module {name!r}: it has no tensor {target!r}")
                if not isinstance(mask, torch.Tensor):
                    raise ValueError(f"mask {name}.{target}: expected a tensor, got {type(mask).__name__}")
                if not activation and tuple(mask.shape) != tuple(tensor.shape):
                    raise ValueError(f"mask {name}.{target}: shape {tuple(mask.shape)} does not match the "
                                     f"{target}'s shape {tuple(tensor.shape)}")
                m = mask.detach()
                if m.is_floating_point() and not torch.isfinite(m).all():
                    raise ValueError(f"mask {name}.{target}: holds non-finite values")
                if not ((m == 0) | (m == 1)).all():
                    raise ValueError(f"mask {name}.{target}: values must be 0 (pruned) or 1 (kept)")
                if activation:
                    activations.append((name, module, target, (m != 0).cpu()))
                else:
                    checked.setdefault(module, {})[target] = (m != 0).cpu()
        # after all parameter masks, so that a layer's output mask combines with its weight/bias masks
        for name, module, target, keep in activations:
            if bool(keep.all()):
                continue  # masks nothing (e.g. SCA's training-time output mask of a group that keeps every channel)
            if target.startswith(INPUT_PREFIX):
                raise ValueError(
                    f"mask {name}.{target} masks an input of {name}, which ModelSpeedup cannot remove: it removes "
                    "channels by the masks of the layers that produce them; mask the weight and bias of the layer "
                    "producing those channels instead")
            channels = _output_channel_keep(name, module, target, keep)
            for param, dim in _output_parameters(module):
                t = getattr(module, param)
                shape = [1] * t.dim()
                shape[dim] = -1
                k = channels.view(shape).expand(t.shape)
                targets = checked.setdefault(module, {})
                targets[param] = targets[param] & k if param in targets else k.clone()
        return checked

    # ------------------------------------------------------------------ helpers
    def _build_graph(self):
        return build_graph(self.model, self.dummy_input, self.forward_fn, self.customized_pruners)

    @staticmethod
    def _removed_by_masks(module: nn.Module, masks: Dict[str, torch.Tensor]) -> Optional[torch.Tensor]:
        """Bool per output channel: removed by this module's masks (None: no weight mask)."""
        w = masks.get("weight")
        if w is None:
            return None
        if w.dim() == 1:
            return ~w
        return ~w.flatten(1).any(dim=1)

    # ------------------------------------------------------------------ main
    def speedup_model(self) -> nn.Module:
        model = self.model
        masks = self._validate()
        names = {m: n for n, m in model.named_modules()}
        DG, neuron_pruner = self._build_graph()

        with RemovalTransaction(model, DG, neuron_pruner, inputs=self.dummy_input, forward_fn=self.forward_fn,
                                verify_atol=self.verify_atol) as removal:
            model.double()  # masks are applied and input channels found in float64 even when not verifying
            for module, targets in masks.items():
                for target, keep in targets.items():
                    t = getattr(module, target)
                    t.data = t.data * keep.to(device=t.device, dtype=t.dtype)

            # one forward of the masked model: the reference outputs, and which input channels of
            # every conv/linear are non-zero anywhere (batch, time, space)
            nonzero: Dict[nn.Module, torch.Tensor] = {}

            def record(mod, args):
                x = args[0] if args else None
                if not isinstance(x, torch.Tensor) or x.dim() < 1:
                    return
                d = _channel_dim(mod, x)
                nz = (x.detach() != 0).movedim(d, 0).reshape(x.shape[d], -1).any(dim=1).cpu()
                nonzero[mod] = nz if mod not in nonzero or nonzero[mod].shape != nz.shape else nonzero[mod] | nz

            hooks = [m.register_forward_pre_hook(record) for m in model.modules()
                     if isinstance(m, (ops.TORCH_CONV, ops.TORCH_LINEAR))]
            try:
                if removal.verifying:
                    removal.record_reference()
                else:
                    eval_outputs(model, to_double(self.dummy_input), self.forward_fn)
            finally:
                for h in hooks:
                    h.remove()

            plan, constant_layers, coupled_layers = self._plan(DG, masks, nonzero, names)
            for root, idxs in plan:
                pruner = DG.get_pruner_of_module(root)
                DG.get_pruning_group(root, pruner.prune_out_channels, idxs).prune()
            removal.verify()
        self._warn(constant_layers, coupled_layers)
        return model

    def _plan(self, DG, masks, nonzero, names):
        """Channels to remove per group root, and the layers whose masked channels must stay."""
        self.removed_channels, self.kept_candidates = {}, {}
        plan: List[Tuple[nn.Module, List[int]]] = []
        constant_layers: List[str] = []
        coupled_layers: List[str] = []
        for group in DG.get_all_groups(root_module_types=(ops.TORCH_CONV, ops.TORCH_LINEAR)):
            root = group_root(group)
            root_name = names.get(root, repr(root))
            items = self._group_items(DG, group)
            candidate = self._masked_channels(items, masks, group_size(group))
            if not candidate.any():
                continue
            reason = self._unanalysed(DG, items, names)
            if reason is not None:
                self.kept_candidates[root_name] = {reason: torch.nonzero(candidate).flatten().tolist()}
                continue
            data_free, zero_used = self._removal_conditions(DG, group, items, nonzero, names)
            removable = candidate & data_free & zero_used
            if bool(removable.all()):
                removable[torch.nonzero(removable).flatten()[0]] = False  # keep one channel
            kept = candidate & ~removable
            flowing, constant = kept & ~data_free, kept & data_free
            reasons = {}
            if flowing.any():
                reasons[_FLOWS] = torch.nonzero(flowing).flatten().tolist()
                coupled_layers.append(root_name)
            if constant.any():
                reasons[_CONSTANT] = torch.nonzero(constant).flatten().tolist()
                constant_layers.append(root_name)
            if reasons:
                self.kept_candidates[root_name] = reasons
            idxs = torch.nonzero(removable).flatten().tolist()
            if idxs:
                self.removed_channels[root_name] = idxs
                plan.append((root, idxs))
        return plan, constant_layers, coupled_layers

    @staticmethod
    def _group_items(DG, group) -> list:
        """``(module, node type, is_out, is_in, local idxs, root idxs)`` of every member of ``group``."""
        items = []
        for item in group:
            dep = item.dep
            module = dep.target.module
            node_type = DG.module2node[module].type if module in DG.module2node else None
            items.append((module, node_type, DG.is_out_channel_pruning_fn(dep.handler),
                          DG.is_in_channel_pruning_fn(dep.handler), list(item.idxs), list(item.root_idxs)))
        return items

    def _masked_channels(self, items: list, masks, n: int) -> torch.Tensor:
        """The group's channels (root indices) whose producers' or BatchNorms' masks remove them."""
        candidate = torch.zeros(n, dtype=torch.bool)
        for module, node_type, is_out, is_in, local, rootidx in items:
            if module not in masks:
                continue
            mixes = isinstance(module, (ops.TORCH_CONV, ops.TORCH_LINEAR))
            producer = mixes and ((is_out and not is_in) or node_type == _T.DEPTHWISE_CONV)
            if not (producer or isinstance(module, ops.TORCH_BATCHNORM)):
                continue  # only its input channels belong to the group
            removed = self._removed_by_masks(module, masks[module])
            if removed is None:
                continue
            for l, r in zip(local, rootidx):
                if l < removed.shape[0] and removed[l]:
                    candidate[r] = True
        return candidate

    @staticmethod
    def _unanalysed(DG, items: list, names) -> Optional[str]:
        """Why the group's channels cannot be removed safely (a member this analysis does not
        cover, or the model's output), or None."""
        for module, node_type, is_out, *_ in items:
            node = DG.module2node.get(module)
            last = is_out and node is not None and not node.outputs  # its output channels are the model's
            if node_type == _T.OUTPUT or isinstance(module, ops._OutputOp) or last:
                return "reaches the model output"
            if module in names and not (
                    isinstance(module, (ops.TORCH_CONV, ops.TORCH_LINEAR, ops.TORCH_BATCHNORM))
                    or is_spiking_neuron(module) or node_type == _T.PRELU
                    # parameter-free layers traced as element-wise (nn.ReLU, nn.Dropout, pooling ...)
                    or (node_type in _CHANNEL_PRESERVING_OPS and next(module.parameters(), None) is None)):
                return f"coupled with {type(module).__name__} ({names[module]}), which is not analysed"
            if module not in names and node_type not in _CHANNEL_PRESERVING_OPS:
                return f"coupled with an operation of type {node_type!r}, which is not analysed"
        return None

    def _removal_conditions(self, DG, group, items: list, nonzero, names) -> Tuple[torch.Tensor, torch.Tensor]:
        """Per root channel: (1) computed from no data (all-zero filters, or BatchNorms with gamma 0
        after them), (2) read as zeros by every consumer in the calibration forward."""
        n = group_size(group)
        data_free = torch.ones(n, dtype=torch.bool)
        zero_used = torch.ones(n, dtype=torch.bool)
        bns = {m for m, *_ in items if isinstance(m, ops.TORCH_BATCHNORM)}
        for module, node_type, is_out, is_in, local, rootidx in items:
            if not isinstance(module, (ops.TORCH_CONV, ops.TORCH_LINEAR)):
                continue
            if (is_out and not is_in) or node_type == _T.DEPTHWISE_CONV:  # computes the channel from others
                w = module.weight.detach().flatten(1) != 0
                direct_bns = [m for m in first_layers(DG, module, names) if m in bns] \
                    if feeds_only(DG, module, bns, names) else []
                for l, r in zip(local, rootidx):
                    free = not bool(w[l].any())
                    if not free and direct_bns:
                        # BN with gamma = 0 outputs its (data-free) bias whatever it is fed
                        free = all(self._bn_weight_zero(b, group, r) for b in direct_bns)
                    if not free:
                        data_free[r] = False
            elif is_in and not is_out:  # reads the channel
                seen = nonzero.get(module)
                for l, r in zip(local, rootidx):
                    if seen is None or l >= seen.shape[0] or bool(seen[l]):
                        zero_used[r] = False
        return data_free, zero_used

    @staticmethod
    def _bn_weight_zero(bn, group, r) -> bool:
        if getattr(bn, "weight", None) is None:
            return False
        for item in group:
            if item.dep.target.module is bn:
                for l, rr in zip(item.idxs, item.root_idxs):
                    if rr == r:
                        return bool(bn.weight.detach()[l] == 0)
        return False

    def _warn(self, constant_layers: List[str], coupled_layers: List[str]) -> None:
        if not constant_layers and not coupled_layers:
            return
        parts = []
        if constant_layers:
            parts.append(
                f"in the channel groups of {', '.join(constant_layers)} some masked channels were kept: their conv "
                "weights are masked but the BatchNorm after them is not, so BN(0) = beta - gamma*mean/sqrt(var+eps) "
                "is a constant that still reaches the next layer (the neuron fires on it / ReLU passes it)")
        if coupled_layers:
            parts.append(
                f"in the channel groups of {', '.join(coupled_layers)} some masked channels were kept because layers "
                "that share them (residual branches, concatenations) are not masked alike, so data still flows")
        warnings.warn(
            "ModelSpeedup kept masked channels (their weights stay zeroed, the model equals the masked model): "
            + "; ".join(parts) + ". Fix: mask the BatchNorm weight AND bias too (NNI never applies its BN bias "
            "masks), mask coupled layers alike (NNI dependency-aware config), or use sca_plugin's pruner, whose "
            "masks include the BatchNorm bias.", stacklevel=3)

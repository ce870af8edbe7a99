"""NNI 3.0's built-in channel pruners (L1Norm, FPGM, Slim, Taylor) on spiking networks, with the
pruned channels removed physically by :class:`sca_plugin.nni.ModelSpeedup`.

What a user of NNI would write by hand, with the two steps NNI leaves to them on an SNN done here:

1. the config list: one entry per Torch-Pruning dependency group (the graph, with spiking neurons
   registered and the time dimension repaired, finds the convolutions that share channels through
   residual adds), with ``dependency_group_id`` on coupled layers so that NNI gives them one mask,
   and ``global_group_id`` for network-wide ranking;
2. the masks of the BatchNorms that follow a pruned convolution: NNI masks only the layers in the
   config and never applies BatchNorm bias masks, so a "pruned" channel would still output the
   constant BN(0) through its neuron and could not be removed. Every conv and BatchNorm of a group
   gets the group's channel mask (weight and bias) before the speed-up. This drops that constant,
   as physical removal does; the fine-tuning that follows one-shot pruning trains with it gone.

Used by ``sca-prune train --method nni-l1norm|nni-fpgm|nni-slim|nni-taylor`` and by the quality
benchmark's NNI rows.
"""
from __future__ import annotations

from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
from torch_pruning import ops

from ..graph import build_graph
from ..groups import group_batchnorms, group_producers, group_size
from ..selection import pruned_count

__all__ = ["NNI_BUILTIN_PRUNERS", "NNIBuiltinPruning", "ROUNDINGS"]

#: how many channels a group loses (:class:`NNIBuiltinPruning` ``rounding``)
ROUNDINGS = ("down", "nearest")

#: short name -> (NNI class name, needs an evaluator and training steps)
NNI_BUILTIN_PRUNERS: Dict[str, tuple] = {
    "l1norm": ("L1NormPruner", False),
    "fpgm": ("FPGMPruner", False),
    "slim": ("SlimPruner", True),
    "taylor": ("TaylorPruner", True),
}


class _Group:
    def __init__(self, convs: Dict[str, tuple], bns: Dict[str, tuple], size: int) -> None:
        self.convs = convs  # {name: (local idxs, root idxs)} of the convs producing the channels
        self.bns = bns      # {name: (local idxs, root idxs)} of the BatchNorms on them (with a weight)
        self.size = size


class NNIBuiltinPruning:
    """One-shot channel pruning of a spiking network with an NNI built-in pruner.

    Args:
        model: the network (changed in place by :meth:`prune`).
        example_inputs: inputs exactly as ``model`` takes them (graph tracing and the speed-up check).
        pruner: ``"l1norm"``, ``"fpgm"``, ``"slim"`` (scores the BatchNorm scales) or ``"taylor"``.
        sparse_ratio: fraction of the channels of every group (or of the network with
            ``global_ranking``) that is removed, in (0, 1).
        ignored_layers: convolutions whose output channels stay (the classifier is never in a group:
            only convolutions' output channels are pruned).
        global_ranking: rank all groups together (NNI ``global_group_id``) instead of per group.
        rounding: how many channels a group of ``n`` loses: ``"down"`` (NNI's own ``int(n *
            sparse_ratio)``) or ``"nearest"`` (``round(n * sparse_ratio)``, the count sca_plugin's
            per-layer selection and so SCA and the Torch-Pruning rows prune; each group's config entry
            then gets the ratio that makes NNI prune exactly that many). Per group only: with
            ``global_ranking`` NNI counts weights, not channels. At 0.8 on 8 / 16 / 32 channels NNI
            keeps 2 / 4 / 7, ``"nearest"`` 2 / 3 / 6.
        regular_scale: SlimPruner's penalty on its scaling factors.
        forward_fn: ``forward_fn(model, example_inputs)`` when calling the model is not ``model(x)``.

    :attr:`config_list` is the NNI config list used; :meth:`prune` returns the complete masks.
    """

    def __init__(self, model: nn.Module, example_inputs: Any, pruner: str, sparse_ratio: float, *,
                 ignored_layers: Sequence[nn.Module] = (), global_ranking: bool = False, regular_scale: float = 1.0,
                 forward_fn: Optional[Callable] = None, rounding: str = "down") -> None:
        if pruner not in NNI_BUILTIN_PRUNERS:
            raise ValueError(f"unknown NNI pruner {pruner!r}; use one of {', '.join(NNI_BUILTIN_PRUNERS)}")
        if not isinstance(sparse_ratio, (int, float)) or not 0.0 < sparse_ratio < 1.0:
            raise ValueError(f"sparse_ratio must be in (0, 1), got {sparse_ratio!r}")
        if rounding not in ROUNDINGS:
            raise ValueError(f"unknown rounding {rounding!r}; use one of {', '.join(ROUNDINGS)}")
        if rounding == "nearest" and global_ranking:
            raise ValueError("rounding='nearest' sets the channels each group loses, but with global_ranking NNI "
                             "ranks all groups together by weights: use rounding='down' or global_ranking=False")
        self.model = model
        self.example_inputs = example_inputs
        self.pruner_name = pruner
        self.sparse_ratio = float(sparse_ratio)
        self.global_ranking = global_ranking
        self.rounding = rounding
        self.regular_scale = regular_scale
        self.forward_fn = forward_fn
        self.names = {m: n for n, m in model.named_modules()}
        self.groups = self._groups(list(ignored_layers))
        self.config_list = self._config_list()
        self.masks: Optional[Dict[str, Dict[str, torch.Tensor]]] = None
        self.speedup = None

    # ------------------------------------------------------------------ groups and config
    def _groups(self, ignored: List[nn.Module]) -> List[_Group]:
        DG, _ = build_graph(self.model, self.example_inputs, self.forward_fn)
        groups = []
        for group in DG.get_all_groups(ignored_layers=ignored, root_module_types=[ops.TORCH_CONV]):
            convs = {self.names[m]: pair for m, pair in group_producers(DG, group, (ops.TORCH_CONV,)).items()}
            bns = {self.names[m]: pair for m, pair in group_batchnorms(group, with_weight=True).items()}
            if convs:
                groups.append(_Group(convs, bns, group_size(group)))
        if not groups:
            raise ValueError("no prunable convolution: every convolution is ignored or the model has none")
        if self.pruner_name == "slim":
            missing = [sorted(g.convs) for g in groups if not g.bns]
            if missing:
                raise ValueError(f"SlimPruner scores BatchNorm scales, but the channels of {missing[0]} have no "
                                 "BatchNorm; ignore those convolutions or use another pruner")
        return groups

    def _config_list(self) -> List[dict]:
        config = []
        for i, g in enumerate(self.groups):
            names = sorted(g.bns if self.pruner_name == "slim" else g.convs)
            entry: Dict[str, Any] = {"op_names": names, "sparse_ratio": self._group_ratio(g.size)}
            if len(names) > 1:
                entry["dependency_group_id"] = i
            if self.global_ranking:
                entry["global_group_id"] = 0
            config.append(entry)
        return config

    def _group_ratio(self, size: int) -> float:
        """The ``sparse_ratio`` of a group's entry: the ratio asked for, or (``rounding="nearest"``)
        the ratio NNI's ``int(size * ratio)`` turns into exactly :func:`~sca_plugin.selection.pruned_count`
        channels (half a channel above it, so float rounding cannot change the count)."""
        if self.rounding == "down":
            return self.sparse_ratio
        k = min(pruned_count(size, self.sparse_ratio), size - 1)
        return (k + 0.5) / size

    # ------------------------------------------------------------------ pruning
    def compute_masks(self, evaluator=None, training_steps: Optional[int] = None) -> Dict[str, Dict[str, torch.Tensor]]:
        """Run the NNI pruner and return masks of every conv and BatchNorm of every group (weight
        and bias); the model is left unwrapped and unmasked (Slim and Taylor train it for
        ``training_steps`` steps through ``evaluator``, as NNI does)."""
        import nni.compression.pruning as nni_pruning

        cls_name, needs_data = NNI_BUILTIN_PRUNERS[self.pruner_name]
        cls = getattr(nni_pruning, cls_name)
        if needs_data:
            if evaluator is None or not isinstance(training_steps, int) or training_steps < 1:
                raise ValueError(f"{cls_name} needs an NNI evaluator and training_steps >= 1 "
                                 f"(got {type(evaluator).__name__}, {training_steps!r})")
            kwargs = {"regular_scale": self.regular_scale} if self.pruner_name == "slim" else {}
            pruner = cls(self.model, self.config_list, evaluator, training_steps=training_steps, **kwargs)
        else:
            pruner = cls(self.model, self.config_list)
        try:
            _, nni_masks = pruner.compress()
        finally:
            pruner.unwrap_model()
        return self._complete(nni_masks)

    def _complete(self, nni_masks) -> Dict[str, Dict[str, torch.Tensor]]:
        modules = dict(self.model.named_modules())
        masks: Dict[str, Dict[str, torch.Tensor]] = defaultdict(dict)
        for g in self.groups:
            rep_name, (local, root) = next(iter(sorted((g.bns if self.pruner_name == "slim" else g.convs).items())))
            weight_mask = (nni_masks.get(rep_name) or {}).get("weight")
            pruned = torch.zeros(g.size, dtype=torch.bool)
            if weight_mask is not None:
                gone = ~(weight_mask.detach().cpu() != 0).reshape(weight_mask.shape[0], -1).any(dim=1)
                pruned[torch.tensor(root)] = gone[torch.tensor(local)]
            for name, (local, root) in list(g.convs.items()) + list(g.bns.items()):
                module = modules[name]
                keep = torch.ones(module.weight.shape[0], dtype=torch.bool)
                keep[torch.tensor(local)] = ~pruned[torch.tensor(root)]
                for target in ("weight", "bias"):
                    t = getattr(module, target, None)
                    if t is None:
                        continue
                    shape = [-1] + [1] * (t.dim() - 1)
                    masks[name][target] = keep.to(device=t.device, dtype=t.dtype).view(shape).expand_as(t).clone()
        return dict(masks)

    def prune(self, evaluator=None, training_steps: Optional[int] = None) -> Dict[str, Dict[str, torch.Tensor]]:
        """:meth:`compute_masks`, then remove the masked channels physically (float64-checked, rolled
        back on failure); returns the masks (also in :attr:`masks`, e.g. to rebuild the structure
        with ``ModelSpeedup(fresh_model, example_inputs, masks).speedup_model()``). The speed-up
        (its ``removed_channels`` and ``kept_candidates``) is kept in :attr:`speedup`."""
        from .speedup import ModelSpeedup

        masks = self.compute_masks(evaluator, training_steps)
        speedup = ModelSpeedup(self.model, self.example_inputs, masks, forward_fn=self.forward_fn)
        speedup.speedup_model()
        self.masks, self.speedup = masks, speedup
        return masks

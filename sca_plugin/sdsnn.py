"""SD-SNN: adaptive structural development with pruning and regeneration (Han, Zhao, Zeng, Pan,
arXiv 2211.12219), as Torch-Pruning components next to SCA.

Three mechanisms act once per epoch (:meth:`SDSNNPruner.update_masks`), on every prunable layer
(the convolutions computing a Torch-Pruning group's channels; residual-coupled layers are one
group and are pruned together):

1. dendritic-spine synaptic constraint: every synapse (weight element) has a range
   ``[r-, r+]``, set after the first epoch to ``+-max(W)`` of its layer. A range end widens by the
   mean overshoot when the weight has stayed beyond it for ``N`` consecutive epochs; both ends
   shrink by ``0.75`` when ``|w|`` has decreased for ``N`` consecutive epochs. From epoch ``N + 1``
   on, weights are clipped into their ranges;
2. neuronal (channel) pruning, from epoch ``2N + 1`` on: a channel's score is the sum over its
   surviving incoming synapses of the min-max normalised range width ``r+ + |r-|``; the lowest
   ``floor(C * P / 100)`` channels of a group lose all their incoming synapses. The cumulative rate
   ``P`` adapts (neurotrophic hypothesis): ``P += exp(-(e - 2N - 1) / 5) * alive_l / alive_next``
   for convolutions, ``P += alpha(e) * alive / 10`` for fully connected layers, where "alive"
   counts channels with at least ``dead_synapses`` surviving synapses;
3. synaptic regeneration, from epoch ``2N + 1`` on, before pruning: a masked kernel (3x3 slice of
   a conv weight; a single weight for FC layers) whose signed sum has stayed above the ``q``-th
   percentile of its layer for more than ``N`` consecutive epochs is restored, with the value
   training gave it; ``q = min(65 + 1.1^(e - 2N - 1), regen_cap)`` rises, so regeneration fades
   out (completely with ``regen_cap=100``; the public code's 99 leaves a trickle) and the
   structure settles.

Weights are not gradient-masked: masked synapses keep training and are re-zeroed at every update
(as in the public code), which is what lets regeneration see trained values. A channel is pruned
while it has no surviving incoming synapse; its outputs (BatchNorm included) are masked exactly as
SCA masks them, so the masked model equals the finalized one. ``finalize()`` zeroes the masked
synapses inside kept channels and removes the pruned channels through the dependency graph;
:meth:`SDSNNPruner.connectivity` reports the fraction of synapses kept.

Epoch constants follow the public code for ``N = 18`` (its 300-600-epoch runs) and scale with
``N`` for short runs: the rate decay constant ``5 * N / 18`` epochs, the percentile exponent
``(e - 2N - 1) * 18 / N``. Differences from the public code (``docs/sdsnn-public-code.md``): the
range update applies to every layer (its CIFAR scripts update only the last layer through an
indentation slip: ``range_layers="last"`` reproduces that); pruned channels' BatchNorm outputs are
masked too (the code leaves ``BN(0)`` in place, so its masked model is not the pruned one); the
dead-synapse threshold is capped at half a channel's synapses for small layers; "next layer" of
the last group is the group itself (ratio 1).
"""
from __future__ import annotations

import copy
import math
from typing import Any, Dict, List, Optional, Sequence

import torch
import torch.nn as nn
import torch_pruning as tp
from torch_pruning import ops

from .dynamic import DynamicChannelPruner, NonFiniteStatisticsError
from .groups import group_producers, group_size

__all__ = ["SDSNNImportance", "SDSNNPruner"]

_SDSNN_FORMAT = "sca_plugin.SDSNNPruner/1"  # its own entries ("sdsnn" in the state dict)
_LEGACY_FORMAT = "sca_plugin.SCAPruner/1"  # states of the versions in which SDSNNPruner subclassed SCAPruner
_SDSNN_KEYS = ("N", "initial_rate", "initial_fc_rate", "dead_synapses", "dead_fc_synapses",
               "regen_percentile", "regen_fc_percentile", "regen_cap", "range_layers")


class _Synapses:
    """Per-synapse state of one layer: mask, range ends and the consecutive-epoch counters."""

    TENSORS = ("mask", "r_pos", "r_neg", "c_pos", "c_neg", "c_dec", "a_pos", "a_neg", "prev_pos", "prev_neg",
               "prev_dec", "prev_abs", "regen_count", "regen_prev")

    def __init__(self, weight: torch.Tensor) -> None:
        w = weight.detach()
        top = w.max()
        if top <= 0:  # a layer with no positive weight: use the magnitude (the code's max(W) would invert the range)
            top = w.abs().max()
        zeros = torch.zeros_like(w)
        self.mask = torch.ones_like(w, dtype=torch.bool)
        self.r_pos, self.r_neg = torch.full_like(w, float(top)), torch.full_like(w, -float(top))
        self.c_pos, self.c_neg, self.c_dec = (torch.zeros_like(w, dtype=torch.long) for _ in range(3))
        self.a_pos, self.a_neg = zeros.clone(), zeros.clone()
        self.prev_pos, self.prev_neg, self.prev_dec = (torch.zeros_like(w, dtype=torch.bool) for _ in range(3))
        self.prev_abs = w.abs().clone()
        kernels = self.kernel_view(self.mask)
        self.regen_count = torch.zeros(kernels.shape[:2], dtype=torch.long, device=w.device)
        self.regen_prev = torch.zeros(kernels.shape[:2], dtype=torch.bool, device=w.device)

    @staticmethod
    def kernel_view(t: torch.Tensor) -> torch.Tensor:
        """``[C_out, C_in, kernel elements]`` (a linear layer's kernel is one weight)."""
        return t.reshape(t.shape[0], t.shape[1], -1)

    def state_dict(self) -> Dict[str, torch.Tensor]:
        return {k: getattr(self, k).clone() for k in self.TENSORS}

    def load_state_dict(self, state: Dict[str, torch.Tensor], device) -> None:
        for k in self.TENSORS:
            ref = getattr(self, k)
            if state[k].shape != ref.shape:
                raise ValueError(f"SD-SNN state tensor {k} has shape {tuple(state[k].shape)}, expected {tuple(ref.shape)}")
            setattr(self, k, state[k].to(device=device, dtype=ref.dtype).clone())


class SDSNNImportance(tp.importance.Importance):
    """SD-SNN channel score as a Torch-Pruning ``Importance``: for every channel of the group, the
    sum over its surviving incoming synapses (in every layer computing the channel) of the
    min-max normalised range width ``r+ + |r-|`` of its layer.

    It reads the ranges of an :class:`SDSNNPruner` (they exist after its first ``update_masks()``),
    so it can rank channels inside any Torch-Pruning pruner built on the same model.
    """

    def __init__(self) -> None:
        self.DG: Optional[tp.DependencyGraph] = None
        self.synapses: Dict[nn.Module, _Synapses] = {}

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor:
        if self.DG is None or not self.synapses:
            raise RuntimeError("SDSNNImportance has no synaptic ranges yet: it is filled by an SDSNNPruner's first "
                               "update_masks() (after one training epoch)")
        n = group_size(group)
        scores = None
        for module, (local, root) in group_producers(self.DG, group).items():
            syn = self.synapses.get(module)
            if syn is None:
                continue
            width = syn.r_pos + syn.r_neg.abs()
            lo, hi = width.min(), width.max()
            v = torch.full_like(width, 0.5) if hi <= lo else (width - lo) / (hi - lo)
            rows = (v * syn.mask).reshape(v.shape[0], -1).sum(1).float().cpu()
            if scores is None:
                scores = torch.zeros(n)
            scores.index_add_(0, torch.tensor(root), rows[torch.tensor(local)])
        return scores


class SDSNNPruner(DynamicChannelPruner):
    """SD-SNN structural development as a Torch-Pruning pruner, a sibling of
    :class:`~sca_plugin.SCAPruner` on the same dynamic-masking base and with the same calling pattern:
    train an epoch, ``update_masks()``, ..., ``finalize()``.

    The sparsity is not a target: it emerges from the adaptive rates (see the module docstring).

    Args:
        model, example_inputs, ignored_layers, root_module_types, min_channels, verify_atol,
            update_interval, masking, **kwargs: as for :class:`~sca_plugin.SCAPruner`.
        N: consecutive-epoch count of the synaptic constraint and of regeneration (public code: 18
            for 300-600 epochs); clipping starts after ``N`` epochs, pruning and regeneration after
            ``2N``. Use about ``epochs * 18 / 300`` for shorter runs.
        initial_rate / initial_fc_rate: starting cumulative pruning rate in percent for conv / linear
            groups (public code: 0.5 / 2).
        dead_synapses / dead_fc_synapses: a channel with fewer surviving synapses is "dead" for the
            rate update (public code: 20 / 50; capped at half a channel's synapses).
        regen_percentile / regen_fc_percentile: starting percentile ``q`` of regeneration (65 / 60).
        regen_cap: the percentile at which ``q`` stops rising (public code: 99, so the top 1% of
            kernels can still regrow late in training; 100 switches regeneration off completely
            once ``q`` gets there, and the structure then stops changing when the rates converge).
        range_layers: ``"all"`` (the method) or ``"last"`` (the public CIFAR code's behaviour: only
            the last layer's ranges change).
    """

    def __init__(
        self,
        model: nn.Module,
        example_inputs: Any,
        ignored_layers: Optional[Sequence[nn.Module]] = None,
        *,
        N: int = 18,
        initial_rate: float = 0.5,
        initial_fc_rate: float = 2.0,
        dead_synapses: int = 20,
        dead_fc_synapses: int = 50,
        regen_percentile: float = 65.0,
        regen_fc_percentile: float = 60.0,
        regen_cap: float = 99.0,
        range_layers: str = "all",
        min_channels: int = 1,
        root_module_types: Sequence[type] = (ops.TORCH_CONV,),
        verify_atol: Optional[float] = 1e-5,
        update_interval: Optional[int] = None,
        masking: str = "reset",
        **kwargs: Any,
    ) -> None:
        self._validate_common(model, ignored_layers, update_interval, min_channels, None, kwargs)
        if not isinstance(N, int) or isinstance(N, bool) or N < 1:
            raise ValueError(f"N must be a positive integer (epochs), got {N!r}")
        for name, value in (("initial_rate", initial_rate), ("initial_fc_rate", initial_fc_rate)):
            if not isinstance(value, (int, float)) or not 0.0 <= value < 100.0:
                raise ValueError(f"{name} is a percentage in [0, 100), got {value!r}")
        for name, value in (("dead_synapses", dead_synapses), ("dead_fc_synapses", dead_fc_synapses)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 0:
                raise ValueError(f"{name} must be a non-negative integer, got {value!r}")
        for name, value in (("regen_percentile", regen_percentile), ("regen_fc_percentile", regen_fc_percentile),
                            ("regen_cap", regen_cap)):
            if not isinstance(value, (int, float)) or not 0.0 <= value <= 100.0:
                raise ValueError(f"{name} is a percentile in [0, 100], got {value!r}")
        if range_layers not in ("all", "last"):
            raise ValueError(f"range_layers must be 'all' or 'last', got {range_layers!r}")
        importance = SDSNNImportance()
        super().__init__(model, example_inputs, importance, ignored_layers=ignored_layers, global_pruning=False,
                         pruning_ratio=0.0, root_module_types=root_module_types, min_channels=min_channels,
                         update_interval=update_interval, verify_atol=verify_atol, masking=masking, **kwargs)
        self.N = N
        self.initial_rate, self.initial_fc_rate = float(initial_rate), float(initial_fc_rate)
        self.dead_synapses, self.dead_fc_synapses = dead_synapses, dead_fc_synapses
        self.regen_percentile, self.regen_fc_percentile = float(regen_percentile), float(regen_fc_percentile)
        self.regen_cap = float(regen_cap)
        self.range_layers = range_layers
        # groups in forward (definition) order: "the next layer" of the rate update
        position = {m: i for i, m in enumerate(model.modules())}
        self._order = sorted(range(len(self.groups)), key=lambda i: position.get(self.groups[i][0], 0))
        self._producers = [group_producers(self.DG, group) for _, group in self.groups]
        self._fc = [isinstance(root, ops.TORCH_LINEAR) for root, _ in self.groups]
        layers = [m for i in self._order for m in self._producers[i] if getattr(m, "weight", None) is not None]
        self._layers: List[nn.Module] = list(dict.fromkeys(layers))
        self.rates = [self.initial_fc_rate if fc else self.initial_rate for fc in self._fc]
        self.pruned = [torch.zeros(group_size(group), dtype=torch.bool) for _, group in self.groups]
        importance.DG = self.DG
        self.synapses = importance.synapses
        self._connectivity: Optional[Dict[str, float]] = None
        self._install()

    def weight_of(self, module: nn.Module) -> torch.Tensor:
        """The weight parameter of a managed layer (see :meth:`parameter_of`)."""
        return self.parameter_of(module, "weight")

    @torch.no_grad()
    def _zero_masked_synapses(self) -> None:
        for m in self._layers:
            w = self.weight_of(m)
            w.data.mul_(self.synapses[m].mask.to(w.dtype))

    def fix_masks(self) -> None:
        """As :meth:`DynamicChannelPruner.fix_masks`; the masked synapses inside kept channels are zeroed too
        (they keep training, as in the public code, and are zeroed again by :meth:`finalize`)."""
        super().fix_masks()
        self._zero_masked_synapses()

    # ------------------------------------------------------------------ epoch schedule
    @property
    def clip_start(self) -> int:
        """First update (0-based epoch) that clips weights into their ranges."""
        return self.N + 1

    @property
    def prune_start(self) -> int:
        """First update (0-based epoch) that prunes and regenerates."""
        return 2 * self.N + 1

    def _scale(self) -> float:
        return 18.0 / self.N

    def regeneration_percentile(self, epoch: int, fc: bool = False) -> float:
        q0 = self.regen_fc_percentile if fc else self.regen_percentile
        t = min((epoch - self.prune_start) * self._scale(), 100.0)  # 1.1^100 > 100 already; avoids overflow
        return min(q0 + 1.1 ** t, self.regen_cap)

    def _rate_increment(self, epoch: int, fc: bool, alive: float, alive_next: float) -> float:
        t = (epoch - self.prune_start) * self._scale()  # epochs since pruning began, in public-code epochs
        if fc:
            alpha = 0.5 * math.exp(-t) if t <= 23 else 0.0005
            return alpha * alive / 10.0
        return math.exp(-t / 5.0) * alive / max(alive_next, 1.0)

    # ------------------------------------------------------------------ the epoch step
    @torch.no_grad()
    def update_masks(self):
        """One epoch of structural development (call after each training epoch): the synaptic
        constraint, then (from ``prune_start``) regeneration, pruning and the rate update."""
        self._begin_update()
        bad = [self.module_names[m] for m in self._layers if not torch.isfinite(self.weight_of(m)).all()]
        if bad:  # ranges, clipping and ranking by NaN/Inf weights would pick synapses at random
            raise NonFiniteStatisticsError(
                f"non-finite weights in {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}: a training step "
                "diverged or a batch held NaN/Inf. The masks were left as they were; lower the learning rate "
                "or check the data")
        e = self.num_updates
        regrown = pruned = 0
        if e == 0:
            self.synapses.clear()
            for m in self._layers:
                self.synapses[m] = _Synapses(self.weight_of(m))
        else:
            for m in (self._layers if self.range_layers == "all" else self._layers[-1:]):
                self._update_ranges(self.synapses[m], self.weight_of(m).detach())
            if e >= self.clip_start:
                for m in self._layers:
                    syn = self.synapses[m]
                    w = self.weight_of(m)
                    w.data.copy_(torch.maximum(torch.minimum(w.data, syn.r_pos), syn.r_neg))
            if e >= self.prune_start:
                regrown = sum(self._regenerate(m, e) for m in self._layers)
                pruned = self._prune(e)
                self._zero_masked_synapses()
        # DDP: identical weights give identical masks; the commit makes sure (rank 0's)
        self._commit(self._channel_keep(), head={}, tail={
            "rates": {self.module_names[root]: r for (root, _), r in zip(self.groups, self.rates)},
            "pruned": pruned, "regrown": regrown, "connectivity": self.connectivity()["total"],
        })
        return None

    def _update_ranges(self, syn: _Synapses, weight: torch.Tensor) -> None:
        w = weight * syn.mask
        N = self.N
        for above, r, c, a, prev in ((w >= syn.r_pos, "r_pos", "c_pos", "a_pos", "prev_pos"),
                                     (w <= syn.r_neg, "r_neg", "c_neg", "a_neg", "prev_neg")):
            streak = above & getattr(syn, prev)
            count = torch.where(streak, getattr(syn, c) + 1, torch.zeros_like(getattr(syn, c)))
            excess = torch.where(streak, getattr(syn, a) + (w - getattr(syn, r)), torch.zeros_like(w))
            fire = count >= N
            setattr(syn, r, torch.where(fire, getattr(syn, r) + excess / N, getattr(syn, r)))
            setattr(syn, c, torch.where(fire, torch.zeros_like(count), count))
            setattr(syn, a, torch.where(fire, torch.zeros_like(excess), excess))
            setattr(syn, prev, above)
        decaying = w.abs() < syn.prev_abs
        streak = decaying & syn.prev_dec
        count = torch.where(streak, syn.c_dec + 1, torch.zeros_like(syn.c_dec))
        fire = count >= N
        syn.r_pos = torch.where(fire, 0.75 * syn.r_pos, syn.r_pos)
        syn.r_neg = torch.where(fire, 0.75 * syn.r_neg, syn.r_neg)
        syn.c_dec = torch.where(fire, torch.zeros_like(count), count)
        syn.prev_dec = decaying
        syn.prev_abs = w.abs()

    def _regenerate(self, module: nn.Module, epoch: int) -> int:
        syn = self.synapses[module]
        fc = isinstance(module, ops.TORCH_LINEAR)
        sums = _Synapses.kernel_view(self.weight_of(module).detach()).sum(-1)
        q = self.regeneration_percentile(epoch, fc)
        if q >= 100.0:
            return 0  # regeneration has faded out
        tau = torch.quantile(sums.flatten().float(), q / 100.0)
        masked = ~_Synapses.kernel_view(syn.mask).any(-1)
        candidate = (sums > tau) & masked
        streak = candidate & syn.regen_prev
        count = torch.where(streak, syn.regen_count + 1, torch.zeros_like(syn.regen_count))
        restore = count > self.N
        _Synapses.kernel_view(syn.mask)[restore] = True
        syn.regen_count = torch.where(restore, torch.zeros_like(count), count)
        syn.regen_prev = candidate
        return int(restore.sum())

    def _survivors(self, i: int) -> torch.Tensor:
        """Surviving incoming synapses per channel of group ``i`` (over every layer computing it)."""
        n = group_size(self.groups[i][1])
        total = torch.zeros(n)
        for module, (local, root) in self._producers[i].items():
            syn = self.synapses.get(module)
            if syn is None:
                continue
            rows = syn.mask.reshape(syn.mask.shape[0], -1).sum(1).float().cpu()
            total.index_add_(0, torch.tensor(root), rows[torch.tensor(local)])
        return total

    def _dead(self, i: int) -> int:
        fc = self._fc[i]
        per_channel = sum(self.weight_of(m)[0].numel() for m in self._producers[i] if m in self.synapses)
        threshold = min(self.dead_fc_synapses if fc else self.dead_synapses, max(1, per_channel // 2))
        return int((self._survivors(i) < threshold).sum())

    def _prune(self, epoch: int) -> int:
        newly = 0
        for pos, i in enumerate(self._order):
            root, group = self.groups[i]
            n = group_size(group)
            scores = self.importance(group)
            k = min(int(n * self.rates[i] / 100.0), n - self.min_channels)
            if k > 0:
                lowest = torch.argsort(scores, stable=True)[:k]
                new = torch.zeros(n, dtype=torch.bool)
                new[lowest] = True
                new &= ~self.pruned[i]
                if new.any():
                    for module, (local, rootidx) in self._producers[i].items():
                        syn = self.synapses.get(module)
                        if syn is None:
                            continue
                        rows = [l for l, r in zip(local, rootidx) if new[r]]
                        syn.mask[torch.tensor(rows, dtype=torch.long)] = False
                    self.pruned[i] |= new
                    newly += int(new.sum())
            # neurotrophic rate update: the next layer's dead count is taken before its own pruning
            alive = n - self._dead(i)
            if pos + 1 < len(self._order):
                j = self._order[pos + 1]
                alive_next = group_size(self.groups[j][1]) - self._dead(j)
            else:
                alive_next = alive
            self.rates[i] = min(self.rates[i] + self._rate_increment(epoch, self._fc[i], alive, alive_next), 100.0)
        return newly

    def _channel_keep(self) -> List[torch.Tensor]:
        """A channel is kept while any incoming synapse survives (a regrown kernel revives it)."""
        if not self.synapses:
            return [torch.ones(group_size(group), dtype=torch.bool) for _, group in self.groups]
        keep = [self._survivors(i) > 0 for i in range(len(self.groups))]
        for i, k in enumerate(keep):  # never below min_channels (pruning respects it; be safe)
            if int(k.sum()) < self.min_channels:
                k[torch.argsort(self._survivors(i), descending=True, stable=True)[: self.min_channels]] = True
        return keep

    # ------------------------------------------------------------------ reporting
    def connectivity(self) -> Dict[str, float]:
        """Fraction of synapses (weight elements) kept, per layer and in total, counting only kept
        channels' rows after :meth:`finalize` (the removed channels are gone)."""
        if self._connectivity is not None:
            return dict(self._connectivity)
        if not self.synapses:
            out = {self.module_names[m]: 1.0 for m in self._layers}
            out["total"] = 1.0
            return out
        out, kept, total = {}, 0, 0
        for m in self._layers:
            mask = self.synapses[m].mask
            out[self.module_names[m]] = float(mask.float().mean())
            kept += int(mask.sum())
            total += mask.numel()
        out["total"] = kept / max(total, 1)
        return out

    # ------------------------------------------------------------------ removal
    def finalize(self, example_inputs: Any = None) -> nn.Module:
        """Zero the masked synapses inside kept channels (the masked model), then remove the pruned
        channels physically as :meth:`DynamicChannelPruner.finalize` does; connectivity is kept as zeros."""
        if not self.finalized and self.synapses:
            self._zero_masked_synapses()
        model = super().finalize(example_inputs)
        kept = total = 0
        out = {}
        for m in self._layers:
            nz, n = int((m.weight != 0).sum()), m.weight.numel()
            out[self.module_names[m]] = nz / max(n, 1)
            kept, total = kept + nz, total + n
        out["total"] = kept / max(total, 1)
        self._connectivity = out
        return model

    # ------------------------------------------------------------------ state
    _STATE_FORMAT = "sca_plugin.SDSNNPruner/2"
    _SETTINGS_NAME = "SD-SNN"

    def _config(self) -> dict:
        return {**{k: getattr(self, k) for k in _SDSNN_KEYS}, "masking": self.masking}

    def _extra_state(self) -> Dict[str, Any]:
        return {"sdsnn": {
            "format": _SDSNN_FORMAT, "rates": list(self.rates),
            "pruned": [p.clone() for p in self.pruned],
            "synapses": {self.module_names[m]: s.state_dict() for m, s in self.synapses.items()},
            "connectivity": copy.deepcopy(self._connectivity),
        }}

    def load_state_dict(self, state: dict) -> None:
        """Restore :meth:`state_dict`; also reads the states of earlier versions (format
        ``sca_plugin.SCAPruner/1`` with an ``sdsnn`` entry)."""
        if isinstance(state, dict) and state.get("format") == _LEGACY_FORMAT and isinstance(state.get("sdsnn"), dict):
            legacy = state["sdsnn"]
            state = {**state, "format": self._STATE_FORMAT,
                     "config": {**(legacy.get("config") or {}), "masking": state["config"].get("masking", "mask")}}
        super().load_state_dict(state)

    def _check_state(self, state: dict) -> Any:
        extra = state.get("sdsnn")
        if not isinstance(extra, dict) or extra.get("format") != _SDSNN_FORMAT:
            raise ValueError(f"not an SDSNNPruner state dict (expected an 'sdsnn' entry of format {_SDSNN_FORMAT!r})")
        names = {n: m for m, n in self.module_names.items()}
        unknown = [n for n in extra["synapses"] if n not in names or names[n] not in self._layers]
        if unknown:
            raise ValueError(f"the state dict refers to layers this pruner does not manage: {unknown[:5]}")
        if len(extra["pruned"]) != len(self.groups) or len(extra["rates"]) != len(self.groups):
            raise ValueError("the state dict belongs to another architecture (number of groups differs)")
        synapses = {}
        for name, tensors in extra["synapses"].items():  # check every shape before changing anything
            module = names[name]
            syn = _Synapses(self.weight_of(module))
            syn.load_state_dict(tensors, self.weight_of(module).device)
            synapses[module] = syn
        return synapses

    def _load_state(self, state: dict, synapses: Any) -> None:
        extra = state["sdsnn"]
        self.synapses.clear()
        self.synapses.update(synapses)
        self.rates = [float(r) for r in extra["rates"]]
        self.pruned = [p.clone().bool().cpu() for p in extra["pruned"]]
        self._connectivity = copy.deepcopy(extra.get("connectivity"))

"""Which channels stay: SCA's prune-by-activity, regrow-by-gradient rule (pure tensor code).

One update, for target sparsity ``s`` and regrow fraction ``q`` over ``N`` prunable channels:

1. keep the ``(1 - s - q) * N`` channels with the highest activity score;
2. among the masked channels, regrow the ``q * N`` with the largest ``|dL/dgamma|``;
   so ``(1 - s) * N`` channels stay, ``q * N`` of them regrown.

``q`` is a fraction of all channels (the paper, ``regrow_relative_to="all"``) or of the kept ones
(``"kept"``: ``q * (1 - s) * N`` regrown, RigL's drop fraction of the active units). With ``"all"``
the exchanged share of the kept channels grows with the sparsity: ``q / (1 - s)``, half of them at
``s = 0.8`` and all of them at ``s = 0.9`` for the paper's ``q = 0.1``.

``mode="rebuild"`` (default; the reference code) rebuilds the mask from scratch at every update:
step 1 ranks all channels and step 2 may regrow a channel that step 1 just pruned.
``mode="incremental"`` starts from the current mask: step 1 drops the weakest *kept* channels and step 2
regrows only channels that were masked before this update, so every update really exchanges
channels (as in RigL). Both give the same first update. Ranking is global over all groups or per
group; every group keeps at least its floor (``min_channels``, ``round_to``, and with
``max_pruning_ratio`` the channels that ratio leaves: ``n - floor(n * max_pruning_ratio)``), and
with ``round_to`` each group's kept count is rounded to a multiple of it. Per-group ranking takes
one sparsity (and regrow fraction) per group.

A pruner ranks its groups in :class:`RankingScope`\ s (Torch-Pruning's ranking scopes): the
groups of one scope are ranked together toward the scope's sparsity, each scope on its own
(:func:`select_in_scopes`). The core pruner builds them from ``global_pruning`` and
``pruning_ratio_dict``, the NNI pruner from ``config_list``'s ``global_group_id``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple, Union

import torch

__all__ = ["MODES", "REGROW_BASES", "RankingScope", "Selection", "channel_floor", "pruned_count", "regrow_fraction", "regrow_problem",
           "select_channels", "select_in_scopes"]

MODES = ("incremental", "rebuild")
REGROW_BASES = ("all", "kept")


@dataclass
class Selection:
    keep: List[torch.Tensor]                              # per group: bool, True = channel kept
    pruned: List[torch.Tensor] = field(default_factory=list)   # per group: indices masked by this update
    regrown: List[torch.Tensor] = field(default_factory=list)  # per group: indices unmasked by regrowth


@dataclass(frozen=True)
class RankingScope:
    """Groups (indices into the pruner's groups) ranked together toward one sparsity.

    ``global_ranking``: one ranking over the scope's channels (else every group toward the
    sparsity on its own); ``max_pruning_ratio``: no group of the scope loses more than this
    fraction; ``regrow_within_ratio``: regrow at most ``sparsity`` of the channels (a scope with
    its own ratio, which may fall below the pruner's regrow fraction while a schedule ramps)."""
    groups: Tuple[int, ...]
    sparsity: float
    global_ranking: bool = True
    max_pruning_ratio: Optional[float] = None
    regrow_within_ratio: bool = False


def regrow_fraction(regrow_ratio: float, sparsity: float, relative_to: str = "all") -> float:
    """The fraction of all channels regrown at ``sparsity``: ``regrow_ratio`` itself (``"all"``) or
    ``regrow_ratio * (1 - sparsity)`` (``"kept"``)."""
    if relative_to not in REGROW_BASES:
        raise ValueError(f"regrow_relative_to must be one of {REGROW_BASES}, got {relative_to!r}")
    return regrow_ratio if relative_to == "all" else regrow_ratio * (1.0 - sparsity)


def regrow_problem(regrow_ratio: float, sparsity: float, relative_to: str, sparsity_name: str) -> Optional[str]:
    """Why ``regrow_ratio`` would regrow more channels than ``sparsity`` masks (only masked channels
    can be regrown), or None; ``sparsity_name`` names the setting in the message."""
    regrown = regrow_fraction(regrow_ratio, sparsity, relative_to)
    if regrown <= sparsity:
        return None
    if relative_to == "all":
        return (f"regrow_ratio ({regrow_ratio}) is larger than {sparsity_name} ({sparsity}): only masked channels can "
                f"be regrown, so use regrow_ratio <= {sparsity_name}")
    return (f"regrow_ratio ({regrow_ratio}) of the kept channels regrows {regrown:.3g} of all, more than "
            f"{sparsity_name} ({sparsity}) masks: only masked channels can be regrown, so use a smaller regrow_ratio")


def select_in_scopes(
    scores: Sequence[torch.Tensor],
    growth: Optional[Sequence[torch.Tensor]],
    previous: Optional[Sequence[torch.Tensor]],
    scopes: Sequence[RankingScope],
    regrow_ratio: float,
    min_channels: int = 1,
    round_to: Optional[int] = None,
    mode: str = "rebuild",
    regrow_relative_to: str = "all",
) -> Selection:
    """One :func:`select_channels` per scope; every group must be in exactly one scope. The regrown
    fraction of each scope follows its own sparsity (:func:`regrow_fraction`)."""
    n = len(scores)
    covered = sorted(i for scope in scopes for i in scope.groups)
    if covered != list(range(n)):
        raise ValueError(f"ranking scopes must cover each of the {n} groups exactly once, got groups {covered}")
    out = Selection(keep=[None] * n, pruned=[None] * n, regrown=[None] * n)
    for scope in scopes:
        idx = list(scope.groups)
        pick = lambda seq: None if seq is None else [seq[i] for i in idx]  # noqa: E731
        q = regrow_fraction(regrow_ratio, scope.sparsity, regrow_relative_to)
        q = min(q, scope.sparsity) if scope.regrow_within_ratio else q
        sel = select_channels(pick(scores), pick(growth), pick(previous), scope.sparsity, q, scope.global_ranking,
                              min_channels, round_to, mode, scope.max_pruning_ratio)
        for j, i in enumerate(idx):
            out.keep[i], out.pruned[i], out.regrown[i] = sel.keep[j], sel.pruned[j], sel.regrown[j]
    return out


def channel_floor(n: int, min_channels: int, round_to: Optional[int], max_pruning_ratio: Optional[float] = None) -> int:
    """The fewest channels a group of ``n`` may keep."""
    floor = max(min_channels, round_to or 1)
    if max_pruning_ratio is not None:
        floor = max(floor, n - math.floor(n * max_pruning_ratio + 1e-9))
    if round_to:
        floor = math.ceil(floor / round_to) * round_to
    return min(n, floor)


def _order(values: torch.Tensor, idx: torch.Tensor, descending: bool = True) -> torch.Tensor:
    """``idx`` sorted by ``values[idx]``; ties broken by index, so results are deterministic."""
    if idx.numel() == 0:
        return idx
    _, order = torch.sort(values[idx], descending=descending, stable=True)
    return idx[order]


def _take_best(values, candidates, budget, floors, offsets, global_ranking):
    """Bool mask of the best ``budget`` candidates by ``values``, every group keeping its floor first."""
    n_groups = len(floors)
    chosen = torch.zeros_like(candidates)
    for g in range(n_groups):
        idx = torch.nonzero(candidates[offsets[g]:offsets[g + 1]]).flatten() + offsets[g]
        chosen[_order(values, idx)[: floors[g]]] = True
    if global_ranking:
        rest = torch.nonzero(candidates & ~chosen).flatten()
        extra = max(0, int(budget) - int(chosen.sum()))
        chosen[_order(values, rest)[:extra]] = True
    else:
        for g in range(n_groups):
            sl = slice(offsets[g], offsets[g + 1])
            rest = torch.nonzero((candidates & ~chosen)[sl]).flatten() + offsets[g]
            extra = max(0, int(budget[g]) - int(chosen[sl].sum()))
            chosen[_order(values, rest)[:extra]] = True
    return chosen


def pruned_count(n: int, ratio: float) -> int:
    """Channels a group of ``n`` loses at ``ratio`` before any floor: the nearest integer (Python's
    ``round``). Torch-Pruning keeps ``int(n * (1 - ratio))`` and NNI prunes ``int(n * ratio)`` (one
    channel more or fewer per group); the NNI rows of the benchmarks can be given this count
    (:class:`sca_plugin.nni.NNIBuiltinPruning` ``rounding="nearest"``) to compare at equal structure."""
    return round(ratio * n)


def _budgets(sizes: List[int], floors: List[int], sparsity, regrow_ratio, global_ranking: bool):
    """``(channels to keep, of them kept by score)``: totals under global ranking, else per group."""
    N = sum(sizes)
    if global_ranking:
        if not isinstance(sparsity, (int, float)) or not isinstance(regrow_ratio, (int, float)):
            raise ValueError("global ranking takes one sparsity and one regrow ratio for all groups")
        n_keep = max(N - pruned_count(N, sparsity), sum(floors))
        return n_keep, max(n_keep - round(regrow_ratio * N), 0)
    per_s = [sparsity] * len(sizes) if isinstance(sparsity, (int, float)) else list(sparsity)
    per_q = [regrow_ratio] * len(sizes) if isinstance(regrow_ratio, (int, float)) else list(regrow_ratio)
    if len(per_s) != len(sizes) or len(per_q) != len(sizes):
        raise ValueError(f"{len(sizes)} groups but {len(per_s)} sparsities and {len(per_q)} regrow ratios")
    n_keep = [max(n - pruned_count(n, s_), f) for n, f, s_ in zip(sizes, floors, per_s)]
    return n_keep, [max(k - round(q_ * n), 0) for k, n, q_ in zip(n_keep, sizes, per_q)]


def _regrow(grow: torch.Tensor, kept: torch.Tensor, pools: List[torch.Tensor], n_keep, offsets: List[int],
            global_ranking: bool) -> torch.Tensor:
    """The channels regrown up to ``n_keep``: largest ``grow`` first, pool by pool."""
    regrown = torch.zeros(kept.numel(), dtype=torch.bool)
    spans = [(slice(0, offsets[-1]), 0, n_keep)] if global_ranking else \
        [(slice(offsets[g], offsets[g + 1]), offsets[g], n_keep[g]) for g in range(len(offsets) - 1)]
    for sl, start, target in spans:
        need = max(0, target - int(kept[sl].sum()))
        for pool in pools:
            pick = _order(grow, torch.nonzero((pool & ~regrown)[sl]).flatten() + start)[:need]
            regrown[pick] = True
            need -= int(pick.numel())
    return regrown


def _round_groups(keep: torch.Tensor, regrown: torch.Tensor, score: torch.Tensor, grow: torch.Tensor,
                  sizes: List[int], floors: List[int], offsets: List[int], round_to: int) -> None:
    """Round every group's kept count to a multiple of ``round_to`` (in place): add by ``grow``,
    drop the weakest by score, channels regrown just now last."""
    for g, n in enumerate(sizes):
        sl = slice(offsets[g], offsets[g + 1])
        k = int(keep[sl].sum())
        target = min(n, max(floors[g], int(round(k / round_to)) * round_to))
        if target > k:
            add = _order(grow, torch.nonzero(~keep[sl]).flatten() + offsets[g])[: target - k]
            keep[add] = True
            regrown[add] = True
        elif target < k:
            idx = torch.nonzero(keep[sl]).flatten() + offsets[g]
            key = score.clone()
            key[regrown] = float("inf")
            drop = _order(key, idx, descending=False)[: k - target]
            keep[drop] = False
            regrown[drop] = False


def select_channels(
    scores: Sequence[torch.Tensor],
    growth: Optional[Sequence[torch.Tensor]],
    previous: Optional[Sequence[torch.Tensor]],
    sparsity: Union[float, Sequence[float]],
    regrow_ratio: Union[float, Sequence[float]],
    global_ranking: bool = True,
    min_channels: int = 1,
    round_to: Optional[int] = None,
    mode: str = "rebuild",
    max_pruning_ratio: Optional[float] = None,
) -> Selection:
    """Compute the new keep-masks of all groups (see the module docstring). With
    ``global_ranking=False``, ``sparsity`` and ``regrow_ratio`` may be one value per group."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use one of {MODES}")
    sizes = [int(s.numel()) for s in scores]
    offsets = [0]
    for n in sizes:
        offsets.append(offsets[-1] + n)
    N = offsets[-1]
    score = torch.cat([s.detach().float().cpu() for s in scores])
    grow = torch.cat([g.detach().float().cpu() for g in growth]) if growth is not None else torch.zeros(N)
    prev = torch.cat([p.detach().bool().cpu() for p in previous]) if previous is not None else None
    floors = [channel_floor(n, min_channels, round_to, max_pruning_ratio) for n in sizes]

    n_keep, keep_budget = _budgets(sizes, floors, sparsity, regrow_ratio, global_ranking)
    incremental = prev is not None and mode == "incremental"
    candidates = prev.clone() if incremental else torch.ones(N, dtype=torch.bool)
    kept = _take_best(score, candidates, keep_budget, floors, offsets, global_ranking)
    # regrowth: fill up to the target with the largest |dL/dgamma| among masked channels,
    # preferring (incremental mode) channels that were already masked before this update
    masked = ~kept
    pools = [masked & ~prev, masked & prev] if incremental else [masked]
    regrown = _regrow(grow, kept, pools, n_keep, offsets, global_ranking)
    keep = kept | regrown
    if round_to:
        _round_groups(keep, regrown, score, grow, sizes, floors, offsets, round_to)

    before = prev if prev is not None else torch.ones(N, dtype=torch.bool)
    out = Selection(keep=[], pruned=[], regrown=[])
    for g in range(len(sizes)):
        sl = slice(offsets[g], offsets[g + 1])
        out.keep.append(keep[sl].clone())
        out.pruned.append(torch.nonzero(before[sl] & ~keep[sl]).flatten())
        out.regrown.append(torch.nonzero(regrown[sl] & keep[sl]).flatten())
    return out

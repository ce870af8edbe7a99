"""The NNI SCA pruner's ``config_list``: its checks, the Torch-Pruning groups it makes prunable,
and the ranking scopes it gives the core.

Everything here runs before NNI wraps anything, so a bad entry leaves the model as it was. The
groups are the core pruner's own (one trace of the dependency graph, in the core's constructor):
:func:`choose_groups` keeps those with a configured layer among the layers computing their
channels and leaves out, with the reason, the ones SCA cannot prune. :func:`ranking_scopes`
turns the entries' ``sparse_ratio`` / ``global_group_id`` / ``max_sparse_ratio`` into
:class:`~sca_plugin.selection.RankingScope`\\ s: the groups of one ``global_group_id`` are ranked
together (the paper's global ranking), every other group on its own at its ``sparse_ratio``.
"""
from __future__ import annotations

from collections import OrderedDict, defaultdict
from copy import deepcopy
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import torch.nn as nn
from nni.compression.base.config import default_config_schema, select_modules_by_config, trans_legacy_config_list

from ..groups import PRODUCER_TYPES, group_batchnorms, group_neurons, group_producers, reaches_output
from ..selection import RankingScope, regrow_problem

__all__ = ["ALLOWED_KEYS", "ConfiguredGroup", "GroupChoice", "validate_config_list",
           "choose_groups", "ranking_scopes"]

ALLOWED_KEYS = {"op_types", "op_names", "op_names_re", "exclude_op_names", "exclude_op_types",
                "exclude_op_names_re", "target_names", "sparse_ratio", "global_group_id",
                "dependency_group_id", "granularity", "max_sparse_ratio"}

#: ``[(config entry, {name: layer it selects})]``
Configs = List[Tuple[dict, Dict[str, nn.Module]]]


# ---------------------------------------------------------------------- the entries
def validate_config_list(model: nn.Module, config_list, regrow_ratio: float, regrow_relative_to: str = "all") -> Configs:
    """Every entry checked (NNI's schema included) and the layers it selects; ``max_sparse_ratio``
    defaults to ``(1 + sparse_ratio) / 2``, as the core's ``max_pruning_ratio``."""
    if not isinstance(config_list, (list, tuple)) or not config_list:
        raise ValueError("config_list must be a non-empty list of dicts, e.g. "
                         "[{'op_types': ['Conv2d'], 'sparse_ratio': 0.5, 'global_group_id': 0}]")
    if not all(isinstance(c, dict) for c in config_list):
        raise ValueError("every config_list entry must be a dict")
    schema = default_config_schema("pruning")
    out: Configs = []
    seen: Dict[str, int] = {}
    for i, config in enumerate(trans_legacy_config_list(deepcopy(list(config_list)))):
        where = f"config_list[{i}] ({config!r:.120})"
        _check_entry(config, where, regrow_ratio, regrow_relative_to)
        try:
            schema.validate(config)
        except Exception as e:  # schema.SchemaError
            raise ValueError(f"{where} is not a valid NNI pruning config: {e}") from e
        modules = _selected_layers(model, config, where)
        for name in modules:
            if name in seen:
                raise ValueError(f"module {name!r} is selected by config_list[{seen[name]}] and config_list[{i}]; "
                                 "select each module once")
            seen[name] = i
        out.append((config, modules))
    ratios: Dict[Any, float] = {}
    for config, _ in out:
        gid = config.get("global_group_id")
        if gid is not None and ratios.setdefault(gid, config["sparse_ratio"]) != config["sparse_ratio"]:
            raise ValueError(f"configs with global_group_id {gid!r} have different sparse_ratio values "
                             f"({ratios[gid]} and {config['sparse_ratio']}); a global group has one target")
    return out


def _check_entry(config: dict, where: str, regrow_ratio: float, regrow_relative_to: str) -> None:
    """One entry's keys and values (``sparse_ratio`` and ``max_sparse_ratio`` made floats in place)."""
    if not any(k in config for k in ("op_types", "op_names", "op_names_re")):
        raise ValueError(f"{where}: select modules with 'op_types', 'op_names' or 'op_names_re'")
    unsupported = sorted(set(config) - ALLOWED_KEYS)
    if unsupported:
        raise ValueError(f"{where}: SCAPruner does not support the keys {unsupported}; it uses "
                         f"{sorted(ALLOWED_KEYS)} ('sparse_threshold', 'min_sparse_ratio', "
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
    problem = regrow_problem(regrow_ratio, ratio, regrow_relative_to, "sparse_ratio")
    if problem:
        raise ValueError(f"{where}: {problem}")
    targets = config.get("target_names")
    if targets is not None and (not targets or set(targets) - {"weight", "bias"}):
        raise ValueError(f"{where}: target_names must be a non-empty subset of ['weight', 'bias'], got {targets!r}")
    if config.get("granularity", "default") not in ("default", "out_channel"):
        raise ValueError(f"{where}: SCA prunes whole output channels; granularity must be 'default' or "
                         f"'out_channel', got {config['granularity']!r}")


def _selected_layers(model: nn.Module, config: dict, where: str) -> Dict[str, nn.Module]:
    modules, _, _ = select_modules_by_config(model, config)
    if not modules:
        raise ValueError(f"{where} matches no module of the model (op_types are class names such as "
                         f"'Conv2d'; op_names are names from model.named_modules())")
    bad = sorted(n for n, m in modules.items() if not isinstance(m, PRODUCER_TYPES))
    if bad:
        raise ValueError(f"{where} selects {bad[:5]}, which are not convolutions or linear layers: configure the "
                         "layers whose output channels are pruned; their BatchNorms and spiking neurons are found "
                         "from the dependency graph and masked with them")
    return dict(sorted(modules.items()))


def root_module_types(configs: Configs) -> List[type]:
    """The layer types whose output channels root the groups: those the entries select."""
    return [t for t in PRODUCER_TYPES if any(isinstance(m, t) for _, modules in configs for m in modules.values())]


# ---------------------------------------------------------------------- the groups
@dataclass
class ConfiguredGroup:
    """One Torch-Pruning group that ``config_list`` makes prunable, with its entry's settings."""
    producers: Dict[nn.Module, tuple]  # conv/linear computing the group's channels: {layer: (local, root idxs)}
    bns: Dict[nn.Module, tuple]        # its BatchNorms: {layer: (local, root idxs)}
    configured: List[str]              # the configured layers among the producers (the first one names the group)
    sparse_ratio: float
    max_sparse_ratio: float
    global_group_id: Any = None

    @property
    def rep(self) -> str:
        """The configured layer that names the group (and whose target space holds its sparse_ratio)."""
        return self.configured[0]


@dataclass
class GroupChoice:
    """What :func:`choose_groups` decided."""
    kept: List[int]                    # indices of the prunable groups among the traced ones
    groups: List[ConfiguredGroup]      # aligned with ``kept``
    excluded: Dict[str, str]           # selected by type or pattern but not prunable: {name: reason}
    configs: Configs                   # the entries without the excluded layers (what NNI wraps)
    exclusion_fix: Dict[int, List[str]] = field(default_factory=dict)  # entry -> exclude_op_names silencing it


def choose_groups(DG, groups: Sequence[tuple], configs: Configs, module_names: Dict[nn.Module, str],
                  regrow_ratio: float) -> GroupChoice:
    """The traced ``groups`` (``[(root, group)]``) that SCA prunes for ``configs``.

    A group counts when a configured layer computes its channels (layers coupled to it by the graph
    are masked with it). One SCA cannot prune (its channels are the model output, reach no
    spiking neuron, or have no BatchNorm while ``regrow_ratio > 0``) raises a ValueError when
    ``op_names`` names one of its layers; selected by ``op_types`` / ``op_names_re`` (NNI's
    quick-start ``{'op_types': ['Linear', 'Conv2d'], ...}``) it is left out, dense and not wrapped,
    with the reason in ``excluded``."""
    configured: Dict[nn.Module, Tuple[str, dict]] = {}
    named = set()  # listed by name in op_names: an explicit request, never left out silently
    for config, modules in configs:
        for name, module in modules.items():
            configured[module] = (name, config)
            if name in (config.get("op_names") or []):
                named.add(name)
    kept, chosen, covered, excluded = [], [], {}, {}
    for i, (_, group) in enumerate(groups):
        producers = group_producers(DG, group, PRODUCER_TYPES)
        members = [m for m in producers if m in configured]
        if not members:
            continue
        g = _configured_group(producers, group_batchnorms(group), [configured[m] for m in members])
        error, reason = _unprunable(DG, group, g, regrow_ratio)
        if reason is not None:
            if any(n in named for n in g.configured):
                raise ValueError(error)
            excluded.update({n: reason for n in g.configured})
            continue
        covered.update({m: len(chosen) for m in members})
        kept.append(i)
        chosen.append(g)
    _exclude_uncovered(configured, covered, excluded, named)
    if not chosen:
        raise ValueError("config_list selects no layer that SCA can prune: " + "; ".join(
            f"{n}: {r}" for n, r in sorted(excluded.items())[:5]) + ". Select the convolutions followed by "
            "BatchNorms and spiking neurons (e.g. {'op_types': ['Conv2d'], ...})"
            + (", or use regrow_ratio=0 for layers without BatchNorm"
               if any("BatchNorm" in r for r in excluded.values()) else ""))
    choice = GroupChoice(kept, chosen, excluded, *_without_excluded(configs, excluded))
    _check_dependency_groups(choice, covered, module_names)
    return choice


def _configured_group(producers, bns, entries: List[Tuple[str, dict]]) -> ConfiguredGroup:
    """The group of coupled layers ``entries`` (``[(name, config)]``), which must agree on its settings."""
    names = ", ".join(n for n, _ in entries)
    configs = [c for _, c in entries]
    if len({(c["sparse_ratio"], c["max_sparse_ratio"]) for c in configs}) > 1 \
            or len({c.get("global_group_id") for c in configs}) > 1:
        raise ValueError(
            f"{names} share their output channels (one Torch-Pruning dependency group: e.g. convolutions "
            "added by a residual connection), so they are pruned together, but their configs give different "
            "sparse_ratio, max_sparse_ratio or global_group_id values; configure them identically")
    return ConfiguredGroup(producers, bns, [n for n, _ in entries], configs[0]["sparse_ratio"],
                           configs[0]["max_sparse_ratio"], configs[0].get("global_group_id"))


def _unprunable(DG, group, g: ConfiguredGroup, regrow_ratio: float) -> Tuple[Optional[str], Optional[str]]:
    """``(error, reason)`` when SCA cannot prune the group (the error when a layer was named), else Nones."""
    names = ", ".join(g.configured)
    if reaches_output(DG, group):
        return (f"the channels of {names} are the model's output (pruning them would change the output's size, "
                "e.g. the number of classes); exclude them from config_list (exclude_op_names)",
                "its channels are the model's output; pruning them would change the output's size")
    if not group_neurons(group):
        return (f"the output channels of {names} reach no spiking neuron, so they have no SCA score "
                "(e.g. the classifier); exclude them from config_list",
                "its output channels reach no spiking neuron, so they have no SCA score")
    if regrow_ratio > 0 and not any(getattr(m, "weight", None) is not None for m in g.bns):
        return (f"the channels of {names} have no BatchNorm with a weight, but regrowth ranks masked "
                "channels by |dL/dgamma|; exclude them or use regrow_ratio=0",
                f"its channels have no BatchNorm, and regrowth (regrow_ratio={regrow_ratio}) ranks "
                "masked channels by |dL/dgamma|")
    return None, None


def _exclude_uncovered(configured, covered, excluded: Dict[str, str], named) -> None:
    """Configured layers in no pruning group at all (e.g. producing the model output)."""
    missing = sorted(configured[m][0] for m in configured if m not in covered and configured[m][0] not in excluded)
    if any(n in named for n in missing):
        raise ValueError(f"the output channels of {[n for n in missing if n in named][:5]} cannot be pruned (the "
                         "dependency graph has no pruning group for them, e.g. they produce the model output); "
                         "exclude them")
    excluded.update({n: "the dependency graph has no pruning group for its output channels (e.g. it produces "
                        "the model output)" for n in missing})


def _without_excluded(configs: Configs, excluded: Dict[str, str]) -> Tuple[Configs, Dict[int, List[str]]]:
    """The entries with the excluded layers added to their ``exclude_op_names`` (an entry left with no
    layer is dropped: NNI wraps nothing for it), and per entry the ``exclude_op_names`` that silence it."""
    kept, fix = [], {}
    for i, (config, modules) in enumerate(configs):
        left_out = sorted(n for n in modules if n in excluded)
        if left_out:
            names = list(config.get("exclude_op_names") or [])
            config = {**config, "exclude_op_names": names + [n for n in left_out if n not in names]}
            fix[i] = config["exclude_op_names"]
            modules = {n: m for n, m in modules.items() if n not in excluded}
            if not modules:
                continue
        kept.append((config, modules))
    return kept, fix


def _check_dependency_groups(choice: GroupChoice, covered: Dict[nn.Module, int], module_names) -> None:
    """``dependency_group_id`` is accepted but may not contradict the graph, which decides coupling."""
    by_id: Dict[Any, List[str]] = defaultdict(list)
    id_of: Dict[str, Any] = {}
    for config, modules in choice.configs:
        if config.get("dependency_group_id") is None:
            continue
        for name in modules:
            by_id[config["dependency_group_id"]].append(name)
            id_of[name] = config["dependency_group_id"]
    modules_by_name = {n: m for m, n in module_names.items()}
    for dep_id, names in by_id.items():
        if len({covered[modules_by_name[n]] for n in names}) > 1:
            raise ValueError(
                f"dependency_group_id {dep_id!r} joins {sorted(names)[:6]}, whose output channels are not coupled "
                "in the model's dependency graph; the graph decides which layers share a channel mask, so use one "
                "dependency_group_id per coupled set (or leave it out)")
    for g in choice.groups:
        ids = {id_of[n] for n in g.configured if n in id_of}
        if len(ids) > 1:
            raise ValueError(
                f"{sorted(g.configured)} share their output channels in the dependency graph (they must get one "
                f"channel mask) but the config gives them different dependency_group_id values {sorted(map(str, ids))}")


# ---------------------------------------------------------------------- the ranking
def ranking_scopes(groups: Sequence[ConfiguredGroup], sparse_ratio: Callable[[ConfiguredGroup], float]
                   ) -> List[RankingScope]:
    """The core's ranking scopes (indices into ``groups``): one per ``global_group_id``, its groups
    ranked together, and one per other group; ``sparse_ratio(group)`` is the group's ratio now
    (a scheduled NNI pruner changes it between updates). A scope's cap is the largest
    ``max_sparse_ratio`` among its groups."""
    buckets: Dict[Any, List[int]] = OrderedDict()
    for i, g in enumerate(groups):
        key = ("global", g.global_group_id) if g.global_group_id is not None else ("single", i)
        buckets.setdefault(key, []).append(i)
    return [RankingScope(tuple(idx), sparse_ratio(groups[idx[0]]), global_ranking=kind == "global",
                         max_pruning_ratio=max(groups[i].max_sparse_ratio for i in idx))
            for (kind, _), idx in buckets.items()]

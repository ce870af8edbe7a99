"""The method registry: what ``--method`` names, in the style of timm's ``register_model``.

A method is a :class:`MethodSpec`: how it prunes (its ``kind``: dense, dynamic masks, a mask fixed
at initialisation, an NNI built-in one-shot, SD-SNN's development), the Torch-Pruning
``Importance`` it ranks channels with, the defaults it gives the settings whose default depends on
the method (``--regrow-ratio``, ``--bn-l1``, ``--schedule``, ...), and what the reports need to know
(a built-in baseline? sparsity emergent rather than asked for?). ``sca-prune train --method``,
:class:`~sca_plugin.config.TrainConfig`'s checks and defaults, the runner and the quality benchmark
read the spec; nothing else switches on method names.

Register your own criterion (any Torch-Pruning ``Importance``; it runs in the same dynamic pruner as
SCA, with the same masking, regrowth, schedule and final removal)::

    # my_methods.py
    import torch_pruning as tp
    from sca_plugin.methods import register_method

    @register_method("my-l1", description="L1 norm of each channel's filters")
    def my_l1(cfg):                      # gets the run's TrainConfig
        return tp.importance.GroupMagnitudeImportance(p=1)

then ``sca-prune train --method my_methods:my-l1`` (``module:name``: the module is imported from the
current folder, as ``--model module:callable``), ``methods: [my_methods:my-l1]`` in a
``benchmarks/quality.py`` config, or ``TrainConfig(method="my-l1")`` in the process that imported it.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Dict, Mapping, Optional, Tuple

import torch.nn as nn
import torch_pruning as tp

from .user_code import import_user_module

if TYPE_CHECKING:  # config imports this module
    from .config import TrainConfig

__all__ = ["KINDS", "DEPENDENT_SETTINGS", "MethodSpec", "register_method", "get_method", "method_names",
           "unregister_method", "build_pruner", "classifier_of"]

#: how a method prunes; each kind has its pruner factory below
KINDS: Dict[str, str] = {
    "dense": "no pruning",
    "dynamic": "masks updated during training by sca_plugin.SCAPruner with the method's importance "
               "(one-shot with --oneshot-epoch)",
    "init": "a mask chosen by the method's importance before training and never changed",
    "nni": "an NNI 3.0 built-in pruner once (--oneshot-epoch), the channels removed by "
           "sca_plugin.nni.ModelSpeedup, then fine-tuning",
    "sdsnn": "SD-SNN's structural development (sca_plugin.SDSNNPruner); the sparsity emerges",
}

#: the settings a method may give a default to (TrainConfig fields that are None unless set; the
#: run uses ``TrainConfig.effective_<name>``)
DEPENDENT_SETTINGS = ("regrow_ratio", "bn_l1", "schedule", "global_pruning", "oneshot_epoch")

Default = Any  # a value, or a callable(cfg) -> value


@dataclass(frozen=True)
class MethodSpec:
    """One pruning method.

    ``importance(cfg)``: the Torch-Pruning ``Importance`` (kinds ``dynamic`` and ``init``).
    ``nni_pruner``: the ``sca_plugin.nni.NNI_BUILTIN_PRUNERS`` name (kind ``nni``), with
    ``nni_training`` where NNI runs its own training steps to score channels.
    ``defaults``: values (or ``callable(cfg)``) of :data:`DEPENDENT_SETTINGS` the user left unset;
    ``dynamic_defaults``: the same, only for runs whose masks change during training (no
    ``--oneshot-epoch``). ``regrows``: whether ``--regrow-ratio`` means anything. ``options``:
    TrainConfig fields only this method reads (refused for the others). ``baseline``: a built-in
    the benchmarks compare against ("best built-in")."""

    name: str
    kind: str
    description: str
    importance: Optional[Callable[["TrainConfig"], tp.importance.Importance]] = None
    nni_pruner: Optional[str] = None
    nni_training: bool = False
    defaults: Mapping[str, Default] = field(default_factory=dict)
    dynamic_defaults: Mapping[str, Default] = field(default_factory=dict)
    regrows: bool = True
    options: Tuple[str, ...] = ()
    baseline: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not self.name or ":" in self.name or self.name != self.name.strip():
            raise ValueError(f"a method name is a non-empty string without ':' or surrounding spaces, got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"method {self.name!r}: kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        if self.kind in ("dynamic", "init") and not callable(self.importance):
            raise ValueError(f"method {self.name!r} of kind {self.kind!r} needs importance=callable(cfg) returning "
                             "a Torch-Pruning Importance")
        if self.kind == "nni" and not self.nni_pruner:
            raise ValueError(f"method {self.name!r} of kind 'nni' needs nni_pruner (a name of "
                             "sca_plugin.nni.NNI_BUILTIN_PRUNERS)")
        if "oneshot_epoch" in self.dynamic_defaults:
            raise ValueError(f"method {self.name!r}: oneshot_epoch decides whether a run is dynamic; give it in "
                             "defaults, not dynamic_defaults")
        for name in (*self.defaults, *self.dynamic_defaults):
            if name not in DEPENDENT_SETTINGS:
                raise ValueError(f"method {self.name!r}: a method can default only {', '.join(DEPENDENT_SETTINGS)}, "
                                 f"not {name!r} (set other settings in the run's config)")
        if self.kind != "dynamic" and self.regrows:
            object.__setattr__(self, "regrows", False)  # only masks that change can regrow

    @property
    def updates_masks(self) -> bool:
        """Masks change during training (unless ``--oneshot-epoch`` makes a dynamic method one-shot)."""
        return self.kind in ("dynamic", "sdsnn")

    @property
    def emergent_sparsity(self) -> bool:
        """The sparsity is not ``--pruning-ratio`` (dense: none; SD-SNN: what development reaches)."""
        return self.kind in ("dense", "sdsnn")

    @property
    def one_shot(self) -> bool:
        """Prunes once, at ``effective_oneshot_epoch``, whatever the user says."""
        return self.kind == "nni"

    @property
    def follows_schedule(self) -> bool:
        """Can ramp its sparsity over mask updates (``--schedule``)."""
        return self.kind == "dynamic"

    def default(self, cfg: "TrainConfig", name: str, otherwise: Any) -> Any:
        """The method's default of setting ``name`` for ``cfg`` (``otherwise`` if it gives none)."""
        table = dict(self.defaults)
        if name != "oneshot_epoch" and self.kind == "dynamic" and cfg.effective_oneshot_epoch is None:
            table.update(self.dynamic_defaults)
        if name not in table:
            return otherwise
        value = table[name]
        return value(cfg) if callable(value) else value


_REGISTRY: Dict[str, MethodSpec] = {}
_BUILTIN: Tuple[str, ...] = ()


def register_method(name: str, *, kind: str = "dynamic", description: str = "", importance=None,
                    replace: bool = False, **spec: Any):
    """Register a method; with ``importance`` (or ``kind`` other than dynamic/init) directly, else as
    a decorator of the importance factory ``fn(cfg) -> tp.importance.Importance`` (returned
    unchanged). ``spec``: the other :class:`MethodSpec` fields. A name already registered is refused
    unless ``replace=True`` (the built-ins cannot be replaced)."""

    def add(factory) -> Any:
        if name in _BUILTIN:
            raise ValueError(f"method {name!r} is built in and cannot be replaced; register yours under another name")
        if name in _REGISTRY and not replace:
            raise ValueError(f"method {name!r} is already registered; pass replace=True to replace it, or choose "
                             "another name")
        doc = (factory.__doc__ or "").strip() if factory is not None else ""
        _REGISTRY[name] = MethodSpec(name=name, kind=kind, description=description or doc, importance=factory, **spec)
        return factory

    if importance is not None or kind not in ("dynamic", "init"):
        add(importance)
        return _REGISTRY[name]
    return add


def unregister_method(name: str) -> None:
    """Remove a method registered with :func:`register_method` (not a built-in)."""
    if name in _BUILTIN:
        raise ValueError(f"method {name!r} is built in and cannot be removed")
    if name not in _REGISTRY:
        raise ValueError(f"method {name!r} is not registered")
    del _REGISTRY[name]


def method_names() -> Tuple[str, ...]:
    """Every registered method, built-ins first (in registration order)."""
    return tuple(_REGISTRY)


def is_dense_label(label: Any) -> bool:
    """Whether a run's method label names the unpruned baseline (a method of kind ``dense``): the
    name recorded in ``metrics.json``, or the ``"<method> (<setting>=<value>, ...)"`` label
    :func:`sca_plugin.reporting.label_runs` gives runs whose settings differ. Reports and plots ask
    this instead of comparing labels with ``"dense"``."""
    spec = _REGISTRY.get(str(label or "").split(" (", 1)[0])
    return spec is not None and spec.kind == "dense"


def get_method(name: str) -> MethodSpec:
    """The spec of ``name``: a registered method, or ``module:name`` (the module, importable from the
    current folder, registers ``name`` when imported). ValueError naming the fix otherwise."""
    if not isinstance(name, str):
        raise ValueError(f"a method is a name (string), got {name!r}")
    if name in _REGISTRY:
        return _REGISTRY[name]
    if ":" in name:
        module_name, _, method = name.partition(":")
        import_user_module(module_name, f"method {name!r}", wrap_all=True)
        if method in _REGISTRY:
            return _REGISTRY[method]
        raise ValueError(f"unknown method {name!r}: importing {module_name} registered no method {method!r} "
                         "(decorate its importance factory with @sca_plugin.methods.register_method"
                         f"({method!r}))")
    raise ValueError(f"unknown method {name!r}; use one of {', '.join(_REGISTRY)}, or module:name for a method "
                     "your module registers (sca_plugin.methods.register_method)")


# --------------------------------------------------------------------------- pruner factories
def classifier_of(model: nn.Module) -> nn.Module:
    """The output layer (never pruned): ``model.classifier``, else the last ``nn.Linear``."""
    from .config import ConfigError

    if isinstance(getattr(model, "classifier", None), nn.Module):
        return model.classifier
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ConfigError("the model has no `classifier` attribute and no nn.Linear to treat as the output layer")
    return linears[-1]


def ramp_updates(cfg: "TrainConfig", steps_per_epoch: int) -> int:
    """``cfg.effective_ramp_updates``; with ``update_interval`` the updates of the first quarter of the epochs."""
    if cfg.effective_ramp_updates is not None:
        return cfg.effective_ramp_updates
    return max(1, (max(1, cfg.epochs // 4) * steps_per_epoch) // cfg.update_interval)


def last_update(cfg: "TrainConfig", steps_per_epoch: int) -> int:
    """0-based index of the last mask update of a dynamic run (where cosine regrowth reaches 0)."""
    epochs = cfg.epochs - cfg.effective_fixed_mask_epochs
    updates = epochs if cfg.update_interval is None else (epochs * steps_per_epoch) // cfg.update_interval
    return max(1, updates - 1)


def _sca_pruner(cfg: "TrainConfig", spec: MethodSpec, model: nn.Module, example: Any, steps_per_epoch: int):
    from .pruner import SCAPruner

    return SCAPruner(model, example, importance=spec.importance(cfg), pruning_ratio=cfg.pruning_ratio,
                     regrow_ratio=cfg.effective_regrow_ratio, global_pruning=cfg.effective_global_pruning,
                     ignored_layers=[classifier_of(model)], l1=cfg.l1, bn_l1=cfg.effective_bn_l1, mode=cfg.mode,
                     schedule=cfg.effective_schedule, ramp_updates=ramp_updates(cfg, steps_per_epoch),
                     update_interval=cfg.update_interval, regrow_decay=cfg.regrow_decay, masking=cfg.masking,
                     regrow_signal=cfg.regrow_signal, max_pruning_ratio=cfg.max_pruning_ratio,
                     regrow_relative_to=cfg.regrow_relative_to,
                     regrow_decay_updates=last_update(cfg, steps_per_epoch) if cfg.regrow_decay == "cosine" else None)


def _sdsnn_pruner(cfg: "TrainConfig", spec: MethodSpec, model: nn.Module, example: Any, steps_per_epoch: int):
    from .sdsnn import SDSNNPruner

    return SDSNNPruner(model, example, ignored_layers=[classifier_of(model)], N=cfg.effective_sdsnn_n,
                       initial_rate=cfg.sdsnn_initial_rate, initial_fc_rate=cfg.sdsnn_initial_fc_rate,
                       regen_cap=cfg.sdsnn_regen_cap, range_layers=cfg.sdsnn_range_layers,
                       update_interval=cfg.update_interval, masking=cfg.masking,
                       root_module_types=(tp.ops.TORCH_CONV, tp.ops.TORCH_LINEAR))  # hidden FC layers too


def _nni_pruning(cfg: "TrainConfig", spec: MethodSpec, model: nn.Module, example: Any, steps_per_epoch: int):
    from .nni import NNIBuiltinPruning

    return NNIBuiltinPruning(model, example, spec.nni_pruner, cfg.pruning_ratio,
                             ignored_layers=[classifier_of(model)], global_ranking=cfg.effective_global_pruning,
                             rounding=cfg.nni_rounding)


_FACTORIES = {"dense": None, "dynamic": _sca_pruner, "init": _sca_pruner, "nni": _nni_pruning,
              "sdsnn": _sdsnn_pruner}


def build_pruner(cfg: "TrainConfig", model: nn.Module, example: Any, steps_per_epoch: int = 1):
    """The pruner of ``cfg.method`` on ``model``: an :class:`~sca_plugin.SCAPruner` (dynamic, init),
    :class:`~sca_plugin.SDSNNPruner`, an unrun :class:`~sca_plugin.nni.NNIBuiltinPruning` (nni), or
    None (dense). Its constructor checks its arguments against each other and against the model."""
    spec = get_method(cfg.method)
    factory = _FACTORIES[spec.kind]
    return None if factory is None else factory(cfg, spec, model, example, steps_per_epoch)


# --------------------------------------------------------------------------- the built-ins
def _builtin() -> None:
    from .importance import SCAImportance

    def sca(cfg):
        return SCAImportance(normalizer=cfg.sca_normalizer)

    def epochs_quarter(cfg):
        return max(1, cfg.epochs // 4)

    tpi = tp.importance
    specs = [
        MethodSpec("dense", "dense", "no pruning (the reference row)"),
        MethodSpec("sca", "dynamic", "SCA prune-and-regrow: membrane-activity scores, regrowth by |dL/dgamma|",
                   importance=sca, dynamic_defaults={"regrow_ratio": 0.1, "schedule": "cubic", "global_pruning": False},
                   options=("sca_normalizer",)),
        MethodSpec("sca-prune-only", "dynamic", "SCA without regrowth (the paper's ablation)", importance=sca,
                   dynamic_defaults={"schedule": "cubic", "global_pruning": False}, regrows=False,
                   options=("sca_normalizer",)),
        MethodSpec("random-init", "init", "a random mask fixed before training (the paper's ablation)",
                   importance=lambda cfg: tpi.RandomImportance()),
        MethodSpec("l1", "dynamic", "Torch-Pruning's group L1 magnitude",
                   importance=lambda cfg: tpi.GroupMagnitudeImportance(p=1), baseline=True),
        MethodSpec("l2", "dynamic", "Torch-Pruning's group L2 magnitude",
                   importance=lambda cfg: tpi.GroupMagnitudeImportance(p=2), baseline=True),
        MethodSpec("bnscale", "dynamic", "Torch-Pruning's BatchNorm scale (network slimming) with BN-scale L1",
                   importance=lambda cfg: tpi.BNScaleImportance(), defaults={"bn_l1": 1e-4}, baseline=True),
        MethodSpec("taylor", "dynamic", "Torch-Pruning's group Taylor",
                   importance=lambda cfg: tpi.GroupTaylorImportance(), baseline=True),
        MethodSpec("lamp", "dynamic", "Torch-Pruning's LAMP", importance=lambda cfg: tpi.LAMPImportance(p=2),
                   baseline=True),
        MethodSpec("random", "dynamic", "Torch-Pruning's random importance, re-drawn at every update",
                   importance=lambda cfg: tpi.RandomImportance(), baseline=True),
    ]
    nni_defaults = {"global_pruning": False, "oneshot_epoch": epochs_quarter}
    for name, training in (("l1norm", False), ("fpgm", False), ("slim", True), ("taylor", True)):
        specs.append(MethodSpec(f"nni-{name}", "nni", f"NNI 3.0's built-in {name} pruner, one-shot", nni_pruner=name,
                                nni_training=training, defaults=nni_defaults, baseline=True))
    specs.append(MethodSpec("sdsnn", "sdsnn", "SD-SNN: adaptive structural development (pruning and regeneration)"))
    for spec in specs:
        _REGISTRY[spec.name] = spec


_builtin()
_BUILTIN = tuple(_REGISTRY)

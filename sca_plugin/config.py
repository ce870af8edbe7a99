"""Training-run settings: one dataclass whose fields are the CLI flags and the config-file keys."""
from __future__ import annotations

import dataclasses
import json
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

from .masking import MASKINGS
from .methods import MethodSpec, get_method, method_names
from .regrowth import REGROW_SIGNALS
from .schedule import SCHEDULES
from .selection import MODES, REGROW_BASES

__all__ = ["METHODS", "PRESETS", "RUN_FREE_FIELDS", "TrainConfig", "ConfigError", "load_config_file"]

#: the built-in pruning methods (``sca_plugin.methods``; ``register_method`` adds yours): SCA, the
#: paper's ablation, Torch-Pruning's and NNI's built-in criteria, SD-SNN
METHODS = method_names()

#: named bundles of settings (``--preset``); flags and config-file keys given explicitly win.
#: ``paper``: what the SCA reference code (GitHub lyn888/sca, first commit) trains with: SGD lr 0.01,
#: momentum 0.9, no weight decay, StepLR(100, 0.1), batch 64, IF neurons, L1 3e-5 on conv weights,
#: global ranking, the mask rebuilt at every epoch including the last (no fixed-mask phase), masked
#: channels zeroed once per update and reviving in between ("soft"), regrowth by the last batch's
#: |dL/dgamma|, no per-layer cap. The reference trains 320 epochs (the paper says 300): set
#: --epochs yourself. The defaults of the flags are the recommended settings (see the README).
PRESETS: Dict[str, Dict[str, Any]] = {
    "paper": {"lr": 0.01, "momentum": 0.9, "weight_decay": 0.0, "optimizer": "sgd", "lr_schedule": "step",
              "lr_step_size": 100, "lr_gamma": 0.1, "batch_size": 64, "neuron": "if", "l1": 3e-5,
              "global_pruning": True, "mode": "rebuild", "masking": "soft", "regrow_signal": "last",
              "fixed_mask_epochs": 0, "max_pruning_ratio": 1.0, "regrow_decay": "constant", "schedule": "constant",
              "regrow_relative_to": "all"},
}


#: settings that do not change what a run computes (where it is written, how it reports, on which
#: device and whether compiled): they may differ between a run and its ``--resume``, between a
#: finished run and a benchmark's request for it, and ``sca-prune report`` does not tell runs apart by them
RUN_FREE_FIELDS = frozenset({"output_dir", "resume", "progress", "tensorboard", "device", "compile"})


class ConfigError(ValueError):
    """A user-fixable problem with the settings (bad value, unknown key); one line.

    ``key``: the setting at fault, where the error is about one setting's value (else None)."""

    def __init__(self, message: str, key: Optional[str] = None) -> None:
        super().__init__(message)
        self.key = key


_TYPE_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _field_types() -> Dict[str, tuple]:
    """``{field: (type, optional)}`` of :class:`TrainConfig` (types: int, float, bool, str)."""
    global _FIELD_TYPES
    if _FIELD_TYPES is None:
        out = {}
        for name, hint in typing.get_type_hints(TrainConfig).items():
            args = typing.get_args(hint)
            optional = type(None) in args
            kind = next((a for a in args if a is not type(None)), hint) if args else hint
            out[name] = (kind, optional)
        _FIELD_TYPES = out
    return _FIELD_TYPES


_FIELD_TYPES: Optional[Dict[str, tuple]] = None
_NUMBER = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$")  # what YAML 1.1 leaves a string: 1e-3


def _type_error(name: str, value: Any) -> Optional[str]:
    """Why ``value`` is not of the type of setting ``name`` (None if it is)."""
    kind, optional = _field_types()[name]
    if value is None and optional:
        return None
    if kind is float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    elif kind is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    else:
        ok = isinstance(value, kind)
    if ok:
        return None
    expected = _TYPE_NAMES.get(kind, kind.__name__) + (" or null (unset)" if optional else "")
    return f"setting {name!r} must be {expected}, got {value!r} ({type(value).__name__})"


#: the settings that take one of a few names (None, where a setting allows it, is checked apart)
SETTING_CHOICES: Dict[str, tuple] = {
    "mode": MODES, "masking": MASKINGS, "regrow_signal": REGROW_SIGNALS, "step_mode": ("m", "s"),
    "regrow_decay": ("constant", "cosine"), "sca_normalizer": ("mean", "max", "sum"),
    "sdsnn_range_layers": ("all", "last"), "lr_schedule": ("cosine", "step"), "optimizer": ("sgd", "adam"),
    "schedule": SCHEDULES, "regrow_relative_to": REGROW_BASES, "nni_rounding": ("down", "nearest"),
}


@dataclass
class TrainConfig:
    dataset: str = field(default="digits", metadata={"help": "digits, mnist, fashion-mnist, nmnist-sim, cifar10, cifar100, nmnist, dvs-gesture, cifar10-dvs"})
    data_root: Optional[str] = field(default=None, metadata={"help": "folder of a user-supplied dataset"})
    train_limit: Optional[int] = field(default=None, metadata={"help": "use a fixed random subset of this many training samples"})
    test_limit: Optional[int] = field(default=None, metadata={"help": "use a fixed random subset of this many test samples"})
    model: str = field(default="digits_cnn", metadata={"help": "a name from sca_plugin.models or module:callable (importable from the current folder); a factory gets the keywords it accepts of num_classes, in_channels, T, width, neuron, step_mode, input_size"})
    width: float = field(default=1.0, metadata={"help": "channel width multiplier of the reference models"})
    neuron: str = field(default="if", metadata={"help": "if, lif or plif"})
    step_mode: str = field(default="m", metadata={"help": "m (multi-step) or s (single-step)"})
    time_steps: int = field(default=4, metadata={"help": "T for static images (direct encoding) and event frames"})
    method: str = field(default="sca", metadata={"help": ", ".join(METHODS) + ", or module:name (a method your module registers with sca_plugin.methods.register_method)"})
    pruning_ratio: float = field(default=0.5, metadata={"help": "fraction of prunable channels removed"})
    regrow_ratio: Optional[float] = field(default=None, metadata={"help": "fraction regrown per update (default 0.1 for sca, else 0)"})
    regrow_relative_to: str = field(default="all", metadata={"help": "all (paper: --regrow-ratio of all prunable channels, half of the kept ones at 0.8 sparsity for 0.1) or kept (of the kept channels: the same share exchanged at every sparsity)"})
    regrow_decay: str = field(default="constant", metadata={"help": "constant (paper: the same regrow ratio at every update) or cosine (RigL-style decay to 0 by the last mask update)"})
    sca_normalizer: Optional[str] = field(default=None, metadata={"help": "sca methods with --global-pruning: normalise the SCA scores of each group before the global ranking (mean, max, sum; default raw scores as in the paper)"})
    sdsnn_n: Optional[int] = field(default=None, metadata={"help": "sdsnn: consecutive-epoch count N (public code 18 for 300-600 epochs; default max(1, round(epochs * 18 / 300)))"})
    sdsnn_initial_rate: float = field(default=0.5, metadata={"help": "sdsnn: starting cumulative pruning rate of conv layers, percent (public code 0.5)"})
    sdsnn_initial_fc_rate: float = field(default=2.0, metadata={"help": "sdsnn: starting cumulative pruning rate of hidden fully connected layers, percent (public CIFAR code 2, MNIST code 35)"})
    sdsnn_regen_cap: float = field(default=99.0, metadata={"help": "sdsnn: final regeneration percentile (public code 99; 100 stops regeneration)"})
    sdsnn_range_layers: str = field(default="all", metadata={"help": "sdsnn: all (the method) or last (the public CIFAR code's slip)"})
    global_pruning: Optional[bool] = field(default=None, metadata={"help": "rank all layers together (else per layer); default: per layer for the dynamic sca and sca-prune-only (measured better on the long-budget benchmarks; --preset paper ranks globally, as the reference code) and the nni-* methods (NNI's per-layer sparse_ratio; its global ratio counts weights, not channels), global for the others"})
    preset: Optional[str] = field(default=None, metadata={"help": "paper: the SCA reference code's training settings (explicit flags win); default: the recommended settings"})
    mode: str = field(default="rebuild", metadata={"help": "rebuild (reference code: the mask rebuilt from scratch at every update) or incremental (only previously kept channels can be pruned, only previously masked ones regrown)"})
    masking: str = field(default="reset", metadata={"help": "reset (forward mask, masked channels' BatchNorm weight and bias zeroed at every update), reset-filters (filter rows zeroed too), soft (reference code: zeroed at every update, reviving in between) or mask (forward mask only; parameters drift; ablation)"})
    regrow_signal: str = field(default="mean", metadata={"help": "mean (|dL/dgamma| averaged since the last update) or last (the last batch's, as the reference code)"})
    max_pruning_ratio: Optional[float] = field(default=None, metadata={"help": "no layer loses more than this fraction of its channels (default (1 + pruning_ratio) / 2; 1 lifts the cap)"})
    schedule: Optional[str] = field(default=None, metadata={"help": "constant (paper: the full target from the first update), linear or cubic (AGP) ramp to the target; default cubic for the dynamic sca methods, constant otherwise (measured: README, Long-budget quality)"})
    ramp_updates: Optional[int] = field(default=None, metadata={"help": "mask updates over which a linear/cubic schedule ramps to the target (default: those of the first quarter of the epochs)"})
    update_interval: Optional[int] = field(default=None, metadata={"help": "update masks every N steps (default: once per epoch)"})
    oneshot_epoch: Optional[int] = field(default=None, metadata={"help": "prune once after this epoch, then fine-tune (no further updates); nni-* methods default to max(1, epochs // 4)"})
    nni_rounding: str = field(default="down", metadata={"help": "nni-*: channels each layer loses: down (NNI's own int(n * ratio)) or nearest (round(n * ratio), what the other methods prune per layer: NNI keeps 2 / 4 / 7 of 8 / 16 / 32 channels at 0.8, nearest 2 / 3 / 6, for comparisons at equal structure)"})
    nni_training_steps: int = field(default=50, metadata={"help": "nni-slim / nni-taylor: training steps NNI runs at the one-shot epoch to score channels (extra to --epochs)"})
    fixed_mask_epochs: Optional[int] = field(default=None, metadata={"help": "final epochs that train the final structure, masks fixed (default max(1, epochs // 6); 0: the reference code's update after the last epoch)"})
    dense_baseline: bool = field(default=True, metadata={"help": "also train the dense model with the same budget and report its accuracy"})
    l1: float = field(default=3e-5, metadata={"help": "L1 strength on conv weights"})
    bn_l1: Optional[float] = field(default=None, metadata={"help": "L1 strength on the BatchNorm scales of prunable channels (network slimming's sparse training; default 1e-4 for bnscale, else 0; nni-slim trains its own scaling factors)"})
    epochs: int = field(default=30, metadata={"help": "training epochs"})
    batch_size: int = field(default=64, metadata={"help": "mini-batch size"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd or adam"})
    lr: float = field(default=0.1, metadata={"help": "learning rate"})
    lr_schedule: str = field(default="cosine", metadata={"help": "cosine (annealed over the epochs) or step (times lr_gamma every lr_step_size epochs: the SCA reference code's StepLR(100, 0.1))"})
    lr_step_size: int = field(default=100, metadata={"help": "epochs between LR drops with --lr-schedule step"})
    lr_gamma: float = field(default=0.1, metadata={"help": "LR factor per drop with --lr-schedule step"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    compile: bool = field(default=False, metadata={"help": "torch.compile the training forward (about 1.5-1.8x faster steps on a 2-core CPU, measured in benchmarks/training_speed.py; the same training up to float rounding; evaluation and pruning stay eager)"})
    output_dir: Optional[str] = field(default=None, metadata={"help": "run folder (default runs/<dataset>-<model>-<method>-<ratio>-seed<seed>)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in output_dir from its last checkpoint, with the settings it was made with (settings given again must agree); on a finished run: say so, change nothing"})
    tensorboard: bool = field(default=False, metadata={"help": "also log to TensorBoard in output_dir/tb"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Raise :class:`ConfigError` naming the first setting that is of the wrong type, out of
        range or inconsistent with another; types are checked first, so a wrong type is reported as
        such (not as a failed comparison), then the names, the ranges, and what the method allows."""
        for f in dataclasses.fields(self):
            problem = _type_error(f.name, getattr(self, f.name))
            if problem:
                raise ConfigError(problem, key=f.name)
        try:
            spec = get_method(self.method)
        except ValueError as e:
            raise ConfigError(str(e), key="method") from None
        if self.preset is not None and self.preset not in PRESETS:
            raise ConfigError(f"unknown preset {self.preset!r}; use one of {', '.join(PRESETS)}", key="preset")
        for name, allowed in SETTING_CHOICES.items():
            value = getattr(self, name)
            if value is not None and value not in allowed:
                raise ConfigError(f"{name} must be one of {', '.join(allowed)}, got {value!r}", key=name)
        self._check_ranges()
        self._check_method(spec)

    def _check_ranges(self) -> None:
        for name in ("epochs", "batch_size", "time_steps", "ramp_updates", "nni_training_steps", "lr_step_size",
                     "sdsnn_n"):
            if getattr(self, name) is not None and getattr(self, name) < 1:
                raise ConfigError(f"{name} must be at least 1, got {getattr(self, name)}", key=name)
        for name in ("l1", "bn_l1"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name} must be >= 0, got {value}", key=name)
        if not 0.0 <= self.pruning_ratio < 1.0:
            raise ConfigError(f"pruning_ratio must be in [0, 1), got {self.pruning_ratio}", key="pruning_ratio")
        if self.max_pruning_ratio is not None and not (0.0 < self.max_pruning_ratio <= 1.0
                                                       and self.max_pruning_ratio >= self.pruning_ratio):
            raise ConfigError(f"max_pruning_ratio must be in [pruning_ratio={self.pruning_ratio}, 1], got "
                              f"{self.max_pruning_ratio}", key="max_pruning_ratio")
        if not 0.0 < self.lr_gamma <= 1.0:
            raise ConfigError(f"lr_gamma must be in (0, 1], got {self.lr_gamma}", key="lr_gamma")
        if self.fixed_mask_epochs is not None and not 0 <= self.fixed_mask_epochs < self.epochs:
            raise ConfigError(f"fixed_mask_epochs ({self.fixed_mask_epochs}) must be in [0, epochs={self.epochs}): "
                              "at least one epoch must update the masks")
        if self.oneshot_epoch is not None and not 1 <= self.oneshot_epoch <= self.epochs:
            raise ConfigError(f"oneshot_epoch must be in [1, epochs={self.epochs}], got {self.oneshot_epoch}")

    def _check_method(self, spec: MethodSpec) -> None:
        """What the method (its :class:`~sca_plugin.methods.MethodSpec`) allows of the other settings."""
        def bad(msg: str) -> ConfigError:
            return ConfigError(msg)
        if spec.kind == "sdsnn" and (self.regrow_ratio or self.oneshot_epoch is not None):
            raise bad("sdsnn regenerates synapses by its own rule and develops its structure every epoch: "
                      "drop --regrow-ratio / --oneshot-epoch")
        if self.regrow_ratio and not spec.regrows:
            what = "prunes nothing" if spec.kind == "dense" else "prunes once and never regrows" if spec.one_shot \
                else "never regrows channels"
            raise bad(f"method {self.method!r} {what}: drop --regrow-ratio")
        if self.regrow_decay == "cosine" and not self.effective_regrow_ratio:
            raise bad(f"--regrow-decay cosine decays regrowth, but method {self.method!r} regrows nothing here; "
                      "set --regrow-ratio > 0 or drop --regrow-decay")
        if self.sca_normalizer is not None and "sca_normalizer" not in spec.options:
            raise bad(f"--sca-normalizer applies to the SCA methods, not {self.method!r}")
        if self.sca_normalizer is not None and not self.effective_global_pruning:
            raise bad(f"--sca-normalizer rescales each layer's scores for the global ranking; method "
                      f"{self.method!r} ranks per layer here, where rescaling changes nothing: add "
                      "--global-pruning or drop --sca-normalizer")
        if self.nni_rounding != "down" and spec.kind != "nni":
            raise bad(f"--nni-rounding applies to the nni-* methods, not {self.method!r}: drop it")
        if self.nni_rounding == "nearest" and self.effective_global_pruning:
            raise bad("--nni-rounding nearest sets the channels each layer loses, but --global-pruning makes NNI rank "
                      "all layers together by weights: drop one of them")
        if self.schedule not in (None, "constant") and (self.oneshot_epoch is not None or not spec.follows_schedule):
            raise bad(f"--schedule {self.schedule} ramps the sparsity over many mask updates, but method "
                      f"{self.method!r}{' with --oneshot-epoch' if self.oneshot_epoch is not None else ''} "
                      "prunes once (or never): drop --schedule")
        if self.fixed_mask_epochs is None and self.epochs < 2 and spec.updates_masks \
                and self.oneshot_epoch is None:
            raise bad(f"method {self.method!r} with 1 epoch would finalize a structure it never trained (the last "
                      "epoch trains the final structure with the masks fixed): use --epochs 2 or more, or "
                      "--fixed-mask-epochs 0 to update the masks after the only epoch")
        if spec.one_shot:
            if self.update_interval is not None:
                raise bad(f"{self.method} prunes once (after --oneshot-epoch): drop --update-interval")
            if not 0.0 < self.pruning_ratio:
                raise bad(f"{self.method} needs a pruning_ratio in (0, 1), got {self.pruning_ratio}")

    @property
    def effective_fixed_mask_epochs(self) -> int:
        if self.fixed_mask_epochs is not None:
            return self.fixed_mask_epochs
        return max(1, self.epochs // 6)

    @property
    def effective_schedule(self) -> str:
        """The method's default (cubic for the dynamic SCA methods, SCA and its prune-only ablation,
        which measured better pruning gradually than at the full target from the first epoch), else
        constant (the paper's; BN-scale measured worse with the ramp; one-shot pruning)."""
        if self.schedule is not None:
            return self.schedule
        return self.spec.default(self, "schedule", "constant")

    @property
    def effective_ramp_updates(self) -> Optional[int]:
        """The updates of the first quarter of the epochs (when the NNI rows prune once) for a
        ramping schedule; None where that depends on the steps per epoch (``update_interval``:
        the runner counts them)."""
        if self.ramp_updates is not None:
            return self.ramp_updates
        if self.effective_schedule == "constant":
            return 1
        return max(1, self.epochs // 4) if self.update_interval is None else None

    def effective_dict(self) -> Dict[str, Any]:
        """``to_dict()`` with every setting whose default depends on others (``schedule``,
        ``regrow_ratio``, ``global_pruning``, ``fixed_mask_epochs``, ...) replaced by the value a run
        uses: what tells two runs apart (reports, benchmark reuse)."""
        values = self.to_dict()
        for name in values:
            effective = getattr(self, f"effective_{name}", None)
            if effective is not None:
                values[name] = effective
        return values

    @property
    def effective_sdsnn_n(self) -> int:
        return self.sdsnn_n if self.sdsnn_n is not None else max(1, round(self.epochs * 18 / 300))

    @property
    def effective_global_pruning(self) -> bool:
        if self.global_pruning is not None:
            return self.global_pruning
        return self.spec.default(self, "global_pruning", True)

    @property
    def effective_oneshot_epoch(self) -> Optional[int]:
        if self.oneshot_epoch is not None:
            return self.oneshot_epoch
        return self.spec.default(self, "oneshot_epoch", None)

    @property
    def effective_bn_l1(self) -> float:
        if self.bn_l1 is not None:
            return self.bn_l1
        return self.spec.default(self, "bn_l1", 0.0)

    @property
    def effective_regrow_ratio(self) -> float:
        if not self.spec.regrows:
            return 0.0
        if self.regrow_ratio is not None:
            return self.regrow_ratio
        return self.spec.default(self, "regrow_ratio", 0.0)

    @property
    def spec(self) -> MethodSpec:
        """The registered method :attr:`method` names (``sca_plugin.methods``)."""
        return get_method(self.method)

    def default_output_dir(self) -> str:
        model = self.model.replace(":", "_").replace("/", "_")
        return str(Path("runs") / f"{self.dataset}-{model}-{self.method}-{self.pruning_ratio:g}-seed{self.seed}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        """Settings from a mapping (keys as the flags, with - or _; a ``preset`` is expanded, the
        keys given win). A string where a number is expected is read as one when it is a number:
        YAML reads ``lr: 1e-3`` (no dot) as the string ``'1e-3'``. Any other wrong type is a
        :class:`ConfigError` naming the key and the expected type."""
        names = {f.name for f in dataclasses.fields(cls)}
        normalised = {k.replace("-", "_") if isinstance(k, str) else k: v for k, v in values.items()}
        unknown = sorted(map(str, set(normalised) - names))
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; valid keys are the train flags: {', '.join(sorted(names))}")
        preset = normalised.get("preset")
        if preset is not None:
            if not isinstance(preset, str):
                raise ConfigError(_type_error("preset", preset), key="preset")
            if preset not in PRESETS:
                raise ConfigError(f"unknown preset {preset!r}; use one of {', '.join(PRESETS)}")
            normalised = {**PRESETS[preset], **normalised}  # what was given explicitly wins
        types = _field_types()
        for name, value in normalised.items():
            if types[name][0] is float and isinstance(value, str) and _NUMBER.match(value.strip()):
                normalised[name] = float(value)  # else validate() names the key and the expected type
        try:
            return cls(**normalised)
        except TypeError as e:
            raise ConfigError(str(e)) from e


def load_config_file(path: str) -> Dict[str, Any]:
    """Read a YAML or JSON file of train settings (keys as the flags, with - or _)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"config file {path} does not exist")
    text = p.read_text()
    try:
        if p.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as e:  # any parse error is the user's file
        raise ConfigError(f"cannot parse config file {path}: {str(e).splitlines()[0]}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings, not {type(data).__name__}")
    return data

"""Training-run settings: one dataclass whose fields are the CLI flags and the config-file keys."""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Optional

__all__ = ["METHODS", "TrainConfig", "ConfigError", "load_config_file"]

#: pruning methods: SCA variants, the paper's ablation, and Torch-Pruning's built-in criteria
METHODS = ("dense", "sca", "sca-prune-only", "random-init", "l1", "l2", "bnscale", "taylor", "lamp", "random")


class ConfigError(ValueError):
    """A user-fixable problem with the settings (bad value, unknown key); one line."""


@dataclass
class TrainConfig:
    dataset: str = field(default="digits", metadata={"help": "digits, mnist, fashion-mnist, nmnist-sim, cifar10, cifar100, nmnist, dvs-gesture, cifar10-dvs"})
    data_root: Optional[str] = field(default=None, metadata={"help": "folder of a user-supplied dataset"})
    train_limit: Optional[int] = field(default=None, metadata={"help": "use a fixed random subset of this many training samples"})
    test_limit: Optional[int] = field(default=None, metadata={"help": "use a fixed random subset of this many test samples"})
    model: str = field(default="digits_cnn", metadata={"help": "a name from sca_plugin.models or module:callable"})
    width: float = field(default=1.0, metadata={"help": "channel width multiplier of the reference models"})
    neuron: str = field(default="if", metadata={"help": "if, lif or plif"})
    step_mode: str = field(default="m", metadata={"help": "m (multi-step) or s (single-step)"})
    time_steps: int = field(default=4, metadata={"help": "T for static images (direct encoding) and event frames"})
    method: str = field(default="sca", metadata={"help": ", ".join(METHODS)})
    pruning_ratio: float = field(default=0.5, metadata={"help": "fraction of prunable channels removed"})
    regrow_ratio: Optional[float] = field(default=None, metadata={"help": "fraction regrown per update (default 0.1 for sca, else 0)"})
    global_pruning: bool = field(default=True, metadata={"help": "rank all layers together (else per layer)"})
    mode: str = field(default="incremental", metadata={"help": "incremental or rebuild (reference code)"})
    schedule: str = field(default="constant", metadata={"help": "constant, linear or cubic sparsity schedule"})
    ramp_updates: int = field(default=1, metadata={"help": "mask updates over which linear/cubic ramp to the target"})
    update_interval: Optional[int] = field(default=None, metadata={"help": "update masks every N steps (default: once per epoch)"})
    oneshot_epoch: Optional[int] = field(default=None, metadata={"help": "prune once after this epoch, then fine-tune (no further updates)"})
    fixed_mask_epochs: Optional[int] = field(default=None, metadata={"help": "final epochs trained without mask updates (default epochs // 6)"})
    dense_baseline: bool = field(default=True, metadata={"help": "also train the dense model with the same budget and report its accuracy"})
    l1: float = field(default=3e-5, metadata={"help": "L1 strength on conv weights"})
    epochs: int = field(default=30, metadata={"help": "training epochs"})
    batch_size: int = field(default=64, metadata={"help": "mini-batch size"})
    optimizer: str = field(default="sgd", metadata={"help": "sgd or adam"})
    lr: float = field(default=0.1, metadata={"help": "learning rate (cosine schedule)"})
    momentum: float = field(default=0.9, metadata={"help": "SGD momentum"})
    weight_decay: float = field(default=0.0, metadata={"help": "weight decay"})
    seed: int = field(default=0, metadata={"help": "random seed"})
    device: str = field(default="cpu", metadata={"help": "cpu or cuda"})
    output_dir: Optional[str] = field(default=None, metadata={"help": "run folder (default runs/<dataset>-<model>-<method>-<ratio>-seed<seed>)"})
    resume: bool = field(default=False, metadata={"help": "continue the run in output_dir from its last checkpoint"})
    tensorboard: bool = field(default=False, metadata={"help": "also log to TensorBoard in output_dir/tb"})
    progress: bool = field(default=True, metadata={"help": "progress bars"})

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        def bad(msg: str) -> ConfigError:
            return ConfigError(msg)
        if self.method not in METHODS:
            raise bad(f"unknown method {self.method!r}; use one of {', '.join(METHODS)}")
        if self.step_mode not in ("m", "s"):
            raise bad(f"step_mode must be 'm' or 's', got {self.step_mode!r}")
        if self.optimizer not in ("sgd", "adam"):
            raise bad(f"optimizer must be 'sgd' or 'adam', got {self.optimizer!r}")
        for name in ("epochs", "batch_size", "time_steps", "ramp_updates"):
            if getattr(self, name) < 1:
                raise bad(f"{name} must be at least 1, got {getattr(self, name)}")
        if not 0.0 <= self.pruning_ratio < 1.0:
            raise bad(f"pruning_ratio must be in [0, 1), got {self.pruning_ratio}")
        if self.method == "dense" and self.pruning_ratio and self.regrow_ratio:
            raise bad("method 'dense' prunes nothing: drop --regrow-ratio")
        if self.fixed_mask_epochs is not None and not 0 <= self.fixed_mask_epochs < self.epochs:
            raise bad(f"fixed_mask_epochs ({self.fixed_mask_epochs}) must be in [0, epochs={self.epochs}): "
                      "at least one epoch must update the masks")
        if self.oneshot_epoch is not None and not 1 <= self.oneshot_epoch <= self.epochs:
            raise bad(f"oneshot_epoch must be in [1, epochs={self.epochs}], got {self.oneshot_epoch}")

    @property
    def effective_fixed_mask_epochs(self) -> int:
        return self.epochs // 6 if self.fixed_mask_epochs is None else self.fixed_mask_epochs

    @property
    def effective_regrow_ratio(self) -> float:
        if self.regrow_ratio is not None:
            return self.regrow_ratio
        return 0.1 if self.method == "sca" and self.oneshot_epoch is None else 0.0

    def default_output_dir(self) -> str:
        model = self.model.replace(":", "_").replace("/", "_")
        return str(Path("runs") / f"{self.dataset}-{model}-{self.method}-{self.pruning_ratio:g}-seed{self.seed}")

    def to_dict(self) -> Dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: Dict[str, Any]) -> "TrainConfig":
        names = {f.name for f in dataclasses.fields(cls)}
        normalised = {k.replace("-", "_"): v for k, v in values.items()}
        unknown = sorted(set(normalised) - names)
        if unknown:
            raise ConfigError(f"unknown setting(s) {unknown}; valid keys are the train flags: {', '.join(sorted(names))}")
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

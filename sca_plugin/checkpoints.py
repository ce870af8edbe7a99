"""A run folder's files: the checkpoint ``--resume`` continues from (with the RNG state), the
finished run's ``metrics.json`` and ``model.pt``, and the checks that a folder may be written or
resumed with the given settings. Every error says how to recover."""
from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn

from .config import RUN_FREE_FIELDS, ConfigError, TrainConfig
from .distributed import rank
from .records import METRICS_FILE, MetricsFileError, read_run_metrics

__all__ = ["RunError", "CHECKPOINT", "PREVIOUS_CHECKPOINT", "METRICS", "MODEL", "MODEL_STATE", "BASELINE",
           "load_run_config", "load_finalized_model", "read_checkpoint", "read_metrics", "check_output_dir",
           "finished_run", "rng_state", "set_rng_state"]

CHECKPOINT, METRICS, MODEL, MODEL_STATE = "checkpoint.pt", METRICS_FILE, "model.pt", "model_state.pth"


PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the checkpoint of the epoch before, kept until the next one is written


BASELINE = "dense_baseline.json"


_CHECKPOINT_KEYS = ("config", "epoch", "model", "optimizer", "scheduler", "rng", "epochs_log")  # what resume reads


# settings that may differ between an interrupted run and its resumption
_RESUME_FREE = RUN_FREE_FIELDS


class RunError(RuntimeError):
    """A run cannot start or continue (existing output, unreadable or mismatched checkpoint)."""


def rng_state(generator: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "loader": generator.get_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state["python"]))
    generator.set_state(state["loader"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


def read_checkpoint(out: Path) -> dict:
    """``out``'s checkpoint for ``--resume``; RunError (with how to recover) when absent or unreadable."""
    ck_path = out / CHECKPOINT
    previous = _previous_checkpoint_hint(out)
    if not ck_path.is_file():
        raise RunError(f"--resume: {ck_path} does not exist; {previous or 'start the run without --resume'}")
    try:
        return torch.load(ck_path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise RunError(f"--resume: {ck_path} is unreadable or truncated ({type(e).__name__}); "
                       f"{previous or 'start a new run in another --output-dir'}") from e


def read_metrics(out: Path) -> dict:
    """The finished run's record (:func:`sca_plugin.records.read_run_metrics`); RunError with the fix."""
    try:
        return read_run_metrics(out / METRICS)
    except MetricsFileError as e:
        raise RunError(f"{e}; the run's results are damaged: start a new run in another --output-dir") from e


def load_run_config(run_dir: "os.PathLike[str] | str") -> Dict[str, Any]:
    """The settings a run folder was made with (``TrainConfig.to_dict()`` form): a finished run's
    ``metrics.json``, else its checkpoint. RunError when the folder holds neither (or they are
    unreadable); what ``--resume`` starts from."""
    out = Path(run_dir)
    if (out / METRICS).is_file():
        return dict(read_metrics(out).get("config") or {})
    return dict(read_checkpoint(out).get("config") or {})


def _settings_diff(saved: Dict[str, Any], cfg: TrainConfig) -> List[str]:
    """The settings (other than ``RUN_FREE_FIELDS``) in which ``cfg`` differs from the stored ``saved``."""
    saved = {k: v for k, v in saved.items() if k not in _RESUME_FREE}
    try:  # settings added since the run was made count with their defaults
        saved = {k: v for k, v in TrainConfig.from_dict(saved).to_dict().items() if k not in _RESUME_FREE}
    except ConfigError:
        pass
    now = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE}
    return sorted(k for k in now if saved.get(k) != now[k])


def check_output_dir(cfg: TrainConfig, out: Path) -> Optional[dict]:
    if cfg.resume:
        ck = read_checkpoint(out)
        diff = _settings_diff(ck.get("config", {}), cfg)
        if diff:
            raise RunError(f"--resume: the checkpoint was made with other settings ({', '.join(diff)}); "
                           "resume with the same settings")
        missing = [k for k in _CHECKPOINT_KEYS if k not in ck]
        if missing:
            previous = _previous_checkpoint_hint(out)
            raise RunError(f"--resume: {out / CHECKPOINT} is incomplete (no {', '.join(missing)}); "
                           f"{previous or 'start a new run in another --output-dir'}")
        return ck
    if (out / METRICS).exists() or (out / CHECKPOINT).exists() or (out / PREVIOUS_CHECKPOINT).exists():
        raise RunError(f"{out} already holds a run; pass --resume to continue it or choose another --output-dir")
    return None


def finished_run(cfg: TrainConfig, out: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    """``--resume`` of a run that already finished: its metrics, nothing trained or written; RunError
    when ``cfg`` asks for other settings than the run was made with."""
    metrics = read_metrics(out)
    diff = _settings_diff(metrics.get("config") or {}, cfg)
    if diff:
        raise RunError(f"--resume: {out} is a finished run made with other settings ({', '.join(diff)}); "
                       "choose another --output-dir for these settings")
    log(f"{out} is a finished run ({out / METRICS} written after epoch {len(metrics.get('epochs_log') or [])}): "
        "nothing to resume, nothing changed")
    return metrics if rank() == 0 else {}


def _previous_checkpoint_hint(out: Path) -> Optional[str]:
    """How to resume from the kept previous checkpoint, if it is intact."""
    prev = out / PREVIOUS_CHECKPOINT
    if not prev.is_file():
        return None
    try:
        epoch = torch.load(prev, map_location="cpu", weights_only=True)["epoch"]
    except Exception:
        return None
    return (f"the previous checkpoint {prev} (after epoch {epoch}) is intact: move it to {out / CHECKPOINT} "
            "to resume from it (the result is the same, one epoch is redone)")


def load_finalized_model(run_dir: str, device: str = "cpu") -> nn.Module:
    """The finalized model of a run folder (``model.pt``; unpickles code: trusted folders only).

    RunError naming the cause: the file is missing; the model's code is not importable here (a
    ``module:callable`` model whose module is not on the path: which module, and how to make it
    importable); or the file is damaged."""
    path = Path(run_dir) / MODEL
    if not path.is_file():
        raise RunError(f"{path} does not exist; is {run_dir} a finished `sca-prune train` run?")
    try:
        return torch.load(path, map_location=device, weights_only=False)
    except ModuleNotFoundError as e:
        top = (e.name or "").split(".")[0]
        if top == "sca_plugin" or not e.name:
            raise RunError(f"cannot load {path}: it needs module {e.name!r}, which this version of sca_plugin "
                           "does not have; load it with the version that trained it") from e
        raise RunError(f"cannot load {path}: the model's code is in module {e.name!r}, which is not importable "
                       f"here (the file itself is fine); run from the folder that holds {top}.py, or add that "
                       f"folder to PYTHONPATH") from e
    except AttributeError as e:
        if "Can't get attribute" not in str(e):
            raise RunError(f"cannot load {path} ({type(e).__name__}: {e}); the file is damaged or from another "
                           "version") from e
        raise RunError(f"cannot load {path}: {e} (the model's class was renamed or removed since training); "
                       "restore it, or load the file with the code that trained it") from e
    except Exception as e:
        raise RunError(f"cannot load {path} ({type(e).__name__}: {e}); the file is damaged or from another "
                       "version") from e

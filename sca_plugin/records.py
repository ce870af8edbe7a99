"""The record a run leaves: ``metrics.json``, typed, and its one reader.

``sca-prune train`` writes it (:mod:`~sca_plugin.runner`), ``sca-prune eval``/``report`` and the
benchmarks read it (:func:`read_run_metrics`). :class:`RunMetrics` names the fields and their
types; ``docs/metrics.md`` says what each cost figure counts. Runs written by earlier versions may
lack fields added since (every reader uses ``.get``); where a default has changed since, the reader
fills in the value such a run used (:data:`LEGACY_DEFAULTS`)."""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Dict, List, Optional, TypedDict, Union

__all__ = ["RunMetrics", "Accuracy", "Collapse", "MetricsFileError", "read_run_metrics", "METRICS_FILE"]

METRICS_FILE = "metrics.json"


class Accuracy(TypedDict):
    """Test accuracies as fractions: the dense baseline's (None without one), the masked model's
    before removal (None for methods without masks), and the finalized model's."""
    dense: Optional[float]
    masked: Optional[float]
    final: float


class Collapse(TypedDict):
    """:func:`sca_plugin.collapse.collapse_check`: whether the run did not learn, and why."""
    collapsed: bool
    reasons: List[str]


class RunMetrics(TypedDict, total=False):
    dataset: str
    model: str
    method: str
    pruning_ratio: float
    regrow_ratio: float
    seed: int
    epochs: int
    time_steps: int
    model_settings_unused: List[str]
    simulated_data: bool
    data_description: str
    input_shape: List[int]
    data_kind: str
    num_classes: int
    accuracy: Accuracy
    collapse: Collapse
    parameters: Dict[str, int]                  # before / after
    macs: Dict[str, Dict[str, int]]             # before / after: per_step, total
    synops: Dict[str, Optional[float]]          # before / after, per sample
    activation_sparsity: Optional[float]
    firing_rates: Dict[str, float]
    energy: Dict[str, Any]
    neurobench: Dict[str, Any]
    metrics_samples: int
    definitions: Dict[str, str]
    dense_baseline: Optional[Dict[str, Any]]
    spiking_metrics: Dict[str, Any]
    channels: Dict[str, Dict[str, int]]         # before / after: {layer: channels}
    history: List[Dict[str, Any]]               # one entry per mask update
    importance_scores: Dict[str, List[float]]
    connectivity: Optional[Dict[str, float]]
    synops_connected: Optional[float]
    epochs_log: List[Dict[str, Any]]            # epoch, loss, test_accuracy, sparsity, lr, seconds
    config: Dict[str, Any]                      # TrainConfig.to_dict()
    effective_settings: Dict[str, Any]          # the settings whose default depends on others, as used
    device: str
    environment: Dict[str, Any]                 # sca_plugin.environment.run_environment: CPU, threads, versions
    distributed: Optional[Dict[str, Any]]
    wall_time_s: float


#: defaults that changed, for records written before ``effective_settings`` existed: ``{setting:
#: (methods, the value those runs used when the setting was left unset)}``. The dynamic ``sca`` and
#: ``sca-prune-only`` ranked all layers together until per-layer ranking was measured better (issue 11).
LEGACY_DEFAULTS: Dict[str, tuple] = {"global_pruning": (("sca", "sca-prune-only"), True)}


def _with_legacy_defaults(data: Dict[str, Any]) -> Dict[str, Any]:
    """An older record's unset settings whose default has changed since, set to what that run used,
    so that every reader resolves the run's settings as they were (not as today's defaults say)."""
    config = data.get("config")
    if "effective_settings" in data or not isinstance(config, dict):
        return data
    for name, (methods, value) in LEGACY_DEFAULTS.items():
        if config.get(name) is None and config.get("method") in methods:
            config[name] = value
    return data


class MetricsFileError(ValueError):
    """A ``metrics.json`` that is missing, unreadable, not JSON or not a JSON object."""


def read_run_metrics(path: Union[str, "os.PathLike[str]"]) -> RunMetrics:
    """The record of a run: ``path`` is a run folder (its ``metrics.json``) or the file itself.
    :class:`MetricsFileError` naming the file and what is wrong with it."""
    p = Path(path)
    f = p / METRICS_FILE if p.is_dir() else p
    if not f.is_file():
        raise MetricsFileError(f"no {METRICS_FILE} in {p}" if p.is_dir() else f"{p} does not exist")
    try:
        data = json.loads(f.read_text())
    except (OSError, ValueError) as e:
        raise MetricsFileError(f"{f} is unreadable or not valid JSON ({type(e).__name__}: {e})") from None
    if not isinstance(data, dict):
        raise MetricsFileError(f"{f} does not hold a JSON object")
    return _with_legacy_defaults(data)  # type: ignore[return-value]

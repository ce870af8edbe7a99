"""The record a run leaves: ``metrics.json``, typed, and its one reader.

``sca-prune train`` writes it (:mod:`~sca_plugin.runner`), ``sca-prune eval``/``report`` and the
benchmarks read it (:func:`read_run_metrics`). :class:`RunMetrics` names the fields and their
types; ``docs/metrics.md`` says what each cost figure counts. Runs written by earlier versions may
lack fields added since (every reader uses ``.get``)."""
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
    epochs_log: List[Dict[str, Any]]            # epoch, loss, test_accuracy, sparsity, lr
    config: Dict[str, Any]                      # TrainConfig.to_dict()
    device: str
    distributed: Optional[Dict[str, Any]]
    wall_time_s: float


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
    return data  # type: ignore[return-value]

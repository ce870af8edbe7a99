"""Size and cost of a (pruned) spiking network: parameters, MACs per time step, channels per layer;
and the runs ``sca-prune report`` compares (run folders found under a parent, runs told apart by
every setting in which they differ).

MACs are the synaptic operators' (convolution and matrix products, SpikingJelly's ``layer.*``
wrappers included, whatever the step mode) as ``torch.utils.flop_counter`` counts them, FLOPs / 2:
``output elements x (input channels per group x kernel size)``; the same count as
``spiking_metrics``' ``dense_macs`` (:func:`sca_plugin.metrics.synaptic_macs`). They are MACs of a
dense (ANN-style) evaluation: BatchNorm, pooling and neuron updates are not included, and spikes are
not assumed sparse (SynOps are a separate measure).
"""
from __future__ import annotations

import copy
import dataclasses
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Dict, Iterable, List, Optional, Sequence, Union

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from .config import RUN_FREE_FIELDS
from .graph import call_model, preserve_training_mode
from .methods import is_dense_label
from .neurons import is_spiking_neuron, neuron_channel_dim

__all__ = ["count_parameters", "count_macs", "conv_channels", "model_stats", "pruning_report", "find_runs",
           "run_settings", "REPORT_FREE_FIELDS", "label_runs"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: Any, forward_fn=None) -> Dict[str, int]:
    """``{'total', 'per_step', 'time_steps', 'batch_size'}``: MACs per sample over all time steps and
    per time step, from one eval-mode forward pass of ``example_inputs`` (neuron state is reset)."""
    from torch.utils.flop_counter import FlopCounterMode

    from .metrics import synaptic_macs

    neuron_calls: List[tuple] = []

    def neuron_hook(m, args):
        neuron_calls.append((m, tuple(args[0].shape)))

    handles = [m.register_forward_pre_hook(neuron_hook) for m in model.modules() if is_spiking_neuron(m)]
    flops = FlopCounterMode(display=False)
    try:
        with preserve_training_mode(model), torch.no_grad():
            model.eval()
            functional.reset_net(model)
            with flops:
                call_model(model, example_inputs, forward_fn)
            functional.reset_net(model)
    finally:
        for h in handles:
            h.remove()
    macs = [synaptic_macs(flops)]
    if neuron_calls:
        first, shape = neuron_calls[0]
        if neuron_channel_dim(first) == 2:
            time_steps, batch = shape[0], shape[1]
        else:
            time_steps, batch = sum(1 for m, _ in neuron_calls if m is first), shape[0]
    else:
        time_steps, batch = 1, (example_inputs.shape[0] if isinstance(example_inputs, torch.Tensor) else 1)
    total = macs[0] // batch
    return {"total": total, "per_step": total // time_steps, "time_steps": time_steps, "batch_size": batch}


def conv_channels(model: nn.Module) -> Dict[str, int]:
    """Output channels of every convolution, by module name."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


def model_stats(model: nn.Module, example_inputs: Any, accuracy: Optional[float] = None, forward_fn=None) -> dict:
    """Parameters, MACs and conv channels of ``model`` (and an accuracy you measured, if given)."""
    macs = count_macs(model, example_inputs, forward_fn)
    return {"accuracy": accuracy, "parameters": count_parameters(model), "macs_per_step": macs["per_step"],
            "macs_total": macs["total"], "time_steps": macs["time_steps"], "channels": conv_channels(model)}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{100 * v:.2f}%"
    return f"{v:,}"


def pruning_report(before: dict, after: dict, labels: tuple = ("before", "after")) -> str:
    """A plain-text before/after table of two :func:`model_stats` results."""
    rows = [("accuracy", before["accuracy"], after["accuracy"]),
            ("parameters", before["parameters"], after["parameters"]),
            ("MACs / time step", before["macs_per_step"], after["macs_per_step"]),
            (f"MACs total (T={before['time_steps']})", before["macs_total"], after["macs_total"])]
    for name, n in before["channels"].items():
        rows.append((f"channels {name}", n, after["channels"].get(name)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {labels[0]:>14}  {labels[1]:>14}  {'ratio':>7}", "-" * (width + 43)]
    for name, b, a in rows:
        ratio = f"{a / b:.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"
        lines.append(f"{name:<{width}}  {_fmt(b):>14}  {_fmt(a):>14}  {ratio:>7}")
    return "\n".join(lines)


# --------------------------------------------------------------------------- runs of a report
def find_runs(paths: Iterable[Union[str, "os.PathLike[str]"]]) -> List[Path]:
    """The runs ``paths`` name: a run folder (holding ``metrics.json``) or a ``metrics.json`` file is
    itself; any other folder stands for every run folder below it (sorted). ValueError for a path
    that does not exist or a folder without runs."""
    found: List[Path] = []
    for p in map(Path, paths):
        if p.is_file() or (p / "metrics.json").is_file():
            found.append(p)
        elif p.is_dir():
            runs = sorted(f.parent for f in p.rglob("metrics.json"))
            if not runs:
                raise ValueError(f"no metrics.json in {p} or its subfolders: give run folders of `sca-prune train` "
                                 "or a folder that holds them")
            found.extend(runs)
        else:
            raise ValueError(f"{p} does not exist")
    return list(dict.fromkeys(found))


#: settings by which ``sca-prune report`` does not tell runs apart: those that do not change what a
#: run computes (``RUN_FREE_FIELDS``) and the seed (a row is the mean over seeds)
REPORT_FREE_FIELDS = frozenset(RUN_FREE_FIELDS | {"seed"})
# what the report's rows already show (plots.group_runs groups by them)
_ROW_FIELDS = ("dataset", "model", "method", "pruning_ratio")


def run_settings(run: Mapping) -> Dict[str, Any]:
    """The settings of a run (its ``metrics.json`` ``config``) that tell runs apart in a report:
    ``REPORT_FREE_FIELDS`` left out, settings added since the run was made at their defaults, and
    the settings whose default depends on others (``regrow_ratio``, ``global_pruning``,
    ``fixed_mask_epochs``, ...) as the values the run used."""
    from .config import ConfigError, TrainConfig

    config = dict(run.get("config") or {})
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    try:
        cfg = TrainConfig.from_dict({k: v for k, v in config.items() if k in names})
    except ConfigError:  # a config this version cannot read: compare what was stored
        values = config
    else:
        values = cfg.effective_dict()
    return {k: v for k, v in values.items() if k not in REPORT_FREE_FIELDS}


def _fmt_setting(value: Any) -> str:
    return f"{value:g}" if isinstance(value, float) else str(value)


def label_runs(runs: Sequence[Mapping]) -> List[dict]:
    """Copies of ``runs`` in which runs that a report row would average although their settings
    differ are told apart: where runs of one dataset, model, method and pruning ratio differ in any
    setting (:func:`run_settings`), each run's ``method`` becomes ``"<method> (<setting>=<value>, ...)"``
    with every setting that differs within that row, so each combination is its own row, labelled.
    Runs that differ only in their seed keep their method (one row, mean ± std over seeds). A
    labelled dense run keeps ratio 0 (``pruning_ratio`` set to 0)."""
    settings = [run_settings(r) for r in runs]
    rows: Dict[tuple, List[int]] = {}
    for i, r in enumerate(runs):
        ratio = 0.0 if is_dense_label(r.get("method")) else r.get("pruning_ratio")
        rows.setdefault((r.get("dataset"), r.get("model"), r.get("method"), ratio), []).append(i)
    out = [copy.copy(dict(r)) for r in runs]
    for members in rows.values():
        keys = sorted({k for i in members for k in settings[i]} - set(_ROW_FIELDS))
        differ = [k for k in keys if len({repr(settings[i].get(k)) for i in members}) > 1]
        if not differ:
            continue
        for i in members:
            label = ", ".join(f"{k}={_fmt_setting(settings[i].get(k))}" for k in differ)
            if is_dense_label(out[i].get("method")):
                out[i]["pruning_ratio"] = 0.0
            out[i]["method"] = f"{out[i].get('method')} ({label})"
    return out

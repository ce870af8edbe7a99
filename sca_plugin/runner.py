"""One training run of ``sca-prune train``: checks, data, model, method, the training loop, metrics.

Everything a run produces lands in its output folder: ``checkpoint.pt`` (after every epoch,
written atomically), ``metrics.json``, ``model.pt`` (the finalized model as a pickled module) and
``model_state.pth`` (weights + pruning history, loadable with ``weights_only=True``). The pieces:
:mod:`~sca_plugin.model_factory` (the model), :mod:`~sca_plugin.methods` (the pruner),
:mod:`~sca_plugin.training` (the loop), :mod:`~sca_plugin.checkpoints` (the folder's files).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import torch
import torch.nn as nn

from .checkpoints import (BASELINE, CHECKPOINT, METRICS, MODEL, MODEL_STATE, PREVIOUS_CHECKPOINT, RunError,
                          check_output_dir, finished_run, load_finalized_model, load_run_config, rng_state,
                          set_rng_state)
from .collapse import collapse_check
from .config import ConfigError, TrainConfig
from .distributed import rank, world_size
from .environment import run_environment
from .files import atomic_save, atomic_write_text, keep_previous
from .graph import replay_pruning
from .methods import DEPENDENT_SETTINGS, build_pruner
from .model_factory import build_model, unused_model_settings
from .records import RunMetrics
from .reporting import model_stats, pruning_report
from .training import (NNIOneShot, evaluate, init_distributed, make_optimizer, seed_all, tensorboard_writer,
                       summary_writer, time_major, train_loop)

__all__ = ["RunError", "run_training", "build_model", "unused_model_settings", "load_finalized_model",
           "load_run_config"]

def _check_method(cfg: TrainConfig, model: nn.Module, example: Any, steps_per_epoch: int) -> None:
    """Construct the run's pruner (or NNI pruning) on ``model``, which the caller then discards:
    the pruner's own checks of its arguments against each other and against the model (regrow vs
    pruning ratio, per-layer cap, groups, BatchNorms, ...) fail here, before the dense baseline
    trains or a file is written, by the code that would fail later (no copy of its rules)."""
    build_pruner(cfg, model, example, steps_per_epoch)


def run_training(cfg: TrainConfig, log: Callable[[str], None] = print,
                 on_epoch_end: Optional[Callable[[int], None]] = None) -> RunMetrics:
    """Train (and prune) as ``cfg`` says; returns the metrics also written to ``metrics.json``.

    Under ``torchrun`` (``WORLD_SIZE`` > 1) every process trains on its share of each global batch
    (``batch_size`` is the global batch) through ``DistributedDataParallel``; the pruners sum their
    statistics over the processes, so all get the same masks; only rank 0 writes files and returns
    the metrics (the others return ``{}``).

    ``cfg.resume`` continues the run in the output folder from its checkpoint (RunError when the
    checkpoint was made with other settings than ``cfg``, ``RUN_FREE_FIELDS`` aside); on a run that
    already finished it returns the stored metrics and trains and writes nothing.

    Every check runs before any work and before a file is written: the settings, the output folder,
    the data, the model (see :func:`build_model`) and the method's pruner, constructed on a
    throwaway model, so that a refused setting never costs a dense baseline."""
    start = time.time()
    out = Path(cfg.output_dir or cfg.default_output_dir())
    if cfg.resume and (out / METRICS).is_file():
        return finished_run(cfg, out, log)
    checkpoint = check_output_dir(cfg, out)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available; use --device cpu")
    created_group, backend = init_distributed(cfg)
    if world_size() > 1 and device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    if rank() > 0:
        log = _silent  # one process reports
    try:
        metrics = _run(cfg, out, checkpoint, device, start, log, on_epoch_end, backend)
    finally:
        if created_group:
            import torch.distributed as dist

            dist.barrier()
            dist.destroy_process_group()
    return metrics


def _silent(*_: Any) -> None:
    pass


def _run(cfg, out, checkpoint, device, start, log, on_epoch_end, backend) -> Dict[str, Any]:
    from .datasets import load_dataset

    splits = load_dataset(cfg.dataset, data_root=cfg.data_root, time_steps=cfg.time_steps, seed=cfg.seed,
                          train_limit=cfg.train_limit, test_limit=cfg.test_limit)
    seed_all(cfg.seed)
    model = build_model(cfg, splits.num_classes, splits.in_channels, splits.input_size, data_kind=splits.kind).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(splits.train, batch_size=cfg.batch_size, shuffle=True, generator=generator)
    test_loader = torch.utils.data.DataLoader(splits.test, batch_size=max(cfg.batch_size, 256))
    example = time_major(next(iter(torch.utils.data.DataLoader(splits.train, batch_size=2)))[0], splits.kind).to(device)
    before = model_stats(model, example)
    # every check before any work and any file: the method's own constructor on this model (the
    # run builds a fresh one below), the TensorBoard import
    _check_method(cfg, model, example, len(train_loader))
    del model
    if cfg.tensorboard:
        summary_writer()

    out.mkdir(parents=True, exist_ok=True)
    baseline = _dense_baseline(cfg, out, splits, train_loader, test_loader, example, device, log) \
        if cfg.dense_baseline and cfg.spec.kind != "dense" else None
    seed_all(cfg.seed)
    model = build_model(cfg, splits.num_classes, splits.in_channels, splits.input_size, data_kind=splits.kind).to(device)
    generator.manual_seed(cfg.seed)
    oneshot = NNIOneShot(cfg, model, example, train_loader, splits.kind, device) if cfg.spec.kind == "nni" else None
    pruner = None if oneshot is not None else build_pruner(cfg, model, example, len(train_loader))
    if checkpoint is not None and (checkpoint.get("nni") or {}).get("removed_channels") is not None:
        oneshot.record = checkpoint["nni"]
        replay_pruning(model, example, oneshot.history())  # the structure the checkpoint was saved with
    optimizer, scheduler = make_optimizer(cfg, model)
    epochs_log: List[dict] = []
    first_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if pruner is not None:
            pruner.load_state_dict(checkpoint["pruner"])
        set_rng_state(checkpoint["rng"], generator)
        epochs_log = checkpoint["epochs_log"]
        first_epoch = int(checkpoint["epoch"])
        log(f"resuming {out} after epoch {first_epoch}")
    elif cfg.spec.kind == "init":
        pruner.update_masks()  # the paper's ablation: a random mask fixed before training
        pruner.fix_masks()
    writer = tensorboard_writer(out) if cfg.tensorboard else None

    log(f"{splits.description}; model {cfg.model} ({before['parameters']:,} parameters); method {cfg.method}; "
        f"output {out}")

    def save_checkpoint(epoch: int, optimizer, scheduler) -> None:
        if rank() > 0:
            return
        keep_previous(out / CHECKPOINT, out / PREVIOUS_CHECKPOINT)
        atomic_save({"config": cfg.to_dict(), "epoch": epoch, "model": model.state_dict(),
                     "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                     "pruner": pruner.state_dict() if pruner is not None else None,
                     "nni": oneshot.record if oneshot is not None else None,
                     "rng": rng_state(generator), "epochs_log": epochs_log}, out / CHECKPOINT)
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    train_loop(cfg, model, pruner, optimizer, scheduler, train_loader, test_loader, splits.kind, device,
                first_epoch, epochs_log, log, writer, save_checkpoint, oneshot=oneshot)
    if writer is not None:
        writer.close()
    if rank() > 0:
        return {}
    metrics = _finish(cfg, out, model, pruner, splits, example, test_loader, device, before, baseline, epochs_log,
                      start, log, oneshot, backend)
    return metrics


def _dense_baseline(cfg, out, splits, train_loader, test_loader, example, device, log) -> dict:
    """Train the unpruned model with the same budget (or reuse the result of an interrupted run)."""
    path = out / BASELINE
    if path.is_file():
        return json.loads(path.read_text())
    log("dense baseline (same model, data, epochs and optimizer; --no-dense-baseline skips it)")
    seed_all(cfg.seed)
    model = build_model(cfg, splits.num_classes, splits.in_channels, splits.input_size, data_kind=splits.kind).to(device)
    train_loader.generator.manual_seed(cfg.seed)
    optimizer, scheduler = make_optimizer(cfg, model)
    train_loop(cfg, model, None, optimizer, scheduler, train_loader, test_loader, splits.kind, device, 0, [], log,
                tag="[dense] ")
    spiking = _spiking_metrics()(model, (time_major(x.to(device), splits.kind) for x, _ in test_loader))
    result = {"accuracy": evaluate(model, test_loader, splits.kind, device), "synops": spiking["synops"],
              "activation_sparsity": spiking.get("activation_sparsity"), "energy": spiking.get("energy"),
              "neurobench": spiking.get("neurobench"), "metrics_samples": spiking["samples"]}
    if rank() == 0:
        atomic_write_text(json.dumps(result, indent=2), path)
    return result


def _finish(cfg, out, model, pruner, splits, example, test_loader, device, before, baseline, epochs_log, start, log,
            oneshot=None, backend=None) -> RunMetrics:
    pruned = pruner is not None or oneshot is not None
    metrics_fn = _spiking_metrics()
    accuracy: Dict[str, Optional[float]] = {"dense": baseline["accuracy"] if baseline else None, "masked": None}
    importance_scores: Dict[str, list] = {}
    if pruner is not None:
        accuracy["masked"] = evaluate(model, test_loader, splits.kind, device)
        has_statistics = getattr(pruner.importance, "has_statistics", None)  # a statistics-based score (SCA's)
        if has_statistics is not None:
            for (root, group), name in zip(pruner.groups, pruner.group_names()):
                if has_statistics(group):
                    importance_scores[name] = pruner.importance(group).cpu().tolist()
        pruner.finalize()
        log(f"finalized: masked channels removed; pruned == masked outputs checked (atol {pruner.verify_atol})")
    accuracy["final"] = evaluate(model, test_loader, splits.kind, device)
    collapse = collapse_check(epochs_log[-1]["loss"] if epochs_log else None, accuracy["final"], splits.num_classes)
    after = model_stats(model, example)
    spiking = metrics_fn(model, (time_major(x.to(device), splits.kind) for x, _ in test_loader))  # whole test set
    from .metrics import METRICS_JSON_DEFINITIONS

    metrics = {
        "dataset": cfg.dataset, "model": cfg.model, "method": cfg.method, "pruning_ratio": cfg.pruning_ratio,
        # settings the model factory does not take (at their defaults; others are refused): not applied
        "model_settings_unused": unused_model_settings(cfg, splits.kind),
        "regrow_ratio": cfg.effective_regrow_ratio,
        "seed": cfg.seed, "epochs": cfg.epochs, "time_steps": cfg.time_steps,
        "simulated_data": bool(splits.simulated), "data_description": splits.description,
        "input_shape": [splits.in_channels, *splits.input_size], "data_kind": splits.kind,
        "accuracy": accuracy,
        "num_classes": splits.num_classes,
        "collapse": collapse,
        "parameters": {"before": before["parameters"], "after": after["parameters"]},
        "macs": {"before": {"per_step": before["macs_per_step"], "total": before["macs_total"]},
                 "after": {"per_step": after["macs_per_step"], "total": after["macs_total"]}},
        "synops": {"before": (baseline or {}).get("synops") if pruned else spiking["synops"],
                   "after": spiking["synops"]},
        "activation_sparsity": spiking.get("activation_sparsity"),
        "firing_rates": spiking.get("firing_rates"),
        "energy": spiking.get("energy"),
        "neurobench": spiking.get("neurobench"),
        "metrics_samples": spiking["samples"],
        "definitions": METRICS_JSON_DEFINITIONS,
        "dense_baseline": baseline,
        "spiking_metrics": spiking,
        "channels": {"before": before["channels"], "after": after["channels"]},
        "history": pruner.history if pruner is not None else ([oneshot.record] if oneshot and oneshot.record else []),
        "importance_scores": importance_scores,
        "connectivity": pruner.connectivity() if hasattr(pruner, "connectivity") else None,
        "synops_connected": _connected_synops(spiking, pruner.connectivity()) if hasattr(pruner, "connectivity") else None,
        "epochs_log": epochs_log,
        "config": cfg.to_dict(),
        "effective_settings": {name: getattr(cfg, f"effective_{name}") for name in DEPENDENT_SETTINGS},
        "device": str(device),
        "environment": run_environment(device),
        "distributed": {"world_size": world_size(), "backend": backend} if world_size() > 1 else None,
        "wall_time_s": time.time() - start,
    }
    atomic_save(model, out / MODEL)
    history = pruner.pruning_history() if pruner is not None else (oneshot.history() if oneshot is not None else [])
    atomic_save({"state": model.state_dict(), "history": history,
                 "config": cfg.to_dict()}, out / MODEL_STATE)
    atomic_write_text(json.dumps(metrics, indent=2), out / METRICS)
    before["accuracy"] = accuracy["dense"] if pruned else accuracy["final"]
    after["accuracy"] = accuracy["final"]
    log("\n" + pruning_report(before, after, ("dense" if baseline else "before", cfg.method)))
    if accuracy["masked"] is not None:
        log(f"masked-model accuracy {100 * accuracy['masked']:.2f}%, finalized {100 * accuracy['final']:.2f}%")
    if collapse["collapsed"]:
        log(f"COLLAPSED: {'; '.join(collapse['reasons'])}. This run did not learn: it is not a result "
            "(flagged in metrics.json under 'collapse')")
    log(f"wrote {out / METRICS} ({time.time() - start:.1f} s)")
    return metrics


def _connected_synops(spiking: dict, connectivity: Dict[str, float]) -> Optional[float]:
    """SynOps counting only kept synapses: each layer's SynOps times its fraction of non-zero weights
    (exact when a layer's input spikes spread evenly over its synapses)."""
    layers = spiking.get("layers") or {}
    if not layers:
        return None
    return float(sum(v.get("synops", 0.0) * connectivity.get(name, 1.0) for name, v in layers.items()))


def _spiking_metrics():
    from .metrics import spiking_metrics

    return spiking_metrics

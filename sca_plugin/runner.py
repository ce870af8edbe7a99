"""One training run of ``sca-prune train``: data, model, method, loop, checkpoints, metrics.

Everything a run produces lands in its output folder: ``checkpoint.pt`` (after every epoch,
written atomically), ``metrics.json``, ``model.pt`` (the finalized model as a pickled module) and
``model_state.pth`` (weights + pruning history, loadable with ``weights_only=True``).
"""
from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from .collapse import collapse_check
from .config import RUN_FREE_FIELDS, ConfigError, TrainConfig
from .distributed import rank, world_size
from .files import atomic_save, atomic_write_text, keep_previous
from .graph import replay_pruning
from .methods import build_pruner
from .importance import SCAImportance
from .optim import rebuild_optimizer
from .pruner import NonFiniteStatisticsError
from .reporting import model_stats, pruning_report

__all__ = ["RunError", "run_training", "build_model", "unused_model_settings", "load_finalized_model",
           "load_run_config"]

CHECKPOINT, METRICS, MODEL, MODEL_STATE = "checkpoint.pt", "metrics.json", "model.pt", "model_state.pth"
PREVIOUS_CHECKPOINT = "checkpoint.prev.pt"  # the checkpoint of the epoch before, kept until the next one is written
BASELINE = "dense_baseline.json"
_CHECKPOINT_KEYS = ("config", "epoch", "model", "optimizer", "scheduler", "rng", "epochs_log")  # what resume reads
# settings that may differ between an interrupted run and its resumption
_RESUME_FREE = RUN_FREE_FIELDS


class RunError(RuntimeError):
    """A run cannot start or continue (existing output, unreadable or mismatched checkpoint)."""


# --------------------------------------------------------------------------- model & method
#: what build_model passes a model factory (keyword) and the setting each keyword comes from (None:
#: from the data)
_FACTORY_KEYWORDS = {"num_classes": None, "in_channels": None, "T": "time_steps", "width": "width",
                     "neuron": "neuron", "step_mode": "step_mode", "input_size": None}


def _model_factory(cfg: TrainConfig) -> Callable[..., nn.Module]:
    """The callable ``cfg.model`` names: a reference model or ``module:callable``."""
    if ":" in cfg.model:
        module_name, _, attr = cfg.model.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            if isinstance(e, ModuleNotFoundError) and e.name and module_name.startswith(e.name):
                raise ConfigError(f"cannot import model {cfg.model!r}: no module {e.name!r} here; give "
                                  "module:callable importable from here (run from the folder that holds "
                                  f"{e.name.replace('.', '/')}.py, or add that folder to PYTHONPATH)") from e
            raise ConfigError(f"cannot import model {cfg.model!r}: importing {module_name} failed ({e})") from e
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ConfigError(f"cannot import model {cfg.model!r}: module {module_name} has no callable {attr!r}")
        return factory
    from .models import MODELS

    if cfg.model.lower() not in MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; use one of {', '.join(MODELS)} or module:callable")
    return MODELS[cfg.model.lower()]


def _model_settings(cfg: TrainConfig, data_kind: Optional[str]) -> List[str]:
    """Settings that only the model factory can apply: width, neuron, step mode, and the number of
    time steps on static data (event data has its time steps in the frames)."""
    settings = ["width", "neuron", "step_mode"]
    if data_kind == "static":
        settings.insert(0, "time_steps")
    return settings


def _model_kwargs(cfg: TrainConfig, factory: Callable, num_classes: int, in_channels: int, input_size,
                  data_kind: Optional[str] = None) -> tuple:
    """``(keywords to call factory with, settings it does not take)``.

    A reference model (``sca_plugin.models``) takes every setting. A ``module:callable`` factory is called with the keywords of ``_FACTORY_KEYWORDS`` its signature accepts (all with
    ``**kwargs``). A setting only the model can apply (``_model_settings``) that the factory does not
    take is refused when it differs from its default (it would be recorded but not used); at its
    default it is listed as unused (metrics.json ``model_settings_unused``)."""
    values = dict(num_classes=num_classes, in_channels=in_channels, T=cfg.time_steps, width=cfg.width,
                  neuron=cfg.neuron, step_mode=cfg.step_mode, input_size=input_size)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins): pass everything
        params = None
    if ":" not in cfg.model:  # a reference model: all but input_size (their **kwargs go to the neurons)
        return {k: v for k, v in values.items() if k != "input_size" or (params and k in params)}, []
    if params is None:
        return values, []
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return values, []
    kwargs = {k: v for k, v in values.items() if k in params}
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing:
        raise ConfigError(f"model {cfg.model!r} requires {', '.join(missing)}, which sca-prune does not pass: it "
                          f"calls the factory with the keywords it accepts of {', '.join(_FACTORY_KEYWORDS)}; "
                          "give the other parameters defaults")
    taken = {setting for kw, setting in _FACTORY_KEYWORDS.items() if kw in params and setting}
    unused = [s for s in _model_settings(cfg, data_kind) if s not in taken]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = [s for s in unused if getattr(cfg, s) != defaults[s]]
    if changed:
        keyword = {setting: kw for kw, setting in _FACTORY_KEYWORDS.items() if setting}
        flags = ", ".join(f"--{s.replace('_', '-')} {getattr(cfg, s)}" for s in changed)
        raise ConfigError(f"model {cfg.model!r} does not take {', '.join(keyword[s] for s in changed)}, so {flags} "
                          f"would be recorded but not used: drop {'it' if len(changed) == 1 else 'them'}, or add "
                          f"the parameter{'s' if len(changed) > 1 else ''} to the factory")
    return kwargs, unused


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int, input_size, *,
                data_kind: Optional[str] = None) -> nn.Module:
    """A reference model by name, or ``module:callable`` (called with the keywords it accepts).

    ``data_kind`` (``'static'`` or ``'event'``): with static data the number of time steps reaches
    the network only through the factory's ``T``, so a ``time_steps`` other than the default is
    refused for a factory without ``T``. Width, neuron and step mode are refused likewise (see
    :func:`_model_kwargs`): a setting the model cannot apply is never recorded as if used."""
    factory = _model_factory(cfg)
    kwargs, _ = _model_kwargs(cfg, factory, num_classes, in_channels, input_size, data_kind)
    return factory(**kwargs)


def unused_model_settings(cfg: TrainConfig, data_kind: Optional[str] = None) -> List[str]:
    """The settings the model factory of ``cfg`` does not take (they keep their defaults in the
    config, but the model does not see them); ConfigError as :func:`build_model`."""
    return _model_kwargs(cfg, _model_factory(cfg), 1, 1, (1, 1), data_kind)[1]


def _check_method(cfg: TrainConfig, model: nn.Module, example: Any, steps_per_epoch: int) -> None:
    """Construct the run's pruner (or NNI pruning) on ``model``, which the caller then discards:
    the pruner's own checks of its arguments against each other and against the model (regrow vs
    pruning ratio, per-layer cap, groups, BatchNorms, ...) fail here, before the dense baseline
    trains or a file is written, by the code that would fail later (no copy of its rules)."""
    build_pruner(cfg, model, example, steps_per_epoch)


class _NNIOneShot:
    """``--method nni-*``: NNI's built-in pruner once after the one-shot epoch, the channels removed
    by sca_plugin's speed-up, the optimizer and LR schedule carried over to the pruned model."""

    def __init__(self, cfg: TrainConfig, model: nn.Module, example: Any, train_loader, kind: str, device) -> None:
        self.cfg, self.model, self.example = cfg, model, example
        self.train_loader, self.kind, self.device = train_loader, kind, device
        self.record: Optional[dict] = None  # what was done; in checkpoints and metrics

    def __call__(self, epoch: int, optimizer, scheduler):
        cfg, model = self.cfg, self.model
        spec = cfg.spec
        name = spec.nni_pruner
        pruning = build_pruner(cfg, model, self.example)
        evaluator = self._evaluator(optimizer) if spec.nni_training else None
        names_before = {id(p): n for n, p in model.named_parameters()}
        pruning.prune(evaluator, cfg.nni_training_steps)
        speedup = pruning.speedup
        functional.reset_net(model)
        self.record = {"epoch": epoch, "pruner": name, "config_list": pruning.config_list,
                       "training_steps": cfg.nni_training_steps if evaluator is not None else 0,
                       "removed_channels": {k: list(v) for k, v in speedup.removed_channels.items()},
                       "sparsity": sum(len(v) for v in speedup.removed_channels.values())
                       / sum(g.size for g in pruning.groups),
                       "kept_candidates": speedup.kept_candidates}
        new_optimizer = rebuild_optimizer(optimizer, model, names_before)
        new_scheduler = _scheduler(cfg, new_optimizer)
        new_scheduler.load_state_dict(scheduler.state_dict())
        return new_optimizer, new_scheduler

    def _evaluator(self, optimizer):
        import nni
        from nni.compression import TorchEvaluator

        loader, kind, device = self.train_loader, self.kind, self.device

        def training_step(batch, model):
            return F.cross_entropy(model(batch[0]), batch[1])

        def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
            model.train()
            steps = 0
            while steps < max_steps:
                for x, y in loader:
                    loss = training_step((_time_major(x.to(device), kind), y.to(device)), model)
                    optimizers.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizers.step()
                    functional.reset_net(model)
                    steps += 1
                    if steps >= max_steps:
                        break

        traced = nni.trace(type(optimizer))(self.model.parameters(), **optimizer.defaults)
        for group in traced.param_groups:
            group["lr"] = optimizer.param_groups[0]["lr"]
        return TorchEvaluator(training_func, traced, training_step)

    def history(self) -> list:
        """Torch-Pruning pruning history (``replay_pruning``) of the removal."""
        if self.record is None:
            return []
        return [[root, True, idxs] for root, idxs in self.record["removed_channels"].items()]


def _updates_in_epoch(cfg: TrainConfig, epoch: int) -> bool:
    """Whether masks change during/after 0-based ``epoch``."""
    if cfg.spec.kind in ("dense", "init"):
        return False
    if cfg.effective_oneshot_epoch is not None:
        return epoch + 1 == cfg.effective_oneshot_epoch
    return epoch < cfg.epochs - cfg.effective_fixed_mask_epochs


# --------------------------------------------------------------------------- data
def _time_major(x: torch.Tensor, kind: str) -> torch.Tensor:
    return x.transpose(0, 1) if kind == "event" else x  # loaders give [B, T, ...] event frames


def _evaluate(model: nn.Module, loader, kind: str, device) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            out = model(_time_major(x.to(device), kind))
            correct += (out.argmax(-1) == y.to(device)).sum().item()
            total += len(y)
            functional.reset_net(model)
    model.train(was)
    return correct / max(total, 1)


# --------------------------------------------------------------------------- RNG
def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def _rng_state(generator: torch.Generator) -> dict:
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(), "python": random.getstate(), "loader": generator.get_state(),
            "numpy": [np_state[0], torch.from_numpy(np_state[1].astype(np.int64)), *np_state[2:]]}


def _set_rng_state(state: dict, generator: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(tuple(tuple(s) if isinstance(s, list) else s for s in state["python"]))
    generator.set_state(state["loader"])
    name, keys, *rest = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), *rest))


# --------------------------------------------------------------------------- the run
def _read_checkpoint(out: Path) -> dict:
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


def _read_metrics(out: Path) -> dict:
    path = out / METRICS
    try:
        metrics = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise RunError(f"{path} is unreadable or not JSON ({type(e).__name__}); the run's results are damaged: "
                       "start a new run in another --output-dir") from e
    if not isinstance(metrics, dict):
        raise RunError(f"{path} does not hold a JSON object; start a new run in another --output-dir")
    return metrics


def load_run_config(run_dir: "os.PathLike[str] | str") -> Dict[str, Any]:
    """The settings a run folder was made with (``TrainConfig.to_dict()`` form): a finished run's
    ``metrics.json``, else its checkpoint. RunError when the folder holds neither (or they are
    unreadable); what ``--resume`` starts from."""
    out = Path(run_dir)
    if (out / METRICS).is_file():
        return dict(_read_metrics(out).get("config") or {})
    return dict(_read_checkpoint(out).get("config") or {})


def _settings_diff(saved: Dict[str, Any], cfg: TrainConfig) -> List[str]:
    """The settings (other than ``RUN_FREE_FIELDS``) in which ``cfg`` differs from the stored ``saved``."""
    saved = {k: v for k, v in saved.items() if k not in _RESUME_FREE}
    try:  # settings added since the run was made count with their defaults
        saved = {k: v for k, v in TrainConfig.from_dict(saved).to_dict().items() if k not in _RESUME_FREE}
    except ConfigError:
        pass
    now = {k: v for k, v in cfg.to_dict().items() if k not in _RESUME_FREE}
    return sorted(k for k in now if saved.get(k) != now[k])


def _check_output_dir(cfg: TrainConfig, out: Path) -> Optional[dict]:
    if cfg.resume:
        ck = _read_checkpoint(out)
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


def _finished_run(cfg: TrainConfig, out: Path, log: Callable[[str], None]) -> Dict[str, Any]:
    """``--resume`` of a run that already finished: its metrics, nothing trained or written; RunError
    when ``cfg`` asks for other settings than the run was made with."""
    metrics = _read_metrics(out)
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


def run_training(cfg: TrainConfig, log: Callable[[str], None] = print,
                 on_epoch_end: Optional[Callable[[int], None]] = None) -> Dict[str, Any]:
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
        return _finished_run(cfg, out, log)
    checkpoint = _check_output_dir(cfg, out)
    device = torch.device(cfg.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda but no CUDA device is available; use --device cpu")
    created_group, backend = _init_distributed(cfg)
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


def _init_distributed(cfg: TrainConfig):
    """Join the process group torchrun describes (WORLD_SIZE > 1); (created here, backend)."""
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return False, dist.get_backend()
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return False, None
    world = int(os.environ["WORLD_SIZE"])
    if cfg.batch_size % world:
        raise ConfigError(f"--batch-size {cfg.batch_size} is the global batch and must divide evenly over the "
                          f"{world} processes; use a multiple of {world}")
    backend = "nccl" if cfg.device.startswith("cuda") else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
    dist.init_process_group(backend)
    return True, backend


def _run(cfg, out, checkpoint, device, start, log, on_epoch_end, backend) -> Dict[str, Any]:
    from .datasets import load_dataset

    splits = load_dataset(cfg.dataset, data_root=cfg.data_root, time_steps=cfg.time_steps, seed=cfg.seed,
                          train_limit=cfg.train_limit, test_limit=cfg.test_limit)
    _seed_all(cfg.seed)
    model = build_model(cfg, splits.num_classes, splits.in_channels, splits.input_size, data_kind=splits.kind).to(device)
    generator = torch.Generator().manual_seed(cfg.seed)
    train_loader = torch.utils.data.DataLoader(splits.train, batch_size=cfg.batch_size, shuffle=True, generator=generator)
    test_loader = torch.utils.data.DataLoader(splits.test, batch_size=max(cfg.batch_size, 256))
    example = _time_major(next(iter(torch.utils.data.DataLoader(splits.train, batch_size=2)))[0], splits.kind).to(device)
    before = model_stats(model, example)
    # every check before any work and any file: the method's own constructor on this model (the
    # run builds a fresh one below), the TensorBoard import
    _check_method(cfg, model, example, len(train_loader))
    del model
    if cfg.tensorboard:
        _summary_writer()

    out.mkdir(parents=True, exist_ok=True)
    baseline = _dense_baseline(cfg, out, splits, train_loader, test_loader, example, device, log) \
        if cfg.dense_baseline and cfg.spec.kind != "dense" else None
    _seed_all(cfg.seed)
    model = build_model(cfg, splits.num_classes, splits.in_channels, splits.input_size, data_kind=splits.kind).to(device)
    generator.manual_seed(cfg.seed)
    oneshot = _NNIOneShot(cfg, model, example, train_loader, splits.kind, device) if cfg.spec.kind == "nni" else None
    pruner = None if oneshot is not None else build_pruner(cfg, model, example, len(train_loader))
    if checkpoint is not None and (checkpoint.get("nni") or {}).get("removed_channels") is not None:
        oneshot.record = checkpoint["nni"]
        replay_pruning(model, example, oneshot.history())  # the structure the checkpoint was saved with
    optimizer, scheduler = _optimizer(cfg, model)
    epochs_log: List[dict] = []
    first_epoch = 0
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        scheduler.load_state_dict(checkpoint["scheduler"])
        if pruner is not None:
            pruner.load_state_dict(checkpoint["pruner"])
        _set_rng_state(checkpoint["rng"], generator)
        epochs_log = checkpoint["epochs_log"]
        first_epoch = int(checkpoint["epoch"])
        log(f"resuming {out} after epoch {first_epoch}")
    elif cfg.spec.kind == "init":
        pruner.update_masks()  # the paper's ablation: a random mask fixed before training
        pruner.fix_masks()
    writer = _tensorboard(out) if cfg.tensorboard else None

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
                     "rng": _rng_state(generator), "epochs_log": epochs_log}, out / CHECKPOINT)
        if on_epoch_end is not None:
            on_epoch_end(epoch)

    _train_loop(cfg, model, pruner, optimizer, scheduler, train_loader, test_loader, splits.kind, device,
                first_epoch, epochs_log, log, writer, save_checkpoint, oneshot=oneshot)
    if writer is not None:
        writer.close()
    if rank() > 0:
        return {}
    metrics = _finish(cfg, out, model, pruner, splits, example, test_loader, device, before, baseline, epochs_log,
                      start, log, oneshot, backend)
    return metrics


def _optimizer(cfg: TrainConfig, model: nn.Module):
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, _scheduler(cfg, optimizer)


def _scheduler(cfg: TrainConfig, optimizer):
    if cfg.lr_schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, cfg.lr_step_size, cfg.lr_gamma)
    return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, cfg.epochs)


@contextlib.contextmanager
def _diverged_at(epoch: int, cfg: TrainConfig):
    """A mask update refused non-finite statistics: say which epoch, and what to change."""
    try:
        yield
    except NonFiniteStatisticsError as e:
        raise RunError(f"epoch {epoch + 1}: {e}. The run stopped (its last checkpoint is kept); try a lower "
                       f"--lr than {cfg.lr:g}") from e


def _train_loop(cfg, model, pruner, optimizer, scheduler, train_loader, test_loader, kind, device, first_epoch,
                epochs_log, log, writer=None, after_epoch=None, tag="", oneshot=None) -> None:
    net = _ddp(model, device, cfg.compile)
    for epoch in range(first_epoch, cfg.epochs):
        updating = pruner is not None and _updates_in_epoch(cfg, epoch)
        with _diverged_at(epoch, cfg):
            loss = _train_epoch(model, train_loader, kind, optimizer, pruner, device, cfg, updating, epoch, net)
            scheduler.step()
            if updating and cfg.update_interval is None:
                pruner.update_masks()
        if updating and epoch + 1 < cfg.epochs and not _updates_in_epoch(cfg, epoch + 1):
            pruner.fix_masks()  # the remaining epochs train the final structure
        if oneshot is not None and _updates_in_epoch(cfg, epoch):
            optimizer, scheduler = oneshot(epoch + 1, optimizer, scheduler)
            net = _ddp(model, device, cfg.compile)  # the pruned model has new parameters
            log(f"{tag}{cfg.method}: pruned once after epoch {epoch + 1} and removed the channels "
                f"({sum(len(v) for v in oneshot.record['removed_channels'].values())} removed)")
        acc = _evaluate(model, test_loader, kind, device)
        entry = {"epoch": epoch + 1, "loss": loss, "test_accuracy": acc,
                 "sparsity": _sparsity(pruner, oneshot),
                 "lr": optimizer.param_groups[0]["lr"]}
        epochs_log.append(entry)
        log(f"{tag}epoch {epoch + 1:3d}/{cfg.epochs}  loss {loss:.4f}  test acc {100 * acc:6.2f}%  "
            f"channel sparsity {entry['sparsity']:.3f}")
        if writer is not None:
            for k in ("loss", "test_accuracy", "sparsity"):
                writer.add_scalar(k, entry[k], epoch + 1)
        if after_epoch is not None:
            after_epoch(epoch + 1, optimizer, scheduler)


def _sparsity(pruner, oneshot) -> float:
    if pruner is not None and pruner.masks[0] is not None:
        return pruner.sparsity()
    if oneshot is not None and oneshot.record is not None:
        return oneshot.record["sparsity"]
    return 0.0


def _dense_baseline(cfg, out, splits, train_loader, test_loader, example, device, log) -> dict:
    """Train the unpruned model with the same budget (or reuse the result of an interrupted run)."""
    path = out / BASELINE
    if path.is_file():
        return json.loads(path.read_text())
    log("dense baseline (same model, data, epochs and optimizer; --no-dense-baseline skips it)")
    _seed_all(cfg.seed)
    model = build_model(cfg, splits.num_classes, splits.in_channels, splits.input_size, data_kind=splits.kind).to(device)
    train_loader.generator.manual_seed(cfg.seed)
    optimizer, scheduler = _optimizer(cfg, model)
    _train_loop(cfg, model, None, optimizer, scheduler, train_loader, test_loader, splits.kind, device, 0, [], log,
                tag="[dense] ")
    spiking = _spiking_metrics()(model, (_time_major(x.to(device), splits.kind) for x, _ in test_loader))
    result = {"accuracy": _evaluate(model, test_loader, splits.kind, device), "synops": spiking["synops"],
              "activation_sparsity": spiking.get("activation_sparsity"), "energy": spiking.get("energy"),
              "neurobench": spiking.get("neurobench"), "metrics_samples": spiking["samples"]}
    if rank() == 0:
        atomic_write_text(json.dumps(result, indent=2), path)
    return result


def _ddp(model: nn.Module, device, compile: bool = False) -> nn.Module:
    """The module the training forward goes through: DDP over ``model`` in a process group, and
    ``torch.compile`` over that with ``compile`` (static shapes: the batch size changes only in the
    last batch of an epoch)."""
    net = model
    if world_size() > 1:
        ids = [device.index] if device.type == "cuda" else None
        net = nn.parallel.DistributedDataParallel(model, device_ids=ids)
    if not compile:
        return net
    # a fresh compile cache per model: the cache is keyed by the forward's code, so models trained
    # one after another in a process (a sweep's worker) would use up dynamo's recompile limit and
    # silently fall back to eager mode
    torch._dynamo.reset()
    return torch.compile(net, dynamic=False)


def _shard(t: torch.Tensor) -> torch.Tensor:
    """This process's share of a global batch (dim 0)."""
    return t if world_size() == 1 else torch.tensor_split(t, world_size())[rank()]


def _train_epoch(model, loader, kind, optimizer, pruner, device, cfg, updating, epoch, net=None) -> float:
    net = model if net is None else net
    model.train()
    total = n = 0
    bar = None
    if cfg.progress and rank() == 0:
        from tqdm.auto import tqdm

        # updated by hand rather than wrapping the loader: a wrapper keeps the previous batch alive,
        # which shifts tensor allocations and hence float rounding, so --no-progress would give
        # different numbers
        bar = tqdm(total=len(loader), desc=f"epoch {epoch + 1}", leave=False, file=sys.stderr)
    for x, y in loader:
        x, y = _time_major(_shard(x).to(device), kind), _shard(y).to(device)
        loss = F.cross_entropy(net(x), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if pruner is not None:
            pruner.regularize(model)
        optimizer.step()
        functional.reset_net(model)
        if pruner is not None and updating and cfg.update_interval is not None:
            pruner.maybe_update_masks()
        total += loss.item() * len(y)
        n += len(y)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return total / max(n, 1)


def _summary_writer():
    """TensorBoard's SummaryWriter class; ConfigError when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:
        raise ConfigError(f"--tensorboard needs the tensorboard package ({e}); pip install tensorboard") from e
    return SummaryWriter


def _tensorboard(out: Path):
    return _summary_writer()(str(out / "tb"))


def _finish(cfg, out, model, pruner, splits, example, test_loader, device, before, baseline, epochs_log, start, log,
            oneshot=None, backend=None):
    pruned = pruner is not None or oneshot is not None
    metrics_fn = _spiking_metrics()
    accuracy: Dict[str, Optional[float]] = {"dense": baseline["accuracy"] if baseline else None, "masked": None}
    importance_scores: Dict[str, list] = {}
    if pruner is not None:
        accuracy["masked"] = _evaluate(model, test_loader, splits.kind, device)
        if isinstance(pruner.importance, SCAImportance):
            for (root, group), name in zip(pruner.groups, pruner.group_names()):
                if pruner.importance.has_statistics(group):
                    importance_scores[name] = pruner.importance(group).cpu().tolist()
        pruner.finalize()
        log(f"finalized: masked channels removed; pruned == masked outputs checked (atol {pruner.verify_atol})")
    accuracy["final"] = _evaluate(model, test_loader, splits.kind, device)
    collapse = collapse_check(epochs_log[-1]["loss"] if epochs_log else None, accuracy["final"], splits.num_classes)
    after = model_stats(model, example)
    spiking = metrics_fn(model, (_time_major(x.to(device), splits.kind) for x, _ in test_loader))  # whole test set
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
        "device": str(device),
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

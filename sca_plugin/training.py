"""The training loop of a run (also the dense baseline's): epochs, the pruner's cadence (mask updates,
fixed masks for the final epochs, an NNI one-shot), evaluation, optimizer and LR schedule, DDP and
``torch.compile`` of the training forward."""
from __future__ import annotations

import contextlib
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Optional

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from .checkpoints import RunError
from .config import ConfigError, TrainConfig
from .distributed import rank, world_size
from .methods import build_pruner
from .optim import rebuild_optimizer
from .pruner import NonFiniteStatisticsError

__all__ = ["train_loop", "train_step", "evaluate", "time_major", "seed_all", "make_optimizer", "make_scheduler",
           "training_module", "init_distributed", "updates_in_epoch", "NNIOneShot", "tensorboard_writer",
           "summary_writer"]

class NNIOneShot:
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
        new_scheduler = make_scheduler(cfg, new_optimizer)
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
                    loss = training_step((time_major(x.to(device), kind), y.to(device)), model)
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


def updates_in_epoch(cfg: TrainConfig, epoch: int) -> bool:
    """Whether masks change during/after 0-based ``epoch``."""
    if cfg.spec.kind in ("dense", "init"):
        return False
    if cfg.effective_oneshot_epoch is not None:
        return epoch + 1 == cfg.effective_oneshot_epoch
    return epoch < cfg.epochs - cfg.effective_fixed_mask_epochs


def time_major(x: torch.Tensor, kind: str) -> torch.Tensor:
    return x.transpose(0, 1) if kind == "event" else x  # loaders give [B, T, ...] event frames


def evaluate(model: nn.Module, loader, kind: str, device) -> float:
    was = model.training
    model.eval()
    correct = total = 0
    with torch.no_grad():
        for x, y in loader:
            out = model(time_major(x.to(device), kind))
            correct += (out.argmax(-1) == y.to(device)).sum().item()
            total += len(y)
            functional.reset_net(model)
    model.train(was)
    return correct / max(total, 1)


def seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def make_optimizer(cfg: TrainConfig, model: nn.Module):
    if cfg.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    return optimizer, make_scheduler(cfg, optimizer)


def make_scheduler(cfg: TrainConfig, optimizer):
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


def train_loop(cfg, model, pruner, optimizer, scheduler, train_loader, test_loader, kind, device, first_epoch,
                epochs_log, log, writer=None, after_epoch=None, tag="", oneshot=None) -> None:
    net = training_module(model, device, cfg.compile)
    for epoch in range(first_epoch, cfg.epochs):
        began = time.perf_counter()
        updating = pruner is not None and updates_in_epoch(cfg, epoch)
        with _diverged_at(epoch, cfg):
            loss = _train_epoch(model, train_loader, kind, optimizer, pruner, device, cfg, updating, epoch, net)
            scheduler.step()
            if updating and cfg.update_interval is None:
                pruner.update_masks()
        if updating and epoch + 1 < cfg.epochs and not updates_in_epoch(cfg, epoch + 1):
            pruner.fix_masks()  # the remaining epochs train the final structure
        if oneshot is not None and updates_in_epoch(cfg, epoch):
            optimizer, scheduler = oneshot(epoch + 1, optimizer, scheduler)
            net = training_module(model, device, cfg.compile)  # the pruned model has new parameters
            log(f"{tag}{cfg.method}: pruned once after epoch {epoch + 1} and removed the channels "
                f"({sum(len(v) for v in oneshot.record['removed_channels'].values())} removed)")
        acc = evaluate(model, test_loader, kind, device)
        entry = {"epoch": epoch + 1, "loss": loss, "test_accuracy": acc,
                 "sparsity": _sparsity(pruner, oneshot),
                 "lr": optimizer.param_groups[0]["lr"],
                 "seconds": time.perf_counter() - began}  # training, mask updates and evaluation of this epoch
        epochs_log.append(entry)
        log(f"{tag}epoch {epoch + 1:3d}/{cfg.epochs}  loss {loss:.4f}  test acc {100 * acc:6.2f}%  "
            f"channel sparsity {entry['sparsity']:.3f}  ({entry['seconds']:.1f} s)")
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


def training_module(model: nn.Module, device, compile: bool = False) -> nn.Module:
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


def train_step(model: nn.Module, optimizer, x: torch.Tensor, y: torch.Tensor, pruner=None,
               net: Optional[nn.Module] = None) -> torch.Tensor:
    """One training step as a user writes it with a pruner: forward (through ``net``, a compiled or
    DDP wrapper of ``model``, if given), cross-entropy, backward, ``pruner.regularize``, optimizer
    step, neuron states reset. Returns the loss (detached)."""
    loss = F.cross_entropy((model if net is None else net)(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if pruner is not None:
        pruner.regularize(model)
    optimizer.step()
    functional.reset_net(model)
    return loss.detach()


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
        x, y = time_major(_shard(x).to(device), kind), _shard(y).to(device)
        loss = train_step(model, optimizer, x, y, pruner, net)
        if pruner is not None and updating and cfg.update_interval is not None:
            pruner.maybe_update_masks()
        total += loss.item() * len(y)
        n += len(y)
        if bar is not None:
            bar.update()
    if bar is not None:
        bar.close()
    return total / max(n, 1)


def summary_writer():
    """TensorBoard's SummaryWriter class; ConfigError when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:
        raise ConfigError(f"--tensorboard needs the tensorboard package ({e}); pip install tensorboard") from e
    return SummaryWriter


def tensorboard_writer(out: Path):
    return summary_writer()(str(out / "tb"))


def init_distributed(cfg: TrainConfig):
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

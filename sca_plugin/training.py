"""A minimal supervised loop for spiking classifiers, with the SCA calls where users put them."""
from __future__ import annotations

from typing import Optional

import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional

__all__ = ["train_epoch", "evaluate"]


def train_epoch(model: nn.Module, x: torch.Tensor, y: torch.Tensor, optimizer: torch.optim.Optimizer,
                batch_size: int = 64, pruner=None, generator: Optional[torch.Generator] = None) -> float:
    """One epoch over ``(x, y)`` in shuffled mini-batches; returns the mean loss.

    With a pruner, the L1 penalty is added after ``backward()`` (``pruner.regularize``). Mask
    updates are the caller's choice (per epoch or ``pruner.maybe_update_masks()`` per step).
    """
    model.train()
    order = torch.randperm(len(x), generator=generator)
    total, n = 0.0, 0
    for start in range(0, len(x), batch_size):
        idx = order[start:start + batch_size]
        loss = F.cross_entropy(model(x[idx]), y[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if pruner is not None:
            pruner.regularize(model)
        optimizer.step()
        functional.reset_net(model)
        total += loss.item() * len(idx)
        n += len(idx)
    return total / n


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy in eval mode (neuron state reset after every batch); train/eval flag restored."""
    was_training = model.training
    model.eval()
    correct = 0
    for start in range(0, len(x), batch_size):
        out = model(x[start:start + batch_size])
        correct += (out.argmax(-1) == y[start:start + batch_size]).sum().item()
        functional.reset_net(model)
    model.train(was_training)
    return correct / len(x)

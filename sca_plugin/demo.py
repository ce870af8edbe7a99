"""The main job on the embedded default: SCA at 50% channel sparsity on scikit-learn's digits.

Trains a dense spiking CNN and an SCA-pruned one with the same budget, finalizes the pruned one
(physical removal), checks that it computes exactly what the masked model computed, and prints a
before/after table of accuracy, parameters, MACs and channels per layer. Run:
``python -m sca_plugin.demo`` (``--help`` for the knobs).
"""
from __future__ import annotations

import argparse
import time
from typing import Optional, Sequence

import torch

from .data import load_digits
from .models import digits_cnn
from .pruner import SCAPruner
from .reporting import model_stats, pruning_report
from .training import evaluate, train_epoch


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m sca_plugin.demo", description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--fixed-mask-epochs", type=int, default=5, help="final epochs without mask updates")
    p.add_argument("--pruning-ratio", type=float, default=0.5)
    p.add_argument("--regrow-ratio", type=float, default=0.1)
    p.add_argument("--time-steps", type=int, default=4)
    p.add_argument("--width", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    return p


def _train(model, data, args, pruner: Optional[SCAPruner] = None) -> None:
    x_tr, y_tr, _, _ = data
    optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, args.epochs)
    generator = torch.Generator().manual_seed(args.seed)
    for epoch in range(args.epochs):
        loss = train_epoch(model, x_tr, y_tr, optimizer, args.batch_size, pruner, generator)
        scheduler.step()
        note = ""
        if pruner is not None and epoch < args.epochs - args.fixed_mask_epochs:
            pruner.update_masks()
            h = pruner.history[-1]
            note = f"  sparsity {h['sparsity']:.3f} (pruned {h['pruned']}, regrown {h['regrown']})"
        print(f"  epoch {epoch + 1:3d}  loss {loss:.4f}{note}", flush=True)


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = _parser().parse_args(argv)
    data = load_digits(seed=args.seed)
    x_tr, _, x_te, y_te = data
    example = x_tr[:8]
    start = time.time()

    print(f"digits: {len(x_tr)} train / {len(x_te)} test images, T={args.time_steps}")
    torch.manual_seed(args.seed)
    dense = digits_cnn(T=args.time_steps, width=args.width)
    torch.manual_seed(args.seed)
    model = digits_cnn(T=args.time_steps, width=args.width)

    print("dense training")
    _train(dense, data, args)
    before = model_stats(dense, example, evaluate(dense, x_te, y_te))

    print(f"SCA training (pruning_ratio={args.pruning_ratio}, regrow_ratio={args.regrow_ratio})")
    pruner = SCAPruner(model, example, pruning_ratio=args.pruning_ratio, regrow_ratio=args.regrow_ratio,
                       ignored_layers=[model.classifier])
    _train(model, data, args, pruner)
    masked_accuracy = evaluate(model, x_te, y_te)
    pruner.finalize()  # raises (and rolls back) if the pruned model differs from the masked one
    after = model_stats(model, example, evaluate(model, x_te, y_te))

    print()
    print(pruning_report(before, after))
    print()
    print(f"masked-model accuracy {100 * masked_accuracy:.2f}% == finalized accuracy "
          f"{100 * after['accuracy']:.2f}%: {masked_accuracy == after['accuracy']}")
    print(f"channel sparsity of the prunable layers: {pruner.sparsity():.3f}; wall time {time.time() - start:.1f}s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

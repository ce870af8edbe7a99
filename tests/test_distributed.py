"""DDP (torch.distributed, gloo on CPU, 2 processes): SCA statistics and regrowth gradients are
summed over the processes, so every rank gets the same masks, equal to those of a single process
trained on the same global batches; ``torchrun ... -m sca_plugin train`` works, rank 0 writes."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from sca_plugin import SCAPruner, SDSNNPruner
from sca_plugin.models import digits_cnn

WORLD, GLOBAL_BATCH, BATCHES, EPOCHS = 2, 8, 3, 5  # SD-SNN with N = 1 prunes from epoch 4


def global_batches():
    g = torch.Generator().manual_seed(7)
    return [(torch.rand(2, GLOBAL_BATCH, 1, 8, 8, generator=g, dtype=torch.float64),
             torch.randint(0, 10, (GLOBAL_BATCH,), generator=g)) for _ in range(BATCHES)]


def train(method: str, rank: int = 0, world: int = 1):
    """The same loop in one process (world 1) or as one DDP rank on its shard of each global batch.
    BatchNorm statistics are frozen (eval) so that a shard's forward equals the full batch's."""
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5).double()
    batches = global_batches()
    if method == "sca":
        pruner = SCAPruner(model, batches[0][0][:, :2], pruning_ratio=0.5, regrow_ratio=0.2,
                           ignored_layers=[model.classifier])
    else:
        pruner = SDSNNPruner(model, batches[0][0][:, :2], ignored_layers=[model.classifier], N=1, initial_rate=40.0)
    net = nn.parallel.DistributedDataParallel(model) if world > 1 else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    per = GLOBAL_BATCH // world
    for _ in range(EPOCHS):
        model.train()
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.eval()
        for x, y in batches:
            xs, ys = x[:, rank * per:(rank + 1) * per], y[rank * per:(rank + 1) * per]
            loss = F.cross_entropy(net(xs), ys)
            opt.zero_grad()
            loss.backward()
            pruner.regularize(model)
            opt.step()
            functional.reset_net(model)
        pruner.update_masks()
    return [m.clone() for m in pruner.masks], {k: v.clone() for k, v in model.state_dict().items()}


def _worker(rank, world, init_file, out, method):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        masks, state = train(method, rank, world)
        torch.save({"masks": masks, "state": state}, os.path.join(out, f"rank{rank}.pt"))
    finally:
        dist.destroy_process_group()


@pytest.mark.parametrize("method", ["sca", "sdsnn"])
def test_ddp_masks_identical_across_ranks_and_equal_to_one_process(method, tmp_path):
    mp.start_processes(_worker, args=(WORLD, str(tmp_path / "init"), str(tmp_path), method), nprocs=WORLD,
                       join=True, start_method="spawn")
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(WORLD)]
    single_masks, single_state = train(method)
    assert any((~m).any() for m in single_masks)  # something was pruned
    for r in ranks:
        assert all(torch.equal(a, b) for a, b in zip(r["masks"], ranks[0]["masks"]))  # every rank the same
        assert all(torch.equal(a, b) for a, b in zip(r["masks"], single_masks))     # = one process
        for k, v in single_state.items():
            torch.testing.assert_close(r["state"][k], v, atol=1e-9, rtol=1e-9)


def test_torchrun_train_rank0_writes(tmp_path):
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "-m", "sca_plugin", "train", "--epochs", "2", "--width", "0.25", "--time-steps", "2",
           "--train-limit", "128", "--test-limit", "64", "--batch-size", "32", "--no-progress", "--no-dense-baseline",
           "--output-dir", str(out)]
    res = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    import json

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["distributed"] == {"world_size": 2, "backend": "gloo"}
    assert metrics["parameters"]["after"] < metrics["parameters"]["before"]
    assert sorted(p.name for p in Path(out).iterdir() if not p.name.startswith(".")) == \
        sorted(["checkpoint.pt", "checkpoint.prev.pt", "metrics.json", "model.pt", "model_state.pth"])

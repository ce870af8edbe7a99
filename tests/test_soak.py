"""Soak test (``pytest -m soak``; not in the default run): many mask updates must not make memory
grow. Live tensors are counted exactly; resident memory (VmRSS) is allowed a small allocator slack.
The pruners' ``history`` grows by design (one small dict per update) and is excluded."""
import gc

import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from sca_plugin import SCAPruner, SDSNNPruner
from sca_plugin.models import digits_cnn

pytestmark = pytest.mark.soak
UPDATES = 600
WARMUP = 100


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def live_tensors() -> int:
    gc.collect()
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor))


@pytest.mark.parametrize("method", ["sca", "sdsnn"])
def test_memory_does_not_grow_with_mask_updates(method):
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    x, y = torch.rand(2, 16, 1, 8, 8), torch.randint(0, 10, (16,))
    if method == "sca":
        pruner = SCAPruner(model, x, pruning_ratio=0.5, regrow_ratio=0.1, ignored_layers=[model.classifier],
                           update_interval=1)
    else:
        pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1, initial_rate=20.0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    marks = {}
    for step in range(1, UPDATES + 1):
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.regularize(model)
        opt.step()
        functional.reset_net(model)
        if method == "sca":
            pruner.maybe_update_masks()
        else:
            pruner.update_masks()
        if step in (WARMUP, UPDATES):
            pruner.history.clear()  # grows by design; not what this test is about
            marks[step] = (live_tensors(), rss_mib())
    assert pruner.num_updates == UPDATES
    (t0, r0), (t1, r1) = marks[WARMUP], marks[UPDATES]
    assert t1 <= t0, f"live tensors grew from {t0} to {t1} over {UPDATES - WARMUP} updates"
    assert r1 - r0 < 16, f"resident memory grew by {r1 - r0:.1f} MiB over {UPDATES - WARMUP} updates"

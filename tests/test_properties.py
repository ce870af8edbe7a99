"""Property-based tests (hypothesis): for random spiking architectures and random channel masks,
``finalize()`` succeeds, the finalized model computes what the masked model computed, and its
parameter count is the one the masks imply.

Architectures: a stem, then 1-4 blocks drawn from plain conv, post-activation residual (identity
or projection shortcut), pre-activation residual, two-branch concatenation and max/avg pooling,
random widths, IF/LIF/PLIF neurons, single- or multi-step mode. Masks: random channel scores
(Torch-Pruning's RandomImportance with a drawn seed), a drawn ratio, global or per-group ranking.
A failure shrinks to a minimal architecture, to be added to ``test_regressions`` below. So far the
property test has found no failure of the library (its one finding was in the test itself: a ratio
of 0.2 prunes nothing in 2-channel groups, hence ratios >= 0.4); the regressions are two small
hand-picked architectures (a concatenation; a pre-activation block feeding a residual one).
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from spikingjelly.activation_based import layer

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

from tests.helpers import excite, outputs  # noqa: E402
from sca_plugin import SCAPruner  # noqa: E402
from sca_plugin.models.base import SpikingNet  # noqa: E402
from sca_plugin.models.blocks import BasicBlock, PreActBlock, conv_bn_sn  # noqa: E402
from sca_plugin.models.neuron_factory import make_neuron_factory  # noqa: E402

Block = Tuple  # ("plain", w) | ("res", w) | ("preact", w) | ("concat", w1, w2) | ("pool", "max" | "avg")


class Concat(nn.Module):
    """Two conv-BN-neuron branches on the same input, concatenated along channels."""

    def __init__(self, cin: int, w1: int, w2: int, make_neuron) -> None:
        super().__init__()
        self.a = nn.Sequential(*conv_bn_sn(cin, w1, make_neuron))
        self.b = nn.Sequential(*conv_bn_sn(cin, w2, make_neuron))

    def forward(self, x):
        return torch.cat([self.a(x), self.b(x)], dim=-3)  # channels: -3 in both [B,C,H,W] and [T,B,C,H,W]


class RandomSNN(SpikingNet):
    def __init__(self, stem: int, blocks: Sequence[Block], neuron: str, step_mode: str, T: int = 2) -> None:
        super().__init__(T=T, num_classes=5, in_channels=1, step_mode=step_mode)
        make = make_neuron_factory(neuron)
        mods: List[nn.Module] = list(conv_bn_sn(1, stem, make))
        c = stem
        for b in blocks:
            if b[0] == "plain":
                mods += conv_bn_sn(c, b[1], make)
                c = b[1]
            elif b[0] == "res":
                mods.append(BasicBlock(c, b[1], 1, make))
                c = b[1]
            elif b[0] == "preact":
                mods.append(PreActBlock(c, b[1], 1, make))
                c = b[1]
            elif b[0] == "concat":
                mods.append(Concat(c, b[1], b[2], make))
                c = b[1] + b[2]
            else:
                mods.append(layer.MaxPool2d(2) if b[1] == "max" else layer.AvgPool2d(2))
        self.features = nn.Sequential(*mods)
        self.pool = layer.AdaptiveAvgPool2d((1, 1))
        self.flatten = layer.Flatten()
        self.classifier = layer.Linear(c, 5)
        self._finish_init(step_mode)

    def forward_body(self, x):
        return self.classifier(self.flatten(self.pool(self.features(x))))


widths = st.integers(min_value=2, max_value=6)
blocks = st.one_of(
    st.tuples(st.just("plain"), widths),
    st.tuples(st.just("res"), widths),
    st.tuples(st.just("preact"), widths),
    st.tuples(st.just("concat"), widths, widths),
    st.tuples(st.just("pool"), st.sampled_from(["max", "avg"])),
)
architectures = st.fixed_dictionaries({
    "stem": widths,
    "blocks": st.lists(blocks, min_size=1, max_size=4).filter(lambda bs: sum(b[0] == "pool" for b in bs) <= 2),
    "neuron": st.sampled_from(["if", "lif", "plif"]),
    "step_mode": st.sampled_from(["m", "s"]),
})
masks = st.fixed_dictionaries({
    "seed": st.integers(0, 2 ** 16),
    "ratio": st.sampled_from([0.4, 0.5, 0.7]),  # at least one channel of every 2-channel group
    "global": st.booleans(),
})


def implied_parameter_count(pruner: SCAPruner) -> int:
    """Parameters left when exactly the channels the masks remove are sliced out of every layer the
    dependency graph couples to them (out channels of producers and norms, in channels of consumers)."""
    removed_out, removed_in = {}, {}
    DG = pruner.DG
    for (root, group), keep in zip(pruner.groups, pruner.masks):
        gone = set(torch.nonzero(~keep).flatten().tolist())
        for item in group:
            module, handler = item.dep.target.module, item.dep.handler
            idxs = {int(local) for local, r in zip(item.idxs, item.root_idxs) if int(r) in gone}
            if DG.is_out_channel_pruning_fn(handler):
                removed_out.setdefault(module, set()).update(idxs)
            elif DG.is_in_channel_pruning_fn(handler):
                removed_in.setdefault(module, set()).update(idxs)
    total = 0
    for m in pruner.model.modules():
        own = dict(m.named_parameters(recurse=False))
        if not own:
            continue
        out_gone, in_gone = len(removed_out.get(m, ())), len(removed_in.get(m, ()))
        if isinstance(m, nn.Conv2d):
            k = m.kernel_size[0] * m.kernel_size[1]
            total += (m.out_channels - out_gone) * (m.in_channels - in_gone) * k
            total += (m.out_channels - out_gone) if m.bias is not None else 0
        elif isinstance(m, nn.Linear):
            total += (m.out_features - out_gone) * (m.in_features - in_gone)
            total += (m.out_features - out_gone) if m.bias is not None else 0
        elif isinstance(m, nn.BatchNorm2d):
            gone = len(removed_out.get(m, set()) | removed_in.get(m, set()))
            total += sum(p.numel() for p in own.values()) // m.num_features * (m.num_features - gone)
        else:  # neuron parameters (PLIF's scalar tau) are not per channel
            total += sum(p.numel() for p in own.values())
    return total


def responds(out: torch.Tensor) -> bool:
    """The network's output differs between its inputs (it is neither silent nor saturated)."""
    flat = out.reshape(out.shape[0], -1)
    return bool((flat - flat[:1]).abs().max() > 0)


def check(arch: dict, mask: dict) -> bool:
    """Masked == finalized, exactly, and the parameter count the masks imply; returns whether the
    masked network responds to its input (else the equality proved little)."""
    torch.manual_seed(mask["seed"])
    model = RandomSNN(arch["stem"], arch["blocks"], arch["neuron"], arch["step_mode"])
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(mask["seed"])) * 3
    # BN statistics of the data (BN(0) of a channel then has either sign: a masked channel that kept
    # its shift would fire), scales and shifts at which layers spike without saturating, so that
    # the network's output depends on its input and the equality below is not vacuous
    excite(model, x, seed=mask["seed"])
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.bias.sub_(0.3)
    model.eval()
    pruner = SCAPruner(model, x, importance=tp.importance.RandomImportance(), pruning_ratio=mask["ratio"],
                       regrow_ratio=0.0, global_pruning=mask["global"], ignored_layers=[model.classifier])
    pruner.update_masks()
    before = sum(p.numel() for p in model.parameters())
    expected_params = implied_parameter_count(pruner)
    assert pruner.sparsity() > 0 and expected_params < before
    masked = outputs(model.double(), x.double())
    pruner.finalize()
    torch.testing.assert_close(outputs(model, x.double()), masked, atol=1e-9, rtol=0)
    assert sum(p.numel() for p in model.parameters()) == expected_params
    return responds(masked)


def test_random_architectures_finalize_exactly():
    """The property on 100 random architectures and masks. A network that gives every input the same
    output (silent, or saturated) would make its equality vacuous, so most of them must respond to
    their input; some cannot (one channel left per layer, two pooling stages on 8x8 inputs)."""
    seen = {"total": 0, "responding": 0}

    @settings(max_examples=100, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(arch=architectures, mask=masks)
    def prop(arch, mask):
        seen["total"] += 1
        seen["responding"] += check(arch, mask)

    prop()
    assert seen["responding"] >= 0.7 * seen["total"], seen  # 74 of 100 respond (derandomized)


# ---- fixed architectures (and any minimal failing example hypothesis reports), as regular tests
@pytest.mark.parametrize("arch, mask", [
    ({"stem": 2, "blocks": [("concat", 2, 3)], "neuron": "if", "step_mode": "m"}, {"seed": 0, "ratio": 0.4, "global": True}),
    ({"stem": 3, "blocks": [("preact", 2), ("res", 2)], "neuron": "plif", "step_mode": "s"},
     {"seed": 1, "ratio": 0.6, "global": False}),
])
def test_regressions(arch, mask):
    # pinned for the equality they once broke; the second keeps one channel per layer and gives its
    # three inputs the same output, so the response is not required of these two
    check(arch, mask)

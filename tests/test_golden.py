"""Golden runs: the masks and mask-update history of small fixed-seed runs, pinned before the
dynamic-masking core is redesigned (issue 13). A redesign that moves code must leave every one of
them unchanged; a deliberate change of behaviour regenerates the file and says why in the commit
and the CHANGELOG:

    SCA_GOLDEN_UPDATE=1 python -m pytest tests/test_golden.py

What is pinned is discrete (which channels each update keeps, the history's counts, the channel
widths after removal), so the pins do not depend on float rounding beyond the ranking itself."""
import json
import os
from pathlib import Path

import pytest
import torch

from tests.helpers import nni_evaluator, train_steps
from sca_plugin import SCAPruner, SDSNNPruner
from sca_plugin.models import digits_cnn, resnet19
from sca_plugin.nni import ModelSpeedup, NNIBuiltinPruning
from sca_plugin.nni.pruner import SCAPruner as NNISCAPruner
from sca_plugin.reporting import model_stats

GOLDEN = Path(__file__).with_name("golden") / "runs.json"
UPDATE = os.environ.get("SCA_GOLDEN_UPDATE") == "1"


def _data(channels=1, n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, channels, 8, 8, generator=g) * 2, torch.randint(0, 10, (n,), generator=g)


def _kept(mask) -> list:
    return [int(i) for i in torch.nonzero(mask.bool()).flatten()]


def _history(history) -> list:
    keys = ("update", "step", "channels", "pruned", "regrown")
    return [{k: h[k] for k in keys if k in h} for h in history]


def _widths(model, x) -> dict:
    return {n: int(c) for n, c in model_stats(model, x)["channels"].items()}


def _core_run(arch: str, epochs: int = 4, **kw) -> dict:
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5) if arch == "digits" else resnet19(T=2, width=0.125, in_channels=1)
    x, y = _data()
    cls = SDSNNPruner if kw.pop("sdsnn", False) else SCAPruner
    before = _widths(model, x[:2])
    pruner = cls(model, x[:2], ignored_layers=[model.classifier], **kw)
    optimizer = None
    masks = []
    for _ in range(epochs):
        optimizer = train_steps(model, x, y, 2, pruner, optimizer=optimizer)
        pruner.update_masks()
        masks.append({pruner.module_names[root]: _kept(k) for (root, _), k in zip(pruner.groups, pruner.masks)})
    pruner.fix_masks()
    train_steps(model, x, y, 1, pruner, optimizer=optimizer)
    pruner.finalize()
    return {"widths_before": before, "masks": masks, "history": _history(pruner.history), "widths": _widths(model, x[:2])}


def _nni_masks(model, masks) -> dict:
    out = {}
    for name, targets in sorted(masks.items()):
        if targets.get("weight") is not None:
            w = targets["weight"]
            out[name] = _kept(w.reshape(w.shape[0], -1).any(1))
    return out


def _nni_sca_run() -> dict:
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    x, y = _data()
    config = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5, "global_group_id": 0}]
    pruner = NNISCAPruner(model, config, nni_evaluator(model, x, y, dummy_input=x[:2]), regrow_ratio=0.1,
                          interval_steps=2)
    before = _widths(model, x[:2])
    _, masks = pruner.compress(max_steps=6)
    pruner.unwrap_model()
    ModelSpeedup(model, x[:2], masks).speedup_model()
    return {"widths_before": before, "masks": _nni_masks(model, masks), "history": _history(pruner.history), "widths": _widths(model, x[:2])}


def _nni_builtin_run(name: str) -> dict:
    torch.manual_seed(0)
    model = resnet19(T=2, width=0.125, in_channels=1)
    x, y = _data()
    train_steps(model, x, y, 2)
    before = _widths(model, x[:2])
    pruning = NNIBuiltinPruning(model, x[:2], name, 0.5, ignored_layers=[model.classifier])
    evaluator = nni_evaluator(model, x, y) if name in ("slim", "taylor") else None
    masks = pruning.compute_masks(evaluator, 2)
    ModelSpeedup(model, x[:2], masks).speedup_model()
    return {"widths_before": before, "masks": _nni_masks(model, masks), "widths": _widths(model, x[:2])}


RUNS = {
    "sca-digits": lambda: _core_run("digits", pruning_ratio=0.5, regrow_ratio=0.1),
    "sca-digits-prune-only-local": lambda: _core_run("digits", pruning_ratio=0.5, regrow_ratio=0.0,
                                                      global_pruning=False),
    "sca-digits-cubic-incremental": lambda: _core_run("digits", pruning_ratio=0.8, regrow_ratio=0.1,
                                                       schedule="cubic", ramp_updates=3, mode="incremental"),
    "sca-resnet19": lambda: _core_run("resnet19", pruning_ratio=0.5, regrow_ratio=0.1),
    "sdsnn-digits": lambda: _core_run("digits", epochs=6, sdsnn=True, N=1, initial_rate=20.0),
    "nni-sca-digits": _nni_sca_run,
    "nni-l1norm-resnet19": lambda: _nni_builtin_run("l1norm"),
    "nni-fpgm-resnet19": lambda: _nni_builtin_run("fpgm"),
    "nni-taylor-resnet19": lambda: _nni_builtin_run("taylor"),
}


def _pinned() -> dict:
    return json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_golden_run_is_unchanged(name):
    result = json.loads(json.dumps(RUNS[name]()))  # the JSON form that is pinned
    if UPDATE:
        pinned = _pinned()
        pinned[name] = result
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(dict(sorted(pinned.items())), indent=1) + "\n")
        pytest.skip("pinned anew (SCA_GOLDEN_UPDATE=1)")
    pinned = _pinned()
    assert name in pinned, f"no pin for {name!r}: run SCA_GOLDEN_UPDATE=1 python -m pytest tests/test_golden.py"
    expected = pinned[name]
    # the masks and history must not drift; the history is compared update by update for a readable failure
    assert result["widths_before"] == expected["widths_before"]
    assert result["widths"] == expected["widths"]
    assert result["masks"] == expected["masks"]
    assert len(result.get("history", [])) == len(expected.get("history", []))
    for got, want in zip(result.get("history", []), expected.get("history", [])):
        assert got == want


def test_every_golden_run_changes_the_structure():
    """The pins are not vacuous: every pinned run removed channels, and the runs that regrow regrew some."""
    pinned = _pinned()
    assert set(pinned) == set(RUNS)
    for name, run in pinned.items():
        assert sum(run["widths"].values()) < sum(run["widths_before"].values()), name
        if "regrow_ratio=0.1" in name or name in ("sca-digits", "sca-resnet19", "nni-sca-digits"):
            assert any(h.get("regrown") for h in run["history"]), name

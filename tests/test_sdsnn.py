"""SD-SNN (SDSNNPruner / SDSNNImportance): each mechanism against a hand computation, the adaptive
rates, settling of the structure, masked == finalized, and exact resumption from state_dict."""
import copy
import math

import pytest
import torch

from tests.helpers import assert_unchanged, outputs, snapshot, train_steps
from sca_plugin import SDSNNImportance, SDSNNPruner
from sca_plugin.models import digits_cnn, resnet19


def tiny(seed=0):
    torch.manual_seed(seed)
    model = digits_cnn(T=2, width=0.25)  # channels 4 / 8 / 16
    x = torch.rand(2, 6, 1, 8, 8, generator=torch.Generator().manual_seed(seed))
    y = torch.randint(0, 10, (6,), generator=torch.Generator().manual_seed(seed + 1))
    return model, x, y


def test_synaptic_constraint_widens_shrinks_and_clips_by_hand():
    model, x, _ = tiny()
    conv = model.features[3]  # 8 x 4 x 3 x 3
    pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=2)  # clipping from update 3
    with torch.no_grad():
        conv.weight.copy_(torch.linspace(-0.2, 0.2, conv.weight.numel()).reshape(conv.weight.shape))
        conv.weight[1, 0, 0, 0] = 0.2
    up, down = (0, 0, 0, 0), (1, 0, 0, 0)  # one weight above r+, one whose |w| keeps shrinking
    pruner.update_masks()  # update 0: ranges +-max(W)
    syn = pruner.synapses[conv]
    M = float(conv.weight.detach().max())
    assert torch.all(syn.r_pos == M) and torch.all(syn.r_neg == -M)
    base = conv.weight.detach().clone()
    for e, (w_up, w_down) in enumerate([(M + 1, 0.15), (M + 2, 0.1), (M + 3, 0.05)], start=1):
        with torch.no_grad():
            conv.weight.copy_(base)
            conv.weight[up] = w_up
            conv.weight[down] = w_down
        pruner.update_masks()
    # update 1 seeds the streak, 2 counts 1 (excess 2), 3 counts 2 = N (excess 2 + 3): r+ += 5 / N
    assert syn.r_pos[up].item() == pytest.approx(M + 2.5)
    assert conv.weight[up].item() == pytest.approx(M + 2.5)  # clipped into the new range at update 3
    # |w| decreased at updates 1, 2, 3 (0.2 -> 0.15 -> 0.1 -> 0.05): streak of N at update 3: both ends x 0.75
    assert syn.r_pos[down].item() == pytest.approx(0.75 * M) and syn.r_neg[down].item() == pytest.approx(-0.75 * M)
    others = torch.ones_like(syn.r_pos, dtype=torch.bool)
    others[up] = others[down] = False
    assert torch.all(syn.r_pos[others] == M) and torch.all(syn.r_neg[others] == -M)


def test_pruning_removes_the_lowest_scoring_channels_and_adapts_the_rate_by_hand(monkeypatch):
    model, x, y = tiny()
    pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1, initial_rate=50.0)
    opt = None
    for _ in range(3):  # updates 0, 1, 2: ranges and clipping; pruning starts at update 3
        opt = train_steps(model, x, y, 1, optimizer=opt)
        pruner.update_masks()
    assert pruner.sparsity() == 0.0 and pruner.prune_start == 3
    opt = train_steps(model, x, y, 1, optimizer=opt)
    seen = {}
    score = SDSNNImportance.__call__.__get__(pruner.importance)

    def by_hand_and_recorded(group):  # the score by hand from the state at the moment of pruning
        root = group[0].dep.target.module
        syn = pruner.synapses[root]
        width = syn.r_pos + syn.r_neg.abs()
        v = (width - width.min()) / (width.max() - width.min())
        hand = (v * syn.mask).reshape(root.weight.shape[0], -1).sum(1)
        got = score(group)
        torch.testing.assert_close(got, hand.float(), rtol=1e-6, atol=1e-6)
        seen[pruner.module_names[root]] = (got, {i: pruner._dead(i) for i in range(len(pruner.groups))})
        return got

    monkeypatch.setattr(SDSNNImportance, "__call__", lambda self, group: by_hand_and_recorded(group))
    rates_before = list(pruner.rates)
    pruner.update_masks()
    assert len(seen) == len(pruner.groups)
    for i, ((root, group), name) in enumerate(zip(pruner.groups, pruner.group_names())):
        n = len(group[0].idxs)
        k = int(n * rates_before[i] / 100)
        lowest = set(torch.argsort(seen[name][0], stable=True)[:k].tolist())
        assert set(torch.nonzero(pruner.pruned[i]).flatten().tolist()) == lowest
        assert int((~pruner.masks[i]).sum()) == k
        assert torch.all(root.weight.reshape(n, -1)[sorted(lowest)] == 0)  # incoming synapses re-zeroed
    # rates: P += exp(-(e - 2N - 1) / 5) * alive_l / alive_next, with alive counted right after the
    # layer's own pruning and the next layer's count taken before its pruning (public code order)
    order = pruner._order
    for pos, i in enumerate(order):
        n = len(pruner.groups[i][1][0].idxs)
        alive = n - pruner._dead(i)
        if pos + 1 < len(order):
            j = order[pos + 1]
            alive_next = len(pruner.groups[j][1][0].idxs) - seen[pruner.group_names()[j]][1][j]
        else:
            alive_next = alive
        assert pruner.rates[i] == pytest.approx(rates_before[i] + math.exp(0.0) * alive / alive_next, rel=1e-6)


def test_regeneration_restores_a_kernel_after_more_than_N_epochs_above_the_percentile():
    model, x, y = tiny()
    conv = model.features[3]
    pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1, initial_rate=50.0)
    for _ in range(4):  # pruning at update 3
        pruner.update_masks()
    i = pruner.group_names().index(pruner.module_names[conv])
    c = int(torch.nonzero(pruner.pruned[i])[0])
    assert not pruner.masks[i][c]
    syn = pruner.synapses[conv]
    for update in range(4, 7):
        with torch.no_grad():  # "training" pushes one kernel of the pruned channel up, every epoch
            conv.weight[c, 2] = syn.r_pos[c, 2]
        pruner.update_masks()
        restored = bool(syn.mask[c, 2].all())
        # candidate at updates 4, 5, 6: streak counts 0, 1, 2; restored when the count exceeds N = 1
        assert restored == (update == 6), update
    assert pruner.masks[i][c]  # a regrown kernel revives the channel
    assert pruner.history[-1]["regrown"] >= 1
    q = pruner.regeneration_percentile(6)
    assert q == pytest.approx(min(65 + 1.1 ** ((6 - 3) * 18), 99))
    assert pruner.regeneration_percentile(10_000) == 99.0  # long runs: no overflow (found by the soak test)


def test_structure_settles_and_masked_equals_finalized():
    model, x, y = tiny()
    pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1, initial_rate=20.0, regen_cap=100.0)
    opt = None
    counts = []
    for _ in range(14):
        opt = train_steps(model, x, y, 2, optimizer=opt)
        pruner.update_masks()
        counts.append(tuple(int(k.sum()) for k in pruner.masks))
    assert pruner.sparsity() > 0
    assert len(set(counts[-5:])) == 1, counts  # rates converged, regeneration faded: no more changes
    increments = [h["rates"] for h in pruner.history[-3:]]
    assert increments[0] == pytest.approx(increments[-1], rel=1e-3)
    masked = outputs(model.double(), x.double())
    connectivity = pruner.connectivity()["total"]
    pruner.finalize()
    torch.testing.assert_close(outputs(model, x.double()), masked, atol=1e-9, rtol=0)
    assert [model.get_submodule(n).out_channels for n in pruner.group_names()] == list(counts[-1])
    assert 0 < pruner.connectivity()["total"] <= 1 and connectivity <= 1


def test_residual_groups_are_pruned_together():
    torch.manual_seed(0)
    model = resnet19(T=2, width=0.125, in_channels=1)
    x = torch.rand(2, 4, 1, 8, 8)
    pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1, initial_rate=40.0)
    for _ in range(4):
        pruner.update_masks()
    coupled = [i for i in range(len(pruner.groups)) if len(pruner._producers[i]) > 1]
    assert coupled
    for i in coupled:
        rows = [syn_rows for syn_rows in (
            pruner.synapses[m].mask.reshape(m.weight.shape[0], -1).any(1)[torch.tensor(local)]
            for m, (local, _) in pruner._producers[i].items())]
        assert all(torch.equal(r, rows[0]) for r in rows)  # one channel mask for the stream
    reference = outputs(model.double(), x.double())
    pruner.finalize()
    torch.testing.assert_close(outputs(model, x.double()), reference, atol=1e-9, rtol=0)


def test_state_dict_resume_equals_uninterrupted():
    def run(stop=None, state=None):
        model, x, y = tiny()
        pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1, initial_rate=30.0)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        start = 0
        if state is not None:
            model.load_state_dict(state["model"])
            opt.load_state_dict(state["opt"])
            pruner.load_state_dict(state["pruner"])
            start = state["epoch"]
        for epoch in range(start, 8):
            train_steps(model, x, y, 1, optimizer=opt)
            pruner.update_masks()
            if epoch + 1 == stop:
                return {"model": copy.deepcopy(model.state_dict()), "opt": copy.deepcopy(opt.state_dict()),
                        "pruner": copy.deepcopy(pruner.state_dict()), "epoch": epoch + 1}
        return model, pruner

    full_model, full = run()
    resumed_model, resumed = run(state=run(stop=5))
    assert [torch.equal(a, b) for a, b in zip(full.masks, resumed.masks)] == [True] * len(full.masks)
    assert full.rates == resumed.rates and full.history == resumed.history
    for k, v in full_model.state_dict().items():
        assert torch.equal(v, resumed_model.state_dict()[k]), k


def test_bad_arguments_and_foreign_state_change_nothing():
    model, x, _ = tiny()
    snap = snapshot(model)
    for kwargs, msg in [(dict(N=0), "N must be"), (dict(initial_rate=100), "percentage"),
                        (dict(dead_synapses=-1), "dead_synapses"), (dict(regen_percentile=120), "percentile"),
                        (dict(range_layers="first"), "range_layers")]:
        with pytest.raises(ValueError, match=msg):
            SDSNNPruner(model, x, ignored_layers=[model.classifier], **kwargs)
    assert_unchanged(model, snap)
    pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1)
    pruner.update_masks()
    other_model, _, _ = tiny()
    other = SDSNNPruner(other_model, x, ignored_layers=[other_model.classifier], N=2)
    with pytest.raises(ValueError, match="other SD-SNN settings"):
        other.load_state_dict(pruner.state_dict())
    with pytest.raises(RuntimeError, match="no synaptic ranges yet"):
        SDSNNImportance()(pruner.groups[0][1])


def test_importance_works_inside_a_torch_pruning_pruner():
    import torch_pruning as tp

    from sca_plugin import SpikingMetaPruner

    model, x, y = tiny()
    sd = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1)
    train_steps(model, x, y, 1)
    sd.update_masks()
    before = sum(p.numel() for p in model.parameters())
    sd._uninstall()  # a one-shot Torch-Pruning run on the SD-SNN scores instead of the dynamic schedule
    meta = SpikingMetaPruner(model, x, importance=sd.importance, pruning_ratio=0.5, ignored_layers=[model.classifier])
    sd.importance.DG = meta.DG
    meta.step()
    assert sum(p.numel() for p in model.parameters()) < before
    assert isinstance(sd.importance, tp.importance.Importance)


def test_sca_prune_train_method_sdsnn_and_resume(tmp_path):
    from sca_plugin.config import ConfigError, TrainConfig
    from sca_plugin.runner import run_training

    def cfg(out, **kw):
        return TrainConfig(method="sdsnn", epochs=6, sdsnn_n=1, sdsnn_initial_rate=40.0, width=0.25, time_steps=2,
                           progress=False, train_limit=256, test_limit=128, dense_baseline=False,
                           output_dir=str(out), **kw)

    a = run_training(cfg(tmp_path / "a"), log=lambda *_: None)
    assert a["parameters"]["after"] < a["parameters"]["before"]
    assert a["accuracy"]["masked"] == a["accuracy"]["final"]
    assert 0 < a["connectivity"]["total"] <= 1 and a["synops_connected"] <= a["synops"]["after"] + 1e-6
    # every epoch develops the structure but the last, which trains the final structure
    assert [h["update"] for h in a["history"]] == list(range(5))

    class Crash(Exception):
        pass

    def crash(epoch):
        if epoch == 4:
            raise Crash

    with pytest.raises(Crash):
        run_training(cfg(tmp_path / "b"), log=lambda *_: None, on_epoch_end=crash)
    b = run_training(cfg(tmp_path / "b", resume=True), log=lambda *_: None)
    sa = torch.load(tmp_path / "a" / "model_state.pth", weights_only=True)
    sb = torch.load(tmp_path / "b" / "model_state.pth", weights_only=True)
    assert sa["history"] == sb["history"]
    for k in sa["state"]:
        assert torch.equal(sa["state"][k], sb["state"][k]), k
    assert a["history"] == b["history"] and a["accuracy"] == b["accuracy"]
    with pytest.raises(ConfigError, match="regenerates synapses by its own rule"):
        TrainConfig(method="sdsnn", regrow_ratio=0.1)


def test_sdsnn_mnist_config_and_network():
    from pathlib import Path

    from sca_plugin.config import TrainConfig, load_config_file
    from sca_plugin.methods import build_pruner
    from sca_plugin.runner import build_model

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "configs" / "sdsnn_mnist.yaml"
    cfg = TrainConfig.from_dict(load_config_file(str(path)))
    model = build_model(cfg, 10, 1, (28, 28))
    assert [m.out_channels for m in model.features if hasattr(m, "out_channels")] == [15, 40]
    assert model.fc1[0].in_features == 1960 and model.fc1[0].out_features == 300
    x = torch.rand(2, 1, 28, 28)
    assert model(x).shape == (2, 10)
    pruner = build_pruner(cfg, model, x)
    assert sorted(pruner.group_names()) == ["fc1.0", "features.0", "features.3"]  # hidden FC layer managed too
    assert pruner.rates[pruner.group_names().index("fc1.0")] == 35.0 and pruner.N == 1


def test_sibling_of_scapruner_on_the_dynamic_base():
    from sca_plugin import SCAPruner
    from sca_plugin.dynamic import DynamicChannelPruner

    assert issubclass(SDSNNPruner, DynamicChannelPruner) and issubclass(SCAPruner, DynamicChannelPruner)
    assert not issubclass(SDSNNPruner, SCAPruner) and not issubclass(SCAPruner, SDSNNPruner)
    model, x, _ = tiny()
    pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1)
    for attr in ("regrow_ratio", "l1", "schedule", "mode"):  # no placeholder SCA arguments
        assert not hasattr(pruner, attr), attr


def test_a_state_of_the_earlier_format_loads():
    """Checkpoints written while SDSNNPruner subclassed SCAPruner (format sca_plugin.SCAPruner/1 with an
    'sdsnn' entry holding the SD-SNN settings) resume unchanged."""
    model, x, y = tiny()
    pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1, initial_rate=30.0)
    opt = None
    for _ in range(5):
        opt = train_steps(model, x, y, 1, optimizer=opt)
        pruner.update_masks()
    state = pruner.state_dict()
    legacy = {**state, "format": "sca_plugin.SCAPruner/1",
              "config": {"pruning_ratio": 0.0, "regrow_ratio": 0.0, "masking": state["config"]["masking"]},
              "activity": {}, "growth": {},
              "sdsnn": {**state["sdsnn"], "config": {k: v for k, v in state["config"].items() if k != "masking"}}}
    fresh_model, _, _ = tiny()
    fresh_model.load_state_dict(model.state_dict())
    fresh = SDSNNPruner(fresh_model, x, ignored_layers=[fresh_model.classifier], N=1, initial_rate=30.0)
    fresh.load_state_dict(legacy)
    assert all(torch.equal(a, b) for a, b in zip(fresh.masks, pruner.masks))
    assert fresh.rates == pruner.rates and fresh.num_updates == 5 and fresh.history == pruner.history
    wrong = SDSNNPruner(tiny()[0], x, ignored_layers=None, N=2, initial_rate=30.0)
    with pytest.raises(ValueError, match="other SD-SNN settings .*N: saved 1, here 2"):
        wrong.load_state_dict(legacy)

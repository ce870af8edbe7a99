"""sca_plugin.optimize_for_inference: the inference copy of a finalized (or any SpikingJelly) model
gives the model's spikes, calls are independent, the caller's model is untouched, hooks are dropped,
misuse is refused before anything changes, and `sca-prune eval / export --optimize` use it."""
import json
import warnings

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

from sca_plugin import InferenceModel, SCAPruner, optimize_for_inference
from sca_plugin.cli import main
from sca_plugin.export.fusion import fold_batchnorm_, fuse_batchnorm
from sca_plugin.inference import record_spikes
from sca_plugin.models import digits_cnn
from tests.helpers import assert_not_silent, assert_unchanged, excite, outputs, snapshot, trained_digits_pruner


def _has_bn(model):
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


@pytest.fixture
def finalized(digits_batch):
    """A digits_cnn pruned by SCAPruner and finalized, BatchNorm statistics set so every layer spikes."""
    model, pruner = trained_digits_pruner(digits_batch)
    pruner.finalize()
    excite(model, digits_batch[0])
    return model


def _sj_model():
    """A plain SpikingJelly multi-step network with BatchNorm (no sca_plugin class), excited."""
    torch.manual_seed(0)
    net = nn.Sequential(layer.Conv2d(1, 6, 3, padding=1, bias=False), layer.BatchNorm2d(6), neuron.LIFNode(),
                        layer.AvgPool2d(2), layer.Conv2d(6, 8, 3, padding=1), layer.BatchNorm2d(8), neuron.IFNode(),
                        layer.Flatten(), layer.Linear(8 * 4 * 4, 10))
    functional.set_step_mode(net, "m")
    x = torch.rand(3, 16, 1, 8, 8) * 2
    return excite(net, x), x


def _assert_same_spikes(model, fast, x):
    out, ref = record_spikes(model, (x,))
    _, got = record_spikes(fast.module, (x,))
    assert ref.keys() == got.keys() and ref
    for name in ref:
        assert torch.equal(ref[name], got[name]), name
        assert ref[name].sum() > 0, f"{name} is silent: the comparison would prove nothing"
    return out


@pytest.mark.parametrize("which", ["finalized_sca", "spikingjelly_bn"])
def test_compiled_path_gives_the_models_spikes(which, finalized, digits_batch):
    model, x = (finalized, digits_batch[0]) if which == "finalized_sca" else _sj_model()
    fast = optimize_for_inference(model, x[..., :4, :, :, :] if x.dim() == 5 else x[:4])
    assert fast.compiled and fast.report["folded"] and not _has_bn(fast.module)
    assert fast.report["check"]["spike_differences"] == {}
    expected = _assert_same_spikes(model, fast, x)  # every neuron, the whole batch (eager prepared copy)
    got = fast(x)  # compiled, another batch size than example_inputs
    assert_not_silent(expected if expected.dim() == 2 else expected.mean(0))
    # the classifier reads identical spikes; freezing may round its matmul differently in the last bits
    assert torch.allclose(got, expected, rtol=0, atol=1e-5)
    assert torch.equal(got.argmax(-1), expected.argmax(-1))
    assert torch.equal(fast(x), got)  # a second call starts from rest again


@pytest.mark.parametrize("compile", [True, False])
def test_saved_and_copied_inference_model_gives_the_same_output(compile, finalized, digits_batch, tmp_path):
    """torch.save / torch.load and copy.deepcopy work (compiled code does not pickle): the copy keeps
    the compile settings, compiles again at its first call and gives the original's output."""
    import copy

    x = digits_batch[0]
    fast = optimize_for_inference(finalized, x[:4], compile=compile, check=False)
    expected = fast(x)
    assert_not_silent(expected)
    torch.save(fast, tmp_path / "fast.pt")
    for other in (torch.load(tmp_path / "fast.pt", weights_only=False), copy.deepcopy(fast)):
        assert other.compiled == compile
        if compile:
            assert other._compiled is not fast._compiled  # compiled again, not shared
        assert other.report == fast.report
        assert torch.equal(other(x), expected)


def test_no_spike_flips_on_the_digits_test_set(digits_batch):
    """BatchNorm folding rounds differently; on real data (the digits test set) no spike flips."""
    from sca_plugin.datasets import load_dataset

    splits = load_dataset("digits", time_steps=2, seed=0)
    xs = torch.stack([splits.test[i][0] for i in range(len(splits.test))])
    model, pruner = trained_digits_pruner(digits_batch)
    pruner.finalize()
    excite(model, xs[:64])
    fast = optimize_for_inference(model, xs[:8], compile=False)
    _assert_same_spikes(model, fast, xs)
    assert torch.equal(fast(xs), outputs(model, xs))  # the classifier is not folded: bit for bit


def test_single_step_model_runs_multi_step_with_the_same_output(digits_batch):
    torch.manual_seed(0)
    model = excite(digits_cnn(T=2, width=0.5, step_mode="s"), digits_batch[0])
    fast = optimize_for_inference(model, digits_batch[0][:2], compile=False)
    assert fast.module.step_mode == "m" and model.step_mode == "s"
    _assert_same_spikes(model, fast, digits_batch[0])
    assert torch.allclose(fast(digits_batch[0]), outputs(model, digits_batch[0]), rtol=0, atol=1e-6)


def test_callers_model_is_unchanged_and_calls_are_independent(finalized, digits_batch):
    x = digits_batch[0]
    finalized.train()
    for m in finalized.modules():
        if isinstance(m, neuron.BaseNode):
            m.store_v_seq = True
    snap = snapshot(finalized)
    fast = optimize_for_inference(finalized, x[:2], compile=False)
    assert_unchanged(finalized, snap)
    assert finalized.training and all(m.store_v_seq for m in finalized.modules() if isinstance(m, neuron.BaseNode))
    assert _has_bn(finalized) and not _has_bn(fast.module)
    assert not any(m.store_v_seq for m in fast.module.modules() if isinstance(m, neuron.BaseNode))
    assert all(p.data_ptr() != q.data_ptr() for p in finalized.parameters() for q in fast.module.parameters())
    first = fast(x)
    assert torch.equal(fast(x), first) and torch.equal(fast(x[:3]), first[:3])
    with pytest.raises(RuntimeError, match="inference only"):
        fast.train()


def test_hooks_are_dropped_from_the_copy_only(finalized, digits_batch):
    calls = []
    finalized.features[2].register_forward_hook(lambda m, a, o: calls.append(1))
    finalized.features[0].register_forward_pre_hook(lambda m, a: None)
    fast = optimize_for_inference(finalized, digits_batch[0][:2], compile=False)
    calls.clear()
    fast(digits_batch[0])
    assert calls == []
    assert all(not m._forward_hooks and not m._forward_pre_hooks for m in fast.modules())
    assert len(fast.report["dropped_hooks"]) == 2 and fast.report["dropped_hooks"][0].startswith("features.")
    assert len(finalized.features[2]._forward_hooks) == 1  # the caller keeps its own


def test_unfinalized_pruner_is_refused_before_any_change(digits_batch):
    model, pruner = trained_digits_pruner(digits_batch)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"unfinalized pruner .*call pruner\.finalize\(\) first"):
        optimize_for_inference(model, digits_batch[0][:2])
    assert_unchanged(model, snap)
    pruner.finalize()  # still usable: nothing was taken off the model
    assert isinstance(optimize_for_inference(model, digits_batch[0][:2], compile=False), InferenceModel)


@pytest.mark.parametrize("bad, error, match", [
    (torch.rand(2, 3, 8, 8), ValueError, r"example_inputs of shape \[2, 3, 8, 8\] do not fit the model"),
    (torch.rand(2, 1), ValueError, "do not fit the model"),
    ([[1.0, 2.0]], TypeError, "example_inputs must be a tensor"),
])
def test_wrong_example_inputs_are_refused_before_any_change(finalized, bad, error, match):
    finalized.train()
    snap = snapshot(finalized)
    with pytest.raises(error, match=match):
        optimize_for_inference(finalized, bad)
    assert_unchanged(finalized, snap)


def test_torch_prune_reparametrization_is_refused(finalized, digits_batch):
    torch.nn.utils.prune.l1_unstructured(finalized.features[0], "weight", amount=0.5)
    with pytest.raises(ValueError, match=r"torch\.nn\.utils\.prune\.remove"):
        optimize_for_inference(finalized, digits_batch[0][:2])


def test_flipped_spikes_are_reported(finalized, digits_batch, monkeypatch):
    """A fold that moved a membrane potential across a threshold is a RuntimeWarning naming the layer."""
    import sca_plugin.export.fusion as fusion

    def shifted(model):
        pairs = fold_batchnorm_(model)
        with torch.no_grad():
            model.get_submodule(pairs[0][0]).bias.add_(0.5)
        return pairs

    monkeypatch.setattr(fusion, "fold_batchnorm_", shifted)
    with pytest.warns(RuntimeWarning, match=r"spikes of the example inputs differ .*features\.2"):
        fast = optimize_for_inference(finalized, digits_batch[0], compile=False)
    assert fast.report["check"]["spike_differences"]["features.2"] > 0


def test_fold_in_place_equals_fuse_batchnorm(finalized, digits_batch):
    fused = fuse_batchnorm(finalized)
    import copy

    inplace = copy.deepcopy(finalized).eval()
    assert fold_batchnorm_(inplace) == [("features.0", "features.1"), ("features.3", "features.4"),
                                        ("features.7", "features.8")]
    for a, b in zip(fused.parameters(), inplace.parameters()):
        assert torch.equal(a, b)


def test_no_folding_keeps_batchnorm(finalized, digits_batch):
    fast = optimize_for_inference(finalized, digits_batch[0][:2], compile=False, fold_batchnorm=False)
    assert _has_bn(fast.module) and fast.report["folded"] == []
    assert torch.equal(fast(digits_batch[0]), outputs(finalized, digits_batch[0]))


TINY = ["--epochs", "2", "--width", "0.25", "--time-steps", "2", "--no-progress", "--train-limit", "128",
        "--test-limit", "64", "--fixed-mask-epochs", "1", "--batch-size", "16"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("run") / "sca"
    assert main(["train", *TINY, "--output-dir", str(out)]) == 0
    return out


def test_cli_eval_optimize(run_dir, capsys):
    capsys.readouterr()
    assert main(["eval", str(run_dir), "--optimize"]) == 0
    result = json.loads(capsys.readouterr().out)
    opt = result["optimized"]
    assert opt["predictions_differing"] == 0 and opt["test_accuracy"] == result["test_accuracy"]
    assert opt["folded_batchnorms"] == 3 and opt["spike_differences_first_batch"] == 0


@pytest.mark.parametrize("fmt", ["torch", "torchscript"])
def test_cli_export_optimize(run_dir, tmp_path, fmt, capsys):
    out = tmp_path / f"m.{fmt}"
    assert main(["export", str(run_dir), "--format", fmt, "--optimize", "--out", str(out)]) == 0
    model = torch.load(run_dir / "model.pt", weights_only=False)
    x = torch.rand(5, 1, 8, 8) * 2
    if fmt == "torch":
        loaded = torch.load(out, weights_only=False)
        assert not _has_bn(loaded) and _has_bn(model)
        got = outputs(loaded, x)
    else:
        with torch.no_grad():
            got = torch.jit.load(str(out))(x)
    assert torch.allclose(got, outputs(model, x), rtol=0, atol=1e-5)

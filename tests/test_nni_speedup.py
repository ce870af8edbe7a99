"""sca_plugin.nni.ModelSpeedup: NNI masks -> physical channel removal, exact."""
import warnings

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from tests.helpers import assert_unchanged, snapshot
from sca_plugin.models import digits_cnn, resnet18
from sca_plugin.nni import ModelSpeedup

pytest.importorskip("nni")
import nni  # noqa: E402
from nni.compression import TorchEvaluator  # noqa: E402

from tests.helpers import masked_copy, outputs64  # noqa: E402
from nni.compression.pruning import FPGMPruner, L1NormPruner, L2NormPruner, SlimPruner, TaylorPruner  # noqa: E402

CONV_CONFIG = [{"op_types": ["Conv2d"], "sparse_ratio": 0.5}]


def _randomize_bn(model, seed=0):
    """BN statistics such that BN(0) has both signs: some masked channels stay constant > 0."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                n = m.num_features
                m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
                m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                m.weight.copy_(torch.rand(n, generator=g) + 0.5)
                m.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.6)
    return model


def _nparams(model):
    return sum(p.numel() for p in model.parameters())


def _check_exact(model, masks, inputs, **kwargs):
    """Speed up ``model``; the result must equal the masked model on every input (float64)."""
    ref = masked_copy(model, masks)
    expected = [outputs64(ref, x) for x in inputs]
    n_before = _nparams(model)
    speedup = ModelSpeedup(model, inputs[0], masks, **kwargs)
    assert speedup.speedup_model() is model
    for x, e in zip(inputs, expected):
        torch.testing.assert_close(outputs64(model, x), e, atol=1e-5, rtol=0)
    return speedup, n_before, _nparams(model)


def _inputs(shape=(2, 3, 8, 8), n=3):
    g = torch.Generator().manual_seed(1)
    return [torch.rand(*shape, generator=g) * 2 for _ in range(n)]


@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("pruner_cls", [L1NormPruner, L2NormPruner, FPGMPruner])
def test_nni_norm_pruners_on_spiking_resnet(pruner_cls, step_mode):
    torch.manual_seed(0)
    model = _randomize_bn(resnet18(width=0.125, T=2, step_mode=step_mode)).eval()
    pruner = pruner_cls(model, CONV_CONFIG)  # layer.Conv2d matches 'Conv2d'; the classifier is a Linear
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert "conv1" in masks and "classifier" not in masks
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        speedup, before, after = _check_exact(model, masks, _inputs())
    assert after < before
    # inside a block, conv1 -> bn1 -> sn1 -> conv2 couples nothing else: only channels whose conv1
    # weights are masked can go (those whose BN(0) keeps the neuron silent)
    for name, removed in speedup.removed_channels.items():
        if name.startswith("layer") and name.endswith(".conv1"):
            masked = masks[name]["weight"].flatten(1).sum(1) == 0
            assert masked[removed].all(), name
    assert any(n.startswith("layer") and n.endswith(".conv1") for n in speedup.removed_channels)
    ours = [w for w in caught if "ModelSpeedup kept masked channels" in str(w.message)]
    assert len(ours) <= 1
    if any(k for k in speedup.kept_candidates):
        assert len(ours) == 1 and "mask the BatchNorm weight AND bias" in str(ours[0].message)


def test_lif_masked_classifier_and_masks_file(tmp_path):
    torch.manual_seed(0)
    model = _randomize_bn(resnet18(width=0.125, T=2, neuron="lif")).eval()
    pruner = L1NormPruner(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    assert type(masks).__name__ == "defaultdict"
    torch.save(masks, tmp_path / "masks.pth")  # as NNI users save them: the defaultdict loads by default
    xs = _inputs()
    expected = [outputs64(masked_copy(model, masks), x) for x in xs]
    before = _nparams(model)
    speedup = ModelSpeedup(model, xs[0], str(tmp_path / "masks.pth"))  # NNI also takes a masks file
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        speedup.speedup_model()
    for x, e in zip(xs, expected):
        torch.testing.assert_close(outputs64(model, x), e, atol=1e-5, rtol=0)
    after = _nparams(model)
    assert after < before
    # the classifier's rows are the model output: masked, never removed
    assert model.classifier.out_features == 10
    assert "reaches the model output" in speedup.kept_candidates["classifier"]


def test_masks_file_with_other_objects_names_the_fix_in_the_first_line(tmp_path):
    """The safe loader allows tensors in (default)dicts only; for anything else the first line of
    the error is the exact call that loads a trusted file."""
    from fractions import Fraction

    model = resnet18(width=0.125, T=2)
    path = tmp_path / "masks.pth"
    torch.save({"conv1": {"weight": Fraction(1, 2)}}, path)
    snap = snapshot(model)
    with pytest.raises(ValueError) as info:
        ModelSpeedup(model, _inputs()[0], path)
    first, *rest = str(info.value).splitlines()
    assert first.endswith(f"if you trust the file, pass weights_only=False: ModelSpeedup(model, dummy_input, "
                          f"{str(path)!r}, weights_only=False)")
    assert "fractions.Fraction" in rest[0]
    with pytest.raises(ValueError, match="expected a tensor, got Fraction"):  # the fix loads it; then validation
        ModelSpeedup(model, _inputs()[0], path, weights_only=False).speedup_model()
    assert_unchanged(model, snap)


def _output_mask_reference(model, masks):
    """NNI's meaning of ``_output_0`` masks, independently of ModelSpeedup: the outputs multiplied."""
    ref = masked_copy(model, {n: {t: m for t, m in ts.items() if not t.startswith("_")} for n, ts in masks.items()})
    for name, targets in masks.items():
        if "_output_0" in targets:
            mask = targets["_output_0"]
            ref.get_submodule(name).register_forward_hook(
                lambda mod, args, out, mask=mask: out * (mask.view(1, -1, 1, 1) if mask.dim() == 1 and out.dim() == 4
                                                         else mask.view(1, 1, -1, 1, 1) if mask.dim() == 1
                                                         else mask).to(out.dtype))
    return ref


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_output_masks_are_applied_and_their_channels_removed(step_mode):
    """NNI's activation masks (what AGPPruner/LinearPruner return around SCAPruner): a BatchNorm's
    ``_output_0`` mask, per channel or in the output's shape, is applied as its weight and bias masks."""
    torch.manual_seed(0)
    model = _randomize_bn(digits_cnn(T=2, step_mode=step_mode)).eval()
    xs = _inputs((2, 1, 8, 8), n=2)
    shape = []
    hook = model.features[4].register_forward_hook(lambda m, a, out: shape.append(out.shape) and None)
    outputs64(model, xs[0])  # on a deep copy: the copied hook records the shape here
    hook.remove()
    per_channel = torch.ones(model.features[1].num_features)
    per_channel[[0, 2]] = 0
    full = torch.ones(shape[-1])  # NNI's output target space: the output's shape, batch (and time) included
    full.select(2 if step_mode == "m" else 1, 1).zero_()
    masks = {"features.1": {"_output_0": per_channel},
             "features.4": {"weight": torch.ones(model.features[4].num_features), "_output_0": full}}
    reference = _output_mask_reference(model, masks)
    expected = [outputs64(reference, x) for x in xs]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        speedup = ModelSpeedup(model, xs[0], masks)
        speedup.speedup_model()
    for x, e in zip(xs, expected):
        torch.testing.assert_close(outputs64(model, x), e, atol=1e-5, rtol=0)
    assert speedup.removed_channels == {"features.0": [0, 2], "features.3": [1]}


@pytest.mark.parametrize("make,match", [
    (lambda m: {"layer1.0.conv2": {"_input_0": _zero_at(torch.ones(m.layer1[0].conv2.in_channels), 0)}},
     r"masks an input of layer1.0.conv2.*mask the weight and bias of the layer producing those channels"),
    (lambda m: {"layer1.0.sn1": {"_output_0": _zero_at(torch.ones(m.layer1[0].bn1.num_features), 0)}},
     r"masks the output of .*Node, which ModelSpeedup cannot express as a parameter mask"),
    (lambda m: {"layer1.0.bn1": {"_output_0": _zero_at(torch.ones(2, 2, m.layer1[0].bn1.num_features, 8, 8),
                                                       (slice(None), 0, 3))}},
     r"zeroes only some positions of channels \[3\]"),
    (lambda m: {"layer1.0.bn1": {"_output_0": torch.zeros(m.layer1[0].bn1.num_features + 1)}},
     "has no channel dimension of size"),
    (lambda m: {"layer1.0.bn1": {"_output_0": torch.full((m.layer1[0].bn1.num_features,), 0.5)}},
     r"0 \(pruned\) or 1"),
])
def test_bad_activation_masks_change_nothing(make, match):
    torch.manual_seed(0)
    model = resnet18(width=0.125, T=2)
    masks = {**_bn_masks(model, ["layer2.0.bn1"], [0]), **make(model)}
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        ModelSpeedup(model, _inputs()[0], masks).speedup_model()
    assert_unchanged(model, snap)


def _zero_at(t, idx):
    t[idx] = 0
    return t


def _train_func(model, optimizer, training_step, lr_scheduler=None, max_steps=None, max_epochs=None, *args, **kwargs):
    g = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(max_steps or 2):
        x = torch.rand(4, 3, 8, 8, generator=g)
        y = torch.randint(0, 10, (4,), generator=g)
        loss = training_step((x, y), model)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        functional.reset_net(model)


def _train_step(batch, model):
    x, y = batch
    return F.cross_entropy(model(x), y)


@pytest.mark.parametrize("pruner_cls,config", [
    (SlimPruner, [{"op_types": ["BatchNorm2d"], "sparse_ratio": 0.5}]),
    (TaylorPruner, CONV_CONFIG),
])
def test_nni_training_aware_pruners(pruner_cls, config):
    torch.manual_seed(0)
    model = _randomize_bn(resnet18(width=0.125, T=2))
    optimizer = nni.trace(torch.optim.SGD)(model.parameters(), lr=0.01)
    evaluator = TorchEvaluator(_train_func, optimizer, _train_step)
    pruner = pruner_cls(model, config, evaluator, training_steps=2)
    _, masks = pruner.compress()  # NNI 3.0: these pruners assert max_steps is None and max_epochs is None
    pruner.unwrap_model()
    model.eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        speedup, before, after = _check_exact(model, masks, _inputs())
    assert after < before and speedup.removed_channels


def _bn_masks(model, names, idxs):
    masks = {}
    for name in names:
        bn = model.get_submodule(name)
        keep = torch.ones(bn.num_features)
        keep[idxs] = 0
        masks[name] = {"weight": keep.clone(), "bias": keep.clone()}
    return masks


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_bn_weight_and_bias_masks_remove_channels(step_mode):
    torch.manual_seed(0)
    model = _randomize_bn(resnet18(width=0.125, T=2, step_mode=step_mode)).eval()
    blocks = ["layer1.0", "layer2.1", "layer4.0"]
    masks = _bn_masks(model, [f"{b}.bn1" for b in blocks], [0, 2, 3])
    width = {b: model.get_submodule(f"{b}.conv1").out_channels for b in blocks}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing has to be kept: no warning
        speedup, before, after = _check_exact(model, masks, _inputs())
    assert speedup.removed_channels == {f"{b}.conv1": [0, 2, 3] for b in blocks}
    for b in blocks:  # conv1's unmasked weights are gone with the channel (BN gamma = beta = 0)
        assert model.get_submodule(f"{b}.conv1").out_channels == width[b] - 3
        assert model.get_submodule(f"{b}.conv2").in_channels == width[b] - 3
    assert after < before


class _PlainBlock(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return F.relu(x + self.bn2(self.conv2(F.relu(self.bn1(self.conv1(x))))))


class _PlainNet(nn.Module):
    def __init__(self, c=8):
        super().__init__()
        self.stem, self.bn = nn.Conv2d(3, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.block = _PlainBlock(c)
        self.head = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
        self.fc = nn.Linear(2 * c, 5)

    def forward(self, x):
        x = self.block(F.relu(self.bn(self.stem(x))))
        x = F.relu(self.head(x))
        return self.fc(F.adaptive_avg_pool2d(x, 1).flatten(1))


def test_plain_cnn():
    torch.manual_seed(0)
    model = _randomize_bn(_PlainNet()).eval()
    with torch.no_grad():
        model.block.bn1.bias[[0, 1]] = torch.tensor([1.0, -1.0])  # ReLU(BN(0)) > 0 for 0, = 0 for 1
        model.block.bn1.running_mean[[0, 1]] = 0.0
    masks = {"block.conv1": {"weight": torch.ones_like(model.block.conv1.weight)},
             "head": {"weight": torch.ones_like(model.head.weight), "bias": torch.ones_like(model.head.bias)}}
    masks["block.conv1"]["weight"][[0, 1]] = 0
    masks["head"]["weight"][[3, 5]] = 0
    masks["head"]["bias"][[3, 5]] = 0
    with pytest.warns(UserWarning, match="ModelSpeedup kept masked channels") as record:
        speedup, before, after = _check_exact(model, masks, _inputs())
    assert sum("ModelSpeedup" in str(w.message) for w in record) == 1
    assert speedup.removed_channels == {"block.conv1": [1], "head": [3, 5]}
    assert list(speedup.kept_candidates["block.conv1"].values()) == [[0]]
    assert model.head.out_channels == 14 and model.fc.in_features == 14 and model.block.conv1.out_channels == 7
    assert after < before


def _sequential_cnn():
    return nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                         nn.Dropout(0.1), nn.Conv2d(8, 16, 3, padding=1), nn.ReLU(inplace=True), nn.Flatten(),
                         nn.Linear(16 * 4 * 4, 5))


@pytest.mark.parametrize("make", [_PlainNet, _sequential_cnn])
def test_plain_cnn_with_nni_l1(make):
    torch.manual_seed(0)
    model = _randomize_bn(make()).eval()
    pruner = L1NormPruner(model, [{"op_types": ["Conv2d", "Linear"], "sparse_ratio": 0.5}])
    _, masks = pruner.compress()
    pruner.unwrap_model()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        speedup, before, after = _check_exact(model, masks, _inputs())
    assert speedup.removed_channels and after < before
    last = [m for m in model.modules() if isinstance(m, nn.Linear)][-1]
    assert last.out_features == 5  # the output layer's masked rows stay (zeroed)


@pytest.mark.parametrize("bad,match", [
    ({"layer9.conv": {"weight": torch.ones(1)}}, "layer9.conv"),
    ({"conv1": {"weight": torch.ones(3, 3)}}, "shape"),
    ({"conv1": {"gamma": torch.ones(3)}}, "gamma"),
    ("values", "0 \\(pruned\\) or 1"),
])
def test_bad_masks_change_nothing(bad, match):
    torch.manual_seed(0)
    model = resnet18(width=0.125, T=2)
    good = _bn_masks(model, ["layer1.0.bn1"], [0])
    if bad == "values":
        w = torch.ones_like(model.conv1.weight)
        w[0, 0, 0, 0] = 0.5
        bad = {"conv1": {"weight": w}}
    snap = snapshot(model)
    with pytest.raises(ValueError, match=match):
        ModelSpeedup(model, _inputs()[0], {**good, **bad}).speedup_model()
    assert_unchanged(model, snap)


def test_failed_verification_restores_model(monkeypatch):
    torch.manual_seed(0)
    model = resnet18(width=0.125, T=2)
    snap = snapshot(model)
    masks = _bn_masks(model, ["layer1.0.bn1"], [0, 1])
    speedup = ModelSpeedup(model, _inputs()[0], masks, verify_atol=-1.0)  # impossible tolerance
    with pytest.raises(RuntimeError, match="restored"):
        speedup.speedup_model()
    assert_unchanged(model, snap)

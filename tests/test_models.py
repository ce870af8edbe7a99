"""Tests of the reference spiking architectures in ``sca_plugin.models``."""
from __future__ import annotations

import copy
import functools
from typing import Dict, Tuple

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import base as sj_base
from spikingjelly.activation_based import functional, layer, neuron

from sca_plugin.models import (
    MODELS,
    SpikingNet,
    digits_cnn,
    dvs_net,
    get_model,
    preact_resnet18,
    resnet18,
    resnet19,
    sew_resnet,
    vgg16,
)

B = 2
SMALL = 0.125  # width multiplier used to keep the tests fast

# name -> (extra builder kwargs, static input shape [C, H, W])
CONFIGS: Dict[str, Tuple[dict, Tuple[int, int, int]]] = {
    "vgg16": ({}, (3, 32, 32)),
    "preact_resnet18": ({}, (3, 16, 16)),
    "resnet18": ({}, (3, 16, 16)),
    "resnet19": ({}, (3, 16, 16)),
    "sew_resnet": ({}, (3, 16, 16)),
    "dvs_net": ({"input_size": 32}, (2, 32, 32)),
    "digits_cnn": ({}, (1, 8, 8)),
    "sdsnn_mnist_net": ({"input_size": 16}, (1, 16, 16)),
}


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    """Tiny tensors: thread start-up costs more than it saves (and CI boxes are busy)."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def build(name: str, **kwargs) -> SpikingNet:
    extra, _ = CONFIGS[name]
    params = {"width": SMALL, "T": 3, **extra, **kwargs}
    return get_model(name, **params)


def static_input(name: str, batch: int = B) -> torch.Tensor:
    torch.manual_seed(0)
    return torch.rand(batch, *CONFIGS[name][1]) * 2.0


def excite(model: nn.Module) -> None:
    """Make neurons fire in eval mode so that comparisons of outputs are not trivially 0 == 0."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) + 1.0)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) * 0.5 + 0.5)
            elif isinstance(m, nn.Linear):
                m.weight.copy_(torch.randn(m.weight.shape, generator=g) * 2.0 / m.in_features ** 0.5)
                if m.bias is not None and m is not getattr(model, "classifier", None):
                    m.bias.copy_(torch.rand(m.bias.shape, generator=g) + 1.0)  # hidden fc of ResNet-19
            elif isinstance(m, nn.Conv2d) and m.bias is not None:  # convs without BatchNorm (sdsnn_mnist_net)
                m.bias.copy_(torch.rand(m.bias.shape, generator=g) + 0.5)


def test_registry_contents():
    assert set(MODELS) == set(CONFIGS)
    assert MODELS["vgg16"] is vgg16 and MODELS["resnet19"] is resnet19
    assert isinstance(get_model("digits_cnn", width=SMALL), SpikingNet)


@pytest.mark.parametrize("step_mode", ["m", "s"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_output_shape_static_and_sequence(name: str, step_mode: str):
    model = build(name, num_classes=7, step_mode=step_mode)
    assert model.step_mode == step_mode
    assert all(m.step_mode == step_mode for m in model.modules() if isinstance(m, sj_base.StepModule))
    assert isinstance(model.classifier, nn.Linear) and model.classifier.out_features == 7
    x = static_input(name)
    y = model(x)
    assert y.shape == (B, 7)
    functional.reset_net(model)
    seq = torch.stack([x, x * 0.5, x * 0.25, x], dim=0)  # T' = 4 differs from model.T = 3
    y_seq = model(seq)
    assert y_seq.shape == (B, 7)
    functional.reset_net(model)
    with pytest.raises(ValueError):
        model(x[0])


@pytest.mark.parametrize("neuron_type", ["if", "lif", "plif"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_multi_step_equals_single_step(name: str, neuron_type: str):
    model = build(name, neuron=neuron_type)
    excite(model)
    model.eval()
    single = copy.deepcopy(model)
    functional.set_step_mode(single, "s")
    assert model.step_mode == "m" and single.step_mode == "s"
    x = static_input(name)
    seq = torch.stack([x, x * 0.3, x, x * 0.6], dim=0)
    for inp in (x, seq):
        functional.reset_net(model)
        functional.reset_net(single)
        y_m = model(inp)
        y_s = single(inp)
        assert y_m.abs().sum() > 0, "no spike reached the output: comparison would be trivial"
        torch.testing.assert_close(y_m, y_s, atol=1e-5, rtol=0)
    # static input == the same image repeated T times
    functional.reset_net(model)
    y_static = model(x)
    functional.reset_net(model)
    y_rep = model(x.unsqueeze(0).repeat(model.T, 1, 1, 1, 1))
    torch.testing.assert_close(y_static, y_rep, atol=1e-6, rtol=0)


def test_vgg16_parameter_count_by_hand():
    model = vgg16(num_classes=10, in_channels=3, width=1.0, neuron="if")
    # conv3x3 weights (no bias): in * out * 9; each conv followed by a BatchNorm2d: 2 * out
    convs = [(3, 64), (64, 64),
             (64, 128), (128, 128),
             (128, 256), (256, 256), (256, 256),
             (256, 512), (512, 512), (512, 512),
             (512, 512), (512, 512), (512, 512)]
    conv_params = sum(cin * cout * 9 for cin, cout in convs)
    conv_bn_params = sum(2 * cout for _, cout in convs)
    # flatten of 512 x 1 x 1 -> Linear(512, 512, no bias) + BN1d(512) -> Linear(512, 512, no bias) + BN1d(512)
    fc_params = (512 * 512 + 2 * 512) + (512 * 512 + 2 * 512)
    classifier_params = 512 * 10 + 10
    expected = conv_params + conv_bn_params + fc_params + classifier_params
    assert conv_params == 14_710_464
    assert expected == 14_710_464 + 8_448 + 526_336 + 5_130 == 15_250_378
    assert sum(p.numel() for p in model.parameters()) == expected
    assert len([m for m in model.modules() if isinstance(m, nn.Conv2d)]) == 13
    assert len([m for m in model.modules() if isinstance(m, neuron.IFNode)]) == 15


def _conv_out_channels(model: nn.Module):
    return [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]


def test_width_scaling():
    half = vgg16(width=0.5)
    assert _conv_out_channels(half) == [32, 32, 64, 64, 128, 128, 128, 256, 256, 256, 256, 256, 256]
    assert half.fc[0].in_features == 256 and half.fc[0].out_features == 256
    assert half.classifier.in_features == 256
    tiny = vgg16(width=0.001)
    assert set(_conv_out_channels(tiny)) == {1} and tiny.classifier.in_features == 1
    odd = vgg16(width=0.3)  # 64 * 0.3 = 19.2 -> 19, 512 * 0.3 = 153.6 -> 154
    assert _conv_out_channels(odd)[0] == 19 and odd.classifier.in_features == 154

    assert preact_resnet18(width=0.5).classifier.in_features == 256
    r19 = resnet19(width=0.5)
    assert r19.conv1.out_channels == 64 and r19.fc[0].in_features == 256
    assert r19.fc[0].out_features == 128 and r19.classifier.in_features == 128
    assert resnet18(width=0.25).classifier.in_features == 128
    assert _conv_out_channels(sew_resnet(width=2.0))[0] == 64
    assert _conv_out_channels(digits_cnn(width=0.5)) == [8, 16, 32]
    assert digits_cnn(width=0.5).classifier.in_features == 32 * 2 * 2
    assert _conv_out_channels(dvs_net(width=0.5)) == [32, 64, 64, 128, 128]
    for bad in (0, -1.0):
        with pytest.raises(ValueError):
            vgg16(width=bad)


def test_architecture_details():
    r19 = resnet19()
    assert [len(getattr(r19, f"layer{i}")) for i in (1, 2, 3)] == [3, 3, 2]
    assert r19.conv1.out_channels == 128 and r19.fc[0].in_features == 512 and r19.fc[0].out_features == 256
    r18 = resnet18()
    assert [len(getattr(r18, f"layer{i}")) for i in (1, 2, 3, 4)] == [2, 2, 2, 2]
    assert isinstance(r18.layer1[0].shortcut, nn.Identity)
    assert isinstance(r18.layer2[0].shortcut[0], nn.Conv2d) and r18.layer2[0].shortcut[0].stride == (2, 2)
    pre = preact_resnet18()
    assert pre.conv1.stride == (1, 1) and pre.layer2[0].shortcut.kernel_size == (1, 1)
    assert pre.classifier.in_features == 512
    sew = sew_resnet()
    assert [len(sew.layer1), len(sew.layer2)] == [2, 2]
    assert isinstance(sew.layer2[0].shortcut[2], neuron.IFNode)  # conv1x1 + bn + sn
    assert dvs_net().classifier.in_features == 256 * 4 * 4  # 128x128 input
    assert dvs_net(input_size=48).classifier.in_features == 256 * 1 * 1
    assert digits_cnn().classifier.in_features == 64 * 2 * 2
    with pytest.raises(ValueError):
        dvs_net(input_size=16)


def test_unknown_names_raise_with_valid_names():
    with pytest.raises(ValueError) as err:
        get_model("alexnet")
    for name in MODELS:
        assert name in str(err.value)
    with pytest.raises(ValueError) as err:
        vgg16(neuron="izhikevich")
    for name in ("if", "lif", "plif"):
        assert repr(name) in str(err.value)
    with pytest.raises(ValueError):
        digits_cnn(step_mode="x")


def test_neuron_options():
    model = digits_cnn(neuron="lif", tau=3.0, v_threshold=0.5)
    sns = [m for m in model.modules() if isinstance(m, neuron.LIFNode)]
    assert len(sns) == 3
    assert all(sn.tau == 3.0 and sn.v_threshold == 0.5 and sn.detach_reset and sn.v_reset == 0.0 for sn in sns)
    assert sns[0].surrogate_function.alpha == 4.0
    assert sns[0].surrogate_function is not sns[1].surrogate_function
    plif = digits_cnn(neuron="plif", tau=4.0)  # tau -> init_tau
    w = [m.w for m in plif.modules() if isinstance(m, neuron.ParametricLIFNode)]
    assert len(w) == 3 and abs(1.0 / w[0].detach().sigmoid().item() - 4.0) < 1e-5
    custom = digits_cnn(neuron=functools.partial(neuron.IFNode, v_threshold=0.25))
    ifs = [m for m in custom.modules() if isinstance(m, neuron.IFNode)]
    assert len(ifs) == 3 and ifs[0].v_threshold == 0.25
    by_class = digits_cnn(neuron=neuron.LIFNode)  # SCA defaults applied to a SpikingJelly class
    assert all(m.detach_reset for m in by_class.modules() if isinstance(m, neuron.LIFNode))
    y = custom(torch.rand(B, 1, 8, 8))
    assert y.shape == (B, 10)


def test_step_mode_switching_after_construction():
    model = digits_cnn()
    assert model.step_mode == "m"
    functional.set_step_mode(model, "s")
    assert model.step_mode == "s"
    assert all(m.step_mode == "s" for m in model.modules() if isinstance(m, sj_base.StepModule))
    model.step_mode = "m"
    assert all(m.step_mode == "m" for m in model.modules() if isinstance(m, sj_base.StepModule))
    with pytest.raises(ValueError):
        model.step_mode = "x"


def test_reference_initialisation():
    torch.manual_seed(0)
    model = vgg16(width=0.5)
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            assert torch.all(m.weight == 1) and torch.all(m.bias == 0)
    assert torch.all(model.classifier.bias == 0)
    assert abs(model.fc[0].weight.detach().std().item() - 0.02) < 2e-3
    conv = model.features[0]  # kaiming normal, fan_out = out_channels * 9
    expected_std = (2.0 / (conv.out_channels * 9)) ** 0.5
    assert abs(conv.weight.detach().std().item() - expected_std) / expected_std < 0.2


def test_digits_cnn_on_8x8():
    model = digits_cnn(width=0.5, T=2)
    y = model(torch.rand(5, 1, 8, 8))
    assert y.shape == (5, 10)
    functional.reset_net(model)
    loss = nn.functional.cross_entropy(model(torch.rand(5, 1, 8, 8)), torch.arange(5))
    loss.backward()
    assert torch.isfinite(loss)


def test_dvs_net_on_48x48_event_frames():
    model = dvs_net(width=SMALL, input_size=48)
    frames = (torch.rand(5, B, 2, 48, 48) > 0.8).float()  # [T, B, 2, H, W]
    assert model(frames).shape == (B, 10)
    functional.reset_net(model)
    functional.set_step_mode(model, "s")
    assert model(frames).shape == (B, 10)


def test_vgg16_on_28x28_mnist():
    model = vgg16(in_channels=1, width=SMALL, T=2)
    assert model(torch.rand(B, 1, 28, 28)).shape == (B, 10)
    functional.reset_net(model)
    assert model(torch.rand(B, 1, 16, 16)).shape == (B, 10)


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_gradients_reach_every_parameter(name: str):
    model = build(name, neuron="plif")
    excite(model)  # spikes must reach the classifier, otherwise upstream gradients are exactly 0
    model.train()
    out = model(static_input(name))
    out.sum().backward()
    for pname, p in model.named_parameters():
        assert p.grad is not None, f"{name}: no gradient for {pname}"
        assert torch.isfinite(p.grad).all(), f"{name}: non-finite gradient for {pname}"
        assert p.grad.abs().sum() > 0, f"{name}: zero gradient for {pname}"


@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_traceable_by_torch_pruning(name: str):
    """Torch-Pruning's autograd tracer sees every conv / linear of the model.

    Traced in single-step mode (same modules and connectivity): in multi-step mode SpikingJelly's
    ``[T, B, ...] -> [T*B, ...]`` reshapes make plain Torch-Pruning derive bogus flatten index
    mappings, whose group search can take minutes for residual nets at some T (e.g. ResNet-19, T=3).
    """
    tp = pytest.importorskip("torch_pruning")
    model = build(name, step_mode="s")
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=static_input(name))
    functional.reset_net(model)
    groups = list(graph.get_all_groups(ignored_layers=[model.classifier]))
    assert groups
    for m in model.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            assert m in graph.module2node
    assert isinstance(model.classifier, layer.Linear)

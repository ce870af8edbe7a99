"""Shared pieces of the dataset loaders: the error type, the result record, in-memory datasets and
the small validation helpers every loader uses."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence, Optional, Tuple, Union

import numpy as np
import torch
from torch.utils.data import Dataset

__all__ = ["DataError", "DatasetSplits", "ArrayDataset"]

PathLike = Union[str, Path]


class DataError(ValueError):
    """A user-fixable data problem; the message is one line naming the problem and the fix."""

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


@dataclass
class DatasetSplits:
    """A dataset's fixed train/test split and what a model needs to know about it.

    ``train`` / ``test`` are torch ``Dataset`` objects yielding ``(x, y)`` with ``y`` an ``int``:

    * ``kind == 'static'``: ``x`` is float32 ``[C, H, W]`` in [0, 1]; models encode it directly
      (repeat it over the time steps).
    * ``kind == 'event'``: ``x`` is float32 ``[T, C, H, W]`` event-count frames (``C = 2``
      polarities, OFF then ON; ``T = time_steps``). A DataLoader batch is then ``[B, T, C, H, W]``;
      SpikingJelly multi-step models want time-major input, so transpose it:
      ``x = x.transpose(0, 1)  # [T, B, C, H, W]``.
    """

    train: Dataset
    test: Dataset
    num_classes: int
    in_channels: int
    input_size: Tuple[int, int]
    kind: str
    simulated: bool
    name: str
    description: str


class ArrayDataset(Dataset):
    """Images held in memory as one tensor ``[N, C, H, W]`` (uint8 or float) plus int64 labels.

    Items are ``(images[i] as float32 * scale, int(labels[i]))``, optionally augmented (random
    horizontal flip, random crop after zero padding by ``crop_padding``) and normalised per channel
    (``mean``, ``std``), in torchvision's order; :meth:`tensors` gives the whole split at once,
    normalised, not augmented (handy for full-batch work on small data sets).
    """

    def __init__(self, images: torch.Tensor, labels: torch.Tensor, scale: float = 1.0,
                 mean: Optional[Sequence[float]] = None, std: Optional[Sequence[float]] = None,
                 crop_padding: int = 0, flip: bool = False):
        if images.shape[0] != labels.shape[0]:
            raise ValueError(f"{images.shape[0]} images but {labels.shape[0]} labels")
        if (mean is None) != (std is None):
            raise ValueError("give both mean and std (per-channel normalisation) or neither")
        self.images = images
        self.labels = labels.to(torch.int64)
        self.scale = float(scale)
        self.mean = None if mean is None else torch.tensor(mean, dtype=torch.float32).view(-1, 1, 1)
        self.std = None if std is None else torch.tensor(std, dtype=torch.float32).view(-1, 1, 1)
        self.crop_padding = int(crop_padding)
        self.flip = bool(flip)

    def __len__(self) -> int:
        return int(self.images.shape[0])

    def _normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.mean is None else (x - self.mean) / self.std

    def __getitem__(self, index):
        x = self.images[index].to(torch.float32)
        if self.scale != 1.0:
            x = x * self.scale
        # torchvision's RandomHorizontalFlip, RandomCrop(size, padding) (zero = black padding), then Normalize
        if self.flip and bool(torch.rand(()) < 0.5):
            x = x.flip(-1)
        if self.crop_padding:
            p = self.crop_padding
            h, w = x.shape[-2:]
            i, j = (int(v) for v in torch.randint(0, 2 * p + 1, (2,)))
            x = torch.nn.functional.pad(x, (p, p, p, p))[..., i:i + h, j:j + w]
        return self._normalise(x), int(self.labels[index])

    @property
    def targets(self) -> torch.Tensor:
        return self.labels

    def tensors(self) -> Tuple[torch.Tensor, torch.Tensor]:
        """``(x [N, C, H, W] float32, y [N] int64)`` for the whole split."""
        x = self.images.to(torch.float32)
        if self.scale != 1.0:
            x = x * self.scale
        return self._normalise(x), self.labels


# ----------------------------------------------------------------------------------------------
# validation helpers


def check_int(name: str, value, minimum: int, allow_none: bool = False) -> Optional[int]:
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        want = f"an integer >= {minimum}" + (" or None" if allow_none else "")
        raise DataError(f"{name} must be {want}, got {value!r}")
    return int(value)


def limit_indices(n: int, limit: Optional[int], seed: int, salt: int) -> Optional[np.ndarray]:
    """A fixed seeded subset of ``range(n)`` of size ``limit`` (sorted), or None for 'all'."""
    if limit is None or limit >= n:
        return None
    rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, salt])
    return np.sort(rng.permutation(n)[:limit])


TRAIN_SALT, TEST_SALT = 1, 2


def apply_limit(n: int, limit: Optional[int], seed: int, train: bool) -> Optional[np.ndarray]:
    return limit_indices(n, limit, seed, TRAIN_SALT if train else TEST_SALT)


def optional_root(data_root: Optional[PathLike], what: str, fix: str) -> Optional[Path]:
    """``data_root`` as an existing directory (or None when not given)."""
    if data_root is None:
        return None
    root = Path(data_root).expanduser()
    if not root.is_dir():
        raise DataError(f"{what}: data root {str(root)!r} is not a directory; {fix}")
    return root


def required_root(data_root: Optional[PathLike], what: str, fix: str) -> Path:
    if data_root is None:
        raise DataError(f"{what} is not available offline and no data root was given; {fix}")
    root = optional_root(data_root, what, fix)
    assert root is not None
    return root


def first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".rstrip(": ")

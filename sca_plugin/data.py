"""Datasets that need no download. Issue-2 scope: scikit-learn's 8x8 digits (the embedded default)."""
from __future__ import annotations

from typing import Tuple

import numpy as np
import torch

__all__ = ["load_digits"]


def load_digits(test_fraction: float = 0.2, seed: int = 0) -> Tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """UCI handwritten digits (1797 real 8x8 images, shipped inside scikit-learn).

    Returns ``x_train, y_train, x_test, y_test``; images are ``[N, 1, 8, 8]`` floats in [0, 1]
    (static images: models encode them directly, repeating them over time). The split is
    stratified and fixed by ``seed``.
    """
    from sklearn.datasets import load_digits as _load
    from sklearn.model_selection import train_test_split

    bunch = _load()
    x = (bunch.images.astype(np.float32) / 16.0)[:, None]
    y = bunch.target.astype(np.int64)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    return torch.from_numpy(x_tr), torch.from_numpy(y_tr), torch.from_numpy(x_te), torch.from_numpy(y_te)

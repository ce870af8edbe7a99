"""The dataset registry and :func:`load_dataset`."""
from __future__ import annotations

import functools
import inspect
from typing import Callable, Dict

from .base import DataError, DatasetSplits, check_int
from .events import (
    load_cifar10_dvs_dataset,
    load_dvs_gesture_dataset,
    load_nmnist_dataset,
    load_nmnist_sim_dataset,
)
from .static import (
    load_cifar10_dataset,
    load_cifar100_dataset,
    load_digits_dataset,
    load_fashion_mnist_dataset,
    load_mnist_dataset,
)

__all__ = ["DATASETS", "load_dataset"]

_COMMON = ("data_root", "time_steps", "seed", "train_limit", "test_limit")


def _options_of(loader) -> list:
    return [n for n, p in inspect.signature(loader).parameters.items()
            if n not in _COMMON and p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)]


def _checked(name: str, loader: Callable[..., DatasetSplits]) -> Callable[..., DatasetSplits]:
    """The loader with its common arguments and options validated (DataError on bad values)."""
    allowed = _options_of(loader)

    @functools.wraps(loader)
    def load(data_root=None, time_steps: int = 4, seed: int = 0, train_limit=None, test_limit=None, **options):
        time_steps = check_int("time_steps", time_steps, 1)
        seed = check_int("seed", seed, 0)
        train_limit = check_int("train_limit", train_limit, 1, allow_none=True)
        test_limit = check_int("test_limit", test_limit, 1, allow_none=True)
        unknown = sorted(set(options) - set(allowed))
        if unknown:
            raise DataError(f"{name}: unknown option(s) {', '.join(unknown)}; "
                            f"accepted: {', '.join(allowed) if allowed else 'none'}")
        return loader(data_root=data_root, time_steps=time_steps, seed=seed, train_limit=train_limit,
                      test_limit=test_limit, **options)

    return load


#: name -> loader(data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None, **options)
DATASETS: Dict[str, Callable[..., DatasetSplits]] = {
    name: _checked(name, loader)
    for name, loader in (
        ("digits", load_digits_dataset),
        ("mnist", load_mnist_dataset),
        ("fashion-mnist", load_fashion_mnist_dataset),
        ("nmnist-sim", load_nmnist_sim_dataset),
        ("cifar10", load_cifar10_dataset),
        ("cifar100", load_cifar100_dataset),
        ("nmnist", load_nmnist_dataset),
        ("dvs-gesture", load_dvs_gesture_dataset),
        ("cifar10-dvs", load_cifar10_dvs_dataset),
    )
}


def load_dataset(name: str, data_root=None, time_steps: int = 4, seed: int = 0, train_limit=None, test_limit=None,
                 **options) -> DatasetSplits:
    """Load data set ``name`` (one of :data:`DATASETS`) with its fixed train/test split.

    ``data_root``: folder with the data where a data set needs one (nothing is ever downloaded).
    ``time_steps``: frames per sample for event data sets (static images ignore it: models repeat
    them over time). ``train_limit`` / ``test_limit``: keep a fixed seeded subset of that many
    samples. ``options``: loader-specific keywords (``nmnist-sim``: ``source``, ``threshold``,
    ``precompute``; ``dvs-gesture`` / ``cifar10-dvs``: ``size``; ``nmnist``: ``first_saccade_only``).
    Raises :class:`DataError` (a ``ValueError``) with a one-line message for every user-fixable problem.
    """
    key = str(name).strip().lower().replace("_", "-") if isinstance(name, str) else None
    if key not in DATASETS:
        raise DataError(f"unknown dataset {name!r}; valid names: {', '.join(DATASETS)}")
    return DATASETS[key](data_root=data_root, time_steps=time_steps, seed=seed, train_limit=train_limit,
                         test_limit=test_limit, **options)

"""tonic's dataset classes, made offline-only.

tonic's classes consider a data set present only when the downloaded archive itself is on disk *and*
enough extracted files exist (10000 .bin files for N-MNIST, 100 .npy for DVS-Gesture, 1000 .aedat4
for CIFAR10-DVS); otherwise they download. These subclasses read an already extracted folder given
directly (any name), never download (``download`` raises :class:`DataError`), and otherwise keep
tonic's own file listing, labels and event readers. Imported only once tonic is known to import.
"""
from __future__ import annotations

import tonic.datasets as _td

from .base import DataError

__all__ = ["NMNIST", "DVSGesture", "CIFAR10DVS"]


class _Offline:
    _offline_folder = ""

    # tonic's Dataset.__init__ assigns save_to/<ClassName>; keep the folder we were given instead.
    location_on_system = property(lambda self: self._offline_folder, lambda self, value: None)

    def _check_exists(self) -> bool:  # the loaders check the layout before constructing
        return True

    def download(self) -> None:
        raise DataError(f"{type(self).__name__}: data not found in {self._offline_folder!r} and sca_plugin never "
                        f"downloads; extract the data set there")


class NMNIST(_Offline, _td.NMNIST):
    def __init__(self, folder, **kwargs):
        self._offline_folder = str(folder)
        super().__init__(str(folder), **kwargs)


class DVSGesture(_Offline, _td.DVSGesture):
    def __init__(self, folder, **kwargs):
        self._offline_folder = str(folder)
        super().__init__(str(folder), **kwargs)


class CIFAR10DVS(_Offline, _td.CIFAR10DVS):
    def __init__(self, folder, **kwargs):
        self._offline_folder = str(folder)
        super().__init__(str(folder), **kwargs)

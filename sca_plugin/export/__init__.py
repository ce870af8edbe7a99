"""Export a pruned spiking network: pickled module, TorchScript, ``torch.export`` or NIR.

* :func:`export_run` writes the finalized model of a ``sca-prune train`` run folder in one of
  :data:`EXPORT_FORMATS`.
* :func:`fuse_batchnorm` folds every ``Conv -> BatchNorm`` (and ``Linear -> BatchNorm1d``) pair into
  the convolution / linear layer (eval-mode statistics); the copy it returns computes the same
  outputs in eval mode and contains no folded BatchNorm.
* :func:`export_nir` / :func:`import_nir` exchange the network body with neuromorphic tools through
  NIR (the `Neuromorphic Intermediate Representation <https://neuroir.org>`_), using SpikingJelly's
  ``nir_exchange`` (needs ``pip install nir nirtorch``, the ``nir`` extra of this package).

What NIR (SpikingJelly 2.0.0's exporter) can express: ``Conv1d``/``Conv2d`` (ungrouped, zero
padding), ``Linear``, ``AvgPool2d`` (no ceil mode), ``Flatten``, ``IFNode``, ``LIFNode``,
``ParametricLIFNode`` (exported as a LIF with its learned time constant), ``CUBALIFNode`` -- all
with hard reset -- and residual additions. BatchNorm is folded first; ``AdaptiveAvgPool2d`` is
rewritten as an ``AvgPool2d`` when its input size is a multiple of its output size.

Which models: a :class:`~sca_plugin.models.SpikingNet` (its ``forward_body``, run multi-step), or
any module whose forward ``torch.fx`` can trace into those layers and additions -- in particular a
plain ``nn.Sequential`` of SpikingJelly layers (``layer.Conv2d``, ``layer.BatchNorm2d``, neurons,
``layer.AvgPool2d``, ``layer.Flatten``, ``layer.Linear``), of the ``torch.nn`` equivalents, or of
``torch.nn`` layers wrapped in ``layer.SeqToANNContainer`` (unwrapped into the equivalent
multi-step layers), in one step mode. A multi-step model takes ``[T, B, ...]``; a single-step
model is exported from one step ``[B, ...]`` (NIR describes one step of the dynamics) and
imports, like every graph, as a multi-step network taking ``[T, B, ...]``. Everything else raises
one ``ValueError`` line that names each unsupported module or operation once per kind with the
fix: max pooling (modules, wrapped or functional: NIR has none), soft reset, un-foldable BatchNorm
(pre-activation blocks), other modules (activations, other neurons, ``MultiStepContainer``, ...)
and tensor operations in the forward.

The modules: :mod:`~sca_plugin.export.fusion` (the traced body, BatchNorm folding),
:mod:`~sca_plugin.export.nir`, :mod:`~sca_plugin.export.plain` (TorchScript, ``torch.export``,
pickle), :mod:`~sca_plugin.export.run` (run folders).
"""
from .fusion import fuse_batchnorm, spiking_body
from .nir import NIR_INSTALL_HINT, ImportedNIRNet, NIRNotInstalledError, export_nir, import_nir
from .plain import PlainNeuron, export_program, export_torch, export_torchscript, plain_torch_copy
from .run import EXPORT_FORMATS, example_input_for, export_run

__all__ = [
    "EXPORT_FORMATS",
    "NIR_INSTALL_HINT",
    "NIRNotInstalledError",
    "ImportedNIRNet",
    "PlainNeuron",
    "plain_torch_copy",
    "export_run",
    "export_torch",
    "export_torchscript",
    "export_program",
    "export_nir",
    "import_nir",
    "fuse_batchnorm",
    "spiking_body",
    "example_input_for",
]

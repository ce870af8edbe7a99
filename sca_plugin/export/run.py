"""Export of a ``sca-prune train`` run folder's finalized model in one of :data:`EXPORT_FORMATS`."""
from __future__ import annotations

from pathlib import Path
from typing import Dict, Optional, Sequence

import torch
import torch.nn as nn


from .fusion import PathLike
from .nir import _require_nir, export_nir
from .plain import export_program, export_torch, export_torchscript


#: ``fmt`` values of :func:`export_run` and the file suffix each one conventionally uses.
EXPORT_FORMATS: Dict[str, str] = {"torch": ".pt", "torchscript": ".ts.pt", "export": ".pt2", "nir": ".nir"}


#: ``(in_channels, height, width)`` of one frame of the datasets ``sca-prune train`` knows, for
#: models that do not record their input size.
_DATASET_FRAME = {
    "digits": (1, 8, 8), "mnist": (1, 28, 28), "fashion-mnist": (1, 28, 28), "cifar10": (3, 32, 32),
    "cifar100": (3, 32, 32), "nmnist": (2, 34, 34), "nmnist-sim": (2, 34, 34),
}


def example_input_for(model: nn.Module, config: Optional[dict] = None, batch_size: int = 1,
                      input_shape: Optional[Sequence[int]] = None) -> torch.Tensor:
    """A random static example ``[batch_size, C, H, W]`` for ``model``.

    The frame shape comes from ``input_shape`` (``(C, H, W)``), else the model (``in_channels`` and
    ``input_size``), else the run's dataset (``config["dataset"]``); ``ValueError`` if unknown.
    """
    if input_shape is None:
        size = getattr(model, "input_size", None)
        channels = getattr(model, "in_channels", None)
        if size is not None and channels is not None:
            h, w = (size, size) if isinstance(size, int) else size
            input_shape = (channels, h, w)
        elif config and str(config.get("dataset", "")).lower() in _DATASET_FRAME:
            input_shape = _DATASET_FRAME[str(config["dataset"]).lower()]
            if channels is not None:
                input_shape = (channels, *input_shape[1:])
        else:
            raise ValueError("cannot tell the model's input shape; pass input_shape=(C, H, W) or example_input")
    param = next(model.parameters(), None)
    kwargs = {"device": param.device, "dtype": param.dtype} if param is not None else {}
    g = torch.Generator().manual_seed(0)
    return torch.rand(batch_size, *[int(s) for s in input_shape], generator=g).to(**kwargs)


def _run_config(run_dir: Path) -> dict:
    """The run's settings, or {} where the folder does not say (the model alone decides then)."""
    from ..checkpoints import RunError, load_run_config

    try:
        return load_run_config(run_dir)
    except RunError:
        return {}


def export_run(run_dir: PathLike, out_path: PathLike, fmt: str = "torch",
               example_input: Optional[torch.Tensor] = None, input_shape: Optional[Sequence[int]] = None,
               dt: float = 1e-4, optimize: bool = False) -> str:
    """Write the finalized (physically pruned) model of a ``sca-prune train`` run folder; returns the path.

    Formats (:data:`EXPORT_FORMATS`):

    * ``"torch"`` -- the pickled module (``torch.save(model)``, as the run's ``model.pt``). Loading
      needs only ``sca_plugin`` importable (for the model classes) and
      ``model = torch.load(path, weights_only=False)``; call ``model.eval()`` and
      ``spikingjelly.activation_based.functional.reset_net(model)`` after every batch. Unpickling
      runs code: load trusted files only.
    * ``"torchscript"`` -- ``torch.jit.trace`` in eval mode; loads with plain torch,
      ``torch.jit.load(path)`` (no ``sca_plugin``); fixed number of time steps, any batch size.
    * ``"export"`` -- ``torch.export`` program (``.pt2``); ``torch.export.load(path).module()``.
    * ``"nir"`` -- BatchNorm folded, then NIR via SpikingJelly (:func:`export_nir`); read it back with
      :func:`import_nir` or any NIR-capable tool. Needs ``pip install nir nirtorch``.

    ``example_input`` (a static ``[B, C, H, W]`` batch or ``[T, B, C, H, W]``) fixes the traced
    shapes of the non-pickle formats; by default a random batch of the run's input shape
    (:func:`example_input_for`, ``input_shape=(C, H, W)`` overrides it).

    ``optimize=True`` writes the eager module of :func:`sca_plugin.optimize_for_inference` instead
    (BatchNorm folded, hooks and training-only state dropped, checked spike for spike on the example
    input): a plain model of the same classes, smaller and faster; compile it again after loading
    (``optimize_for_inference(loaded, x)``), as a compiled function cannot be saved.
    """
    from ..checkpoints import load_finalized_model

    if fmt not in EXPORT_FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; use one of {', '.join(EXPORT_FORMATS)}")
    run_dir = Path(run_dir)
    if fmt == "nir":
        _require_nir()  # fail before loading anything
    model = load_finalized_model(str(run_dir))
    model.eval()
    if example_input is None and (optimize or fmt != "torch"):
        example_input = example_input_for(model, _run_config(run_dir), batch_size=2, input_shape=input_shape)
    if optimize:
        from ..inference import optimize_for_inference

        model = optimize_for_inference(model, example_input, compile=False).module
    if fmt == "torch":
        return export_torch(model, out_path)
    if fmt == "torchscript":
        return export_torchscript(model, example_input, out_path)
    if fmt == "export":
        return export_program(model, example_input, out_path)
    export_nir(model, example_input, out_path, dt=dt)
    return str(out_path)

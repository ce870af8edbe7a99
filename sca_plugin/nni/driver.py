"""What the two NNI front ends (:class:`~sca_plugin.nni.SCAPruner`, :class:`~sca_plugin.nni.SDSNNPruner`)
share: the checks of their NNI arguments, the tracing input, where NNI keeps a wrapped layer's
parameters, and :class:`TrainingDriver`, the mixin that runs the core's updates inside NNI's
``compress()``.

Both are NNI ``Pruner``\\ s over a core pruner of :mod:`sca_plugin` built before NNI wraps the
model: NNI's evaluator trains, and every ``interval_steps`` optimizer steps (at most
``total_times`` times) the driver asks the front end for one update, which the core computes on
the parameters NNI trains (:func:`wrapped_parameter`, given to the core's
``redirect_parameters``).
"""
from __future__ import annotations

import logging
from typing import Any, Callable, List, Optional

import torch
import torch.nn as nn
from nni.compression.utils.evaluator import Evaluator

__all__ = ["TrainingDriver", "check_driver_arguments", "evaluator_dummy_input", "missing_example_inputs_message",
           "wrapped_parameter", "module_channels"]

_logger = logging.getLogger(__name__)


def evaluator_dummy_input(evaluator: Optional[Evaluator]) -> Any:
    """The ``dummy_input`` the user gave the NNI evaluator (``TorchEvaluator(..., dummy_input=x)``,
    ``LightningEvaluator(..., dummy_input=x)``), or None.

    NNI's graph-based tools trace the model with it, so a pruner built as NNI users write it
    (no ``example_inputs``) traces its dependency graph with the same input. Only an explicitly
    given one counts: ``LightningEvaluator.get_dummy_input()`` otherwise falls back to a training
    batch, which usually holds the labels too and is not what the model takes."""
    if evaluator is None:
        return None
    if hasattr(evaluator, "_dummy_input"):  # LightningEvaluator keeps the user's value here
        return evaluator._dummy_input
    try:
        return evaluator.get_dummy_input()
    except NotImplementedError:  # an Evaluator subclass without a dummy input
        return None


def missing_example_inputs_message(pruner: str) -> str:
    """The error for a pruner built with neither ``example_inputs`` nor an evaluator ``dummy_input``."""
    return (f"{pruner} needs example inputs to trace the dependency graph (which layers share channels): give the "
            "evaluator a dummy_input (TorchEvaluator(training_func, optimizer, training_step, dummy_input=x)) or pass "
            "example_inputs=x, with x exactly as the model takes it")


def check_driver_arguments(pruner: str, model: Any, evaluator: Any, interval_steps: Any, total_times: Any,
                           example_inputs: Any) -> Any:
    """The checks every NNI front end runs first (nothing is traced or wrapped yet); returns the
    tracing input: ``example_inputs``, else the evaluator's ``dummy_input``."""
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if any(hasattr(m, "_nni_wrapper") for m in model.modules()):
        raise ValueError(f"the model is already wrapped by another NNI compressor; unwrap it first "
                         f"(compressor.unwrap_model()) or use {pruner}.from_compressor")
    if evaluator is not None and not isinstance(evaluator, Evaluator):
        raise TypeError(f"evaluator must be an nni.compression Evaluator (e.g. TorchEvaluator), got "
                        f"{type(evaluator).__name__}")
    if isinstance(interval_steps, bool) or not isinstance(interval_steps, int) or interval_steps < 1:
        raise ValueError(f"interval_steps must be a positive integer (optimizer steps between updates, e.g. the "
                         f"steps of one epoch), got {interval_steps!r}")
    if total_times != "unlimited" and (isinstance(total_times, bool) or not isinstance(total_times, int)
                                       or total_times < 1):
        raise ValueError(f"total_times must be a positive integer or 'unlimited', got {total_times!r}")
    if example_inputs is None:  # NNI's convention: the graph is traced with the evaluator's dummy_input
        example_inputs = evaluator_dummy_input(evaluator)
    if example_inputs is None:
        raise ValueError(missing_example_inputs_message(pruner))
    return example_inputs


def wrapped_parameter(module: nn.Module, name: str) -> torch.Tensor:
    """The tensor a layer's parameter ``name`` is trained as: the one in NNI's wrapper (its target
    space) while NNI wraps the layer, where the module's own attribute is a buffer recomputed from
    it at every forward; otherwise the module's own."""
    wrapper = getattr(module, "_nni_wrapper", None)
    space = None if wrapper is None else wrapper.pruning_target_spaces.get(name)
    target = None if space is None else space.target
    return getattr(module, name) if target is None else target


def module_channels(keep: Optional[torch.Tensor], local: List[int], root: List[int], n: int) -> torch.Tensor:
    """A layer's bool keep vector over its own ``n`` channels, from its group's keep mask over the
    root's channels (``local[j]`` of the layer is ``root[j]`` of the root); all True without a mask."""
    channel = torch.ones(n, dtype=torch.bool)
    if keep is not None:
        channel[torch.tensor(local)] = keep.cpu()[torch.tensor(root)]
    return channel


class TrainingDriver:
    """Mixin (before NNI's ``Pruner`` in the bases) running a front end's updates in ``compress()``.

    The front end sets ``interval_steps`` and ``total_times`` (an AGP/Linear scheduled pruner
    overwrites both before training) and implements :meth:`_driver_update`; it may add
    ``before_step`` tasks (:meth:`_before_step_tasks`) and gather statistics only while the
    evaluator trains (:meth:`_start_gathering` / :meth:`_stop_gathering`)."""

    interval_steps: int
    total_times: Any
    #: the error of ``compress()`` without a training duration
    _NO_DURATION = "the structure changes while the model trains: pass max_steps or max_epochs to compress()"

    def _driver_update(self) -> None:
        """One update (every ``interval_steps`` optimizer steps during ``compress()``)."""
        raise NotImplementedError

    def _before_step_tasks(self) -> List[Callable[[], None]]:
        """Tasks run before every optimizer step of ``compress()`` (e.g. a gradient penalty)."""
        return []

    def _start_gathering(self) -> None:
        """``compress()`` starts training: put the statistics hooks on."""

    def _stop_gathering(self) -> None:
        """``compress()`` has trained: take the statistics hooks off."""

    def _register_trigger(self, evaluator: Evaluator) -> None:
        self._current_step = 0
        self._remaining_times = self.total_times

        def after_step() -> None:
            self._current_step += 1
            if self._current_step < self.interval_steps:
                return
            self._current_step = 0
            if self._remaining_times != "unlimited" and self._remaining_times <= 0:
                return
            self._driver_update()
            if self._remaining_times != "unlimited":
                self._remaining_times -= 1
            _logger.debug("%s updated, remaining times %s", type(self).__name__, self._remaining_times)

        evaluator.patch_optimizer_step(before_step_tasks=self._before_step_tasks(), after_step_tasks=[after_step])

    def _fuse_preprocess(self, evaluator: Evaluator) -> None:
        self._start_gathering()
        self._register_trigger(evaluator)

    def _fuse_postprocess(self, evaluator: Evaluator) -> None:
        self._stop_gathering()

    def _single_compress(self, max_steps: Optional[int], max_epochs: Optional[int]) -> None:
        if max_steps is None and max_epochs is None:
            raise ValueError(self._NO_DURATION)
        if self.evaluator is None:
            raise ValueError(f"{type(self).__name__}.compress() trains the model through an NNI Evaluator (e.g. "
                             "nni.compression.TorchEvaluator); pass evaluator= when building the pruner")
        self._fusion_compress(max_steps, max_epochs)

    def compress(self, max_steps: Optional[int] = None, max_epochs: Optional[int] = None):
        """Train through the evaluator, updating every ``interval_steps`` optimizer steps; returns
        ``(model, masks)`` as NNI's pruners do (give the masks to :class:`sca_plugin.nni.ModelSpeedup`)."""
        return super().compress(max_steps, max_epochs)

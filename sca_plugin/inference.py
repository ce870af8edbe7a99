"""The inference path for a pruned (finalized) spiking network: :func:`optimize_for_inference`.

A model fresh from ``pruner.finalize()`` still runs as it trained: BatchNorm as separate layers,
neurons that keep their membrane trace for the statistics (``store_v_seq``), hooks any tool left,
eager PyTorch. :func:`optimize_for_inference` returns a copy made for inference -- hooks dropped,
BatchNorm folded into the preceding conv/linear (:func:`sca_plugin.export.fusion.fold_batchnorm_`),
multi-step execution, ``torch.compile`` with Inductor's freezing -- whose spikes equal the model's.
Why: on a CPU the time of a small pruned network goes to per-layer and per-time-step overhead
rather than to its MACs, so pruning alone speeds it up far less than it shrinks the MACs.
"""
from __future__ import annotations

import copy
import types
import warnings
from collections import OrderedDict
from typing import Any, Dict, List, Optional, Tuple

import torch
import torch.nn as nn
import torch.nn.utils.prune as torch_prune
from spikingjelly.activation_based import functional

from .neurons import is_spiking_neuron

__all__ = ["InferenceModel", "optimize_for_inference", "record_spikes"]

#: the hook dictionaries of an ``nn.Module`` that act in the forward or backward pass
_HOOK_DICTS = ("_forward_hooks", "_forward_hooks_with_kwargs", "_forward_hooks_always_called",
               "_forward_pre_hooks", "_forward_pre_hooks_with_kwargs", "_backward_hooks", "_backward_pre_hooks")


def _as_tuple(example_inputs: Any) -> Tuple[torch.Tensor, ...]:
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    if not inputs or not all(isinstance(t, torch.Tensor) for t in inputs):
        raise TypeError("example_inputs must be a tensor (or a tuple of tensors) shaped like one batch of the "
                        f"model's input, got {type(example_inputs).__name__}")
    return tuple(inputs)


def _hook_owner(hook: Any) -> Any:
    return getattr(hook, "__self__", None)


def _check_no_live_pruner(model: nn.Module) -> List[str]:
    """Refuse a model that an unfinalized pruner still shapes; returns the hooks that will be dropped
    (``'<module>: <owner class>'``), which change no output in eval mode."""
    from .masking import ChannelMasker

    masked, torch_pruned, nni_wrapped, dropped = [], [], [], []
    for name, m in model.named_modules():
        where = name or "<model>"
        if hasattr(m, "_nni_wrapper"):
            nni_wrapped.append(where)
        for attr in ("_forward_hooks", "_forward_pre_hooks"):
            for hook in getattr(m, attr, {}).values():
                owner = _hook_owner(hook)
                if isinstance(owner, ChannelMasker):
                    masked.append(where)
                elif isinstance(hook, torch_prune.BasePruningMethod):
                    torch_pruned.append(f"{where}.{hook._tensor_name}")
                else:
                    dropped.append(f"{where}: {type(owner or hook).__name__}")
    if masked:
        raise ValueError(f"the model still carries the forward masks of an unfinalized pruner (on {', '.join(masked)}): "
                         "call pruner.finalize() first, which removes the masked channels physically (or "
                         "pruner.remove() to drop the masks and keep every channel)")
    if nni_wrapped:
        raise ValueError(f"the model is still wrapped by an NNI compressor (on {', '.join(nni_wrapped)}): call "
                         "pruner.unwrap_model() and remove the channels (sca_plugin.nni speed-up) first")
    if torch_pruned:
        raise ValueError("the model has torch.nn.utils.prune reparametrizations (on "
                         f"{', '.join(torch_pruned)}): call torch.nn.utils.prune.remove(module, name) on each first")
    return dropped


def _hook_free_copy(model: nn.Module) -> nn.Module:
    """``copy.deepcopy(model)`` whose modules have empty hook dictionaries: the hooks' owners (a
    pruner's collectors, monitors) are neither copied nor attached to the copy, and ``model`` keeps
    its own hooks untouched."""
    memo: Dict[int, Any] = {}
    for m in model.modules():
        for attr in _HOOK_DICTS:
            hooks = m.__dict__.get(attr)
            if hooks is not None:
                memo[id(hooks)] = OrderedDict()
    return copy.deepcopy(model, memo)


def record_spikes(model: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """``(output, {neuron path: its output spikes, [T, B, ...]})`` of one eager forward of ``model`` from rest,
    in eval mode under ``torch.no_grad()``; every module's train/eval flag is restored and the
    neuron states are reset afterwards, also when the forward fails."""
    steps: Dict[str, List[torch.Tensor]] = {}
    handles = [m.register_forward_hook(lambda _m, _a, out, n=n: steps.setdefault(n, []).append(out.detach().clone()))
               for n, m in model.named_modules() if is_spiking_neuron(m)]
    modes = [(m, m.training) for m in model.modules()]
    try:
        model.eval()
        functional.reset_net(model)
        with torch.no_grad():
            out = model(*inputs)
    finally:
        for h in handles:
            h.remove()
        for m, was in modes:
            m.training = was
        functional.reset_net(model)
    # a single-step model calls each neuron once per time step: stacked, [T, B, ...] as in multi-step
    spikes = {n: seq[0] if len(seq) == 1 else torch.stack(seq) for n, seq in steps.items()}
    return out, spikes


def _reference(model: nn.Module, inputs: Tuple[torch.Tensor, ...]) -> Tuple[Any, Dict[str, torch.Tensor]]:
    """The caller's model on ``inputs`` (eval mode, from rest), or a ValueError naming the input problem."""
    param = next(model.parameters(), None)
    if param is not None and any(t.device != param.device for t in inputs):
        raise ValueError(f"example_inputs are on {inputs[0].device} but the model is on {param.device}: move one of them")
    try:
        return record_spikes(model, inputs)
    except (RuntimeError, ValueError, IndexError, TypeError) as e:
        shapes = ", ".join(str(list(t.shape)) for t in inputs)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ValueError(f"example_inputs of shape {shapes} do not fit the model ({first}); pass one batch shaped "
                         "as the model takes it, e.g. [B, C, H, W] (static images) or [T, B, C, H, W] (a sequence, "
                         "multi-step)") from e


def _prepare(model: nn.Module, fold_batchnorm: bool, multi_step: bool) -> List[Tuple[str, str]]:
    """Make the (hook-free) copy an inference module in place; returns the folded pairs."""
    from .export.fusion import fold_batchnorm_
    from .models.base import SpikingNet

    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    for m in model.modules():
        if is_spiking_neuron(m) and getattr(m, "store_v_seq", False):
            m.store_v_seq = False  # the SCA statistics' membrane trace: a copy per step, unused here
            m.v_seq = None
    functional.reset_net(model)
    if multi_step and isinstance(model, SpikingNet) and model.step_mode != "m":
        model.step_mode = "m"  # one conv call over all T steps instead of T calls
    return fold_batchnorm_(model) if fold_batchnorm else []


def _call(module: nn.Module, *inputs: torch.Tensor) -> Any:
    return module(*inputs)


def _compiled_call(freeze: bool, mode: Optional[str], dynamic: Optional[bool]):
    """``torch.compile`` of a call through the module, with its own code object: Dynamo keeps its
    cache (and its recompile limit of 8 entries) per code object, so every optimized model gets a
    budget of its own instead of sharing one with every other model of its class."""
    code = _call.__code__.replace(co_name=f"_call_{id(object()):x}")
    fn = types.FunctionType(code, _call.__globals__, code.co_name)
    options = {"freezing": True} if freeze else None
    return torch.compile(fn, dynamic=dynamic, mode=mode, options=options)


class InferenceModel(nn.Module):
    """What :func:`optimize_for_inference` returns: ``self.module`` (the prepared eager copy) and, when
    compiled, the compiled call through it.

    Every call starts from rest and leaves the neurons at rest (``functional.reset_net`` before and
    after), runs under ``torch.no_grad()`` and returns what the model returns; calling it twice on
    the same batch gives the same output, and there is no state to reset between batches. Feeding a
    sequence in chunks that continue one another is therefore not possible: pass the whole sequence.
    ``report`` says what was done (folded pairs, dropped hooks, compile settings, the checks).

    It pickles (``torch.save(fast, path)``, ``copy.deepcopy``) without its compiled code, which
    cannot be serialised: the copy keeps the compile settings and compiles again at its first call.
    """

    def __init__(self, module: nn.Module, compile_settings: Optional[Dict[str, Any]], report: Dict[str, Any]) -> None:
        super().__init__()
        self.module = module
        self._compile_settings = compile_settings
        self._compile()
        self.report = report

    def _compile(self) -> None:
        """The compiled call (lazy: it compiles at the first call), or None without compile settings;
        not a submodule, so no second copy of the weights."""
        settings = self._compile_settings
        object.__setattr__(self, "_compiled", None if settings is None else _compiled_call(**settings))

    def __getstate__(self) -> Dict[str, Any]:
        state = dict(self.__dict__)
        state.pop("_compiled", None)  # compiled code does not pickle; __setstate__ compiles again
        return state

    def __setstate__(self, state: Dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._compile()

    @property
    def compiled(self) -> bool:
        return self._compiled is not None

    def forward(self, *inputs: torch.Tensor) -> Any:
        functional.reset_net(self.module)
        try:
            with torch.no_grad():
                if self._compiled is not None:
                    return self._compiled(self.module, *inputs)
                return self.module(*inputs)
        finally:
            functional.reset_net(self.module)

    def train(self, mode: bool = True) -> "InferenceModel":
        if mode:
            raise RuntimeError("an InferenceModel is for inference only (BatchNorm folded, weights frozen); train the "
                               "model it was made from and call optimize_for_inference again")
        return super().train(False)


def _spike_differences(ref: Dict[str, torch.Tensor], got: Dict[str, torch.Tensor]) -> Dict[str, int]:
    diff = {}
    for name, s in ref.items():
        other = got.get(name)
        if other is None or other.shape != s.shape:
            diff[name] = s.numel()
        elif not torch.equal(other, s):
            diff[name] = int((other != s).sum())
    return diff


def _close(a: Any, b: Any, atol: float) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and torch.allclose(a, b, rtol=0.0, atol=atol)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)) and len(a) == len(b):
        return all(_close(x, y, atol) for x, y in zip(a, b))
    return False


def _check(model: nn.Module, ref_out: Any, ref_spikes: Dict[str, torch.Tensor], result: InferenceModel,
           inputs: Tuple[torch.Tensor, ...], atol: float) -> Dict[str, Any]:
    """Compare the prepared copy (eager, neuron by neuron) and the compiled call with the model on
    ``inputs``; warns on flipped spikes (float rounding of the folding at a threshold), raises when
    the outputs disagree beyond ``atol`` although every spike agrees."""
    eager_out, spikes = record_spikes(result.module, inputs)
    flips = _spike_differences(ref_spikes, spikes)
    out = result(*inputs) if result.compiled else eager_out
    check = {"neurons_compared": len(ref_spikes), "spike_differences": flips,
             "output_max_abs_diff": float((out - ref_out).abs().max()) if isinstance(out, torch.Tensor) else None}
    if flips:
        warnings.warn(f"optimize_for_inference: {sum(flips.values())} spikes of the example inputs differ from the "
                      f"model's (in {', '.join(sorted(flips))}): the folded BatchNorm rounds differently and a membrane "
                      "potential sat at the threshold; fold_batchnorm=False keeps the model's arithmetic",
                      RuntimeWarning, stacklevel=3)
    elif not _close(out, ref_out, atol):
        raise RuntimeError(f"optimize_for_inference: every spike agrees but the output differs from the model's by "
                           f"{check['output_max_abs_diff']} (> atol={atol}); the model's forward depends on something the "
                           "copy lacks (a hook that changes outputs?); pass compile=False to narrow it down")
    return check


def optimize_for_inference(model: nn.Module, example_inputs: Any, *, compile: bool = True,
                           fold_batchnorm: bool = True, freeze: bool = True, mode: Optional[str] = None,
                           multi_step: bool = True, dynamic: Optional[bool] = False, check: bool = True,
                           atol: float = 1e-4) -> InferenceModel:
    """An inference copy of a finalized (pruned) or any SpikingJelly model; ``model`` is not modified.

    Steps, on a deep copy made without the model's hooks: eval mode, no gradients, neurons stop
    storing their membrane trace (``store_v_seq``, which SCA's statistics turn on); a
    :class:`~sca_plugin.models.SpikingNet` in single-step mode runs multi-step (``multi_step``);
    BatchNorm is folded into the conv/linear before it (``fold_batchnorm``; torch's
    ``fuse_conv_bn_eval``); ``torch.compile`` (``compile``) with Inductor's ``freezing`` (``freeze``:
    the weights become constants -- fastest on CPU, measured in ``benchmarks/inference.py``; the
    returned model does not see later changes to the weights) and ``mode``; ``dynamic=False``
    compiles once per input shape. The neurons use SpikingJelly's registered operator for the
    device (its fastest CPU path); there is no backend to choose.

    ``example_inputs`` (a tensor or tuple, one batch as the model takes it) checks the input, warms
    the compiled code up, and with ``check`` compares the copy with ``model`` neuron by neuron:
    a flipped spike (the folded BatchNorm rounds differently, at a threshold) is a RuntimeWarning,
    an output off by more than ``atol`` with every spike equal a RuntimeError. Refused before
    anything is copied, with the fix: a model an unfinalized pruner still masks (call
    ``finalize()``), an NNI-wrapped model, ``torch.nn.utils.prune`` reparametrizations, inputs the
    model does not take or on another device. The model's own neuron states are reset (its
    parameters, buffers, hooks and train/eval flags stay as they were).
    """
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    inputs = _as_tuple(example_inputs)
    dropped = _check_no_live_pruner(model)
    ref_out, ref_spikes = _reference(model, inputs)
    prepared = _hook_free_copy(model)
    folded = _prepare(prepared, fold_batchnorm, multi_step)
    settings = {"freeze": freeze, "mode": mode, "dynamic": dynamic} if compile else None
    report: Dict[str, Any] = {"folded": folded, "dropped_hooks": dropped, "compiled": compile,
                              "freeze": bool(compile and freeze), "mode": mode if compile else None}
    result = InferenceModel(prepared, settings, report)
    result.eval()
    if check:
        report["check"] = _check(model, ref_out, ref_spikes, result, inputs, atol)
    elif compile:
        result(*inputs)  # compile now, not at the user's first batch
    return result

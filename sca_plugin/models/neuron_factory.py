"""Spiking-neuron factory shared by every reference architecture.

``neuron`` may be a short name (``'if'``, ``'lif'``, ``'plif'``), a SpikingJelly neuron class or any
callable returning a neuron module.  The defaults follow the SCA reference code:
``v_threshold=1.0, v_reset=0.0, detach_reset=True, surrogate_function=surrogate.Sigmoid(alpha=4.0)``;
keyword arguments given by the user override them.
"""
from __future__ import annotations

import copy
import inspect
from typing import Any, Callable, Dict, Union

import torch.nn as nn
from spikingjelly.activation_based import neuron as sj_neuron
from spikingjelly.activation_based import surrogate

__all__ = ["NEURON_TYPES", "NeuronSpec", "default_neuron_kwargs", "make_neuron_factory"]

#: Short names accepted by the ``neuron`` argument of every model builder.
NEURON_TYPES: Dict[str, type] = {
    "if": sj_neuron.IFNode,
    "lif": sj_neuron.LIFNode,
    "plif": sj_neuron.ParametricLIFNode,
}

NeuronSpec = Union[str, Callable[..., nn.Module]]

# neuron classes given the SCA defaults they accept: SpikingJelly's production neurons and its
# pure-PyTorch "Simple" ones (which share the threshold / reset / surrogate arguments)
_NEURON_BASES = tuple(c for c in (sj_neuron.BaseNode, getattr(sj_neuron, "SimpleBaseNode", None)) if c is not None)


def default_neuron_kwargs() -> Dict[str, Any]:
    """Neuron defaults of the SCA reference code (a fresh surrogate instance on every call)."""
    return {
        "v_threshold": 1.0,
        "v_reset": 0.0,
        "detach_reset": True,
        "surrogate_function": surrogate.Sigmoid(alpha=4.0),
    }


def _accepted_kwargs(cls: type) -> set:
    try:
        params = inspect.signature(cls.__init__).parameters
    except (TypeError, ValueError):  # pragma: no cover - builtins without signature
        return set()
    return {name for name in params if name != "self"}


def _fresh(kwargs: Dict[str, Any]) -> Dict[str, Any]:
    """Copy module-valued kwargs (surrogates) so no submodule is shared between neurons."""
    return {k: copy.deepcopy(v) if isinstance(v, nn.Module) else v for k, v in kwargs.items()}


def make_neuron_factory(neuron: NeuronSpec = "if", **neuron_kwargs: Any) -> Callable[[], nn.Module]:
    """Return a zero-argument callable creating one new spiking neuron per call.

    * ``'if'`` / ``'lif'`` / ``'plif'`` -> ``IFNode`` / ``LIFNode`` / ``ParametricLIFNode`` with the
      SCA defaults, overridden by ``neuron_kwargs`` (for ``'plif'`` a ``tau=`` is mapped to
      SpikingJelly's ``init_tau=``).
    * a SpikingJelly neuron class (subclass of ``neuron.BaseNode`` or ``neuron.SimpleBaseNode``,
      e.g. ``SimpleIFNode``) -> the SCA defaults it accepts, overridden by ``neuron_kwargs``.
    * any other callable -> called as ``neuron(**neuron_kwargs)``; it must return an ``nn.Module``.

    Step mode is not set here: the model sets it for all its modules after construction.
    """
    if isinstance(neuron, str):
        key = neuron.lower()
        if key not in NEURON_TYPES:
            raise ValueError(
                f"Unknown neuron {neuron!r}; valid names are {sorted(NEURON_TYPES)} "
                "(or pass a callable returning a neuron module)."
            )
        cls = NEURON_TYPES[key]
        user = dict(neuron_kwargs)
        if key == "plif" and "tau" in user and "init_tau" not in user:
            user["init_tau"] = user.pop("tau")
        kwargs = {**default_neuron_kwargs(), **user}

        def factory() -> nn.Module:
            return cls(**_fresh(kwargs))

        return factory

    if isinstance(neuron, type) and issubclass(neuron, _NEURON_BASES):
        accepted = _accepted_kwargs(neuron)
        defaults = {k: v for k, v in default_neuron_kwargs().items() if k in accepted}
        kwargs = {**defaults, **neuron_kwargs}
        cls = neuron

        def factory() -> nn.Module:
            return cls(**_fresh(kwargs))

        return factory

    if callable(neuron):
        fn = neuron

        def factory() -> nn.Module:
            module = fn(**_fresh(neuron_kwargs))
            if not isinstance(module, nn.Module):
                raise TypeError(f"neuron callable must return an nn.Module, got {type(module).__name__}")
            return module

        return factory

    raise ValueError(
        f"neuron must be one of {sorted(NEURON_TYPES)} or a callable returning a neuron module, "
        f"got {neuron!r}"
    )

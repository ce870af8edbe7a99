"""The model of a run: a reference architecture by name or the user's ``module:callable`` factory,
called with the settings it accepts (a setting it cannot apply is refused, never recorded as used)."""
from __future__ import annotations

import dataclasses
import inspect
from typing import Callable, List, Optional

import torch.nn as nn

from .config import ConfigError, TrainConfig
from .user_code import import_user_module

__all__ = ["build_model", "unused_model_settings"]

#: what build_model passes a model factory (keyword) and the setting each keyword comes from (None:
#: from the data)
_FACTORY_KEYWORDS = {"num_classes": None, "in_channels": None, "T": "time_steps", "width": "width",
                     "neuron": "neuron", "step_mode": "step_mode", "input_size": None}


def _model_factory(cfg: TrainConfig) -> Callable[..., nn.Module]:
    """The callable ``cfg.model`` names: a reference model or ``module:callable``."""
    if ":" in cfg.model:
        module_name, _, attr = cfg.model.partition(":")
        module = import_user_module(module_name, f"model {cfg.model!r}", ConfigError)
        factory = getattr(module, attr, None)
        if not callable(factory):
            raise ConfigError(f"cannot import model {cfg.model!r}: module {module_name} has no callable {attr!r}")
        return factory
    from .models import MODELS

    if cfg.model.lower() not in MODELS:
        raise ConfigError(f"unknown model {cfg.model!r}; use one of {', '.join(MODELS)} or module:callable")
    return MODELS[cfg.model.lower()]


def _model_settings(cfg: TrainConfig, data_kind: Optional[str]) -> List[str]:
    """Settings that only the model factory can apply: width, neuron, step mode, and the number of
    time steps on static data (event data has its time steps in the frames)."""
    settings = ["width", "neuron", "step_mode"]
    if data_kind == "static":
        settings.insert(0, "time_steps")
    return settings


def _model_kwargs(cfg: TrainConfig, factory: Callable, num_classes: int, in_channels: int, input_size,
                  data_kind: Optional[str] = None) -> tuple:
    """``(keywords to call factory with, settings it does not take)``.

    A reference model (``sca_plugin.models``) takes every setting. A ``module:callable`` factory is called with the keywords of ``_FACTORY_KEYWORDS`` its signature accepts (all with
    ``**kwargs``). A setting only the model can apply (``_model_settings``) that the factory does not
    take is refused when it differs from its default (it would be recorded but not used); at its
    default it is listed as unused (metrics.json ``model_settings_unused``)."""
    values = dict(num_classes=num_classes, in_channels=in_channels, T=cfg.time_steps, width=cfg.width,
                  neuron=cfg.neuron, step_mode=cfg.step_mode, input_size=input_size)
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):  # no signature to read (some builtins): pass everything
        params = None
    if ":" not in cfg.model:  # a reference model: all but input_size (their **kwargs go to the neurons)
        return {k: v for k, v in values.items() if k != "input_size" or (params and k in params)}, []
    if params is None:
        return values, []
    if any(p.kind == p.VAR_KEYWORD for p in params.values()):
        return values, []
    kwargs = {k: v for k, v in values.items() if k in params}
    missing = [n for n, p in params.items() if p.default is p.empty and n not in kwargs
               and p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    if missing:
        raise ConfigError(f"model {cfg.model!r} requires {', '.join(missing)}, which sca-prune does not pass: it "
                          f"calls the factory with the keywords it accepts of {', '.join(_FACTORY_KEYWORDS)}; "
                          "give the other parameters defaults")
    taken = {setting for kw, setting in _FACTORY_KEYWORDS.items() if kw in params and setting}
    unused = [s for s in _model_settings(cfg, data_kind) if s not in taken]
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig)}
    changed = [s for s in unused if getattr(cfg, s) != defaults[s]]
    if changed:
        keyword = {setting: kw for kw, setting in _FACTORY_KEYWORDS.items() if setting}
        flags = ", ".join(f"--{s.replace('_', '-')} {getattr(cfg, s)}" for s in changed)
        raise ConfigError(f"model {cfg.model!r} does not take {', '.join(keyword[s] for s in changed)}, so {flags} "
                          f"would be recorded but not used: drop {'it' if len(changed) == 1 else 'them'}, or add "
                          f"the parameter{'s' if len(changed) > 1 else ''} to the factory")
    return kwargs, unused


def build_model(cfg: TrainConfig, num_classes: int, in_channels: int, input_size, *,
                data_kind: Optional[str] = None) -> nn.Module:
    """A reference model by name, or ``module:callable`` (called with the keywords it accepts).

    ``data_kind`` (``'static'`` or ``'event'``): with static data the number of time steps reaches
    the network only through the factory's ``T``, so a ``time_steps`` other than the default is
    refused for a factory without ``T``. Width, neuron and step mode are refused likewise (see
    :func:`_model_kwargs`): a setting the model cannot apply is never recorded as if used."""
    factory = _model_factory(cfg)
    kwargs, _ = _model_kwargs(cfg, factory, num_classes, in_channels, input_size, data_kind)
    return factory(**kwargs)


def unused_model_settings(cfg: TrainConfig, data_kind: Optional[str] = None) -> List[str]:
    """The settings the model factory of ``cfg`` does not take (they keep their defaults in the
    config, but the model does not see them); ConfigError as :func:`build_model`."""
    return _model_kwargs(cfg, _model_factory(cfg), 1, 1, (1, 1), data_kind)[1]

"""The regrowth signal: |dL/dgamma| of BatchNorm scales since the last update: its mean over the
steps (``"mean"``, default) or the last step's (``"last"``, the reference code, which reads
``bn.weight.grad`` once at update time)."""
from __future__ import annotations

from typing import Callable, Dict, Iterable, Optional

import torch
import torch.nn as nn

from .collectors import StatisticsCollector
from .distributed import all_reduce_sum_, world_size

__all__ = ["REGROW_SIGNALS", "GradientMagnitudes"]

REGROW_SIGNALS = ("mean", "last")


class GradientMagnitudes(StatisticsCollector):
    """Running mean of ``|grad|`` per BatchNorm, fed by gradient hooks on the scale parameters (a
    :class:`~sca_plugin.collectors.StatisticsCollector`: ``attach(model, modules=batchnorms)``).

    Under torch.distributed the hook averages the gradient over the processes first, so every
    process accumulates the gradient of the global batch (what a single process would see): there
    is nothing left to :meth:`synchronize`. Tensor hooks run in the autograd engine, outside a
    compiled graph, so they may be attached and detached between compiled steps."""

    name = "growth"

    def __init__(self, parameter: Optional[Callable[[nn.Module, str], torch.Tensor]] = None) -> None:
        """``parameter(bn, "weight")``: where a BatchNorm's trained scale lives (default its
        ``weight``; a framework that re-hosts parameters while it wraps the model, NNI, says where)."""
        super().__init__()
        self._parameter = parameter or getattr
        self.sums: Dict[nn.Module, torch.Tensor] = {}
        self.counts: Dict[nn.Module, int] = {}
        self.last: Dict[nn.Module, torch.Tensor] = {}

    def check(self, model: nn.Module, modules: Optional[Iterable[nn.Module]] = None) -> None:
        if modules is None:
            raise ValueError("GradientMagnitudes.attach(model, modules=...) needs the BatchNorms whose scale "
                             "gradients to record")
        bad = [type(m).__name__ for m in modules if getattr(m, "weight", None) is None]
        if bad:
            raise ValueError(f"GradientMagnitudes records the gradients of BatchNorm scales, but {bad} have no weight")

    def _install(self, model: nn.Module, modules: Optional[Iterable[nn.Module]]) -> list:
        return [self._parameter(bn, "weight").register_hook(self.hook_for(bn)) for bn in modules]

    def hook_for(self, bn: nn.Module) -> Callable[[torch.Tensor], None]:
        """A tensor hook adding one step's ``|grad|`` of ``bn``'s scale."""
        def hook(grad: torch.Tensor) -> None:
            if not self.enabled:
                return
            g = grad.detach().float()
            if world_size() > 1:  # DDP: the gradient of the global batch (the average DDP applies), not the local one
                g = all_reduce_sum_(g.clone()) / world_size()
            g = g.abs()  # a new tensor: kept as the last step's signal without a copy
            self.last[bn] = g
            if bn in self.sums:
                self.sums[bn] += g
                self.counts[bn] += 1
            else:
                self.sums[bn] = g.clone()
                self.counts[bn] = 1
        return hook

    def __bool__(self) -> bool:
        return bool(self.counts)

    def means(self) -> Dict[nn.Module, torch.Tensor]:
        return {bn: s / self.counts[bn] for bn, s in self.sums.items()}

    def signal(self, kind: str = "mean") -> Dict[nn.Module, torch.Tensor]:
        """Per BatchNorm, the regrowth signal ``kind`` (one of :data:`REGROW_SIGNALS`)."""
        if kind not in REGROW_SIGNALS:
            raise ValueError(f"unknown regrowth signal {kind!r}; use one of {REGROW_SIGNALS}")
        return self.means() if kind == "mean" else dict(self.last)

    def reset(self) -> None:
        self.sums.clear()
        self.counts.clear()
        self.last.clear()

    clear = reset

    def state_dict(self, names: Dict[nn.Module, str]) -> dict:
        return {names[bn]: {"sum": s.detach().cpu().clone(), "count": self.counts[bn],
                            "last": self.last[bn].detach().cpu().clone()} for bn, s in self.sums.items()}

    def load_state_dict(self, state: dict, modules: Dict[str, nn.Module], device=None) -> None:
        self.reset()
        for name, entry in state.items():
            self.sums[modules[name]] = entry["sum"].to(device) if device is not None else entry["sum"].clone()
            self.counts[modules[name]] = int(entry["count"])
            last = entry.get("last", entry["sum"] / max(int(entry["count"]), 1))  # states saved before "last" existed
            self.last[modules[name]] = last.to(device) if device is not None else last.clone()

"""Shared base class of the reference spiking networks.

:class:`SpikingNet` owns everything the architectures have in common: the number of time steps
``T``, direct encoding of static images, the single-step / multi-step execution paths, averaging the
output over time, and the reference weight initialisation.  Subclasses only build their layers and
implement :meth:`SpikingNet.forward_body`.
"""
from __future__ import annotations

import torch
import torch.nn as nn
from spikingjelly.activation_based import base as sj_base
from spikingjelly.activation_based import functional

__all__ = ["SpikingNet", "scale_channels", "check_width", "init_reference_weights"]

_STEP_MODES = ("s", "m")


def scale_channels(channels: int, width: float) -> int:
    """``channels * width`` rounded to the nearest integer, at least 1."""
    return max(1, int(round(channels * width)))


def check_width(width: float) -> float:
    """Validate a width multiplier (must be a positive number)."""
    if not isinstance(width, (int, float)) or width <= 0:
        raise ValueError(f"width must be a positive number, got {width!r}")
    return float(width)


def init_reference_weights(model: nn.Module) -> None:
    """Initialisation of the SCA reference VGG, applied to every layer of ``model``.

    Conv: ``kaiming_normal_(mode='fan_out', nonlinearity='relu')`` (bias 0); BatchNorm: weight 1,
    bias 0; Linear: weight ``N(0, 0.02)``, bias 0.
    """
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.modules.batchnorm._BatchNorm):
            if m.weight is not None:
                nn.init.ones_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.Linear):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class SpikingNet(nn.Module, sj_base.StepModule):
    """Base class: time handling and step modes for a spiking network returning class scores.

    ``forward(x)`` accepts

    * a static batch ``[B, C, H, W]`` -- direct encoding: the same image is fed at each of the ``T``
      time steps;
    * a time-major sequence ``[T', B, C, H, W]`` (e.g. event frames) -- ``T'`` is taken from the input.

    and returns the output layer averaged over time, ``[B, num_classes]``, so
    ``F.cross_entropy(model(x), y)`` works directly.

    Execution path (decided at every forward from the modules' step mode, so
    ``functional.set_step_mode(model, 's')`` after construction works too):

    * ``'m'`` (multi-step): :meth:`forward_body` runs once on ``[T, B, ...]``;
    * ``'s'`` (single-step): :meth:`forward_body` runs ``T`` times on ``[B, ...]`` and the outputs are
      stacked.

    As usual in SpikingJelly the neuron states persist between calls: call
    ``functional.reset_net(model)`` (or :meth:`reset_state`) after every batch.
    """

    #: Number of dimensions of a static input batch (``[B, C, H, W]``).
    static_input_dims: int = 4

    def __init__(self, T: int, num_classes: int, in_channels: int, step_mode: str = "m") -> None:
        nn.Module.__init__(self)
        if int(T) < 1:
            raise ValueError(f"T must be a positive integer, got {T!r}")
        if step_mode not in _STEP_MODES:
            raise ValueError(f"step_mode must be one of {_STEP_MODES}, got {step_mode!r}")
        self.T = int(T)
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self._step_mode = step_mode

    # ------------------------------------------------------------------ step mode
    @property
    def step_mode(self) -> str:
        """Step mode of the SpikingJelly modules (read from the first one; ``'m'`` or ``'s'``)."""
        for m in self.modules():
            if m is not self and isinstance(m, sj_base.StepModule):
                return m.step_mode
        return self._step_mode

    @step_mode.setter
    def step_mode(self, value: str) -> None:
        if value not in _STEP_MODES:
            raise ValueError(f"step_mode must be one of {_STEP_MODES}, got {value!r}")
        self._step_mode = value
        for child in self.children():
            functional.set_step_mode(child, value)

    def _finish_init(self, step_mode: str) -> None:
        """Called by subclasses at the end of ``__init__``: reference init + step mode for all modules."""
        init_reference_weights(self)
        self.step_mode = step_mode

    def reset_state(self) -> None:
        """Reset the membrane state of every neuron (same as ``functional.reset_net(self)``)."""
        functional.reset_net(self)

    # ------------------------------------------------------------------ forward
    def forward_body(self, x: torch.Tensor) -> torch.Tensor:
        """Run the network on ``[T, B, ...]`` (multi-step) or ``[B, ...]`` (single-step)."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == self.static_input_dims:
            static, T = True, self.T
        elif x.dim() == self.static_input_dims + 1:
            static, T = False, x.shape[0]
        else:
            raise ValueError(
                f"{type(self).__name__} expects a static batch with {self.static_input_dims} dims "
                f"or a time-major sequence with {self.static_input_dims + 1} dims, got shape "
                f"{tuple(x.shape)}"
            )
        if self.step_mode == "m":
            if static:
                x = x.unsqueeze(0).repeat(T, *([1] * self.static_input_dims))
            out_seq = self.forward_body(x)
        else:
            outs = [self.forward_body(x if static else x[t]) for t in range(T)]
            out_seq = torch.stack(outs, dim=0)
        return out_seq.mean(dim=0)

    def extra_repr(self) -> str:
        return f"T={self.T}, num_classes={self.num_classes}, step_mode={self.step_mode}"

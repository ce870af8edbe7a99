"""Size and cost of a (pruned) spiking network: parameters, MACs per time step, channels per layer.

MACs are counted with forward hooks on every convolution and linear layer (SpikingJelly's
``layer.*`` wrappers included, whatever the step mode): ``output elements x (input channels per
group x kernel size)``. They are synaptic MACs of a dense (ANN-style) evaluation: BatchNorm, pooling
and neuron updates are not included, and spikes are not assumed sparse (SynOps are a separate
measure).
"""
from __future__ import annotations

import math
from typing import Any, Dict, List, Optional

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from .graph import _call, preserve_training_mode
from .neurons import is_spiking_neuron, neuron_channel_dim

__all__ = ["count_parameters", "count_macs", "conv_channels", "model_stats", "pruning_report"]


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, example_inputs: Any, forward_fn=None) -> Dict[str, int]:
    """``{'total', 'per_step', 'time_steps', 'batch_size'}``: MACs per sample over all time steps and
    per time step, from one eval-mode forward pass of ``example_inputs`` (neuron state is reset)."""
    macs = [0]
    neuron_calls: List[tuple] = []

    def conv_hook(m, args, out):
        out = out[0] if isinstance(out, (tuple, list)) else out
        macs[0] += out.numel() * (m.in_channels // m.groups) * math.prod(m.kernel_size)

    def linear_hook(m, args, out):
        macs[0] += out.numel() * m.in_features

    def neuron_hook(m, args):
        neuron_calls.append((m, tuple(args[0].shape)))

    handles = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvNd):
            handles.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            handles.append(m.register_forward_hook(linear_hook))
        elif is_spiking_neuron(m):
            handles.append(m.register_forward_pre_hook(neuron_hook))
    try:
        with preserve_training_mode(model), torch.no_grad():
            model.eval()
            functional.reset_net(model)
            _call(model, example_inputs, forward_fn)
            functional.reset_net(model)
    finally:
        for h in handles:
            h.remove()
    if neuron_calls:
        first, shape = neuron_calls[0]
        if neuron_channel_dim(first) == 2:
            time_steps, batch = shape[0], shape[1]
        else:
            time_steps, batch = sum(1 for m, _ in neuron_calls if m is first), shape[0]
    else:
        time_steps, batch = 1, (example_inputs.shape[0] if isinstance(example_inputs, torch.Tensor) else 1)
    total = macs[0] // batch
    return {"total": total, "per_step": total // time_steps, "time_steps": time_steps, "batch_size": batch}


def conv_channels(model: nn.Module) -> Dict[str, int]:
    """Output channels of every convolution, by module name."""
    return {n: m.out_channels for n, m in model.named_modules() if isinstance(m, nn.modules.conv._ConvNd)}


def model_stats(model: nn.Module, example_inputs: Any, accuracy: Optional[float] = None, forward_fn=None) -> dict:
    """Parameters, MACs and conv channels of ``model`` (and an accuracy you measured, if given)."""
    macs = count_macs(model, example_inputs, forward_fn)
    return {"accuracy": accuracy, "parameters": count_parameters(model), "macs_per_step": macs["per_step"],
            "macs_total": macs["total"], "time_steps": macs["time_steps"], "channels": conv_channels(model)}


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{100 * v:.2f}%"
    return f"{v:,}"


def pruning_report(before: dict, after: dict, labels: tuple = ("before", "after")) -> str:
    """A plain-text before/after table of two :func:`model_stats` results."""
    rows = [("accuracy", before["accuracy"], after["accuracy"]),
            ("parameters", before["parameters"], after["parameters"]),
            ("MACs / time step", before["macs_per_step"], after["macs_per_step"]),
            (f"MACs total (T={before['time_steps']})", before["macs_total"], after["macs_total"])]
    for name, n in before["channels"].items():
        rows.append((f"channels {name}", n, after["channels"].get(name)))
    width = max(len(r[0]) for r in rows)
    lines = [f"{'':<{width}}  {labels[0]:>14}  {labels[1]:>14}  {'ratio':>7}", "-" * (width + 43)]
    for name, b, a in rows:
        ratio = f"{a / b:.3f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else "-"
        lines.append(f"{name:<{width}}  {_fmt(b):>14}  {_fmt(a):>14}  {ratio:>7}")
    return "\n".join(lines)

"""NeuroBench 2.3's definitions computed without NeuroBench (the ``neurobench`` block), and
:func:`neurobench_reference`, which runs NeuroBench itself (the tests check both agree)."""
from __future__ import annotations

from typing import Any, Dict, Iterable, List, Optional, Tuple

import torch
import torch.nn as nn
from spikingjelly.activation_based import functional

from ..graph import preserve_training_mode
from ..neurons import is_spiking_neuron

from .counting import _Activity, _energy, _HookSet, _input_of


#: The NeuroBench release whose definitions the ``neurobench`` block follows.
NEUROBENCH_VERSION = "2.3.0"


#: NeuroBench's stateless connection layers (``neurobench.blocks.layer.STATELESS_LAYERS``).
NB_STATELESS_LAYERS = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


#: NeuroBench's recurrent connection layers; their operation counts are not reproduced here.
NB_RECURRENT_LAYERS = (nn.RNNBase, nn.RNNCellBase)


#: NeuroBench's default activation modules (``neurobench.blocks.activation.SUPPORTED_ACTIVATIONS``).
NB_DEFAULT_ACTIVATIONS = (nn.ReLU, nn.Sigmoid)


def _nb_find(module: nn.Module, match, prefix: str = "") -> List[Tuple[str, nn.Module]]:
    """Modules matching ``match`` found as NeuroBench finds them: walk ``named_children`` from the
    root (the root itself is never a candidate), do not descend into a match.  A module reachable
    under two names is listed once (NeuroBench would hook it twice and count it double)."""
    found: List[Tuple[str, nn.Module]] = []
    seen: set = set()

    def walk(m: nn.Module, pre: str) -> None:
        for name, child in m.named_children():
            full = f"{pre}.{name}" if pre else name
            if match(child):
                if id(child) not in seen:
                    seen.add(id(child))
                    found.append((full, child))
            elif next(child.children(), None) is not None:
                walk(child, full)

    walk(module, prefix)
    return found


def _nb_is_activation(m: nn.Module) -> bool:
    return isinstance(m, NB_DEFAULT_ACTIVATIONS) or is_spiking_neuron(m)


def _is_spike_valued(x: torch.Tensor) -> bool:
    """NeuroBench's test for a spiking input: every value is 0, 1 or -1."""
    return bool(((x == 0) | (x == 1) | (x == -1)).all().item())


class _NeuroBenchOps(_HookSet):
    """Forward pre-hooks on NeuroBench's connection layers; effective and dense operations per layer.

    Both counts are linear in the binarised input and the weights do not change during an
    evaluation, so a hook only adds the binarised input, summed over its leading (time, batch)
    dimensions, to an accumulator per layer, spiking flag and input shape; :meth:`finish` then does one
    small convolution (one output channel per group) per accumulator.  That is exact (integers,
    float64; NeuroBench sums float32 outputs, exact while a layer's count per batch stays below
    2**24), costs a fraction of a forward pass, and runs no convolution inside the hooks, where the
    other counters would count it.
    """

    def __init__(self, layers: List[Tuple[str, nn.Module]]) -> None:
        self.layers = layers
        self.calls: Dict[str, int] = {name: 0 for name, _ in layers}
        # (name, spiking, input shape after the leading dims) -> [summed binarised input, rows]
        self._acc: Dict[tuple, list] = {}

    def _hook(self, name: str):
        def hook(module, args):
            if len(args) != 1 or not torch.is_tensor(args[0]):
                raise ValueError(f"NeuroBench ops: layer {name!r} was called with {len(args)} positional "
                                 "arguments; NeuroBench's stateless layers take one input tensor")
            x = args[0].detach()
            # the dims a single sample-step of the layer sees: [in_features] or [C, *spatial]
            d = 0 if isinstance(module, nn.Linear) else len(module.kernel_size)
            width = module.in_features if d == 0 else module.in_channels
            if x.dim() < d + 1 or x.shape[-d - 1] != width:
                raise ValueError(f"NeuroBench ops: {type(module).__name__} {name!r} expects {width} input "
                                 f"{'features' if d == 0 else 'channels'}, got input of shape {tuple(x.shape)}")
            inner = tuple(x.shape[-d - 1:])
            xb = (x != 0).reshape(-1, *inner)
            key = (name, _is_spike_valued(x), inner)
            entry = self._acc.get(key)
            if entry is None:
                self._acc[key] = [xb.sum(0), xb.shape[0]]
            else:
                entry[0] += xb.sum(0)
                entry[1] += xb.shape[0]
            self.calls[name] += 1

        return hook

    def finish(self) -> Tuple[Dict[str, int], Dict[str, int], Dict[str, int]]:
        """``(macs, acs, dense)`` per layer name, summed over all samples (call outside the counters)."""
        modules = dict(self.layers)
        macs = {name: 0 for name, _ in self.layers}
        acs = dict(macs)
        dense = dict(macs)
        with torch.no_grad():
            for (name, spiking, inner), (xs, rows) in self._acc.items():
                layer = modules[name]
                if isinstance(layer, nn.Linear):
                    # sum_{rows,out} xb @ wb.T = sum_in (#non-zero inputs at in) * (#non-zero weights at in)
                    eff = int((xs.to(torch.int64) * (layer.weight != 0).sum(0)).sum().item())
                    d_ops = rows * layer.in_features * layer.out_features
                else:
                    c, g, out = layer.in_channels, layer.groups, layer.out_channels
                    wb = (layer.weight.detach() != 0).to("cpu", torch.float64)
                    # one output channel per group: its binarised filters summed over its output channels
                    wg = wb.reshape(g, out // g, c // g, *layer.kernel_size).sum(1)
                    x64 = xs.to("cpu", torch.float64).unsqueeze(0)
                    eff = int(round(layer._conv_forward(x64, wg, None).sum().item()))
                    ones = torch.ones_like(x64)
                    w1 = torch.full_like(wg, float(out // g))
                    d_ops = rows * int(round(layer._conv_forward(ones, w1, None).sum().item()))
                (acs if spiking else macs)[name] += eff
                dense[name] += d_ops
        return macs, acs, dense

    def __enter__(self) -> "_NeuroBenchOps":
        self._handles = [m.register_forward_pre_hook(self._hook(name)) for name, m in self.layers]
        return self


def _nb_static(model: nn.Module) -> Dict[str, Any]:
    """NeuroBench's static metrics: ``ParameterCount``, ``Footprint`` (bytes of parameters and
    buffers) and ``ConnectionSparsity`` (zero weights / weights of the leaf connection layers under
    the root's children; NeuroBench rounds it to 4 decimals, we do not)."""
    params = sum(p.numel() for p in model.parameters())
    footprint = sum(p.numel() * p.element_size() for p in model.parameters())
    footprint += sum(b.numel() * b.element_size() for b in model.buffers())
    zeros = total = 0

    def visit(m: nn.Module) -> None:
        nonlocal zeros, total
        kids = list(m.children())
        if kids:
            for k in kids:
                visit(k)
        elif isinstance(m, NB_STATELESS_LAYERS):
            zeros += int((m.weight == 0).sum().item())
            total += m.weight.numel()
        elif isinstance(m, NB_RECURRENT_LAYERS):  # NeuroBench: all weights and biases of the cell/layer
            for _, p in m.named_parameters(recurse=False):
                zeros += int((p == 0).sum().item())
                total += p.numel()

    for child in model.children():
        visit(child)
    return {"parameter_count": int(params), "footprint_bytes": int(footprint),
            "connection_sparsity": (zeros / total) if total else None}


def _neurobench_block(model: nn.Module, ops: _NeuroBenchOps, recurrent: List[str], activity: _Activity,
                      acts: List[Tuple[str, nn.Module]], per_sample, e_mac: float, e_ac: float) -> Dict[str, Any]:
    """The ``neurobench`` block of :func:`spiking_metrics` (see the module docstring)."""
    block: Dict[str, Any] = {"follows": f"NeuroBench {NEUROBENCH_VERSION}", "unsupported": None}
    if recurrent:
        # NeuroBench counts recurrent cells with its own gate-level rules (and raises for nn.RNN/LSTM/GRU);
        # they are not reproduced here, so no synaptic-operation figures rather than wrong ones.
        block["unsupported"] = f"recurrent layers {recurrent}: NeuroBench synaptic operations not reproduced"
        block.update(effective_macs=None, effective_acs=None, dense=None, layers={}, energy=None)
    else:
        l_macs, l_acs, l_dense = ops.finish()
        macs = per_sample(sum(l_macs.values()))
        acs = per_sample(sum(l_acs.values()))
        dense = per_sample(sum(l_dense.values()))
        block.update(
            effective_macs=macs, effective_acs=acs, dense=dense,
            layers={name: {"effective_macs": per_sample(l_macs[name]), "effective_acs": per_sample(l_acs[name]),
                           "dense": per_sample(l_dense[name])}
                    for name, _ in ops.layers if ops.calls[name]},
            energy=_energy(macs, acs, dense, e_mac, e_ac),
        )
    nnz = sum(activity.nnz[n] for n, _ in acts)
    numel = sum(activity.numel[n] for n, _ in acts)
    # NeuroBench returns 0.0 when no activation layer ran; None says so instead.
    block["activation_sparsity"] = (1.0 - nnz / numel) if numel else None
    block["activation_sparsity_by_layer"] = {
        n: 1.0 - activity.nnz[n] / activity.numel[n] for n, _ in acts if activity.numel[n]}
    block.update(_nb_static(model))
    return block


class _ListLoader:
    """The little of a ``DataLoader`` NeuroBench's ``Benchmark.run`` uses: iteration, ``len`` and
    ``len(.dataset)`` (the sample count it normalises per-batch metrics by)."""

    def __init__(self, batches: List[Tuple[torch.Tensor, torch.Tensor]]) -> None:
        self.batches = batches
        self.dataset = range(sum(int(x.shape[0]) for x, _ in batches))

    def __iter__(self):
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


def neurobench_reference(
    model: nn.Module,
    batches: Iterable[Any],
    time_major: bool = False,
    max_batches: Optional[int] = None,
) -> Dict[str, Any]:
    """Run NeuroBench itself (``pip install 'sca_plugin[neurobench]'``) on ``model`` and ``batches``.

    The cross-check of the ``neurobench`` block of :func:`spiking_metrics`: same model, same batches,
    NeuroBench's own ``Benchmark`` with ``ParameterCount``, ``Footprint``, ``ConnectionSparsity``,
    ``ActivationSparsity``, ``ActivationSparsityByLayer``, ``SynapticOperations`` and, when the
    batches carry targets, ``ClassificationAccuracy`` (of ``argmax(-1)`` of the output).

    :param batches: as for :func:`spiking_metrics`: input tensors or ``(input, target, ...)`` tuples.
    :param time_major: the inputs are ``[T, B, ...]``.  NeuroBench takes the batch size from dim 0,
        so they are handed to it batch-first and transposed back before the model sees them.
    :returns: NeuroBench's result dict (its own keys) plus ``samples``.
    :raises ImportError: NeuroBench is not installed.
    :raises RuntimeError: NeuroBench reported an error in a metric (it would otherwise record 0.0).

    The spiking-neuron classes of the model are registered as NeuroBench activation modules (as a
    SpikingJelly user does with ``add_activation_module``); neuron states are reset around every
    batch; it runs under ``torch.no_grad()`` and the modules' train/eval flags are restored.
    """
    try:
        from neurobench.benchmarks import Benchmark
        from neurobench.metrics.static import ConnectionSparsity, Footprint, ParameterCount
        from neurobench.metrics.workload import (ActivationSparsity, ActivationSparsityByLayer,
                                                 ClassificationAccuracy, SynapticOperations)
        from neurobench.models import TorchModel
    except ImportError as e:
        raise ImportError(f"neurobench_reference needs NeuroBench {NEUROBENCH_VERSION}: "
                          "pip install 'sca_plugin[neurobench]' (with your torch pinned)") from e
    import contextlib
    import io

    class _SpikingJellyModel(TorchModel):
        def __call__(self, batch):
            x = batch.transpose(0, 1) if time_major else batch
            functional.reset_net(self.net)
            try:
                return self.net(x)
            finally:
                functional.reset_net(self.net)

    data: List[Tuple[torch.Tensor, torch.Tensor]] = []
    with_targets = True
    for i, batch in enumerate(batches):
        if max_batches is not None and i >= max_batches:
            break
        x = _input_of(batch)
        if not torch.is_tensor(x):
            raise ValueError("neurobench_reference: inputs must be tensors")
        xb = x.transpose(0, 1) if time_major else x
        if isinstance(batch, (tuple, list)) and len(batch) > 1 and torch.is_tensor(batch[1]):
            y = batch[1]
        else:
            with_targets = False
            y = torch.zeros(xb.shape[0], dtype=torch.long, device=xb.device)
        data.append((xb, y))
    if not data:
        raise ValueError("neurobench_reference: no batches were given")

    workload = [ActivationSparsity, ActivationSparsityByLayer, SynapticOperations]
    if with_targets:
        workload.insert(0, ClassificationAccuracy)
    log = io.StringIO()
    with preserve_training_mode(model), torch.no_grad():
        nb_model = _SpikingJellyModel(model)
        for cls in {type(m) for m in model.modules() if is_spiking_neuron(m)}:
            nb_model.add_activation_module(cls)
        with contextlib.redirect_stdout(log), contextlib.redirect_stderr(log):
            bench = Benchmark(nb_model, _ListLoader(data), [], [lambda p: p.argmax(-1)],
                              [[ParameterCount, Footprint, ConnectionSparsity], workload])
            try:
                results = bench.run(quiet=False)
            finally:
                bench.workload_metric_manager.cleanup_hooks(nb_model)
                functional.reset_net(model)
    errors = [line for line in log.getvalue().splitlines() if line.startswith("Error running")]
    if errors:
        raise RuntimeError("NeuroBench reported errors (it records 0.0 for such a metric): " + "; ".join(errors))
    results = dict(results)
    results["samples"] = sum(int(x.shape[0]) for x, _ in data)
    return results

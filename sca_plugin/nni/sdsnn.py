"""SD-SNN for NNI 3.0: an NNI ``Pruner`` driven by :class:`sca_plugin.SDSNNPruner`.

    from sca_plugin.nni import ModelSpeedup, SDSNNPruner
    evaluator = TorchEvaluator(training_func, optimizer, training_step, dummy_input=x)
    pruner = SDSNNPruner(model, [{"op_types": ["Conv2d"]}], evaluator, interval_steps=steps_per_epoch, N=2)
    _, masks = pruner.compress(max_epochs=epochs)
    pruner.unwrap_model()
    ModelSpeedup(model, x, masks).speedup_model()

There is one algorithm, in :mod:`sca_plugin.sdsnn`; this class connects it to NNI's pipeline: the
config list picks the layers, the evaluator trains, every ``interval_steps`` optimizer steps (one
"epoch" of structural development, run by the :class:`~sca_plugin.nni.driver.TrainingDriver` both
NNI front ends share) the core's epoch step runs on the parameters NNI trains (the core's
``redirect_parameters``), and NNI's masks are the core's: synapse (weight-element) masks for the
managed layers, the channel mask for their BatchNorms (weight and bias). As in the method, masks are not applied to the
parameters during training (masked synapses keep training and are re-zeroed at each step);
pruned channels' outputs are masked exactly as in the core, so ``ModelSpeedup`` on the returned
masks gives the model the core's ``finalize()`` would.
"""
from __future__ import annotations

from typing import Any, Dict, List, Literal, Optional

import torch
import torch.nn as nn
from nni.compression.base.compressor import Pruner
from nni.compression.base.config import select_modules_by_config
from nni.compression.utils import Evaluator

from ..groups import PRODUCER_TYPES, group_batchnorms
from ..sdsnn import SDSNNPruner as _CoreSDSNN
from .driver import TrainingDriver, check_driver_arguments, module_channels, wrapped_parameter
from .pruner import DEFER_APPLY_METHOD

__all__ = ["SDSNNPruner"]

_ALLOWED_KEYS = {"op_types", "op_names", "op_names_re", "exclude_op_names", "exclude_op_types", "exclude_op_names_re"}


class SDSNNPruner(TrainingDriver, Pruner):
    """SD-SNN (Han et al.) as an NNI 3.0 pruner.

    Args:
        model: a SpikingJelly network.
        config_list: entries selecting the convolutions (and hidden linear layers) whose channels
            develop, with ``op_types`` / ``op_names`` / ``op_names_re`` (+ ``exclude_*``). No
            ``sparse_ratio``: SD-SNN's sparsity emerges from its adaptive rates.
        evaluator: an NNI ``Evaluator`` that trains the model (required by ``compress()``).
        interval_steps: optimizer steps per structural-development step (an epoch in the method).
        total_times: at most this many development steps (``'unlimited'`` by default).
        example_inputs: inputs exactly as ``model`` takes them (dependency graph). Default: the
            evaluator's ``dummy_input`` (``TorchEvaluator(..., dummy_input=x)``), as NNI's tools use it.
        forward_fn: ``forward_fn(model, example_inputs)`` for models not called as ``model(x)``.
        **sdsnn_kwargs: ``N``, ``initial_rate``, ``initial_fc_rate``, ``dead_synapses``,
            ``dead_fc_synapses``, ``regen_percentile``, ``regen_fc_percentile``, ``regen_cap``,
            ``range_layers``, ``min_channels``: see :class:`sca_plugin.SDSNNPruner`.
    """

    _NO_DURATION = "SD-SNN develops the structure while training: pass max_steps or max_epochs to compress()"

    def __init__(self, model: nn.Module, config_list: List[Dict], evaluator: Optional[Evaluator] = None,
                 interval_steps: int = 100, total_times: int | Literal["unlimited"] = "unlimited",
                 example_inputs: Any = None, *, forward_fn=None, **sdsnn_kwargs: Any) -> None:
        example_inputs = check_driver_arguments("SDSNNPruner", model, evaluator, interval_steps, total_times,
                                                example_inputs)
        selected = self._select(model, config_list)
        names = {m: n for n, m in model.named_modules()}
        ignored = [m for m in model.modules() if isinstance(m, PRODUCER_TYPES) and m not in selected.values()]
        types = tuple({type(m) for m in selected.values()})
        # the algorithm; it validates sdsnn_kwargs and traces the graph before NNI wraps anything
        self.core = _CoreSDSNN(model, example_inputs, ignored_layers=ignored, root_module_types=types,
                               forward_fn=forward_fn, **sdsnn_kwargs)
        for (root, _), producers in zip(self.core.groups, self.core._producers):
            outside = [names[m] for m in producers if m not in selected.values()]
            if outside:
                raise ValueError(f"{outside} share their output channels with {names[root]} (one dependency group, "
                                 "e.g. a residual connection) but are not in config_list; configure coupled layers "
                                 "together")
        self.user_config_list = [dict(c) for c in config_list]
        self.interval_steps = interval_steps
        self.total_times = total_times
        self.module_names = names
        self._bns = [group_batchnorms(group) for _, group in self.core.groups]
        internal = [{"op_names": [names[m]], "target_names": ["weight", "bias"]}
                    for m in list(self.core._layers) + [bn for bns in self._bns for bn in bns]]
        super().__init__(model, internal, evaluator)
        for spaces in self._target_spaces.values():
            for space in spaces.values():
                space.apply_method = DEFER_APPLY_METHOD  # masks recorded, not applied: synapses keep training
        self.core.redirect_parameters(wrapped_parameter)  # the core works on the parameters NNI trains

    @staticmethod
    def _select(model: nn.Module, config_list: List[Dict]) -> Dict[str, nn.Module]:
        if not isinstance(config_list, list) or not config_list:
            raise ValueError("config_list must be a non-empty list of dicts")
        selected: Dict[str, nn.Module] = {}
        for i, config in enumerate(config_list):
            if not isinstance(config, dict):
                raise ValueError(f"config_list[{i}] must be a dict, got {type(config).__name__}")
            if "sparse_ratio" in config or "sparsity" in config:
                raise ValueError(f"config_list[{i}] sets a sparsity, but SD-SNN's sparsity emerges from its adaptive "
                                 "pruning and regeneration rates; drop it (tune initial_rate / N instead)")
            unknown = sorted(set(config) - _ALLOWED_KEYS)
            if unknown:
                raise ValueError(f"config_list[{i}] has keys {unknown} that SD-SNN does not use; valid: "
                                 f"{sorted(_ALLOWED_KEYS)}")
            modules = select_modules_by_config(model, config)[0]
            modules = {n: m for n, m in modules.items() if isinstance(m, PRODUCER_TYPES)}
            if not modules:
                raise ValueError(f"config_list[{i}] selects no convolution or linear layer (op_types are class names "
                                 "such as 'Conv2d')")
            selected.update(modules)
        return selected

    # ------------------------------------------------------------------ NNI pipeline
    def _collect_data(self) -> Dict[str, Dict[str, torch.Tensor]]:
        return {}

    def _calculate_metrics(self, data):
        return {}

    def _generate_sparsity(self, metrics) -> Dict[str, Dict[str, torch.Tensor]]:
        """NNI masks from the core's state: synapse masks, and channel masks for BatchNorms and biases."""
        masks: Dict[str, Dict[str, torch.Tensor]] = {}
        for i, (keep, bns) in enumerate(zip(self.core.masks, self._bns)):
            producers = self.core._producers[i]
            for module, (local, root) in list(producers.items()) + list(bns.items()):
                name = self.module_names[module]
                channel = module_channels(keep, local, root, wrapped_parameter(module, "weight").shape[0])
                targets = {}
                for target_name, space in self._target_spaces.get(name, {}).items():
                    t = space.target
                    if t is None:
                        continue
                    if target_name == "weight" and module in self.core.synapses:
                        m = self.core.synapses[module].mask & channel.view([-1] + [1] * (t.dim() - 1)).to(t.device)
                    else:
                        m = channel.to(t.device).view([-1] + [1] * (t.dim() - 1)).expand_as(t)
                    targets[target_name] = m.to(t.dtype).clone()
                masks[name] = targets
        return masks

    def step(self) -> None:
        """One structural-development step (what ``compress()`` runs every ``interval_steps``)."""
        self.core.update_masks()
        self.update_masks(self.generate_masks())

    def _driver_update(self) -> None:
        self.step()

    def unwrap_model(self) -> None:
        """NNI's ``unwrap_model``: the plain model back, with the masked synapses zeroed; the
        channel masks are no longer enforced on the outputs (as with any NNI pruner, apply the
        masks with ``ModelSpeedup``, which removes the pruned channels)."""
        if self._is_wrapped and self.core.synapses:
            self.core._zero_masked_synapses()
        super().unwrap_model()
        self.core.remove()  # the core's forward masks off the plain model

    # ------------------------------------------------------------------ queries
    def connectivity(self) -> Dict[str, float]:
        return self.core.connectivity()

    def channel_counts(self) -> Dict[str, tuple]:
        return self.core.channel_counts()

    @property
    def history(self) -> List[dict]:
        return self.core.history

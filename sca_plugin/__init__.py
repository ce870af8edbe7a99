"""sca_plugin: structured channel pruning for spiking neural networks.

SCA (Spiking Channel Activity-based pruning, Li et al., ICML 2024) as Torch-Pruning components:
:class:`SCAImportance` (a ``tp.importance.Importance``) and :class:`SCAPruner` (a
``tp.pruner.BasePruner`` that masks and regrows channels during training and removes them
physically at the end), for SpikingJelly networks in single- and multi-step mode; and SD-SNN
(adaptive structural development, Han et al.) through the same components:
:class:`SDSNNImportance` and :class:`SDSNNPruner`.
"""
from .activity import MembraneActivityRecorder
from .graph import SpikingMetaPruner, repair_time_dimension, replay_pruning, spiking_neuron_pruners
from .importance import SCAImportance
from .inference import InferenceModel, optimize_for_inference
from .neurons import SpikingNeuronPruner, is_spiking_neuron, register_charge_function, register_neuron_class
from .pruner import NonFiniteStatisticsError, SCAPruner
from .reporting import count_macs, count_parameters, pruning_report
from .schedule import sparsity_at
from .sdsnn import SDSNNImportance, SDSNNPruner
from .selection import select_channels

__version__ = "0.1.0"

__all__ = [
    "SCAImportance",
    "optimize_for_inference",
    "InferenceModel",
    "SCAPruner",
    "NonFiniteStatisticsError",
    "SDSNNImportance",
    "SDSNNPruner",
    "SpikingMetaPruner",
    "SpikingNeuronPruner",
    "MembraneActivityRecorder",
    "repair_time_dimension",
    "replay_pruning",
    "spiking_neuron_pruners",
    "is_spiking_neuron",
    "register_neuron_class",
    "register_charge_function",
    "count_macs",
    "count_parameters",
    "pruning_report",
    "sparsity_at",
    "select_channels",
    "__version__",
]

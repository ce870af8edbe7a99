"""SCA for NNI 3.0 users: an NNI ``Pruner`` and a ``ModelSpeedup`` that works on torch 2.x and SNNs.

    from sca_plugin.nni import SCAPruner, ModelSpeedup
    evaluator = TorchEvaluator(training_func, optimizer, training_step, dummy_input=x)  # x traces the graph
    pruner = SCAPruner(model, config_list, evaluator, regrow_ratio=0.1, interval_steps=100)
    _, masks = pruner.compress(max_steps=None, max_epochs=10)
    pruner.unwrap_model()
    ModelSpeedup(model, x, masks).speedup_model()

NNI's own L1Norm / FPGM / Slim / Taylor pruners on a spiking network, removed physically:
``NNIBuiltinPruning(model, x, "fpgm", 0.5).prune()``. SD-SNN as an NNI pruner: ``SDSNNPruner``.
"""
try:
    import nni  # noqa: F401
except ImportError as e:  # pragma: no cover - depends on the environment
    raise ImportError("sca_plugin.nni needs NNI 3.0: pip install 'sca_plugin[nni]' (or nni==3.0)") from e

from .pruner import SCAPruner
from .speedup import ModelSpeedup
from .builtin import NNI_BUILTIN_PRUNERS, NNIBuiltinPruning
from .sdsnn import SDSNNPruner

__all__ = ["SCAPruner", "SDSNNPruner", "ModelSpeedup", "NNIBuiltinPruning", "NNI_BUILTIN_PRUNERS"]

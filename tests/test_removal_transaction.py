"""Physical removal is one transaction (issue 12, items 2, 6, 7): it traces under no_grad /
inference_mode, refuses an output layer before anything changes, and a failure anywhere leaves the
model exactly as it was (values, dtypes, structure, hooks) for SCAPruner.finalize, ModelSpeedup and
replay_pruning alike."""
import pytest
import torch
import torch.nn as nn
import torch_pruning as tp
from spikingjelly.activation_based import functional, layer, neuron

from tests.helpers import assert_unchanged, outputs, snapshot, trained_digits_pruner
from sca_plugin import SCAPruner
from sca_plugin.graph import SpikingMetaPruner, replay_pruning
from sca_plugin.models import digits_cnn
from sca_plugin.nni import ModelSpeedup


def _dtypes(model):
    return {n: t.dtype for n, t in list(model.named_parameters()) + list(model.named_buffers())}


@pytest.mark.parametrize("context", [torch.no_grad, torch.inference_mode], ids=["no_grad", "inference_mode"])
def test_tracing_enables_autograd_itself(context, digits_batch):
    """Torch-Pruning traces through autograd; users load and prune models under no_grad/inference_mode."""
    x, _ = digits_batch
    torch.manual_seed(0)
    model, other = digits_cnn(T=2, width=0.5), digits_cnn(T=2, width=0.5)
    with context():
        example = torch.rand(2, 1, 8, 8)  # an inference tensor under inference_mode
        pruner = SCAPruner(model, example, ignored_layers=[model.classifier])
        assert len(pruner.groups) == 3
        meta = SpikingMetaPruner(other, example, tp.importance.MagnitudeImportance(), pruning_ratio=0.5,
                                 ignored_layers=[other.classifier])
        assert other.features[0] in meta.DG.module2node
    trained, p = trained_digits_pruner(digits_batch)
    p.finalize()
    history = p.pruning_history()
    fresh = digits_cnn(T=2, width=0.5)
    with context():
        replay_pruning(fresh, torch.rand(2, 1, 8, 8), history)
    assert [m.out_channels for m in fresh.modules() if isinstance(m, nn.Conv2d)] == \
        [m.out_channels for m in trained.modules() if isinstance(m, nn.Conv2d)]

    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    conv = model.features[0]
    masks = {"features.0": {"weight": torch.ones_like(conv.weight)}}
    masks["features.0"]["weight"][:3] = 0
    with context():
        ModelSpeedup(model, torch.rand(2, 1, 8, 8), masks).speedup_model()
    assert model.features[0].out_channels == conv.weight.shape[0] == 5


def test_a_prunable_output_layer_is_refused_at_construction():
    net = nn.Sequential(layer.Conv2d(1, 8, 3, padding=1), layer.BatchNorm2d(8), neuron.IFNode(),
                        layer.Flatten(), layer.Linear(8 * 8 * 8, 10), neuron.IFNode())
    functional.set_step_mode(net, "m")
    snap = snapshot(net)
    with pytest.raises(ValueError, match=r"channels of 4 are the model's output .*ignored_layers"):
        SCAPruner(net, torch.rand(4, 2, 1, 8, 8), regrow_ratio=0.0, root_module_types=(nn.Conv2d, nn.Linear))
    assert_unchanged(net, snap)
    SCAPruner(net, torch.rand(4, 2, 1, 8, 8), regrow_ratio=0.0, root_module_types=(nn.Conv2d, nn.Linear),
              ignored_layers=[net[4]])  # the fix the message gives


def test_failed_finalize_leaves_the_model_as_it_was(digits_batch):
    """The float64 reference forward fails (here: a forward_fn that refuses float64 after the
    pruner was built): the model must come back in float32, with its values, hooks and masks."""
    x, _ = digits_batch
    state = {"armed": False}

    def forward_fn(model, inputs):
        if state["armed"] and inputs.dtype == torch.float64:
            raise RuntimeError("this forward takes float32 only")
        return model(inputs)

    model, pruner = trained_digits_pruner(digits_batch, forward_fn=forward_fn)
    before_out = outputs(model, x)
    snap, dtypes = snapshot(model), _dtypes(model)
    state["armed"] = True
    with pytest.raises(RuntimeError, match="float32 only"):
        pruner.finalize()
    assert _dtypes(model) == dtypes
    assert_unchanged(model, snap)
    assert not pruner.finalized
    assert torch.equal(outputs(model, x), before_out)  # the masks act again
    state["armed"] = False
    pruner.finalize()  # and the same pruner can still finalize
    assert torch.allclose(outputs(model, x), before_out, atol=1e-5)


def test_failed_speedup_and_replay_leave_the_model_as_it_was():
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    x = torch.rand(2, 1, 8, 8)
    masks = {"features.0": {"weight": torch.ones_like(model.features[0].weight)}}
    masks["features.0"]["weight"][:3] = 0
    snap, dtypes = snapshot(model), _dtypes(model)
    speedup = ModelSpeedup(model, x, masks, verify_atol=-1.0)  # no output can pass a negative tolerance
    with pytest.raises(RuntimeError, match="the model was restored"):
        speedup.speedup_model()
    assert _dtypes(model) == dtypes
    assert_unchanged(model, snap)

    # the first entry applies, the second names a layer this model does not have: half-pruned without the transaction
    history = [["features.0", True, [0, 1, 2]], ["features.99", True, [0]]]
    with pytest.raises(Exception):
        replay_pruning(model, x, history)
    assert _dtypes(model) == dtypes
    assert_unchanged(model, snap)

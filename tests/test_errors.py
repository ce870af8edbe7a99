"""Bad input: a clear error naming the problem and the fix, raised before anything changes."""
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import layer, neuron

from tests.helpers import assert_unchanged, snapshot, train_steps
from sca_plugin import SCAImportance, SCAPruner
from sca_plugin.models import digits_cnn


@pytest.fixture
def model():
    torch.manual_seed(0)
    return digits_cnn(T=2)


@pytest.fixture
def x():
    return torch.rand(4, 1, 8, 8) * 2


@pytest.mark.parametrize("kwargs, match", [
    ({"pruning_ratio": 1.0}, r"pruning_ratio must be in \[0, 1\)"),
    ({"pruning_ratio": -0.1}, r"pruning_ratio must be in \[0, 1\)"),
    ({"regrow_ratio": 1.5}, r"regrow_ratio must be in \[0, 1\)"),
    ({"pruning_ratio": 0.2, "regrow_ratio": 0.3}, "regrow_ratio <= pruning_ratio"),
    ({"l1": -1.0}, "l1 must be a non-negative"),
    ({"mode": "fancy"}, "mode must be one of"),
    ({"schedule": "exp"}, "schedule must be one of"),
    ({"round_to": 0}, "round_to must be a positive integer"),
    ({"min_channels": 0}, "min_channels must be a positive integer"),
    ({"importance": "l1"}, "importance must be a torch_pruning"),
])
def test_bad_arguments(model, x, kwargs, match):
    snap = snapshot(model)
    with pytest.raises((ValueError, TypeError), match=match):
        SCAPruner(model, x, ignored_layers=[model.classifier], **kwargs)
    assert_unchanged(model, snap)


def test_model_without_spiking_neurons(x):
    cnn = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 10))
    snap = snapshot(cnn)
    with pytest.raises(ValueError, match="no spiking neurons"):
        SCAPruner(cnn, x, ignored_layers=[cnn[4]])
    assert_unchanged(cnn, snap)


def test_ignored_layer_not_in_model(model, x):
    stranger = nn.Linear(3, 3)
    snap = snapshot(model)
    with pytest.raises(ValueError, match="not a submodule of the model"):
        SCAPruner(model, x, ignored_layers=[stranger])
    assert_unchanged(model, snap)


def test_regrowth_without_batchnorm(x):
    net = nn.Sequential(layer.Conv2d(1, 4, 3, step_mode="m"), neuron.IFNode(step_mode="m"),
                        layer.Flatten(step_mode="m"), layer.Linear(144, 10, step_mode="m"))
    seq = x.unsqueeze(0).repeat(2, 1, 1, 1, 1)
    snap = snapshot(net)
    with pytest.raises(ValueError, match="no BatchNorm"):
        SCAPruner(net, seq, ignored_layers=[net[3]])
    assert_unchanged(net, snap)
    SCAPruner(net, seq, ignored_layers=[net[3]], regrow_ratio=0.0)  # the fix works


def test_update_masks_before_statistics(model, x):
    pruner = SCAPruner(model, x, ignored_layers=[model.classifier])
    model.eval()
    model(x)  # evaluation passes do not count
    with pytest.raises(RuntimeError, match="before any training statistics"):
        pruner.update_masks()
    assert pruner.masks[0] is None and pruner.num_updates == 0


def test_update_masks_without_gradients(model, x):
    pruner = SCAPruner(model, x, ignored_layers=[model.classifier])
    model.train()
    model(x)
    with pytest.raises(RuntimeError, match="loss.backward"):
        pruner.update_masks()
    assert pruner.masks[0] is None


def test_finalize_twice_and_before_masks(model, x):
    pruner = SCAPruner(model, x, ignored_layers=[model.classifier])
    with pytest.raises(RuntimeError, match="before any mask"):
        pruner.finalize()
    train_steps(model, x, torch.randint(0, 10, (4,)), 1, pruner)
    pruner.update_masks()
    pruner.finalize()
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="already called"):
        pruner.finalize()
    with pytest.raises(RuntimeError, match="after finalize"):
        pruner.update_masks()
    assert_unchanged(model, snap)


def test_failed_finalize_rolls_back(model, x):
    pruner = SCAPruner(model, x, ignored_layers=[model.classifier], verify_atol=-1.0)  # impossible tolerance
    train_steps(model, x, torch.randint(0, 10, (4,)), 1, pruner)
    pruner.update_masks()
    snap = snapshot(model)
    with pytest.raises(RuntimeError, match="restored"):
        pruner.finalize()
    assert_unchanged(model, snap)
    assert not pruner.finalized
    pruner.verify_atol = 1e-5
    pruner.finalize()  # the pruner is still usable


def test_one_shot_step_is_refused(model, x):
    pruner = SCAPruner(model, x, ignored_layers=[model.classifier])
    with pytest.raises(RuntimeError, match="update_masks"):
        pruner.step()


def test_importance_attached_twice(model, x):
    imp = SCAImportance()
    SCAPruner(model, x, importance=imp, ignored_layers=[model.classifier])
    other = digits_cnn(T=2)
    with pytest.raises(ValueError, match="already attached"):
        SCAPruner(other, x, importance=imp, ignored_layers=[other.classifier])


def test_regularize_other_model(model, x):
    pruner = SCAPruner(model, x, ignored_layers=[model.classifier])
    with pytest.raises(ValueError, match="different model"):
        pruner.regularize(digits_cnn(T=2))


def test_regularize_adds_l1_sign_to_conv_grads(model, x):
    pruner = SCAPruner(model, x, ignored_layers=[model.classifier], l1=0.01)
    conv = model.features[0]
    conv.weight.grad = torch.zeros_like(conv.weight)
    model.classifier.weight.grad = torch.zeros_like(model.classifier.weight)
    pruner.regularize(model)
    assert torch.equal(conv.weight.grad, 0.01 * torch.sign(conv.weight.detach()))
    assert model.classifier.weight.grad.abs().sum() == 0  # not a conv


def test_regularize_adds_slimming_l1_to_the_batchnorm_scales_of_prunable_channels(model, x):
    pruner = SCAPruner(model, x, ignored_layers=[model.classifier], l1=0.0, bn_l1=1e-4)
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert bns
    with torch.no_grad():
        for bn in bns:
            bn.weight.copy_(torch.linspace(-1, 1, bn.num_features))
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    pruner.regularize(model)
    for bn in bns:
        assert torch.equal(bn.weight.grad, 1e-4 * torch.sign(bn.weight.detach()))
        assert bn.bias.grad.abs().sum() == 0
    assert all(m.weight.grad.abs().sum() == 0 for m in model.modules() if isinstance(m, nn.Conv2d))  # l1=0
    with pytest.raises(ValueError, match="bn_l1 must be a non-negative number"):
        SCAPruner(digits_cnn(T=2), x, bn_l1=-1.0)


def test_example_inputs_of_the_wrong_shape(model):
    snap = snapshot(model)
    with pytest.raises(ValueError, match="example_inputs exactly as the model takes them"):
        SCAPruner(model, torch.rand(4, 3, 8, 8), ignored_layers=[model.classifier])  # 3 channels, model wants 1
    assert_unchanged(model, snap)


def test_torch_pruning_options_without_meaning_here_are_refused(model, x):
    snap = snapshot(model)
    with pytest.raises(TypeError, match="iterative_steps"):
        SCAPruner(model, x, ignored_layers=[model.classifier], iterative_steps=3)
    assert_unchanged(model, snap)


def test_unknown_normalizer():
    with pytest.raises(ValueError, match="normalizer"):
        SCAImportance(normalizer="softmax")

"""SD-SNN through NNI 3.0 (sca_plugin.nni.SDSNNPruner): the same structure as the core pruner given
the same training, NNI masks that ModelSpeedup removes exactly, and config errors."""
import copy

import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("nni")

import nni  # noqa: E402
from nni.compression import TorchEvaluator  # noqa: E402
from spikingjelly.activation_based import functional  # noqa: E402

from tests.helpers import assert_unchanged, masked_copy, outputs, outputs64, snapshot  # noqa: E402
from sca_plugin import SDSNNPruner as CoreSDSNN  # noqa: E402
from sca_plugin.models import digits_cnn  # noqa: E402
from sca_plugin.nni import ModelSpeedup, SDSNNPruner  # noqa: E402

KW = dict(N=1, initial_rate=40.0)
EPOCHS, STEPS = 6, 2


def data():
    g = torch.Generator().manual_seed(3)
    return [(torch.rand(2, 8, 1, 8, 8, generator=g), torch.randint(0, 10, (8,), generator=g)) for _ in range(STEPS)]


def step(model, opt, x, y):
    loss = F.cross_entropy(model(x), y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    functional.reset_net(model)


def test_nni_sdsnn_equals_the_core_and_speeds_up_exactly():
    batches = data()
    torch.manual_seed(0)
    base = digits_cnn(T=2, width=0.5)
    x = batches[0][0]

    core_model = copy.deepcopy(base)
    core = CoreSDSNN(core_model, x, ignored_layers=[core_model.classifier], **KW)
    opt = torch.optim.SGD(core_model.parameters(), lr=0.05)
    for _ in range(EPOCHS):
        core_model.train()
        for bx, by in batches:
            step(core_model, opt, bx, by)
        core.update_masks()

    model = copy.deepcopy(base)

    def training_func(model, optimizers, training_step, lr_schedulers=None, max_steps=None, max_epochs=None):
        for _ in range(max_epochs):
            model.train()
            for bx, by in batches:
                loss = training_step((bx, by), model)
                optimizers.zero_grad()
                loss.backward()
                optimizers.step()
                functional.reset_net(model)

    # as NNI users write it: the dependency graph is traced with the evaluator's dummy_input
    evaluator = TorchEvaluator(training_func, nni.trace(torch.optim.SGD)(model.parameters(), lr=0.05),
                               lambda batch, model: F.cross_entropy(model(batch[0]), batch[1]), dummy_input=x)
    pruner = SDSNNPruner(model, [{"op_types": ["Conv2d"]}], evaluator, interval_steps=STEPS, **KW)
    _, masks = pruner.compress(max_epochs=EPOCHS)
    assert pruner.history == core.history  # the same development, update for update
    assert all(torch.equal(a, b) for a, b in zip(pruner.core.masks, core.masks))
    assert pruner.core.sparsity() > 0
    pruner.unwrap_model()
    reference = outputs64(masked_copy(model, masks), x)
    ModelSpeedup(model, x, masks).speedup_model()
    core.finalize()
    assert [m.out_channels for m in model.features if hasattr(m, "out_channels")] == \
        [m.out_channels for m in core_model.features if hasattr(m, "out_channels")]
    torch.testing.assert_close(outputs(model.double(), x.double()), reference, atol=1e-9, rtol=0)
    for a, b in zip(model.state_dict().values(), core_model.state_dict().values()):
        torch.testing.assert_close(a.double(), b.double(), atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("config, message", [
    ([{"op_types": ["Conv2d"], "sparse_ratio": 0.5}], "sparsity emerges"),
    ([{"op_types": ["Conv2d"], "granularity": "out_channel"}], "does not use"),
    ([{"op_types": ["BatchNorm2d"]}], "selects no convolution"),
    ([], "non-empty list"),
])
def test_config_errors_change_nothing(config, message):
    model = digits_cnn(T=2, width=0.5)
    snap = snapshot(model)
    with pytest.raises(ValueError, match=message):
        SDSNNPruner(model, config, None, interval_steps=2, example_inputs=torch.rand(2, 4, 1, 8, 8))
    assert_unchanged(model, snap)


def test_without_example_inputs_or_dummy_input_the_error_names_both_fixes():
    model = digits_cnn(T=2, width=0.5)
    evaluator = TorchEvaluator(lambda *a, **k: None, nni.trace(torch.optim.SGD)(model.parameters(), lr=0.05),
                               lambda batch, model: 0.0)  # no dummy_input
    snap = snapshot(model)
    with pytest.raises(ValueError, match=r"SDSNNPruner needs example inputs.*dummy_input=x\)\) or pass "
                                         r"example_inputs=x"):
        SDSNNPruner(model, [{"op_types": ["Conv2d"]}], evaluator, interval_steps=2, N=1)
    assert_unchanged(model, snap)


def test_compress_needs_a_budget_and_an_evaluator():
    model = digits_cnn(T=2, width=0.5)
    pruner = SDSNNPruner(model, [{"op_types": ["Conv2d"]}], None, interval_steps=2,
                         example_inputs=torch.rand(2, 4, 1, 8, 8), N=1)
    with pytest.raises(ValueError, match="max_steps or max_epochs"):
        pruner.compress()
    with pytest.raises(ValueError, match="evaluator"):
        pruner.compress(max_epochs=1)

"""A diverged step or a bad sample must not be ranked (issue 12, item 18): update_masks() refuses
NaN/Inf statistics and leaves the masks as they were; a custom Importance of the wrong length is
named; the CLI says which epoch and what to change."""
import pytest
import torch
import torch_pruning as tp
from spikingjelly.activation_based import functional

from tests.helpers import train_steps, trained_digits_pruner
from sca_plugin import NonFiniteStatisticsError, SCAPruner, SDSNNPruner
from sca_plugin.config import TrainConfig
from sca_plugin.models import digits_cnn
from sca_plugin.runner import RunError, run_training


@pytest.mark.parametrize("regrow_ratio", [0.0, 0.1])
def test_nan_batch_is_refused_and_the_masks_stay(digits_batch, regrow_ratio):
    x, y = digits_batch
    model, pruner = trained_digits_pruner(digits_batch, regrow_ratio=regrow_ratio)
    masks = [k.clone() for k in pruner.masks]
    history = len(pruner.history)
    bad = x.clone()
    bad[0] = float("nan")  # one bad sample
    train_steps(model, bad, y, 1, pruner)
    with pytest.raises(NonFiniteStatisticsError, match=r"non-finite .* masks were left as they were; lower the learning rate"):
        pruner.update_masks()
    assert all(torch.equal(a, b) for a, b in zip(masks, pruner.masks))
    assert len(pruner.history) == history


class _WrongLength(tp.importance.Importance):
    def __call__(self, group):
        return torch.ones(len(group[0].idxs) + 1)


def test_importance_of_the_wrong_length_is_named(digits_batch):
    x, y = digits_batch
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.5)
    pruner = SCAPruner(model, x[:2], importance=_WrongLength(), ignored_layers=[model.classifier], regrow_ratio=0.0)
    train_steps(model, x, y, 1, pruner)
    with pytest.raises(ValueError, match=r"importance _WrongLength returned \(33,\) for the group of features.7, "
                                         r"which has 32 channels.*length 32"):
        pruner.update_masks()
    assert all(k is None for k in pruner.masks)


def test_a_diverged_run_says_which_epoch_and_what_to_change(tmp_path):
    cfg = TrainConfig.from_dict(dict(epochs=3, lr=1e12, train_limit=128, test_limit=64, dense_baseline=False,
                                     progress=False, output_dir=str(tmp_path / "run")))
    with pytest.raises(RunError, match=r"epoch \d+: non-finite .* try a lower --lr than 1e\+12"):
        run_training(cfg, log=lambda s: None)


def test_sdsnn_refuses_non_finite_weights_and_changes_nothing():
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.25)
    x = torch.rand(2, 6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    pruner = SDSNNPruner(model, x, ignored_layers=[model.classifier], N=1)
    pruner.update_masks()
    masks = [k.clone() for k in pruner.masks]
    with torch.no_grad():
        model.features[3].weight[0, 0, 0, 0] = float("inf")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(NonFiniteStatisticsError, match=r"non-finite weights in features.3.*masks were left as they were"):
        pruner.update_masks()
    assert all(torch.equal(a, b) for a, b in zip(masks, pruner.masks))
    assert pruner.num_updates == 1 and len(pruner.history) == 1
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # inf compares equal to itself

"""Parameters and MACs per time step against hand counts, in both step modes."""
import pytest
import torch
import torch.nn as nn
from spikingjelly.activation_based import functional, layer, neuron

from tests.helpers import train_steps
from sca_plugin import SCAPruner, count_macs, count_parameters
from sca_plugin.models import digits_cnn
from sca_plugin.reporting import model_stats, pruning_report


class Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = layer.Conv2d(1, 4, 3, padding=1, bias=False)
        self.bn = layer.BatchNorm2d(4)
        self.sn = neuron.IFNode()
        self.flat = layer.Flatten()
        self.fc = layer.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(self.flat(self.sn(self.bn(self.conv(x)))))


@pytest.mark.parametrize("step_mode", ["m", "s"])
def test_macs_match_hand_count(step_mode):
    net = Tiny()
    functional.set_step_mode(net, step_mode)
    T, B = 3, 5
    conv = 4 * 8 * 8 * (1 * 3 * 3)   # output elements x (in/groups x kernel)
    fc = 10 * (4 * 8 * 8)
    if step_mode == "m":
        macs = count_macs(net, torch.rand(T, B, 1, 8, 8))
    else:
        def forward_fn(model, x):
            return torch.stack([model(x) for _ in range(T)])
        macs = count_macs(net, torch.rand(B, 1, 8, 8), forward_fn=forward_fn)
    assert macs == {"per_step": conv + fc, "total": T * (conv + fc), "time_steps": T, "batch_size": B}


def test_digits_report_before_and_after():
    torch.manual_seed(0)
    model = digits_cnn(T=2)
    x = torch.rand(8, 1, 8, 8) * 2
    before = model_stats(model, x, accuracy=0.5)
    # hand count, digits_cnn: 8x8 convs 1->16, 16->32, pool, 4x4 conv 32->64, pool, fc 256->10
    per_step = 64 * 16 * 9 + 64 * 32 * 16 * 9 + 16 * 64 * 32 * 9 + 10 * 256
    assert before["macs_per_step"] == per_step and before["macs_total"] == 2 * per_step
    assert before["parameters"] == count_parameters(model)
    pruner = SCAPruner(model, x, ignored_layers=[model.classifier])
    train_steps(model, x, torch.randint(0, 10, (8,)), 1, pruner)
    pruner.update_masks()
    pruner.finalize()
    after = model_stats(model, x, accuracy=0.25)
    c = after["channels"]
    k0, k1, k2 = c["features.0"], c["features.3"], c["features.7"]
    assert after["macs_per_step"] == 64 * k0 * 9 + 64 * k1 * k0 * 9 + 16 * k2 * k1 * 9 + 10 * 4 * k2
    text = pruning_report(before, after)
    assert "MACs / time step" in text and "channels features.7" in text and "50.00%" in text

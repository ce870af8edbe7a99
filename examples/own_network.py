"""Your own SpikingJelly network and training loop, plus the few lines SCA needs (marked ``# SCA``).

Run: ``python examples/own_network.py`` (after ``make demo`` or ``pip install -e .``). Trains a small
multi-step spiking CNN with a residual block on scikit-learn's digits, prunes 50% of its channels
with SCA during training, removes them physically, and saves the smaller model.
"""
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional, layer, neuron, surrogate

from sca_plugin import SCAPruner                                   # SCA
from sca_plugin.datasets import load_dataset
from sca_plugin.reporting import model_stats, pruning_report

T = 4


def lif():
    return neuron.LIFNode(tau=2.0, detach_reset=True, surrogate_function=surrogate.ATan(), step_mode="m")


class MySNN(nn.Module):
    """conv-bn-LIF stem, one residual block, pooling, linear readout; input [B, 1, 8, 8]."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(layer.Conv2d(1, 32, 3, padding=1, bias=False), layer.BatchNorm2d(32), lif())
        self.block = nn.Sequential(layer.Conv2d(32, 32, 3, padding=1, bias=False), layer.BatchNorm2d(32), lif(),
                                   layer.Conv2d(32, 32, 3, padding=1, bias=False), layer.BatchNorm2d(32))
        self.block_sn = lif()
        self.pool = layer.AvgPool2d(2)
        self.flatten = layer.Flatten()
        self.classifier = layer.Linear(32 * 4 * 4, 10)
        functional.set_step_mode(self, "m")

    def forward(self, x):
        x = x.unsqueeze(0).repeat(T, 1, 1, 1, 1)      # direct encoding: [T, B, C, H, W]
        x = self.stem(x)
        x = self.block_sn(self.block(x) + x)          # residual add: the graph couples both convs
        return self.classifier(self.flatten(self.pool(x))).mean(0)


def accuracy(model, x, y):
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).float().mean().item()
    functional.reset_net(model)
    model.train()
    return acc


def main():
    torch.manual_seed(0)
    digits = load_dataset("digits")
    (x_train, y_train), (x_test, y_test) = digits.train.tensors(), digits.test.tensors()
    model = MySNN()
    before = model_stats(model, x_train[:8])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

    pruner = SCAPruner(model, x_train[:8], pruning_ratio=0.5, regrow_ratio=0.1,   # SCA
                       ignored_layers=[model.classifier], update_interval=20)

    for epoch in range(12):
        if epoch == 10:
            pruner.fix_masks()                                    # SCA: the last 2 epochs train the final structure
        for i in range(0, len(x_train), 64):
            loss = F.cross_entropy(model(x_train[i:i + 64]), y_train[i:i + 64])
            optimizer.zero_grad()
            loss.backward()
            pruner.regularize(model)                                              # SCA
            optimizer.step()
            functional.reset_net(model)
            if epoch < 10:
                pruner.maybe_update_masks()                                       # SCA: every 20 steps
        print(f"epoch {epoch + 1}: test accuracy {accuracy(model, x_test, y_test):.4f}, "
              f"channel sparsity {pruner.sparsity():.2f}")

    model = pruner.finalize()                                                      # SCA: physical removal
    optimizer = pruner.rebuild_optimizer(optimizer)                                # SCA: if you train on
    after = model_stats(model, x_train[:8], accuracy(model, x_test, y_test))
    print(pruning_report(before, after))
    torch.save(model, "my_snn_pruned.pt")  # a plain nn.Module: torch.load(..., weights_only=False)


if __name__ == "__main__":
    main()

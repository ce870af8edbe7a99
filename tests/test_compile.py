"""torch.compile'd training (``sca-prune train --compile``) sees the pruner's hooks: the statistics,
the masks added after compilation, and the exact masks after fix_masks() act as in eager mode."""
import pytest
import torch
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from sca_plugin import SCAPruner
from sca_plugin.models import digits_cnn


def _run(compiled: bool, masking: str):
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.25)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(16, 1, 8, 8, generator=g) * 2, torch.randint(0, 10, (16,), generator=g)
    pruner = SCAPruner(model, x[:2], ignored_layers=[model.classifier], masking=masking, pruning_ratio=0.5)
    net = torch.compile(model, dynamic=False) if compiled else model
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def step():
        loss = F.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        pruner.regularize(model)
        opt.step()
        functional.reset_net(model)

    for _ in range(3):
        step()
    scores = [pruner.importance(gr).clone() for _, gr in pruner.groups]
    counts = [float(c) for c in pruner.importance.recorder.counts.values()]
    pruner.update_masks()
    masked = net(x).detach().clone()  # with autograd on: the graph compiled before the masks existed
    functional.reset_net(model)
    pruner.fix_masks()
    model.zero_grad()
    F.cross_entropy(net(x), y).backward()
    functional.reset_net(model)
    bn_grads = [e[0].weight.grad.clone() for entries in pruner._channel_params for e in entries
                if e[5] == "bn" and e[1] == "weight"]
    return scores, counts, [k.clone() for k in pruner.masks], masked, bn_grads, pruner


@pytest.mark.parametrize("masking", ["mask"])  # masks that change the forward: the strongest check
def test_compiled_training_matches_eager(masking):
    eager = _run(False, masking)
    compiled = _run(True, masking)
    assert compiled[1] == eager[1] and len(eager[1]) == 3 and all(c > 0 for c in eager[1])  # counted every step
    for a, b in zip(eager[0], compiled[0]):
        assert torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    assert all(torch.equal(a, b) for a, b in zip(eager[2], compiled[2]))
    assert torch.allclose(eager[3], compiled[3], atol=1e-5)  # the masks added after compilation act
    for a, b, keep in zip(eager[4], compiled[4], compiled[5].masks):
        assert torch.count_nonzero(b[~keep]) == 0  # exact mask after fix_masks(), compiled too
        assert torch.allclose(a, b, rtol=1e-3, atol=1e-6)


def _same_state_outputs(model, net, x):
    """Train-mode outputs (autograd on) of the compiled and the eager forward from the same state."""
    model.train()
    compiled = net(x).detach().clone()
    functional.reset_net(model)
    eager = model(x).detach().clone()
    functional.reset_net(model)
    return compiled, eager


@pytest.mark.parametrize("masking", ["reset", "soft", "mask"])
def test_masks_set_after_compilation_act_in_the_compiled_training(masking):
    """Regression: masks first set after the first compiled call, and the switch to exact masks in
    fix_masks(), were ignored by the compiled forward (torch.compile does not guard on module
    hooks), so masked channels trained on and the finalized model was not the one trained. The
    runner's flow: compiled before any mask exists, an uneven last batch, eager evaluation between
    epochs, masks first set late (as a one-shot update), then fixed."""
    torch._dynamo.reset()  # a fresh cache: earlier tests' models must not use up the recompile limit
    torch.manual_seed(0)
    model = digits_cnn(T=2, width=0.25)
    g = torch.Generator().manual_seed(1)
    X, Y = torch.rand(40, 1, 8, 8, generator=g) * 3, torch.randint(0, 10, (40,), generator=g)
    pruner = SCAPruner(model, X[:2], ignored_layers=[model.classifier], masking=masking, pruning_ratio=0.5,
                       regrow_ratio=0.0, global_pruning=False)
    net = torch.compile(model, dynamic=False)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)

    def epoch():
        model.train()
        for x, y in ((X[:16], Y[:16]), (X[16:32], Y[16:32]), (X[32:], Y[32:])):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            functional.reset_net(model)
        with torch.no_grad():
            model.eval()
            model(X)
            functional.reset_net(model)

    epoch()
    epoch()
    pruner.update_masks()
    assert any(not bool(k.all()) for k in pruner.masks)
    epoch()  # masked channels' parameters move (straight-through gradient): the forward mask matters
    compiled, eager = _same_state_outputs(model, net, X[:16])
    assert torch.allclose(compiled, eager, atol=1e-5)
    pruner.fix_masks()
    epoch()
    compiled, eager = _same_state_outputs(model, net, X[:16])
    assert torch.allclose(compiled, eager, atol=1e-5)
    model.train()
    model.zero_grad()
    F.cross_entropy(net(X[:16]), Y[:16]).backward()
    functional.reset_net(model)
    checked = 0
    for entries, keep in zip(pruner._channel_params, pruner.masks):
        for module, name, _, local, root, role in entries:
            if role == "bn":  # exact masks after fix_masks(): no gradient reaches a masked channel
                masked = [i for i, r in zip(local, root) if not keep[r]]
                grad = getattr(module, name).grad
                assert masked and torch.count_nonzero(grad[masked]) == 0, (name, masking)
                checked += 1
    assert checked > 0

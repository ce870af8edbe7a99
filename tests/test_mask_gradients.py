"""The channel masks as one ``StraightThroughMask`` (issue 14 item 1) compute the same values and
gradients as the formula they replace, ``y * mask + (y - y.detach()) * ((1 - mask) * through)``:
straight-through and exact, eager and under ``torch.compile``, also after the masks and the
straight-through switch change in place behind a compiled graph."""
import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from spikingjelly.activation_based import functional

from sca_plugin.masking import ChannelMasker, StraightThroughMask, out_channels
from sca_plugin.models import digits_cnn


class OldFormulaMasker(ChannelMasker):
    """The hook as it was before: four tensor-sized ops forward, more backward (the reference)."""

    def __init__(self, straight_through: bool = True) -> None:
        super().__init__(straight_through)
        self.through = torch.tensor(1.0 if straight_through else 0.0)

    @property
    def straight_through(self) -> bool:
        return self._straight_through

    @straight_through.setter
    def straight_through(self, value: bool) -> None:
        ChannelMasker.straight_through.fset(self, value)
        self.through.fill_(1.0 if value else 0.0)

    def _hook(self, module, args, output):
        keep = self.masks.get(module)
        if keep is None:
            return None
        mask = self.channel_view(module, output, keep)
        through = self.through.to(device=output.device, dtype=output.dtype)
        return output * mask + (output - output.detach()) * ((1.0 - mask) * through)


def _masked_layers(model):
    """Every BatchNorm, the classifier (a Linear: channel dim last) and the first conv (a conv
    output masked before its BatchNorm); the other convs stay unmasked, as SCA leaves a conv that
    feeds only its BatchNorm, so that their BatchNorms' scale gradients stay informative."""
    return [model.features[0]] + [m for m in model.modules() if isinstance(m, (nn.BatchNorm2d, nn.Linear))]


def _keeps(model, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(out_channels(m), generator=g) < 0.5 for m in _masked_layers(model)]


def _pair(straight_through: bool, compiled: bool):
    """The same model twice, one with the new masker, one with the old formula, the same masks."""
    torch.manual_seed(0)
    base = digits_cnn(T=2, width=0.5)
    models, maskers = [], []
    for cls in (ChannelMasker, OldFormulaMasker):
        model = copy.deepcopy(base).train()
        masker = cls(straight_through)
        for m, keep in zip(_masked_layers(model), _keeps(model, 0)):
            masker.set_mask(m, keep)
        models.append(model)
        maskers.append(masker)
    nets = [torch.compile(m, dynamic=False) if compiled else m for m in models]
    return models, nets, maskers


def _step(model, net, x, y):
    """Output and parameter gradients of one forward/backward from a fresh neuron state."""
    model.zero_grad(set_to_none=True)
    functional.reset_net(model)
    out = net(x)
    F.cross_entropy(out.mean(0) if out.dim() == 3 else out, y).backward()
    functional.reset_net(model)
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
    return out.detach().clone(), grads


def _assert_same(new, old):
    (out_new, g_new), (out_old, g_old) = new, old
    assert torch.equal(out_new, out_old)
    assert g_new.keys() == g_old.keys() and len(g_new) > 0
    for name in g_new:
        assert torch.equal(g_new[name], g_old[name]), name


def _data():
    g = torch.Generator().manual_seed(1)
    return torch.rand(16, 1, 8, 8, generator=g) * 2, torch.randint(0, 10, (16,), generator=g)


@pytest.mark.parametrize("compiled", [False, True], ids=["eager", "compiled"])
@pytest.mark.parametrize("straight_through", [True, False], ids=["straight-through", "exact"])
def test_new_masks_match_the_old_formula(straight_through, compiled):
    (m_new, m_old), (n_new, n_old), _ = _pair(straight_through, compiled)
    x, y = _data()
    new, old = _step(m_new, n_new, x, y), _step(m_old, n_old, x, y)
    _assert_same(new, old)
    # the masks act: a masked BatchNorm channel gets a scale gradient only straight-through
    bn_new = m_new.features[4]  # fed by an unmasked conv
    dropped = ~_keeps(m_new, 0)[_masked_layers(m_new).index(bn_new)]
    assert dropped.any()
    assert bool(bn_new.weight.grad[dropped].abs().sum() > 0) == straight_through


def test_in_place_changes_act_behind_a_compiled_graph_as_with_the_old_formula():
    """Compiled once with straight-through masks, then the masks change (set_mask, in place) and
    the gradient becomes exact (the switch, in place): both maskers still agree bit for bit, and
    with the eager forward (Inductor's kernels round differently from eager mode)."""
    (m_new, m_old), (n_new, n_old), maskers = _pair(True, True)
    x, y = _data()
    _assert_same(_step(m_new, n_new, x, y), _step(m_old, n_old, x, y))
    for masker, model in zip(maskers, (m_new, m_old)):
        for m, keep in zip(_masked_layers(model), _keeps(model, 1)):
            masker.set_mask(m, keep)
        masker.straight_through = False
    compiled = _step(m_new, n_new, x, y)
    _assert_same(compiled, _step(m_old, n_old, x, y))
    eager_out, eager_grads = _step(m_new, m_new, x, y)  # the eager forward: the same to float rounding
    assert torch.allclose(compiled[0], eager_out, atol=1e-5)
    for name, g in eager_grads.items():
        assert torch.allclose(compiled[1][name], g, rtol=1e-3, atol=1e-6), name
    for masker in maskers:
        masker.straight_through = True
    _assert_same(_step(m_new, n_new, x, y), _step(m_old, n_old, x, y))


def test_gradient_factor_follows_mask_and_switch():
    masker = ChannelMasker(straight_through=True)
    layer = nn.Conv2d(1, 4, 1)
    keep = torch.tensor([True, False, True, False])
    masker.set_mask(layer, keep)
    assert torch.equal(masker._grad_scales[layer], torch.ones(4))
    masker.straight_through = False
    assert torch.equal(masker._grad_scales[layer], keep.float())
    masker.set_mask(layer, torch.tensor([False, True, True, True]))
    assert torch.equal(masker._grad_scales[layer], torch.tensor([0.0, 1.0, 1.0, 1.0]))
    masker.remove()
    assert not masker._grad_scales and not masker.masks


def test_straight_through_mask_without_a_factor_passes_the_gradient_unchanged():
    """NNI's apply method calls it with two arguments: the gradient is passed through as is."""
    y = torch.randn(3, 4, requires_grad=True)
    mask = torch.tensor([1.0, 0.0, 1.0, 0.0])
    out = StraightThroughMask.apply(y, mask)
    assert torch.equal(out, y.detach() * mask)
    g = torch.randn(3, 4)
    out.backward(g)
    assert torch.equal(y.grad, g)

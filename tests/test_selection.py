"""The prune-by-activity / regrow-by-gradient rule on hand-made scores."""
import pytest
import torch

from sca_plugin.selection import channel_floor, select_channels
from sca_plugin.schedule import sparsity_at


def rand_groups(sizes, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.rand(n, generator=g) for n in sizes]


def masked(sel):
    return [set(torch.nonzero(~k).flatten().tolist()) for k in sel.keep]


def test_without_regrowth_global_masks_exactly_the_lowest_scores():
    scores = rand_groups([8, 16, 8])
    sel = select_channels(scores, None, None, sparsity=0.5, regrow_ratio=0.0)
    flat = torch.cat(scores)
    lowest = set(torch.argsort(flat)[:16].tolist())
    got = set()
    for off, m in zip([0, 8, 24], masked(sel)):
        got |= {off + i for i in m}
    assert got == lowest


def test_without_regrowth_per_layer_masks_the_lowest_of_each_group():
    scores = rand_groups([8, 10])
    sel = select_channels(scores, None, None, sparsity=0.5, regrow_ratio=0.0, global_ranking=False)
    for s, m in zip(scores, masked(sel)):
        assert m == set(torch.argsort(s)[: round(0.5 * len(s))].tolist())


def test_regrowth_picks_masked_channels_with_largest_gradient():
    scores = [torch.arange(10.0)]                      # channel i has score i
    growth = [torch.tensor([9.0, 1, 8, 2, 7, 0, 0, 0, 0, 0])]
    sel = select_channels(scores, growth, None, sparsity=0.4, regrow_ratio=0.2)
    # keep top (1-0.4-0.2)*10 = 4 by score: 6..9; regrow 2 of 0..5 by growth: 0 and 2
    assert set(torch.nonzero(sel.keep[0]).flatten().tolist()) == {6, 7, 8, 9, 0, 2}
    assert set(sel.regrown[0].tolist()) == {0, 2}


@pytest.mark.parametrize("s, q", [(0.3, 0.0), (0.5, 0.1), (0.8, 0.2), (0.25, 0.25)])
def test_target_sparsity_is_met_within_rounding(s, q):
    sizes = [7, 13, 29, 64]
    scores, growth = rand_groups(sizes, 1), rand_groups(sizes, 2)
    sel = select_channels(scores, growth, None, s, q)
    n = sum(sizes)
    assert sum(int((~k).sum()) for k in sel.keep) == round(s * n)
    prev = sel.keep
    for step in range(3):  # later updates keep the same sparsity
        sel = select_channels(rand_groups(sizes, 10 + step), rand_groups(sizes, 20 + step), prev, s, q)
        assert sum(int((~k).sum()) for k in sel.keep) == round(s * n)
        prev = sel.keep


def test_incremental_exchanges_channels_rebuild_may_regrow_what_it_just_pruned():
    prev = [torch.tensor([True] * 6 + [False] * 4)]
    scores = [torch.tensor([0.0, 5, 6, 7, 8, 9, 0, 0, 0, 0])]  # channel 0 is the weakest kept
    growth = [torch.tensor([100.0, 0, 0, 0, 0, 0, 1, 2, 3, 4])]  # and has the largest gradient
    inc = select_channels(scores, growth, prev, 0.4, 0.1, mode="incremental")
    assert inc.pruned[0].tolist() == [0] and inc.regrown[0].tolist() == [9]
    reb = select_channels(scores, growth, prev, 0.4, 0.1, mode="rebuild")
    assert bool(reb.keep[0][0]) and reb.regrown[0].tolist() == [0]


def test_masked_channels_stay_masked_without_regrowth_in_incremental_mode():
    prev = [torch.tensor([False, False, True, True, True, True])]
    scores = [torch.tensor([9.0, 9.0, 1.0, 2.0, 3.0, 4.0])]  # stale high scores of masked channels
    sel = select_channels(scores, None, prev, 1 / 3, 0.0, mode="incremental")
    assert sel.keep[0].tolist() == [False, False, True, True, True, True]


def test_never_prunes_a_group_below_its_floor():
    scores = [torch.full((4,), 0.01), torch.rand(60)]
    sel = select_channels(scores, None, None, 0.9, 0.0, min_channels=2)
    assert int(sel.keep[0].sum()) == 2
    sel = select_channels(scores, None, None, 0.95, 0.0, global_ranking=False, min_channels=3)
    assert [int(k.sum()) for k in sel.keep] == [3, 3]


def test_round_to_is_respected():
    sizes = [16, 32, 24]
    sel = select_channels(rand_groups(sizes), rand_groups(sizes, 5), None, 0.55, 0.1, round_to=4)
    for k, n in zip(sel.keep, sizes):
        kept = int(k.sum())
        assert kept % 4 == 0 and 4 <= kept <= n
    assert channel_floor(3, 1, 4) == 3 and channel_floor(16, 5, 4) == 8


def test_ties_are_broken_by_index():
    """Equal scores: the lower channel index is kept (documented in ``_order``), within a group and
    across groups in the global ranking (lower group first)."""
    a = select_channels([torch.zeros(10)], None, None, 0.5, 0.0)
    assert a.keep[0].tolist() == [True] * 5 + [False] * 5
    scores = [torch.tensor([1.0, 2.0, 2.0, 1.0]), torch.tensor([2.0, 1.0, 1.0, 2.0])]
    b = select_channels(scores, None, None, 0.5, 0.0, global_ranking=True, max_pruning_ratio=1.0, min_channels=0)
    # four channels scored 2.0 tie for the four places
    assert b.keep[0].tolist() == [False, True, True, False] and b.keep[1].tolist() == [True, False, False, True]
    c = select_channels([torch.tensor([1.0, 1.0, 1.0, 0.5]), torch.tensor([1.0, 1.0, 0.5, 0.5])], None, None,
                        0.5, 0.0, global_ranking=True, max_pruning_ratio=1.0, min_channels=0)
    # five channels tie at 1.0 for four places: the one of the highest index (group 1, channel 1) loses
    assert c.keep[0].tolist() == [True, True, True, False] and c.keep[1].tolist() == [True, False, False, False]


def test_schedules():
    assert [sparsity_at(i, 0.8) for i in range(3)] == [0.8, 0.8, 0.8]
    assert [round(sparsity_at(i, 0.8, "linear", 4), 6) for i in range(5)] == [0.2, 0.4, 0.6, 0.8, 0.8]
    cubic = [sparsity_at(i, 0.8, "cubic", 4) for i in range(5)]
    assert cubic[0] == pytest.approx(0.8 * (1 - 0.75 ** 3)) and cubic[3] == cubic[4] == pytest.approx(0.8)
    assert all(a < b for a, b in zip(cubic[:3], cubic[1:4]))
    with pytest.raises(ValueError, match="constant"):
        sparsity_at(0, 0.5, "exp")


@pytest.mark.parametrize("relative_to, expected", [("all", round(0.1 * 120)), ("kept", round(0.1 * 0.2 * 120))])
def test_regrown_count_is_a_fraction_of_all_or_of_the_kept_channels(relative_to, expected):
    from sca_plugin.selection import RankingScope, select_in_scopes

    sizes = [40, 80]
    scores, growth = rand_groups(sizes, 3), rand_groups(sizes, 4)
    scope = RankingScope((0, 1), 0.8)
    sel = select_in_scopes(scores, growth, None, [scope], 0.1, regrow_relative_to=relative_to)
    assert sum(len(r) for r in sel.regrown) == expected
    assert sum(int((~k).sum()) for k in sel.keep) == round(0.8 * 120)  # the sparsity does not depend on it


def test_regrow_fraction_of_the_kept_channels_follows_the_sparsity():
    from sca_plugin.selection import regrow_fraction

    assert regrow_fraction(0.1, 0.8, "all") == 0.1
    assert regrow_fraction(0.2, 0.5, "kept") == pytest.approx(0.1)  # the paper's 0.1 of all at s = 0.5
    assert regrow_fraction(0.2, 0.9, "kept") == pytest.approx(0.02)
    with pytest.raises(ValueError, match="regrow_relative_to must be one of"):
        regrow_fraction(0.1, 0.5, "masked")

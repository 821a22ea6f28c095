"""The allocation step: exact per-layer counts (global, uniform, ERK, proportional, scheduled) and top-k."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import autosparse
from autosparse import UserError, prunable_parameters
from autosparse.layer_allocation import (SHAPE_ALLOCATIONS, DensityError, counts_from_densities, erk_densities,
                                         global_counts, keep_count, step_counts, top_k_within_layers)
from autosparse.methods import check_allocation_name


def select_top_k(scores, density, allocation="global"):
    """Global or uniform top-k in one call, as the allocation step does it."""
    keep = keep_count(sum(s.numel() for s in scores.values()), density)
    if allocation == "global":
        counts = global_counts(scores, keep)
    else:
        check_allocation_name(allocation)
        counts = SHAPE_ALLOCATIONS.get(allocation).counts({n: s.shape for n, s in scores.items()}, density)
    return top_k_within_layers(scores, counts)


# ---------------------------------------------------------------- global and uniform top-k


SIZES = {"a": (7,), "b": (13,), "c": (1,), "d": (29,)}  # total 50


def random_scores(seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=generator) for n, s in SIZES.items()}


@pytest.mark.parametrize("scope", ["global", "uniform"])
def test_select_top_k_keeps_exactly_round_density_times_total(scope):
    scores = random_scores()
    for density in [0.02, 0.05, 0.1, 0.13, 0.25, 0.333, 0.5, 0.51, 0.77, 0.9, 0.97, 0.99]:
        mask = select_top_k(scores, density, scope)
        assert mask.num_total() == 50
        assert mask.num_kept() == round(density * 50), density
        assert {n: tuple(t.shape) for n, t in mask.items()} == SIZES


def test_select_top_k_hand_counts():
    scores = {"x": torch.arange(1000.0)}
    assert select_top_k(scores, 0.333).num_kept() == 333
    assert select_top_k(scores, 0.05).num_kept() == 50
    # global keeps the highest scores
    assert torch.equal(select_top_k(scores, 0.05)["x"], torch.arange(1000) >= 950)


def test_select_top_k_global_versus_uniform():
    scores = {"high": torch.tensor([10.0, 11.0, 12.0, 13.0]), "low": torch.tensor([4.0, 1.0, 3.0, 2.0])}
    global_mask = select_top_k(scores, 0.5, "global")
    assert global_mask["high"].tolist() == [True, True, True, True]
    assert global_mask["low"].tolist() == [False, False, False, False]
    assert global_mask.collapsed_layers() == ["low"]
    uniform = select_top_k(scores, 0.5, "uniform")
    assert uniform["high"].tolist() == [False, False, True, True]
    assert uniform["low"].tolist() == [True, False, True, False]
    assert uniform.collapsed_layers() == []


def test_select_top_k_uniform_gives_every_layer_the_same_density_within_one_weight():
    scores = random_scores(3)
    for density in [0.05, 0.1, 0.3, 0.5, 0.7, 0.95]:
        mask = select_top_k(scores, density, "uniform")
        keep = round(density * 50)
        assert mask.num_kept() == keep
        for name, kept in mask.items():
            assert abs(int(kept.sum()) - keep * kept.numel() / 50) < 1, (density, name)
            # within the layer, the kept weights are that layer's highest scores
            if kept.any() and not kept.all():
                assert scores[name][kept].min() > scores[name][~kept].max()


def test_select_top_k_uniform_remainder_goes_to_largest_fraction():
    # sizes 3 and 7, density 0.5 -> keep 5; exact shares 1.5 and 3.5: tie on the fraction, first layer wins
    scores = {"a": torch.ones(3), "b": torch.ones(7)}
    mask = select_top_k(scores, 0.5, "uniform")
    assert (int(mask["a"].sum()), int(mask["b"].sum())) == (2, 3)
    # sizes 2 and 8, density 0.35 -> keep round(3.5) = 4 (banker's rounding); shares 0.8 and 3.2
    mask = select_top_k({"a": torch.ones(2), "b": torch.ones(8)}, 0.35, "uniform")
    assert (int(mask["a"].sum()), int(mask["b"].sum())) == (1, 3)
    # the same sizes in the other order: the remainder goes to the later layer with the larger fraction
    mask = select_top_k({"a": torch.ones(8), "b": torch.ones(2)}, 0.35, "uniform")
    assert (int(mask["a"].sum()), int(mask["b"].sum())) == (3, 1)


def test_select_top_k_ties_keep_first_positions():
    scores = {"a": torch.ones(2, 2), "b": torch.ones(4)}
    mask = select_top_k(scores, 0.25, "global")  # keep 2 of 8
    assert mask["a"].flatten().tolist() == [True, True, False, False]
    assert not mask["b"].any()
    mask = select_top_k(scores, 0.25, "uniform")
    assert mask["a"].flatten().tolist() == [True, False, False, False]
    assert mask["b"].tolist() == [True, False, False, False]
    # ties among equal non-maximal scores also break by position
    mask = select_top_k({"x": torch.tensor([1.0, 5.0, 1.0, 1.0, 1.0])}, 0.6)
    assert mask["x"].tolist() == [True, True, True, False, False]


def test_select_top_k_nan_ranks_lowest():
    scores = {"x": torch.tensor([float("nan"), 1.0, 2.0, float("nan"), -5.0])}
    assert select_top_k(scores, 0.6)["x"].tolist() == [False, True, True, False, True]
    assert select_top_k(scores, 0.4)["x"].tolist() == [False, True, True, False, False]
    scores = {"x": torch.tensor([float("nan"), -1e30, float("nan")])}
    assert select_top_k(scores, 0.34)["x"].tolist() == [False, True, False]


def test_select_top_k_does_not_modify_scores_and_keeps_shapes():
    scores = {"w": torch.tensor([[3.0, float("nan")], [1.0, 2.0]])}
    before = scores["w"].clone()
    mask = select_top_k(scores, 0.5)
    assert torch.equal(torch.isnan(scores["w"]), torch.isnan(before))
    assert mask["w"].tolist() == [[True, False], [False, True]]


@pytest.mark.parametrize("density", [0, 1, 1.0, -0.1, 1.5, float("nan"), True])
def test_select_top_k_rejects_bad_density(density):
    with pytest.raises(DensityError, match="density"):
        select_top_k({"x": torch.ones(10)}, density)


def test_select_top_k_rejects_unknown_allocation_and_empty_selection():
    with pytest.raises(UserError, match="'rowwise'"):
        select_top_k({"x": torch.ones(10)}, 0.5, "rowwise")
    with pytest.raises(DensityError, match="keeps no weight"):
        select_top_k({"x": torch.ones(10)}, 0.01)


# ---------------------------------------------------------------- ERK as an allocation


def test_erk_layer_densities_hand_values():
    # raw a = 30/200 = 0.15, raw b = 15/50 = 0.3; scale = 0.3 * 250 / (0.15*200 + 0.3*50) = 5/3
    densities = erk_densities({"a": torch.Size([10, 20]), "b": torch.Size([5, 10])}, 0.3)
    assert densities == pytest.approx({"a": 0.25, "b": 0.5})
    # capping: "small" would exceed 1 and becomes dense; "big" takes the rest of the budget
    densities = erk_densities({"big": torch.Size([100, 100]), "small": torch.Size([2, 2])}, 0.5)
    assert densities == pytest.approx({"big": 0.4998, "small": 1.0})


def test_erk_layer_densities_follow_the_formula_for_conv_and_linear_shapes():
    shapes = {"conv1": torch.Size([16, 3, 3, 3]), "conv2": torch.Size([32, 16, 3, 3]), "fc": torch.Size([10, 512])}
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    for density in (0.05, 0.1, 0.3, 0.6):
        densities = erk_densities(shapes, density)
        assert sum(densities[n] * sizes[n] for n in shapes) == pytest.approx(density * sum(sizes.values()))
        assert all(0 < d <= 1 for d in densities.values())
        free = [n for n in shapes if densities[n] < 1]
        ratios = [densities[n] / (sum(shapes[n]) / sizes[n]) for n in free]
        assert ratios == pytest.approx([ratios[0]] * len(free))  # proportional to sum(shape)/prod(shape)
        for n in shapes:
            if densities[n] == 1.0:  # capped layers would otherwise have exceeded 1
                assert ratios[0] * sum(shapes[n]) / sizes[n] > 1
    # raw = sum/prod: conv1 25/432, conv2 54/4608, fc 522/5120. At 0.3 nothing is capped: scale = 3048 / 601.
    assert erk_densities(shapes, 0.3) == pytest.approx(
        {"conv1": 25 / 432 * 3048 / 601, "conv2": 54 / 4608 * 3048 / 601, "fc": 522 / 5120 * 3048 / 601})
    # At 0.6, fc would get 522/5120 * 6096/601 > 1: it is capped and the others share 6096 - 5120 = 976.
    assert erk_densities(shapes, 0.6) == pytest.approx(
        {"conv1": 25 / 432 * 976 / 79, "conv2": 54 / 4608 * 976 / 79, "fc": 1.0})


def test_erk_mask_per_layer_densities_match():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 40), nn.ReLU(), nn.Linear(40, 5))
    params = prunable_parameters(net)
    for sparsity in (0.5, 0.8, 0.95):
        expected = erk_densities({n: p.shape for n, p in params.items()}, 1 - sparsity)
        for seed in (0, 1):
            mask = autosparse.prune(net, sparsity, "random", allocation="erk", seed=seed)
            assert mask.num_kept() == round((1 - sparsity) * 2000)
            for name, kept in mask.items():
                assert abs(int(kept.sum()) - expected[name] * kept.numel()) < 1, (sparsity, name)
    a = autosparse.prune(net, 0.8, "random", allocation="erk", seed=0)
    b = autosparse.prune(net, 0.8, "random", allocation="erk", seed=1)
    assert any(not torch.equal(a[n], b[n]) for n in a)  # positions are random per seed


# ---------------------------------------------------------------- proportional counts and schedules


def test_counts_from_densities_hand_case_with_a_capped_layer():
    # sizes 10, 10, 80; weights 1.0, 0.5, 0.05 per weight; keep 20
    # uncapped shares: 20 * (10, 5, 4) / 19 -> (10.53, 5.26, 4.21): layer a is capped at 10, the other 10
    # go to b and c in the ratio 5 : 4 -> 5.56 and 4.44 -> floors 5 and 4, remainder to b (larger fraction)
    counts = counts_from_densities({"a": 10, "b": 10, "c": 80}, {"a": 1.0, "b": 0.5, "c": 0.05}, 20)
    assert counts == {"a": 10, "b": 6, "c": 4}


def test_counts_from_densities_sum_caps_and_floor():
    generator = torch.Generator().manual_seed(0)
    for case in range(200):
        n = int(torch.randint(1, 6, (1,), generator=generator))
        sizes = {f"l{i}": int(torch.randint(1, 60, (1,), generator=generator)) for i in range(n)}
        weights = {k: float(torch.rand(1, generator=generator)) ** 3 for k in sizes}
        keep = int(torch.randint(1, sum(sizes.values()) + 1, (1,), generator=generator))
        counts = counts_from_densities(sizes, weights, keep)
        assert sum(counts.values()) == keep, case
        assert all(0 <= counts[k] <= sizes[k] for k in sizes), case
        if keep >= n:
            assert all(c >= 1 for c in counts.values()), case  # no layer collapses when the budget allows


def test_step_counts_follow_each_layers_exponential_schedule_and_never_grow():
    sizes, final = {"a": 1000, "b": 100, "c": 10}, {"a": 10, "b": 50, "c": 1}
    previous = dict(sizes)
    for step in range(1, 11):
        counts = step_counts(sizes, final, step, 10)
        for name in sizes:
            assert final[name] <= counts[name] <= previous[name]
            assert counts[name] == max(final[name], round(sizes[name] * (final[name] / sizes[name]) ** (step / 10)))
        previous = counts
    assert step_counts(sizes, final, 10, 10) == final
    assert step_counts(sizes, final, 5, 10)["a"] == 100  # 1000 * 0.01 ** 0.5

"""Iterated pruning on the masked network: schedules, exactness, no revival, method strings, and an
oracle test of Iterative SNIP (de Jorge et al. 2021) against an independent re-implementation."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autosparse
from autosparse import UserError
from autosparse.layer_allocation import counts_of, global_counts, keep_count, step_counts, top_k_within_layers
from autosparse.pruning import step_batches, step_densities


def small_net(seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(12, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))


def data(seed: int = 0, size: int = 32):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 12, generator=generator), torch.randint(0, 4, (size,), generator=generator)


TOTAL = 12 * 16 + 16 * 16 + 16 * 4  # 512 prunable weights


def steps_of(model, sparsity, method, steps, **kwargs) -> list:
    masks = []
    autosparse.prune(model, sparsity, method, data(), steps=steps, on_step=lambda step, mask: masks.append(mask),
                     **kwargs)
    return masks


@pytest.mark.parametrize("method", ["snip", "grasp", "magnitude", "random"])
def test_one_step_equals_the_one_shot_criterion(method):
    model = small_net()
    scores = autosparse.score(model, method, data(), seed=3)
    keep = keep_count(TOTAL, 0.1)
    expected = top_k_within_layers(scores, global_counts(scores, keep))
    mask = autosparse.prune(model, 0.9, method, data(), steps=1, seed=3)
    assert all(torch.equal(mask[n], expected[n]) for n in mask)


@pytest.mark.parametrize("allocation", ["global", "uniform", "erk", "synflow"])
def test_density_after_each_step_follows_the_schedule_and_ends_exact(allocation):
    model, steps, density = small_net(), 7, 0.03
    masks = steps_of(model, 1 - density, "snip", steps, allocation=allocation)
    assert len(masks) == steps
    final = counts_of(masks[-1])
    assert masks[-1].num_kept() == round(density * TOTAL)
    sizes = {n: m.numel() for n, m in masks[-1].items()}
    for step, (mask, scheduled) in enumerate(zip(masks, step_densities(density, steps)), start=1):
        if allocation == "global":
            assert mask.num_kept() == max(round(density * TOTAL), round(scheduled * TOTAL)), step
        else:
            assert counts_of(mask) == step_counts(sizes, final, step, steps), step


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow"])
def test_a_pruned_weight_is_never_revived(method):
    masks = steps_of(small_net(1), 0.97, method, 10)
    for before, after in zip(masks, masks[1:]):
        for name in before:
            assert not bool((after[name] & ~before[name]).any()), name


def test_kept_weights_scored_nan_still_outrank_pruned_ones():
    """A scorer returning NaN for some kept weights must not make top-k pick a pruned weight instead."""
    calls = []

    def nan_scorer(context):
        calls.append(context.mask)
        return {n: torch.full(p.shape, float("nan")) for n, p in autosparse.prunable_parameters(context.model).items()}

    masks = steps_of(small_net(), 0.9, nan_scorer, 5)
    for before, after in zip(masks, masks[1:]):
        assert all(not bool((after[n] & ~before[n]).any()) for n in before)
    assert calls[0] is None or calls[0].density() == 1.0


def independent_iterative_snip(model: nn.Sequential, batch, density: float, steps: int) -> dict:
    """Iterative SNIP written from the paper alone: at step s the kept set is the global top
    round(d^(s/k) * N) of |w * dL/dw| evaluated on the network with the pruned weights set to zero,
    among the weights still kept; ties never occur with continuous scores."""
    weights = {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith("weight")}
    biases = {name: p.detach().clone() for name, p in model.named_parameters() if name.endswith("bias")}
    names = list(weights)
    kept = {n: torch.ones_like(w, dtype=torch.bool) for n, w in weights.items()}
    total = sum(w.numel() for w in weights.values())
    x, y = batch
    for step in range(1, steps + 1):
        live = {n: (weights[n] * kept[n]).requires_grad_(True) for n in names}
        h = x
        for index, name in enumerate(names):
            h = F.linear(h, live[name], biases[name.replace("weight", "bias")])
            if index < len(names) - 1:
                h = torch.relu(h)
        grads = torch.autograd.grad(F.cross_entropy(h, y), [live[n] for n in names])
        saliency = torch.cat([torch.where(kept[n], (weights[n] * kept[n] * g).abs(), torch.tensor(-math.inf)).flatten()
                              for n, g in zip(names, grads)])
        keep = round(density * total) if step == steps else max(round(density * total),
                                                                round(density ** (step / steps) * total))
        chosen = torch.zeros(total, dtype=torch.bool)
        chosen[torch.topk(saliency, keep).indices] = True
        kept = dict(zip(names, (piece.view(weights[n].shape) for n, piece in
                                zip(names, chosen.split([weights[n].numel() for n in names])))))
    return kept


@pytest.mark.parametrize("steps", [1, 5, 20])
def test_iterative_snip_matches_an_independent_implementation(steps):
    model, batch = small_net(2), data(4)
    expected = independent_iterative_snip(model, batch, 0.05, steps)
    mask = autosparse.prune(model, 0.95, "snip", batch, steps=steps)
    assert all(torch.equal(mask[n], expected[n]) for n in mask)
    if steps > 1:
        one_shot = autosparse.prune(model, 0.95, "snip", batch)
        assert any(not torch.equal(mask[n], one_shot[n]) for n in mask)  # iterating changes the mask


def test_invert_keeps_the_lowest_scores():
    model = small_net()
    scores = autosparse.score(model, "magnitude")
    inverted = autosparse.prune(model, 0.75, "magnitude", invert=True)
    flat = torch.cat([s.flatten() for s in scores.values()])
    kept = torch.cat([inverted[n].flatten() for n in scores])
    assert flat[kept].max() < flat[~kept].min()


def test_criterion_allocation_takes_that_criterions_layer_counts():
    model = small_net()
    synflow = autosparse.prune(model, 0.95, "synflow", data())
    mask = autosparse.prune(model, 0.95, "magnitude", data(), allocation="synflow")
    assert counts_of(mask) == counts_of(synflow)
    assert any(not torch.equal(mask[n], synflow[n]) for n in mask)  # same counts, magnitude's choice


def test_a_function_can_be_the_allocation():
    def first_layer_heavy(shapes, density):
        return {"0.weight": 40, "2.weight": 10, "4.weight": 1}

    mask = autosparse.prune(small_net(), 1 - 51 / TOTAL, "snip", data(), allocation=first_layer_heavy)
    assert counts_of(mask) == {"0.weight": 40, "2.weight": 10, "4.weight": 1}


def test_learned_allocation_needs_an_allocator():
    with pytest.raises(UserError, match="needs a fitted allocator"):
        autosparse.prune(small_net(), 0.9, "snip", data(), allocation="learned")


def test_prune_rejects_zero_steps():
    with pytest.raises(UserError, match="steps"):
        autosparse.prune(small_net(), 0.9, "snip", data(), steps=0)


def test_iter_snip_is_snip_in_twenty_steps():
    model, batch = small_net(3), data(1)
    registered = autosparse.prune(model, 0.97, "iter_snip", batch)
    spelled_out = autosparse.prune(model, 0.97, "snip", batch, steps=20)
    assert all(torch.equal(registered[n], spelled_out[n]) for n in registered)


def test_step_batches_cycle_through_slices_of_the_scoring_data():
    inputs, targets = torch.arange(10.0).view(10, 1), torch.arange(10)
    halves = [(inputs[:6], targets[:6]), (inputs[6:], targets[6:])]
    seen = [step_batches(halves, 4, step)[0][1].tolist() for step in (1, 2, 3, 4)]
    assert seen == [[0, 1, 2, 3], [4, 5, 6, 7], [0, 1, 2, 3], [4, 5, 6, 7]]  # the last partial slice is unused
    assert step_batches(halves, None, 3) is halves
    assert step_batches(halves, 10, 2) is halves
    assert step_batches(None, 4, 1) is None


def test_each_step_scores_on_its_own_slice():
    seen = []

    def recording_snip(context):
        seen.append(context.batches[0][0])
        return autosparse.CRITERIA.get("snip")(context)

    inputs, targets = data(size=32)
    autosparse.prune(small_net(), 0.9, recording_snip, (inputs, targets), steps=5, step_batch_size=8)
    assert [len(batch) for batch in seen] == [8] * 5
    for step, batch in enumerate(seen):
        assert torch.equal(batch, inputs[step % 4 * 8:step % 4 * 8 + 8]), step


def test_one_step_on_a_slice_is_the_criterion_on_that_slice():
    inputs, targets = data(size=32)
    sliced = autosparse.prune(small_net(), 0.9, "snip", (inputs, targets), step_batch_size=8)
    expected = autosparse.prune(small_net(), 0.9, "snip", (inputs[:8], targets[:8]))
    whole = autosparse.prune(small_net(), 0.9, "snip", (inputs, targets))
    assert all(torch.equal(sliced[n], expected[n]) for n in sliced)
    assert any(not torch.equal(sliced[n], whole[n]) for n in sliced)


def test_prune_rejects_an_empty_step_batch():
    with pytest.raises(UserError, match="step_batch_size"):
        autosparse.prune(small_net(), 0.9, "snip", data(), step_batch_size=0)

"""The learned layer allocation: training examples from IRP chains, exact counts, held-out scoring, the file."""
from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import autosparse
from autosparse import UserError
from autosparse.config import AllocatorConfig
from autosparse.learned_allocation import (CONTEXT, Allocator, AllocatorFormatError, examples, fit_allocator,
                                           layer_context, layer_densities_by_round, load_allocator)
from autosparse.survival import SurvivalDataset

SHAPES = {"a.weight": [20, 10], "b.weight": [30, 20], "c.weight": [5, 30]}  # 200 + 600 + 150 = 950 weights
ROUNDS, FRACTION = 8, 0.4


def chain(seed: int, shapes=SHAPES, keep_small: float = 4.0) -> SurvivalDataset:
    """A synthetic IRP chain whose pruning favours small layers: a weight's survival grows with a random
    |normal| score scaled up in layers with fewer weights (global magnitude-like), so densities differ by
    layer and no layer empties."""
    generator = torch.Generator().manual_seed(seed)
    layers = list(shapes)
    sizes = [math.prod(s) for s in shapes.values()]
    scale = torch.cat([torch.full((n,), (max(sizes) / n) ** (1 / keep_small)) for n in sizes])
    score = torch.randn(sum(sizes), generator=generator).abs() * scale
    order = torch.argsort(torch.argsort(score, descending=True))  # rank 0 = best
    survival = torch.zeros(sum(sizes), dtype=torch.int16)
    for r in range(1, ROUNDS + 1):
        survival += (order < round((1 - FRACTION) ** r * sum(sizes))).to(torch.int16)
    return SurvivalDataset(layers, torch.arange(len(layers)).repeat_interleave(torch.tensor(sizes)),
                           torch.zeros(sum(sizes), dtype=torch.int64), {}, survival,
                           {"model": "mlp", "dataset": "digits", "seed": seed, "rounds": ROUNDS,
                            "prune_fraction": FRACTION, "layer_shapes": dict(shapes)})


def test_layer_context_hand_values():
    context = layer_context(SHAPES, 0.1)
    assert context.shape == (3, len(CONTEXT))
    row = dict(zip(CONTEXT, context[2].tolist()))
    assert row["depth"] == 1.0 and row["is_last"] == 1.0 and row["is_first"] == 0.0
    assert row["log_fan_in"] == pytest.approx(math.log(30)) and row["log_fan_out"] == pytest.approx(math.log(5))
    assert row["log_layer_share"] == pytest.approx(math.log(150 / 950))
    assert row["log_density"] == pytest.approx(math.log(0.1))
    assert row["log_density*log_layer_share"] == pytest.approx(math.log(0.1) * math.log(150 / 950))


def test_layer_densities_by_round_count_survivors():
    data = chain(0)
    rounds = layer_densities_by_round(data)
    assert len(rounds) == ROUNDS
    for r, (density, layers) in enumerate(rounds, start=1):
        assert density == pytest.approx(round(0.6 ** r * 950) / 950)
        kept = sum(layers[n] * math.prod(s) for n, s in SHAPES.items())
        assert kept == pytest.approx(density * 950)


def test_examples_are_log_density_ratios_per_layer_and_round():
    data = chain(0)
    inputs, targets = examples(data)
    assert inputs.shape == (3 * ROUNDS, len(CONTEXT)) and targets.shape == (3 * ROUNDS,)
    density, layers = layer_densities_by_round(data)[0]
    assert targets[0] == pytest.approx(math.log(layers["a.weight"] / density), rel=1e-5)


def test_fit_predicts_held_out_allocation_and_counts_are_exact():
    datasets = [chain(seed) for seed in range(3)]
    allocator, metrics = fit_allocator(datasets, AllocatorConfig())
    assert set(metrics) >= {"heldout_layer_density_error_5pct", "train_layer_density_error_5pct"}
    assert metrics["heldout_layer_density_error_5pct"] < 0.3
    for density in (0.3, 0.05, 0.011):
        counts = allocator(SHAPES, density)
        assert sum(counts.values()) == round(density * 950)
        assert all(1 <= counts[n] <= math.prod(s) for n, s in SHAPES.items())
    densities = allocator.densities(SHAPES, 0.05)
    assert densities["c.weight"] > densities["b.weight"]  # the small layer keeps more, as the chains did


def test_a_single_chain_has_no_held_out_metrics():
    _, metrics = fit_allocator([chain(0)], AllocatorConfig(epochs=50))
    assert not any(key.startswith("heldout_") for key in metrics)


def test_allocator_is_an_allocation_for_prune(tmp_path):
    allocator, _ = fit_allocator([chain(0), chain(1)], AllocatorConfig(epochs=200))
    path = tmp_path / "allocator.safetensors"
    allocator.save(path)
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(10, 20), torch.nn.ReLU(), torch.nn.Linear(20, 30), torch.nn.ReLU(),
                                torch.nn.Linear(30, 5))
    shapes = {n: list(p.shape) for n, p in autosparse.prunable_parameters(model).items()}
    expected = allocator(shapes, 0.05)
    for allocation in (allocator, str(path), load_allocator(path)):
        mask = autosparse.prune(model, 0.95, "magnitude", allocation=allocation)
        assert {n: int(m.sum()) for n, m in mask.items()} == {n: expected[k] for n, k in zip(mask, expected)}


def test_saved_allocator_loads_identically(tmp_path):
    allocator, _ = fit_allocator([chain(0), chain(2)], AllocatorConfig(epochs=100))
    path = tmp_path / "allocator.safetensors"
    allocator.save(path)
    loaded = load_allocator(path)
    assert loaded.header["sources"] == ["mlp/digits/seed0", "mlp/digits/seed2"]
    assert torch.equal(loaded.log_ratios(SHAPES, 0.05), allocator.log_ratios(SHAPES, 0.05))


def test_bad_allocator_files_are_user_errors(tmp_path):
    with pytest.raises(AllocatorFormatError, match="does not exist"):
        load_allocator(tmp_path / "absent.safetensors")
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"not a tensor file")
    with pytest.raises(AllocatorFormatError, match="not a readable allocator file"):
        load_allocator(garbage)
    allocator, _ = fit_allocator([chain(0)], AllocatorConfig(epochs=10))
    good = tmp_path / "good.safetensors"
    allocator.save(good)
    with safe_open(str(good), framework="pt") as handle:
        header = json.loads(handle.metadata()["autosparse"])
    header["context"] = ["depth"]
    other = tmp_path / "other.safetensors"
    save_file(load_file(str(good)), str(other), metadata={"autosparse": json.dumps(header)})
    with pytest.raises(AllocatorFormatError, match="layer context"):
        load_allocator(other)
    assert issubclass(AllocatorFormatError, UserError)
    assert isinstance(allocator, Allocator)

"""A cell's seed reaches the model init, the scoring batch and the data order: two seeds give different
masks for every data-driven and learned method on the same target, and different training runs."""
from __future__ import annotations

import pytest
import torch

from autosparse.config import ModelOnData, ScorerConfig, TrainConfig
from autosparse.features import FEATURES
from autosparse.matrix_cell import CellSpec, cell_mask, run_cell
from autosparse.models import build_model
from autosparse.scorer.artifact import Scorer
from autosparse.scorer.fit import Normalization
from autosparse.scorer.networks import SCORER_NETWORKS
from autosparse.training import epoch_generator

TARGET = ModelOnData("mlp", "digits")
TRAIN = TrainConfig(epochs=2, batch_size=128)


@pytest.fixture(scope="module")
def scorer_file(tmp_path_factory):
    """An AutoS scorer on two real features (its weights are arbitrary but fixed)."""
    config = ScorerConfig(features=["log_snip_z", "synflow_z"], hidden=[4])
    torch.manual_seed(0)
    network = SCORER_NETWORKS.get("compact_mlp")(2, [4]).eval()
    header = {"network": "compact_mlp", "hidden": [4], "target": "next_round", "steps": 3,
              "features": [{"name": n, "version": FEATURES.get(n).version} for n in config.features]}
    path = tmp_path_factory.mktemp("scorer") / "scorer.safetensors"
    Scorer(network, Normalization(torch.zeros(2), torch.ones(2)), header).save(path)
    return path


def spec(method: str, seed: int, sparsity: float = 0.95) -> CellSpec:
    return CellSpec(target=TARGET, method=method, sparsity=sparsity, seed=seed, train=TRAIN, score_batch_size=64)


@pytest.mark.parametrize("method", ["snip", "grasp", "synflow", "snip/iter5", "autos:x", "autos:x@alloc:uniform"])
def test_two_seeds_give_two_masks(digits, scorer_file, method):
    masks = []
    for seed in (0, 1):
        model = build_model(TARGET.model, digits.input_shape, digits.num_classes, seed)
        masks.append(cell_mask(spec(method, seed), model, digits, scorer_file if "autos" in method else None))
    assert masks[0].num_kept() == masks[1].num_kept()
    assert any(not torch.equal(masks[0][n], masks[1][n]) for n in masks[0])
    again = cell_mask(spec(method, 0), build_model(TARGET.model, digits.input_shape, digits.num_classes, 0), digits,
                      scorer_file if "autos" in method else None)
    assert all(torch.equal(again[n], masks[0][n]) for n in again)  # and one seed gives one mask


def test_the_seed_reaches_init_scoring_batch_and_data_order(digits):
    first, second = (build_model("mlp", digits.input_shape, digits.num_classes, seed) for seed in (0, 1))
    assert not torch.equal(first[1].weight, second[1].weight)
    assert not torch.equal(digits.sample_batch(64, 0)[1], digits.sample_batch(64, 1)[1])
    orders = [torch.randperm(100, generator=epoch_generator(seed, 0, torch.device("cpu"))) for seed in (0, 1)]
    assert not torch.equal(*orders)


def test_two_seeds_give_two_training_runs(digits):
    runs = [run_cell(spec("snip", seed), digits) for seed in (0, 1)]
    assert runs[0]["train_loss_per_epoch"] != runs[1]["train_loss_per_epoch"]
    assert runs[0]["initial_loss"] != runs[1]["initial_loss"]
    again = run_cell(spec("snip", 0), digits)
    assert again["train_loss_per_epoch"] == runs[0]["train_loss_per_epoch"]
    dense = [run_cell(spec("dense", seed, sparsity=0.0), digits)["train_loss_per_epoch"] for seed in (0, 1)]
    assert dense[0] != dense[1]

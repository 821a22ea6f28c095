"""AutoS scorer: proxy metrics, layer-disjoint splits, losses, fitting, the saved artifact, pruning with it."""
from __future__ import annotations

import copy
import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import autosparse
from autosparse.config import ScorerConfig
from autosparse.data import load_dataset
from autosparse.models import build_model
from autosparse.schema import ConfigError
from autosparse.scorer import SCORER_NETWORKS, ScorerFormatError, fit_scorer, load_scorer, scorer_from_fit
from autosparse.scorer.fit import Normalization, Rows, evaluate_rows, split_rows, validation_layers
from autosparse.scorer.losses import SCORER_LOSSES
from autosparse.scorer.metrics import iou_at_densities, round_for_density, spearman, top_k_iou
from autosparse.survival import SurvivalDataset

FEATURES = ["w0_z", "g0_z"]  # real feature names, so a fitted scorer can score real models
ROUNDS, FRACTION = 3, 0.5



def synthetic(seed: int = 0, layer_sizes=(400, 300, 500, 200), model: str = "mlp") -> SurvivalDataset:
    """Survival is a step function of `w0_z` (0..3 with IRP's halving shares); `g0_z` is noise."""
    generator = torch.Generator().manual_seed(seed)
    n = sum(layer_sizes)
    signal = torch.randn(n, generator=generator)
    noise = torch.randn(n, generator=generator)
    ranks = torch.argsort(torch.argsort(signal)).float() / n  # quantile of each row
    survival = ((ranks >= 0.5).int() + (ranks >= 0.75).int() + (ranks >= 0.875).int()).to(torch.int16)
    return SurvivalDataset(
        layers=[f"layer{i}.weight" for i in range(len(layer_sizes))],
        layer_index=torch.arange(len(layer_sizes)).repeat_interleave(torch.tensor(layer_sizes)),
        features={"w0_z": signal, "g0_z": noise},
        survival=survival,
        metadata={"model": model, "dataset": "digits", "seed": seed, "rounds": ROUNDS,
                  "prune_fraction": FRACTION, "config_hash": f"hash{seed}"},
    )


def fit_config(**changes) -> ScorerConfig:
    settings = dict(features=list(FEATURES), hidden=[16], loss="pairwise", lr=1e-2, batch_size=256, epochs=4,
                    rows_per_epoch=2048, patience=10, seed=0)
    return ScorerConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def fitted():
    return fit_scorer([synthetic(0)], fit_config())


@pytest.fixture(scope="module")
def scorer(fitted):
    return scorer_from_fit(fitted, "compact_mlp", [16], FEATURES, {"source": "mlp/digits"})


@pytest.fixture(scope="module")
def saved(scorer, tmp_path_factory):
    path = tmp_path_factory.mktemp("scorer") / "autos.safetensors"
    scorer.save(path)
    return path


# ---------------------------------------------------------------- metrics


def test_spearman_of_monotone_transforms():
    x = torch.linspace(-2, 3, 50)
    assert spearman(x.exp(), x) == pytest.approx(1.0)
    assert spearman(-x ** 3, x) == pytest.approx(-1.0)


def test_spearman_with_tied_survival_uses_average_ranks():
    # ranks [1, 2, 3, 4] vs [1.5, 1.5, 3.5, 3.5]: covariance 4, variances 5 and 4 -> 4 / sqrt(20)
    value = spearman(torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([0, 0, 1, 1], dtype=torch.int16))
    assert value == pytest.approx(4 / math.sqrt(20))


@pytest.mark.filterwarnings("ignore::scipy.stats.ConstantInputWarning")
def test_spearman_of_a_constant_prediction_is_zero_not_nan():
    assert spearman(torch.zeros(5), torch.tensor([0, 1, 2, 3, 3])) == 0.0


def test_top_k_iou_hand_computed():
    survival = torch.tensor([3, 3, 2, 0, 0, 1])
    # kept = {0, 1}; the scorer's top 2 = {0, 2}: intersection 1, union 3
    predicted = torch.tensor([0.9, 0.1, 0.8, 0.2, 0.3, 0.4])
    assert top_k_iou(predicted, survival, 3) == pytest.approx(1 / 3)
    assert top_k_iou(survival.float(), survival, 3) == 1.0
    assert top_k_iou(-survival.float(), survival, 3) == 0.0
    # kept at >= 1: {0, 1, 2, 5}; top 4 of `predicted` = {0, 2, 5, 4}: 3 / 5
    assert top_k_iou(predicted, survival, 1) == pytest.approx(3 / 5)
    assert top_k_iou(torch.zeros(6), survival, 3) == 1.0  # ties break by position: {0, 1}
    assert math.isnan(top_k_iou(predicted, survival, 4))


def test_round_for_density():
    assert round_for_density(0.1, 0.2) == round(math.log(0.1) / math.log(0.8)) == 10
    assert round_for_density(0.05, 0.2) == 13
    assert round_for_density(0.125, 0.5) == 3
    assert round_for_density(0.9, 0.2) == 1  # never round 0 (that would keep everything)


def test_iou_at_densities_only_reports_densities_the_chain_reached():
    survival = torch.arange(30) % 26
    predicted = survival.float()
    assert iou_at_densities(predicted, survival, 15, 0.2) == {"iou_10pct": 1.0, "iou_5pct": 1.0}
    assert set(iou_at_densities(predicted, survival, 25, 0.2)) == {"iou_10pct", "iou_5pct", "iou_2pct", "iou_1pct"}
    assert iou_at_densities(predicted, survival, 5, 0.2) == {}


# ---------------------------------------------------------------- validation split


def test_validation_layers_hand_case():
    chosen = validation_layers([10, 10, 10, 10], 0.25, seed=0)
    assert len(chosen) == 2  # adds layers while the held-out share stays <= 2 * 0.25
    assert chosen == validation_layers([10, 10, 10, 10], 0.25, seed=0)


def test_validation_layers_never_holds_out_all_or_none():
    generator = torch.Generator().manual_seed(0)
    for case in range(200):
        count = 2 + case % 7
        sizes = torch.randint(1, 1000, (count,), generator=generator).tolist()
        fraction = [0.05, 0.25, 0.5, 0.9][case % 4]
        chosen = validation_layers(sizes, fraction, seed=case)
        assert 1 <= len(chosen) <= count - 1, (sizes, fraction)
        assert chosen <= set(range(count))
        if len(chosen) > 1:
            assert sum(sizes[i] for i in chosen) <= 2 * fraction * sum(sizes)
        assert validation_layers(sizes, fraction, seed=case) == chosen


def test_validation_layers_depends_on_the_seed():
    picks = {frozenset(validation_layers([5] * 8, 0.2, seed)) for seed in range(10)}
    assert len(picks) > 1


def test_validation_layers_needs_two_layers():
    with pytest.raises(ConfigError, match="at least two"):
        validation_layers([100], 0.25, seed=0)


def with_row_ids(data: SurvivalDataset, offset: int) -> SurvivalDataset:
    """Replace w0_z by a unique row id so rows can be traced through a split."""
    ids = torch.arange(len(data), dtype=torch.float32) + offset
    return SurvivalDataset(data.layers, data.layer_index, {"w0_z": ids, "g0_z": data.features["g0_z"]},
                           (ids.long() % 4).to(torch.int16), data.metadata)


def test_layer_split_is_disjoint_covers_every_row_and_keeps_layers_whole():
    datasets = [with_row_ids(synthetic(0), 0), with_row_ids(synthetic(1, (100, 200, 300)), 10_000)]
    train, validation = split_rows(datasets, fit_config(validation="layers"), FEATURES)
    assert len(train) == len(validation) == 2
    for data, train_part, validation_part in zip(datasets, train, validation):
        train_ids = set(train_part.features[:, 0].long().tolist())
        validation_ids = set(validation_part.features[:, 0].long().tolist())
        assert train_ids and validation_ids
        assert not train_ids & validation_ids
        assert train_ids | validation_ids == set(data.features["w0_z"].long().tolist())
        for part in (train_part, validation_part):
            assert torch.equal(part.survival, (part.features[:, 0].long() % 4).to(torch.int16))  # rows stay aligned
            assert (part.rounds, part.prune_fraction) == (ROUNDS, FRACTION)
        layer_of = dict(zip(data.features["w0_z"].long().tolist(), data.layer_index.tolist()))
        assert not {layer_of[i] for i in train_ids} & {layer_of[i] for i in validation_ids}
    assert train[0].label == "mlp/digits/seed0"


def test_source_split_holds_out_the_last_dataset():
    datasets = [with_row_ids(synthetic(0), 0), with_row_ids(synthetic(1), 10_000)]
    train, validation = split_rows(datasets, fit_config(validation="sources"), FEATURES)
    assert len(train) == len(validation) == 1
    assert torch.equal(train[0].features[:, 0], datasets[0].features["w0_z"])
    assert torch.equal(validation[0].features[:, 0], datasets[1].features["w0_z"])


def test_source_split_needs_two_datasets():
    with pytest.raises(ConfigError, match="sources"):
        split_rows([synthetic(0)], fit_config(validation="sources"), FEATURES)


def test_row_targets_and_normalization():
    rows = Rows(torch.zeros(4, 1), torch.tensor([0, 1, 2, 3], dtype=torch.int16), 3, 0.5, "x")
    targets = rows.targets(0.25)  # density 0.25 at p = 0.5 is round 2
    torch.testing.assert_close(targets, torch.tensor([[0, 0], [1 / 3, 0], [2 / 3, 1], [1, 1]]))
    features = torch.tensor([[1.0, 10.0], [3.0, 10.0], [5.0, 10.0]])
    norm = Normalization.fit(features, "standard")
    torch.testing.assert_close(norm.mean, torch.tensor([3.0, 10.0]))
    torch.testing.assert_close(norm.std, torch.tensor([2.0, 1e-8]))  # sample std; constant column clamped
    torch.testing.assert_close(norm(features)[:, 0], torch.tensor([-1.0, 0.0, 1.0]))
    none = Normalization.fit(features, "none")
    assert torch.equal(none(features), features)


# ---------------------------------------------------------------- losses


def loss_inputs():
    output = torch.tensor([0.3, -1.2, 2.0, 0.5, -0.1, 1.1])
    survival = torch.tensor([1.0, 0.0, 3.0, 2.0, 0.0, 3.0])
    targets = torch.stack([survival / 3, (survival >= 2).float()], dim=1)
    return output, targets


def test_mse_loss_by_hand():
    output, targets = loss_inputs()
    expected = sum((o - t) ** 2 for o, t in zip(output.tolist(), targets[:, 0].tolist())) / 6
    value = SCORER_LOSSES.get("mse")(output, targets, torch.Generator().manual_seed(0))
    assert float(value) == pytest.approx(expected, rel=1e-6)
    assert float(value) == pytest.approx(float(F.mse_loss(output, targets[:, 0])), rel=1e-6)


def test_bce_loss_by_hand():
    output, targets = loss_inputs()
    expected = -sum(y * math.log(1 / (1 + math.exp(-o))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-o)))
                    for o, y in zip(output.tolist(), targets[:, 1].tolist())) / 6
    value = SCORER_LOSSES.get("bce")(output, targets, torch.Generator().manual_seed(0))
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_pairwise_loss_by_hand():
    output, targets = loss_inputs()
    partner = torch.randperm(6, generator=torch.Generator().manual_seed(7)).tolist()
    terms = []
    for i, j in enumerate(partner):
        diff = targets[i, 0].item() - targets[j, 0].item()
        if diff != 0:
            sign = 1.0 if diff > 0 else -1.0
            terms.append(math.log1p(math.exp(-sign * (output[i].item() - output[j].item()))))
    assert terms  # some pairs differ
    value = SCORER_LOSSES.get("pairwise")(output, targets, torch.Generator().manual_seed(7))
    assert float(value) == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_pairwise_loss_prefers_the_correct_order():
    survival = torch.arange(64).float() % 4
    targets = torch.stack([survival / 3, (survival >= 2).float()], dim=1)
    pairwise = SCORER_LOSSES.get("pairwise")
    right = pairwise(survival * 2.0, targets, torch.Generator().manual_seed(1))
    wrong = pairwise(-survival * 2.0, targets, torch.Generator().manual_seed(1))
    assert float(right) < 0.2  # every differing pair is 2+ apart in the right direction: softplus(-2) = 0.127
    assert float(wrong) > 2.0  # ... or in the wrong one: softplus(2) = 2.127


def test_pairwise_loss_without_ordered_pairs_is_zero_and_differentiable():
    output = torch.randn(5, requires_grad=True)
    targets = torch.ones(5, 2)
    value = SCORER_LOSSES.get("pairwise")(output, targets, torch.Generator().manual_seed(0))
    assert float(value.detach()) == 0.0
    value.backward()
    assert torch.equal(output.grad, torch.zeros(5))


# ---------------------------------------------------------------- networks


def test_paper_mlp_layout():
    network = SCORER_NETWORKS.get("paper_mlp")(2, [999])  # hidden sizes are fixed by the paper
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    norms = [m for m in network.modules() if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(2, 16), (16, 64), (64, 1024), (1024, 1024),
                                                                 (1024, 64), (64, 1)]
    assert [m.num_features for m in norms] == [16, 64, 1024, 1024, 64]
    assert sum(isinstance(m, nn.ReLU) for m in network.modules()) == 5
    assert network.eval()(torch.randn(7, 2)).shape == (7,)


def test_compact_mlp_layout():
    network = SCORER_NETWORKS.get("compact_mlp")(3, [8, 4])
    linears = [m for m in network.modules() if isinstance(m, nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(3, 8), (8, 4), (4, 1)]
    assert not any(isinstance(m, nn.BatchNorm1d) for m in network.modules())
    assert network(torch.randn(5, 3)).shape == (5,)


# ---------------------------------------------------------------- fitting


def test_fit_learns_a_monotone_survival(fitted):
    assert fitted.best["spearman"] > 0.8
    assert fitted.history[-1]["spearman"] > 0.8
    assert fitted.train_rows + fitted.validation_rows == 1400
    assert fitted.validation_rows > 0 and fitted.train_rows > 0
    assert all(math.isfinite(h["loss"]) for h in fitted.history)


def test_fit_keeps_the_best_epoch(fitted):
    spearmans = [h["spearman"] for h in fitted.history]
    best_epoch = spearmans.index(max(spearmans))
    assert fitted.best["epoch"] == best_epoch
    assert fitted.best["spearman"] == max(spearmans)
    _, validation = split_rows([synthetic(0)], fit_config(), FEATURES)
    rescored = evaluate_rows(fitted.network, fitted.normalization, validation, 0)
    assert rescored["spearman"] == pytest.approx(fitted.best["spearman"], abs=1e-9)
    assert not fitted.network.training


def test_fit_is_deterministic_for_a_seed(fitted):
    again = fit_scorer([synthetic(0)], fit_config())
    assert again.history == fitted.history
    for key, value in fitted.network.state_dict().items():
        assert torch.equal(again.network.state_dict()[key], value), key
    other = fit_scorer([synthetic(0)], fit_config(seed=1, epochs=1))
    assert other.history[0] != fitted.history[0]


def test_held_out_datasets_are_reported_but_never_steer_fitting(fitted):
    result = fit_scorer([synthetic(0)], fit_config(), held_out=[synthetic(5, (300, 300), model="conv")])
    assert all("heldout_spearman" in h for h in result.history)
    assert result.history[-1]["heldout_spearman"] > 0.8
    assert [{k: v for k, v in h.items() if not k.startswith("heldout_")} for h in result.history] == fitted.history
    for key, value in fitted.network.state_dict().items():
        assert torch.equal(result.network.state_dict()[key], value), key


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_other_losses_also_learn_the_ranking(loss):
    result = fit_scorer([synthetic(0)], fit_config(loss=loss, bce_density=0.25))
    assert result.best["spearman"] > 0.7


# ---------------------------------------------------------------- artifact


def test_saved_scorer_loads_identically(scorer, saved):
    loaded = load_scorer(saved)
    assert loaded.feature_names == FEATURES
    assert loaded.header == scorer.header
    assert loaded.header["source"] == "mlp/digits"
    assert loaded.header["features"] == [{"name": "w0_z", "version": 1}, {"name": "g0_z", "version": 1}]
    assert torch.equal(loaded.normalization.mean, scorer.normalization.mean)
    assert torch.equal(loaded.normalization.std, scorer.normalization.std)
    for key, value in scorer.network.state_dict().items():
        assert torch.equal(loaded.network.state_dict()[key], value), key
    assert not loaded.network.training
    assert [p.name for p in saved.parent.iterdir()] == [saved.name]  # no temporary files left


def test_path_and_object_give_identical_scores_and_masks(scorer, saved):
    digits = load_dataset("digits")
    model = build_model("mlp", digits.input_shape, digits.num_classes, 3)
    batch = digits.sample_batch(64, 0)
    from_object = autosparse.score(model, 0.1, scorer, batch)
    from_path = autosparse.score(model, 0.1, saved, batch)
    from_text = autosparse.score(model, 0.1, str(saved), batch)
    assert list(from_object) == ["1.weight", "3.weight", "5.weight"]
    for layer, values in from_object.items():
        assert values.shape == model.get_submodule(layer[:-len(".weight")]).weight.shape
        assert torch.equal(from_path[layer], values)
        assert torch.equal(from_text[layer], values)
    mask_object = autosparse.prune(model, 0.9, method=scorer, data=batch)
    mask_path = autosparse.prune(model, 0.9, method=saved, data=batch)
    assert all(torch.equal(mask_object[n], mask_path[n]) for n in mask_object)


def test_scorer_ranks_by_the_learned_feature(scorer):
    """Survival grew with w0_z, so within a layer the scorer's scores must follow w0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    batch = (torch.randn(16, 20), torch.randint(0, 5, (16,)))
    scores = autosparse.score(model, 0.1, scorer, batch)
    assert spearman(scores["0.weight"].flatten(), model[0].weight.detach().flatten()) > 0.8


def test_scorer_with_a_data_feature_needs_data(scorer):
    torch.manual_seed(0)
    with pytest.raises(ValueError, match="needs data"):
        autosparse.prune(nn.Sequential(nn.Linear(4, 3), nn.Linear(3, 2)), 0.5, method=scorer)


def rewrite(path, target, *, header_changes=None, tensors=None):
    """Copy a saved scorer with its JSON header changed."""
    with safe_open(str(path), framework="pt") as handle:
        header = json.loads(handle.metadata()["autosparse"])
    header.update(header_changes or {})
    save_file(tensors if tensors is not None else load_file(str(path)), str(target),
              metadata={"autosparse": json.dumps(header)})
    return target


def assert_scorer_error(path, match: str | None):
    with pytest.raises(ScorerFormatError, match=match) as error:
        load_scorer(path)
    assert str(path) in str(error.value)


def test_truncated_scorer_file(saved, tmp_path):
    data = saved.read_bytes()
    target = tmp_path / "truncated.safetensors"
    target.write_bytes(data[: len(data) // 2])
    assert_scorer_error(target, "not a readable scorer file")


def test_non_safetensors_file(tmp_path):
    target = tmp_path / "notes.safetensors"
    target.write_text("definitely not a scorer")
    assert_scorer_error(target, "not a readable scorer file")


def test_foreign_safetensors_file(tmp_path):
    target = tmp_path / "foreign.safetensors"
    save_file({"weight": torch.randn(3, 4), "bias": torch.randn(3)}, str(target))
    assert_scorer_error(target, "not an autosparse scorer")


def test_missing_scorer_file(tmp_path):
    assert_scorer_error(tmp_path / "absent.safetensors", "does not exist")


def test_unknown_feature_in_header(saved, tmp_path):
    header = {"features": [{"name": "w0_z", "version": 1}, {"name": "telepathy", "version": 1}]}
    target = rewrite(saved, tmp_path / "unknown.safetensors", header_changes=header)
    assert_scorer_error(target, "telepathy")


def test_feature_version_mismatch(saved, tmp_path):
    header = {"features": [{"name": "w0_z", "version": 7}, {"name": "g0_z", "version": 1}]}
    target = rewrite(saved, tmp_path / "old.safetensors", header_changes=header)
    assert_scorer_error(target, "'w0_z' version 7")


def test_wrong_format_version(saved, tmp_path):
    target = rewrite(saved, tmp_path / "future.safetensors", header_changes={"format_version": 99})
    assert_scorer_error(target, "version 99")


def test_malformed_header(tmp_path):
    target = tmp_path / "garbled.safetensors"
    save_file({"weight": torch.randn(2)}, str(target), metadata={"autosparse": "{not json"})
    assert_scorer_error(target, None)


def test_unknown_network_in_header(saved, tmp_path):
    target = rewrite(saved, tmp_path / "net.safetensors", header_changes={"network": "transformer_xl"})
    assert_scorer_error(target, "transformer_xl")


# ---------------------------------------------------------------- AutoS as a pruning method


@pytest.mark.parametrize("model_name, dataset_name, total", [("mlp", "digits", 50_200), ("conv1d", "mnist1d", 85_408)])
def test_autos_pruning_hits_the_exact_density(scorer, model_name, dataset_name, total):
    dataset = load_dataset(dataset_name)
    model = build_model(model_name, dataset.input_shape, dataset.num_classes, 0)
    before = copy.deepcopy(model.state_dict())
    mask = autosparse.prune(model, 0.98, method=scorer, data=dataset.sample_batch(128, 0))
    assert mask.num_total() == total
    assert mask.num_kept() == round(0.02 * total)
    mask.validate(model)
    for key, value in before.items():
        assert torch.equal(model.state_dict()[key], value), key  # pruning does not touch the model

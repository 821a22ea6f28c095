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
from autosparse import UserError
from autosparse.config import ScorerConfig
from autosparse.data import load_dataset
from autosparse.models import build_model
from autosparse.schema import ConfigError
from autosparse.scorer import SCORER_NETWORKS, ScorerFormatError, fit_scorer, load_scorer, scorer_from_fit
from autosparse.scorer.fit import (Normalization, chosen_epoch, split_parts, targets_for, to_part, train_network,
                                   validation_layers)
from autosparse.scorer.losses import SCORER_LOSSES
from autosparse.scorer.metrics import (layer_density_error, round_for_density, spearman,
                                       within_layer_iou)
from autosparse.survival import SurvivalDataset

from helpers import write_file

FEATURES = ["w0_z", "g0_z"]  # real feature names, so a fitted scorer can score real models
ROUNDS, FRACTION = 3, 0.5



def synthetic(seed: int = 0, layer_sizes=(400, 300, 500, 200), model: str = "mlp") -> SurvivalDataset:
    """Survival is a step function of `w0_z` (0..3 with IRP's halving shares); `g0_z` is noise. Rows for
    rounds 0..2: round r holds the weights with survival >= r (features unchanged across rounds)."""
    generator = torch.Generator().manual_seed(seed)
    n = sum(layer_sizes)
    signal = torch.randn(n, generator=generator)
    noise = torch.randn(n, generator=generator)
    ranks = torch.argsort(torch.argsort(signal)).float() / n  # quantile of each row
    survival = ((ranks >= 0.5).int() + (ranks >= 0.75).int() + (ranks >= 0.875).int()).to(torch.int16)
    layer = torch.arange(len(layer_sizes)).repeat_interleave(torch.tensor(layer_sizes))
    rows = [survival >= r for r in range(ROUNDS)]
    pick = lambda values: torch.cat([values[kept] for kept in rows])  # noqa: E731
    return SurvivalDataset(
        layers=[f"layer{i}.weight" for i in range(len(layer_sizes))],
        layer_index=pick(layer),
        round=torch.cat([torch.full((int(kept.sum()),), r) for r, kept in enumerate(rows)]),
        features={"w0_z": pick(signal), "g0_z": pick(noise)},
        survival=pick(survival),
        metadata={"model": model, "dataset": "digits", "seed": seed, "rounds": ROUNDS, "prune_fraction": FRACTION,
                  "config_hash": f"hash{seed}", "layer_shapes": {f"layer{i}.weight": [size]
                                                                 for i, size in enumerate(layer_sizes)}},
    )


def fit_config(**changes) -> ScorerConfig:
    settings = dict(features=list(FEATURES), hidden=[16], target="survival", loss="pairwise", lr=1e-2, batch_size=256,
                    epochs=4, rows_per_epoch=2048, patience=10, seed=0)
    return ScorerConfig(**{**settings, **changes})


@pytest.fixture(scope="module")
def fitted():
    return fit_scorer([synthetic(0)], fit_config())


@pytest.fixture(scope="module")
def scorer(fitted):
    return scorer_from_fit(fitted, fit_config(), {"source": "mlp/digits"})


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


def test_round_for_density():
    assert round_for_density(0.1, 0.2) == round(math.log(0.1) / math.log(0.8)) == 10
    assert round_for_density(0.05, 0.2) == 13
    assert round_for_density(0.125, 0.5) == 3
    assert round_for_density(0.9, 0.2) == 1  # never round 0 (that would keep everything)


def test_within_layer_iou_hand_computed():
    # layer 0: kept {0, 1}, predicted top 2 = {0, 2}; layer 1: kept {4}, predicted top 1 = {4}
    predicted = torch.tensor([0.9, 0.1, 0.8, 0.2, 5.0, 0.0])
    kept = torch.tensor([True, True, False, False, True, False])
    layers = torch.tensor([0, 0, 0, 0, 1, 1])
    assert within_layer_iou(predicted, kept, layers) == pytest.approx((1 + 1) / (3 + 1))
    assert within_layer_iou(kept.float(), kept, layers) == 1.0
    assert math.isnan(within_layer_iou(predicted, torch.zeros(6, dtype=torch.bool), layers))


def test_layer_density_error_hand_computed():
    # IRP keeps 2 of layer 0 (4 weights) and 1 of layer 1 (2 weights). A global top-3 of `predicted`
    # takes 3 from layer 0 and 1 from... no: top 3 = {4, 0, 2} -> layer 0 keeps 2, layer 1 keeps 1: no error.
    predicted = torch.tensor([0.9, 0.1, 0.8, 0.2, 5.0, 0.0])
    kept = torch.tensor([True, True, False, False, True, False])
    layers = torch.tensor([0, 0, 0, 0, 1, 1])
    assert layer_density_error(predicted, kept, layers) == 0.0
    # all predictions favour layer 0: top 3 = {0, 1, 2}, layer 1 keeps none (counted as one weight)
    lopsided = torch.tensor([3.0, 2.0, 1.0, 0.5, -1.0, -2.0])
    expected = (abs(math.log((3 / 4) / (2 / 4))) + abs(math.log((1 / 2) / (1 / 2)))) / 2
    assert layer_density_error(lopsided, kept, layers) == pytest.approx(expected)


# ---------------------------------------------------------------- validation split


def test_validation_layers_hand_case():
    chosen = validation_layers([10, 10, 10, 10], 0.25, seed=0)
    assert len(chosen) == 1  # one layer is 25%: a second would exceed the configured share
    assert chosen == validation_layers([10, 10, 10, 10], 0.25, seed=0)
    assert len(validation_layers([10] * 8, 0.25, seed=0)) == 2


def test_validation_layers_respect_the_share_and_keep_two_layers_for_training():
    generator = torch.Generator().manual_seed(0)
    for case in range(200):
        count = 3 + case % 7
        sizes = torch.randint(1, 1000, (count,), generator=generator).tolist()
        fraction = [0.05, 0.25, 0.5, 0.9][case % 4]
        chosen = validation_layers(sizes, fraction, seed=case)
        assert 1 <= len(chosen) <= count - 2, (sizes, fraction)
        assert chosen <= set(range(count))
        held = sum(sizes[i] for i in chosen)
        if held > fraction * sum(sizes):  # only when no layer fits: then the smallest is held out
            assert len(chosen) == 1 and held == min(sizes), (sizes, fraction, chosen)
        assert validation_layers(sizes, fraction, seed=case) == chosen


def test_validation_layers_depends_on_the_seed():
    picks = {frozenset(validation_layers([5] * 8, 0.2, seed)) for seed in range(10)}
    assert len(picks) > 1


def test_validation_layers_needs_three_layers():
    with pytest.raises(ConfigError, match="at least three"):
        validation_layers([100, 50], 0.25, seed=0)


def with_row_ids(data: SurvivalDataset, offset: int) -> SurvivalDataset:
    """Replace w0_z by a unique row id so rows can be traced through a split."""
    ids = torch.arange(len(data), dtype=torch.float32) + offset
    return SurvivalDataset(data.layers, data.layer_index, data.round, {"w0_z": ids, "g0_z": data.features["g0_z"]},
                           data.survival, data.metadata)


@pytest.mark.parametrize("target", ["survival", "next_round"])
def test_layer_split_is_disjoint_covers_every_row_and_keeps_layers_whole(target):
    datasets = [with_row_ids(synthetic(0), 0), with_row_ids(synthetic(1, (100, 200, 300)), 10_000)]
    config = fit_config(validation="layers", target=target, loss="bce")
    train, validation = split_parts(datasets, config)
    assert len(train) == len(validation) == 2
    for data, train_part, validation_part in zip(datasets, train, validation):
        train_ids = set(train_part.features[:, 0].long().tolist())
        validation_ids = set(validation_part.features[:, 0].long().tolist())
        assert train_ids and validation_ids
        assert not train_ids & validation_ids
        rows = data.round == 0 if target == "survival" else torch.ones(len(data), dtype=torch.bool)
        assert train_ids | validation_ids == set(data.features["w0_z"][rows].long().tolist())
        layer_of = dict(zip(data.features["w0_z"].long().tolist(), data.layer_index.tolist()))
        assert not {layer_of[i] for i in train_ids} & {layer_of[i] for i in validation_ids}
        for part in (train_part, validation_part):
            assert (part.rounds, part.prune_fraction) == (ROUNDS, FRACTION)
            assert not part.whole_network
    assert train[0].label == "mlp/digits/seed0"


def test_source_split_holds_out_the_last_dataset():
    datasets = [with_row_ids(synthetic(0), 0), with_row_ids(synthetic(1), 10_000)]
    train, validation = split_parts(datasets, fit_config(validation="sources"))
    assert len(train) == len(validation) == 1
    dense = [d.round == 0 for d in datasets]
    assert torch.equal(train[0].features[:, 0], datasets[0].features["w0_z"][dense[0]])
    assert torch.equal(validation[0].features[:, 0], datasets[1].features["w0_z"][dense[1]])
    assert validation[0].whole_network


def test_source_split_needs_two_datasets():
    with pytest.raises(ConfigError, match="sources"):
        split_parts([synthetic(0)], fit_config(validation="sources"))


def test_training_targets_of_each_design():
    data = synthetic(0)
    survival = targets_for(fit_config(loss="mse"), data)
    torch.testing.assert_close(survival, data.survival.float() / ROUNDS)
    kept = targets_for(fit_config(loss="bce", bce_density=0.25), data)  # density 0.25 at p = 0.5 is round 2
    assert torch.equal(kept, (data.survival >= 2).float())
    following = targets_for(fit_config(target="next_round", loss="bce"), data)
    assert torch.equal(following, (data.survival.long() > data.round).float())
    assert float(following[data.round == 0].mean()) == pytest.approx(0.5, abs=0.01)  # half survive round 1


def test_normalization():
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
    return output, survival / 3, (survival >= 2).float()


def test_mse_loss_by_hand():
    output, targets, _ = loss_inputs()
    expected = sum((o - t) ** 2 for o, t in zip(output.tolist(), targets.tolist())) / 6
    value = SCORER_LOSSES.get("mse")(output, targets, torch.Generator().manual_seed(0))
    assert float(value) == pytest.approx(expected, rel=1e-6)
    assert float(value) == pytest.approx(float(F.mse_loss(output, targets)), rel=1e-6)


def test_bce_loss_by_hand():
    output, _, labels = loss_inputs()
    expected = -sum(y * math.log(1 / (1 + math.exp(-o))) + (1 - y) * math.log(1 - 1 / (1 + math.exp(-o)))
                    for o, y in zip(output.tolist(), labels.tolist())) / 6
    value = SCORER_LOSSES.get("bce")(output, labels, torch.Generator().manual_seed(0))
    assert float(value) == pytest.approx(expected, rel=1e-6)


def test_pairwise_loss_by_hand():
    output, targets, _ = loss_inputs()
    partner = torch.randperm(6, generator=torch.Generator().manual_seed(7)).tolist()
    terms = []
    for i, j in enumerate(partner):
        diff = targets[i].item() - targets[j].item()
        if diff != 0:
            sign = 1.0 if diff > 0 else -1.0
            terms.append(math.log1p(math.exp(-sign * (output[i].item() - output[j].item()))))
    assert terms  # some pairs differ
    value = SCORER_LOSSES.get("pairwise")(output, targets, torch.Generator().manual_seed(7))
    assert float(value) == pytest.approx(sum(terms) / len(terms), rel=1e-6)


def test_pairwise_loss_prefers_the_correct_order():
    survival = torch.arange(64).float() % 4
    targets = survival / 3
    pairwise = SCORER_LOSSES.get("pairwise")
    right = pairwise(survival * 2.0, targets, torch.Generator().manual_seed(1))
    wrong = pairwise(-survival * 2.0, targets, torch.Generator().manual_seed(1))
    assert float(right) < 0.2  # every differing pair is 2+ apart in the right direction: softplus(-2) = 0.127
    assert float(wrong) > 2.0  # ... or in the wrong one: softplus(2) = 2.127


def test_pairwise_loss_without_ordered_pairs_is_zero_and_differentiable():
    output = torch.randn(5, requires_grad=True)
    targets = torch.ones(5)
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
    assert fitted.best["within_layer_iou"] > 0.8
    assert fitted.history[-1]["spearman"] > 0.8
    assert fitted.train_rows == 1400  # the saved scorer saw every round-0 row ...
    assert 0 < fitted.validation_rows < 1400  # ... after validation rows chose its epochs
    assert all(math.isfinite(h["loss"]) for h in fitted.history)


def test_the_saved_scorer_is_refitted_on_every_row(fitted):
    """Validation only chooses the number of epochs: normalization and weights come from all rows."""
    dense = synthetic(0)
    dense = dense.select(dense.round == 0)
    everything = dense.feature_matrix(FEATURES)
    torch.testing.assert_close(fitted.normalization.mean, everything.double().mean(0).float())
    train, _ = split_parts([synthetic(0)], fit_config())
    assert not torch.allclose(fitted.normalization.mean, train[0].features.double().mean(0).float())
    assert fitted.epochs == fitted.best["epoch"] + 1
    refit, _ = train_network([to_part(fit_config(), dense, True)], fit_config(), fitted.epochs)
    for key, value in refit.state_dict().items():
        assert torch.equal(fitted.network.state_dict()[key], value), key


def test_fit_chooses_the_latest_epoch_near_the_best_validation_iou(fitted):
    ious = [h["within_layer_iou"] for h in fitted.history]
    assert fitted.best["epoch"] == chosen_epoch(ious, fit_config().selection_tolerance)
    assert fitted.best["within_layer_iou"] >= max(ious) - 0.01
    assert not fitted.network.training


def test_chosen_epoch_prefers_more_training_where_the_metric_is_flat():
    assert chosen_epoch([0.734, 0.730, 0.729, 0.733, 0.70], 0.01) == 3  # not epoch 0, the first peak
    assert chosen_epoch([0.5, 0.7, 0.6], 0.01) == 1
    assert chosen_epoch([0.5, 0.7, 0.6], 0.0) == 1
    assert chosen_epoch([0.7, 0.7], 0.0) == 1


def test_early_stopping_after_patience_epochs_clearly_below_the_best():
    result = fit_scorer([synthetic(0)], fit_config(epochs=30, patience=2, lr=0.05, selection_tolerance=0.0))
    best = int(result.best["epoch"])
    assert len(result.history) <= best + 1 + 2
    assert len(result.history) < 30


def test_fit_is_deterministic_for_a_seed(fitted):
    again = fit_scorer([synthetic(0)], fit_config())
    assert again.history == fitted.history
    for key, value in fitted.network.state_dict().items():
        assert torch.equal(again.network.state_dict()[key], value), key
    other = fit_scorer([synthetic(0)], fit_config(seed=1, epochs=1))
    assert other.history[0] != fitted.history[0]


def test_held_out_datasets_are_reported_but_never_steer_fitting(fitted):
    result = fit_scorer([synthetic(0)], fit_config(), held_out=[synthetic(5, (300, 300, 200), model="conv")])
    assert all("heldout_within_layer_iou" in h for h in result.history)
    assert result.history[-1]["heldout_spearman"] > 0.8
    assert "heldout_layer_density_error_12pct" in result.history[-1]  # a whole network: allocation error too
    assert [{k: v for k, v in h.items() if not k.startswith("heldout_")} for h in result.history] == fitted.history
    for key, value in fitted.network.state_dict().items():
        assert torch.equal(result.network.state_dict()[key], value), key


@pytest.mark.parametrize("loss", ["mse", "bce"])
def test_other_losses_also_learn_the_ranking(loss):
    result = fit_scorer([synthetic(0)], fit_config(loss=loss, bce_density=0.25))
    assert result.best["spearman"] > 0.7


def test_a_conditional_scorer_learns_who_survives_the_next_round():
    result = fit_scorer([synthetic(0)], fit_config(target="next_round", loss="bce", epochs=6))
    assert "spearman" not in result.best  # teacher-forced pruning metrics only
    assert result.best["within_layer_iou"] > 0.8
    assert result.train_rows == len(synthetic(0))  # rows of every round


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
    from_object = autosparse.score(model, scorer, batch)
    from_path = autosparse.score(model, saved, batch)
    from_text = autosparse.score(model, str(saved), batch)
    assert list(from_object) == ["1.weight", "3.weight", "5.weight"]
    for layer, values in from_object.items():
        assert values.shape == model.get_submodule(layer[:-len(".weight")]).weight.shape
        assert torch.equal(from_path[layer], values)
        assert torch.equal(from_text[layer], values)
    mask_object = autosparse.prune(model, 0.9, method=scorer, data=batch)
    mask_path = autosparse.prune(model, 0.9, method=saved, data=batch)
    assert all(torch.equal(mask_object[n], mask_path[n]) for n in mask_object)


def test_on_a_masked_network_only_kept_weights_are_scored(scorer):
    """Pruned weights score -inf; kept ones get what the network predicts for their feature rows (up to
    float rounding: a matrix product over fewer rows may sum in another order)."""
    from autosparse.criteria import ScoringContext
    from autosparse.features import compute_features
    from autosparse.masks import masked_copy
    from autosparse.scorer.fit import predict

    digits = load_dataset("digits")
    model = build_model("mlp", digits.input_shape, digits.num_classes, 3)
    batch = digits.sample_batch(64, 0)
    mask = autosparse.prune(model, 0.7, "magnitude")
    net = masked_copy(model, mask)
    scores = scorer(ScoringContext(net, [batch], mask=mask))
    rows = compute_features(copy.deepcopy(net), [batch], scorer.feature_names, mask=mask)
    for layer, values in scores.items():
        expected = predict(scorer.network, scorer.normalization, rows[layer]).view(values.shape)
        torch.testing.assert_close(values[mask[layer]], expected[mask[layer]], rtol=1e-6, atol=1e-6)
        assert bool((values[~mask[layer]] == -math.inf).all()), layer


def test_step_batch_defaults_follow_the_design():
    assert ScorerConfig().prune_step_batch_size == 64  # conditional: the next 64 examples at each step
    assert ScorerConfig(target="survival", loss="mse").prune_step_batch_size is None  # one shot: the whole batch
    assert ScorerConfig(step_batch_size=256).prune_step_batch_size == 256
    with pytest.raises(ConfigError, match="step_batch_size"):
        ScorerConfig(step_batch_size=0)


def test_the_scorer_carries_its_step_batch_to_prune(fitted):
    config = fit_config(steps=4, step_batch_size=16)
    with_batch = scorer_from_fit(fitted, config, {})
    plain = scorer_from_fit(fitted, fit_config(steps=4), {})
    assert (with_batch.default_step_batch_size, plain.default_step_batch_size) == (16, None)
    digits = load_dataset("digits")
    model = build_model("mlp", digits.input_shape, digits.num_classes, 3)
    batch = digits.sample_batch(64, 0)
    by_default = autosparse.prune(model, 0.9, with_batch, batch)
    told = autosparse.prune(model, 0.9, plain, batch, step_batch_size=16)
    whole = autosparse.prune(model, 0.9, plain, batch)
    assert all(torch.equal(by_default[n], told[n]) for n in told)
    assert any(not torch.equal(by_default[n], whole[n]) for n in told)


class Residual(nn.Module):
    """Outside the registry: depthwise and pointwise convolutions, BatchNorm, a skip connection, LayerNorm."""

    def __init__(self, dims: int, channels: int = 1, classes: int = 10):
        super().__init__()
        conv, norm = (nn.Conv1d, nn.BatchNorm1d) if dims == 1 else (nn.Conv2d, nn.BatchNorm2d)
        self.stem = conv(channels, 8, 3, padding=1)
        self.depthwise = conv(8, 8, 3, padding=1, groups=8)
        self.pointwise = conv(8, 8, 1)
        self.norm = norm(8)
        self.head = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, classes))

    def forward(self, x):
        h = torch.relu(self.stem(x))
        h = h + torch.relu(self.norm(self.pointwise(self.depthwise(h))))
        return self.head(h.flatten(2).mean(2))


@pytest.mark.parametrize("dims", [1, 2])
def test_the_default_scorer_prunes_an_architecture_outside_the_registry(dims):
    """Every default conditional feature is computable on depthwise convolutions and skip connections."""
    from autosparse.config import CONDITIONAL_FEATURES
    from autosparse.scorer.artifact import Scorer

    width = len(CONDITIONAL_FEATURES)
    network = SCORER_NETWORKS.get("compact_mlp")(width, [8])
    header = {"steps": 4, "step_batch_size": 16, "features": [{"name": n, "version": 1} for n in CONDITIONAL_FEATURES]}
    scorer = Scorer(network, Normalization(torch.zeros(width), torch.ones(width)), header)
    torch.manual_seed(0)
    model = Residual(dims)
    batch = (torch.randn(32, 1, *[12] * dims), torch.randint(0, 10, (32,)))
    steps = []
    mask = autosparse.prune(model, 0.9, scorer, batch, allocation="erk", on_step=lambda step, m: steps.append(m))
    assert len(steps) == 4
    assert list(mask) == ["stem.weight", "depthwise.weight", "pointwise.weight", "head.1.weight"]
    assert mask.num_kept() == round(0.1 * sum(m.numel() for m in mask.values()))
    scores = autosparse.score(model, scorer, batch)
    assert all(bool(torch.isfinite(v).all()) for v in scores.values())


def test_scorer_ranks_by_the_learned_feature(scorer):
    """Survival grew with w0_z, so within a layer the scorer's scores must follow w0."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 30), nn.ReLU(), nn.Linear(30, 5))
    batch = (torch.randn(16, 20), torch.randint(0, 5, (16,)))
    scores = autosparse.score(model, scorer, batch)
    assert spearman(scores["0.weight"].flatten(), model[0].weight.detach().flatten()) > 0.8


def test_scorer_with_a_data_feature_needs_data(scorer):
    torch.manual_seed(0)
    with pytest.raises(UserError, match="needs data"):
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
    assert_scorer_error(write_file(tmp_path, "definitely not a scorer", "notes.safetensors"), "not a readable scorer file")


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

"""Sanity-check variants, masked training/evaluation, the embedded datasets and the model registry."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import autosparse
from autosparse import MODELS, Mask, UserError, apply_mask, build_model, load_dataset, prunable_parameters
from autosparse.config import TrainConfig
from autosparse.layer_allocation import global_counts, top_k_within_layers
from autosparse.registry import UnknownNameError
from autosparse.sanity import reinit_seed, shuffle_mask
from autosparse.training import NonFiniteLossError, evaluate, train




def scores_for(shapes: dict[str, tuple[int, ...]], seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return {n: torch.randn(s, generator=generator) for n, s in shapes.items()}


def select_top_k(scores: dict[str, torch.Tensor], density: float) -> Mask:
    return top_k_within_layers(scores, global_counts(scores, round(density * sum(s.numel() for s in scores.values()))))


SHAPES = {"conv": (4, 2, 3, 3), "fc": (10, 20), "head": (3, 10)}  # 72 + 200 + 30 = 302


# ---------------------------------------------------------------- sanity variants


def test_shuffle_mask_keeps_per_layer_counts_and_moves_positions():
    mask = select_top_k(scores_for(SHAPES), 0.2)
    original = {n: t.clone() for n, t in mask.items()}
    shuffled = shuffle_mask(mask, seed=0)
    assert list(shuffled) == list(mask)
    for name in mask:
        assert shuffled[name].dtype == torch.bool
        assert shuffled[name].shape == mask[name].shape
        assert int(shuffled[name].sum()) == int(mask[name].sum()), name
    assert shuffled.num_kept() == mask.num_kept() == round(0.2 * 302)
    assert all(not torch.equal(shuffled[n], mask[n]) for n in mask if 0 < int(mask[n].sum()) < mask[n].numel())
    again, other = shuffle_mask(mask, seed=0), shuffle_mask(mask, seed=1)
    assert all(torch.equal(again[n], shuffled[n]) for n in mask)
    assert any(not torch.equal(other[n], shuffled[n]) for n in mask)
    assert all(torch.equal(mask[n], original[n]) for n in mask)  # the input mask itself is untouched
    assert mask.num_kept() == 60


def test_shuffle_mask_keeps_collapsed_and_dense_layers():
    mask = Mask({"empty": torch.zeros(5, dtype=torch.bool), "full": torch.ones(2, 3, dtype=torch.bool),
                 "one": torch.tensor([False, False, True, False])})
    shuffled = shuffle_mask(mask, seed=3)
    assert not shuffled["empty"].any() and shuffled["full"].all()
    assert int(shuffled["one"].sum()) == 1


@pytest.mark.parametrize("allocation", ["global", "uniform"])
def test_invert_keeps_the_complement_at_half_density(allocation):
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 4))  # 24 distinct |w|
    mask = autosparse.prune(net, 0.5, "magnitude", allocation=allocation)
    inverted = autosparse.prune(net, 0.5, "magnitude", allocation=allocation, invert=True)
    for name in mask:
        assert torch.equal(inverted[name], ~mask[name]), name


def test_reinit_seed_differs_from_seed_and_is_injective():
    seeds = list(range(20))
    mapped = [reinit_seed(s) for s in seeds]
    assert all(m != s for m, s in zip(mapped, seeds))
    assert not set(mapped) & set(seeds)
    assert len(set(mapped)) == len(seeds)
    assert reinit_seed(0) == reinit_seed(0)


# ---------------------------------------------------------------- training


def masked_mlp(dataset, seed=0):
    model = build_model("mlp", dataset.input_shape, dataset.num_classes, seed=seed)
    mask = autosparse.prune(model, 0.8, "snip", data=dataset.sample_batch(256, seed=seed))
    apply_mask(model, mask)
    return model, mask


def test_train_is_deterministic_and_keeps_pruned_weights_zero(digits):
    config = TrainConfig(epochs=2, batch_size=128, lr=0.05, momentum=0.9, weight_decay=5e-4, schedule="cosine")
    runs = []
    for _ in range(2):
        model, mask = masked_mlp(digits)
        steps, epochs = [], []
        history = train(model, digits, config, seed=7, on_step=steps.append,
                        on_epoch=lambda *args, epochs=epochs: epochs.append(args))
        runs.append((model, history))
        assert len(history.train_loss) == len(history.test_accuracy) == 2
        assert steps == list(range(1, 2 * math.ceil(1347 / 128) + 1))  # 11 batches per epoch
        assert [e[0] for e in epochs] == [0, 1]
        assert [e[1] for e in epochs] == history.train_loss and [e[2] for e in epochs] == history.test_accuracy
        assert history.final_accuracy == history.test_accuracy[-1]
        for name, param in prunable_parameters(model).items():
            assert (param[~mask[name]] == 0).all(), name
        assert all(0.0 <= a <= 1.0 for a in history.test_accuracy)
        assert history.train_loss[1] < history.train_loss[0] < math.log(10) + 0.2
        assert history.final_accuracy > 0.5  # it learned something in two epochs (about 0.8)
        assert model.training
    (first, h1), (second, h2) = runs
    assert h1.train_loss == h2.train_loss and h1.test_accuracy == h2.test_accuracy
    for (name, a), b in zip(first.named_parameters(), second.parameters()):
        assert torch.equal(a, b), name


def test_train_depends_on_the_seed(digits):
    config = TrainConfig(epochs=1, batch_size=128, lr=0.05)
    weights = []
    for seed in (0, 1):
        model = build_model("mlp", digits.input_shape, 10, seed=0)
        train(model, digits, config, seed=seed)
        weights.append(model[1].weight.detach().clone())
    assert not torch.equal(weights[0], weights[1])  # batch order differs


def test_train_with_huge_learning_rate_raises_non_finite_loss(digits):
    model = build_model("mlp", digits.input_shape, 10, seed=0)
    with pytest.raises(NonFiniteLossError, match=r"epoch 1 \(lr 1000000.0\)"):
        train(model, digits, TrainConfig(epochs=1, lr=1e6), seed=0)


class NaNOutput(nn.Module):
    def __init__(self, num_inputs: int):
        super().__init__()
        self.fc = nn.Linear(num_inputs, 10)

    def forward(self, x):
        return self.fc(x.flatten(1)) * float("nan")


def test_train_with_nan_outputs_raises_non_finite_loss(digits):
    history = []
    with pytest.raises(NonFiniteLossError, match="nan"):
        train(NaNOutput(64), digits, TrainConfig(epochs=3, schedule="constant"), seed=0,
              on_epoch=lambda *args: history.append(args))
    assert history == []  # raised in the first epoch, before any epoch was reported
    assert issubclass(NonFiniteLossError, UserError)


def test_evaluate_matches_hand_accuracy_and_restores_mode(digits):
    model = build_model("mlp", digits.input_shape, 10, seed=0)
    train(model, digits, TrainConfig(epochs=1, lr=0.05), seed=0)
    with torch.no_grad():
        logits = model.eval()(digits.prepare(digits.test.inputs, train=False))
    expected = int((logits.argmax(1) == digits.test.targets).sum()) / 450
    for mode in (True, False):
        model.train(mode)
        accuracy = evaluate(model, digits)
        assert 0.0 <= accuracy <= 1.0
        assert accuracy == pytest.approx(expected, abs=1e-12)
        assert model.training is mode
        assert all(m.training is mode for m in model.modules())
    assert evaluate(model, digits, batch_size=7) == pytest.approx(expected, abs=1e-12)  # ragged batches
    on_train = evaluate(model, digits, digits.train)
    assert 0.0 <= on_train <= 1.0 and on_train != accuracy  # the split argument is used


def test_evaluate_restores_per_module_modes(digits):
    model = nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 10))
    model.train()
    model[2].eval()
    evaluate(model, digits)
    assert model.training and not model[2].training


# ---------------------------------------------------------------- datasets


def test_digits_split(digits):
    assert len(digits.train) == 1347 and len(digits.test) == 450
    assert digits.train.inputs.shape == (1347, 1, 8, 8) and digits.test.inputs.shape == (450, 1, 8, 8)
    assert digits.input_shape == (1, 8, 8) and digits.num_classes == 10
    train_rows = {tuple(r) for r in digits.train.inputs.flatten(1).tolist()}
    test_rows = {tuple(r) for r in digits.test.inputs.flatten(1).tolist()}
    assert len(train_rows) == 1347 and len(test_rows) == 450
    assert not train_rows & test_rows
    # stratified: every class is in both splits, in about the same proportion
    train_counts = torch.bincount(digits.train.targets, minlength=10)
    test_counts = torch.bincount(digits.test.targets, minlength=10)
    assert (test_counts > 0).all() and ((train_counts.float() / test_counts.float()) - 3).abs().max() < 0.2
    # normalization statistics come from the training split
    prepared = digits.prepare(digits.train.inputs, train=False)
    assert float(prepared.mean()) == pytest.approx(0.0, abs=1e-5)
    assert float(prepared.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)


def test_digits_split_covers_the_whole_dataset(digits):
    from sklearn.datasets import load_digits

    bunch = load_digits()
    everything = sorted(tuple((row / 16.0).astype("float32").tolist()) + (int(y),)
                        for row, y in zip(bunch.data, bunch.target))
    ours = sorted(tuple(x) + (int(y),) for split in (digits.train, digits.test)
                  for x, y in zip(split.inputs.flatten(1).tolist(), split.targets.tolist()))
    assert ours == everything


def test_mnist1d_shapes():
    data = load_dataset("mnist1d")
    assert data.train.inputs.shape == (4000, 1, 40) and data.test.inputs.shape == (1000, 1, 40)
    assert data.train.inputs.dtype == torch.float32 and data.train.targets.dtype == torch.long
    assert data.num_classes == 10 and data.input_shape == (1, 40)
    assert set(data.train.targets.unique().tolist()) == set(range(10))


def test_unknown_dataset_is_a_key_error_naming_it():
    with pytest.raises(UserError, match="'no_such_dataset'"):
        load_dataset("no_such_dataset")


# ---------------------------------------------------------------- models


def input_shape_for(name: str) -> tuple[int, ...]:
    return (1, 40) if name == "conv1d" else (1, 8, 8)


@pytest.mark.parametrize("name", MODELS.names())
def test_every_model_builds_and_outputs_logits(name):
    shape = input_shape_for(name)
    model = build_model(name, shape, 7, seed=0)
    assert isinstance(model, nn.Module) and prunable_parameters(model)
    with torch.no_grad():
        out = model.eval()(torch.randn(3, *shape))
    assert out.shape == (3, 7)
    assert torch.isfinite(out).all()


def test_registry_has_the_documented_models():
    assert {"mlp", "conv", "conv1d", "resnet18", "resnet20", "resnet32", "vgg11", "vgg16", "vgg19"} <= set(MODELS)


def test_mlp_builds_for_images_and_signals():
    for shape in ((1, 8, 8), (1, 40)):
        model = build_model("mlp", shape, 10)
        assert model(torch.randn(2, *shape)).shape == (2, 10)
        assert model[1].in_features == math.prod(shape)


def test_build_model_is_seeded_and_leaves_the_global_rng_alone():
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = build_model("conv", (1, 8, 8), 10, seed=0)
    assert torch.equal(torch.get_rng_state(), state)
    b = build_model("conv", (1, 8, 8), 10, seed=0)
    c = build_model("conv", (1, 8, 8), 10, seed=1)
    assert torch.equal(torch.get_rng_state(), state)
    for (name, pa), pb, pc in zip(a.named_parameters(), b.parameters(), c.parameters()):
        assert torch.equal(pa, pb), name
        if name.endswith("weight"):
            assert not torch.equal(pa, pc), name
    torch.manual_seed(999)  # the global seed does not leak into the initialization
    assert torch.equal(build_model("conv", (1, 8, 8), 10, seed=0)[0].weight, a[0].weight)


USER_MODULE = '''
from torch import nn


def factory(input_shape, num_classes):
    return nn.Sequential(nn.Flatten(), nn.Linear(input_shape[0] * input_shape[1], num_classes))


not_callable = 3


def not_a_module(input_shape, num_classes):
    return "nope"
'''


def test_user_model_by_import_path(tmp_path, monkeypatch):
    (tmp_path / "autosparse_user_model_mod.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("autosparse_user_model_mod:factory", (1, 40), 4, seed=2)
    assert model(torch.randn(5, 1, 40)).shape == (5, 4)
    again = build_model("autosparse_user_model_mod:factory", (1, 40), 4, seed=2)
    assert torch.equal(model[1].weight, again[1].weight)
    assert list(prunable_parameters(model)) == ["1.weight"]
    with pytest.raises(UserError, match="autosparse_user_model_mod:missing"):
        build_model("autosparse_user_model_mod:missing", (1, 40), 4)
    with pytest.raises(UserError, match="not callable"):
        build_model("autosparse_user_model_mod:not_callable", (1, 40), 4)
    with pytest.raises(UserError, match="not an nn.Module"):
        build_model("autosparse_user_model_mod:not_a_module", (1, 40), 4)


@pytest.mark.parametrize("name", ["no_such_model", "no_such_module_xyz:factory"])
def test_unknown_model_is_a_user_error_naming_it(name):
    with pytest.raises(UserError, match=name):
        build_model(name, (1, 8, 8), 10)
    with pytest.raises(UnknownNameError):
        build_model(name, (1, 8, 8), 10)


@pytest.mark.parametrize("name,shape", [("conv", (1, 40)), ("resnet20", (1, 40)), ("vgg11", (1, 40)),
                                        ("conv1d", (1, 8, 8))])
def test_models_reject_inputs_of_the_wrong_rank(name, shape):
    with pytest.raises(UserError, match=rf"'{name}'.*{re_shape(shape)}"):
        build_model(name, shape, 10)


def re_shape(shape: tuple[int, ...]) -> str:
    return str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")

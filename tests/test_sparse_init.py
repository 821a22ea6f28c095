"""Sparse inits (autosparse/sparse_init.py) against hand-computed factors, and the signal at init."""
from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from autosparse import Mask, apply_mask, build_model, prunable_parameters, prune
from autosparse.config import MatrixConfig, ModelOnData, TrainConfig
from autosparse.data import load_dataset
from autosparse.matrix_cell import CellSpec, run_cell
from autosparse.registry import UnknownNameError
from autosparse.schema import ConfigError
from autosparse.errors import UserError
from autosparse.sparse_init import SPARSE_INITS, output_spreads, signal_at_init

INITS = SPARSE_INITS.registered()
WEIGHT = torch.tensor([[1.0, 2.0, 3.0, 4.0], [-1.0, 0.5, 2.0, -2.0], [0.3, -0.2, 0.1, 0.4]])
KEPT = torch.tensor([[True, False, True, False], [False, False, False, True], [False, False, False, False]])


def linear_with(weight: torch.Tensor) -> nn.Linear:
    """A Linear layer with these weights and zero biases."""
    layer = nn.Linear(weight.shape[1], weight.shape[0])
    with torch.no_grad():
        layer.weight.copy_(weight)
        layer.bias.zero_()
    return layer


def test_layer_variance_restores_the_layer_squared_norm_by_hand():
    layer = linear_with(WEIGHT)
    apply_mask(layer, Mask({"weight": KEPT}), "layer_variance")
    dense, kept = 30.0 + 9.25 + 0.30, 1 + 9 + 4  # sums of squares: every weight, the kept ones
    assert torch.allclose(layer.weight, WEIGHT * KEPT * math.sqrt(dense / kept))
    assert float(layer.weight.detach().square().sum()) == pytest.approx(dense)


def test_unit_fan_in_restores_each_unit_squared_norm_by_hand():
    layer = linear_with(WEIGHT)
    apply_mask(layer, Mask({"weight": KEPT}), "unit_fan_in")
    factors = torch.tensor([math.sqrt(30 / 10), math.sqrt(9.25 / 4), 1.0]).view(3, 1)  # unit 3 keeps nothing
    assert torch.allclose(layer.weight, WEIGHT * KEPT * factors)
    assert torch.allclose(layer.weight.square().sum(1)[:2], WEIGHT.square().sum(1)[:2])
    assert torch.equal(layer.weight[2], torch.zeros(4))  # an empty unit stays zero: no NaN, nothing revived


def test_unit_fan_in_on_a_conv_rescales_per_output_channel():
    conv = nn.Conv1d(2, 3, 2, bias=False)
    kept = torch.zeros(3, 2, 2, dtype=torch.bool)
    kept[0, 0, 0] = kept[1, :, :] = True
    kept[2, 1, 1] = True
    dense = conv.weight.detach().clone()
    apply_mask(conv, Mask({"weight": kept}), "unit_fan_in")
    norms = conv.weight.detach().square().flatten(1).sum(1)
    assert torch.allclose(norms, dense.square().flatten(1).sum(1))  # each channel's norm, whatever it kept
    assert torch.equal(conv.weight[1], dense[1])  # a channel that kept everything is bit-identical


def test_random_masks_get_the_textbook_factors():
    """For a random mask the layer factor is 1/sqrt(density) and the unit factor sqrt(fan-in / kept fan-in)."""
    torch.manual_seed(0)
    layer = nn.Linear(4000, 8)
    dense = layer.weight.detach().clone()
    kept = torch.rand(8, 4000) < 0.02
    apply_mask(layer, Mask({"weight": kept}), "layer_variance")
    factor = (layer.weight.detach()[kept] / dense[kept]).mean()
    assert float(factor) == pytest.approx(1 / math.sqrt(float(kept.float().mean())), rel=0.1)
    layer.weight.data.copy_(dense)
    apply_mask(layer, Mask({"weight": kept}), "unit_fan_in")
    for unit in range(8):
        ratio = float((layer.weight.detach()[unit][kept[unit]] / dense[unit][kept[unit]]).mean())
        assert ratio == pytest.approx(math.sqrt(4000 / int(kept[unit].sum())), rel=0.15)


@pytest.mark.parametrize("init", INITS)
def test_pruned_weights_stay_exactly_zero_under_every_init_while_training(init):
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    mask = Mask({name: torch.rand(p.shape) < 0.4 for name, p in prunable_parameters(model).items()})
    apply_mask(model, mask, init, torch.randn(32, 6))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-3)
    for _ in range(5):
        optimizer.zero_grad()
        F.cross_entropy(model(torch.randn(16, 6)), torch.randint(0, 3, (16,))).backward()
        optimizer.step()
    for name, param in prunable_parameters(model).items():
        assert torch.count_nonzero(param[~mask[name]]) == 0, name


@pytest.mark.parametrize("init", INITS)
def test_every_init_leaves_a_dense_layer_bit_identical_and_is_idempotent(init):
    layer, inputs = linear_with(WEIGHT), torch.randn(32, 4)
    apply_mask(layer, Mask({"weight": torch.ones_like(KEPT)}), init, inputs)
    assert torch.equal(layer.weight, WEIGHT)
    apply_mask(layer, Mask({"weight": KEPT}), init, inputs)
    once = layer.weight.detach().clone()
    apply_mask(layer, Mask({"weight": KEPT}), init, inputs)
    assert torch.allclose(layer.weight, once)


def test_calibrated_matches_the_dense_output_spread_by_hand():
    """One unit, weights (1, 2), the second pruned. Inputs (+-1, 0) and (0, +-3): the dense outputs
    (1, -1, 6, -6) have variance 18.5. unit_fan_in multiplies the kept weight by sqrt(5 / 1), giving outputs
    (+-sqrt5, 0, 0) of variance 2.5; calibration multiplies by sqrt(18.5 / 2.5): the weight becomes sqrt(37)."""
    layer = linear_with(torch.tensor([[1.0, 2.0]]))
    inputs = torch.tensor([[1.0, 0.0], [-1.0, 0.0], [0.0, 3.0], [0.0, -3.0]])
    apply_mask(layer, Mask({"weight": torch.tensor([[True, False]])}), "calibrated", inputs)
    assert torch.allclose(layer.weight, torch.tensor([[math.sqrt(37.0), 0.0]]))
    assert float((inputs @ layer.weight.detach().T).var(unbiased=False)) == pytest.approx(18.5)


def test_calibrated_restores_every_layer_spread_of_a_deep_sparse_net_in_forward_order():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 64), nn.ReLU(),
                          nn.Linear(64, 5))
    inputs = torch.randn(128, 16)
    dense = output_spreads(model, list(prunable_parameters(model)), inputs)
    assert list(dense) == ["0.weight", "2.weight", "4.weight", "6.weight"]  # forward order
    apply_mask(model, prune(model, 0.95, "random", seed=0), "calibrated", inputs)
    sparse = output_spreads(model, list(prunable_parameters(model)), inputs)
    assert sparse == pytest.approx(dense, rel=1e-5)
    assert model.training  # the mode is restored


def test_calibrated_needs_a_batch():
    with pytest.raises(UserError, match="'calibrated' calibrates on a batch"):
        apply_mask(nn.Linear(2, 2), Mask({"weight": torch.ones(2, 2, dtype=torch.bool)}), "calibrated")


def test_original_is_the_dense_initialization_times_the_mask_bit_for_bit():
    model = build_model("conv", (1, 8, 8), 10, seed=3)
    dense = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    mask = prune(model, 0.9, "random", seed=3)
    apply_mask(model, mask, "original")
    for name, param in prunable_parameters(model).items():
        assert torch.equal(param, dense[name] * mask[name])  # what apply_mask did before sparse inits existed


@pytest.mark.parametrize("init", INITS)
def test_a_cell_is_deterministic_for_a_seed_under_every_init(init):
    dataset = load_dataset("digits")
    spec = CellSpec(ModelOnData("mlp", "digits"), "snip", 0.95, seed=4, train=TrainConfig(epochs=1, batch_size=256),
                    init=init)
    first, second = run_cell(spec, dataset), run_cell(spec, dataset)
    for key in ("test_accuracy", "initial_loss", "init_logit_std", "init_grad_norm"):
        assert first[key] == second[key], key
    assert first["train_loss_per_epoch"] == second["train_loss_per_epoch"]


def test_a_rescaling_init_restores_the_signal_of_a_deep_sparse_net():
    """DESIGN.md 1c: at 99% a deep net's output is nearly constant with the dense values; rescaled, it is not."""
    torch.manual_seed(0)
    layers = [nn.Linear(64, 256), nn.ReLU()] + [m for _ in range(5) for m in (nn.Linear(256, 256), nn.ReLU())]
    model = nn.Sequential(*layers, nn.Linear(256, 10))
    for layer in model[::2]:  # He init: the dense net passes its signal through
        nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
    inputs, targets = torch.randn(128, 64), torch.randint(0, 10, (128,))
    mask = prune(model, 0.99, "random", seed=0)
    signal = {}
    for init in INITS:
        net = copy.deepcopy(model)
        apply_mask(net, mask, init, inputs)
        signal[init] = signal_at_init(net, inputs, targets)
    for rescaled in ("layer_variance", "unit_fan_in", "calibrated"):
        assert signal["original"].logit_std < 1e-4 * signal[rescaled].logit_std
        assert signal["original"].grad_norm < 0.05 * signal[rescaled].grad_norm
    assert signal["original"].loss == pytest.approx(math.log(10), abs=0.02)  # a constant output (but its bias)


def test_signal_at_init_by_hand_and_without_side_effects():
    layer = linear_with(torch.tensor([[1.0, 0.0], [0.0, 2.0]]))
    inputs, targets = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 2.0]]), torch.tensor([0, 1, 1])
    apply_mask(layer, Mask({"weight": torch.tensor([[True, False], [True, True]])}))
    layer.eval()
    signal = signal_at_init(layer, inputs, targets)
    logits = inputs @ layer.weight.detach().T  # [[1, 0], [0, 2], [2, 4]]
    assert signal.logit_std == pytest.approx(float(logits.std(0).mean()))
    reference = linear_with(layer.weight.detach())
    F.cross_entropy(reference(inputs), targets).backward()
    expected = (reference.weight.grad * torch.tensor([[1.0, 0.0], [1.0, 1.0]])).norm()  # the pruned one is masked
    assert signal.grad_norm == pytest.approx(float(expected), rel=1e-6)
    assert signal.loss == pytest.approx(float(F.cross_entropy(logits, targets)))
    assert not layer.training and layer.weight.grad is None and layer.bias.grad is None  # mode restored, no gradient left behind


def test_an_unknown_init_is_a_one_line_error_naming_it():
    with pytest.raises(UnknownNameError, match="'fancy'"):
        apply_mask(nn.Linear(2, 2), Mask({"weight": torch.ones(2, 2, dtype=torch.bool)}), "fancy")
    with pytest.raises(ConfigError, match="init.*'fancy'.*known: calibrated, layer_variance, original, unit_fan_in"):
        MatrixConfig(init="fancy")
    with pytest.raises(ConfigError, match="compare_inits"):
        MatrixConfig(init="original", compare_inits=["original"])


def test_cell_labels_name_a_non_default_init_and_dense_never():
    common = dict(target=ModelOnData("mlp", "digits"), sparsity=0.98, seed=0, train=TrainConfig())
    assert CellSpec(method="snip", init=MatrixConfig().init, **common).label == "snip"
    other = next(name for name in INITS if name != MatrixConfig().init)
    assert CellSpec(method="snip", init=other, variant="shuffle", **common).label == f"snip+shuffle init:{other}"
    assert CellSpec(method="dense", init=other, **common).label == "dense"

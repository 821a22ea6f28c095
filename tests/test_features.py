"""Init features: values against hand computations on tiny nets, layer constants, standardization, errors."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from autosparse import UserError
from autosparse.config import CONDITIONAL_FEATURES, TRANSFERABLE_FEATURES
from autosparse.criteria import GRASP_TEMPERATURE
from autosparse.features import EPSILON, FEATURES, all_feature_names, compute_features, feature_versions
from autosparse.masks import Mask, masked_copy
from autosparse.registry import UnknownNameError

ALL_FEATURES = all_feature_names()


def mlp_net() -> nn.Sequential:
    """Bias-free 4 -> 3 -> 2 ReLU net."""
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 3, bias=False), nn.ReLU(), nn.Linear(3, 2, bias=False))


def mlp_batch(seed: int = 1, rows: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(rows, 4, generator=generator), torch.randint(0, 2, (rows,), generator=generator)


def conv_net(batch_norm: bool = False) -> nn.Sequential:
    """Conv2d(2, 3, 3) on 2x4x4 inputs -> 3x2x2 -> Linear(12, 5)."""
    torch.manual_seed(0)
    norm = [nn.BatchNorm2d(3)] if batch_norm else []
    return nn.Sequential(nn.Conv2d(2, 3, 3), *norm, nn.ReLU(), nn.Flatten(), nn.Linear(12, 5))


def conv_batch() -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(2)
    return torch.randn(8, 2, 4, 4, generator=generator), torch.randint(0, 5, (8,), generator=generator)


def column(features: dict, layer: str, names: list[str], name: str, shape) -> torch.Tensor:
    return features[layer][:, names.index(name)].view(shape)


def hand_gradient(w1: torch.Tensor, w2: torch.Tensor, x: torch.Tensor, y: torch.Tensor, temperature: float = 1.0):
    """Backpropagation written out for mean cross-entropy of relu(x W1^T) W2^T / T (no autograd)."""
    pre = x @ w1.T
    hidden = pre.clamp_min(0)
    logits = hidden @ w2.T / temperature
    probs = logits.softmax(1)
    onehot = torch.zeros_like(probs)
    onehot[torch.arange(len(y)), y] = 1.0
    d_logits = (probs - onehot) / (len(y) * temperature)
    grad_w2 = d_logits.T @ hidden
    d_pre = (d_logits @ w2) * (pre > 0)
    grad_w1 = d_pre.T @ x
    return grad_w1, grad_w2


def standardized(values: torch.Tensor) -> torch.Tensor:
    values = values.double()
    return (values - values.mean()) / values.std(unbiased=False)


# ---------------------------------------------------------------- registry


def test_feature_groups_come_from_the_registry():
    assert ALL_FEATURES == FEATURES.names()
    assert set(TRANSFERABLE_FEATURES) <= set(ALL_FEATURES) and set(CONDITIONAL_FEATURES) <= set(ALL_FEATURES)
    assert feature_versions(["w0", "synflow_gz"]) == {"w0": 1, "synflow_gz": 1}


# ---------------------------------------------------------------- weight and gradient features


def test_weight_and_gradient_features_match_hand_computation():
    model = mlp_net()
    x, y = mlp_batch()
    names = ["w0", "abs_w0", "g0", "snip"]
    features = compute_features(model, [(x, y)], names)
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    assert list(features) == ["0.weight", "2.weight"]
    assert features["0.weight"].shape == (12, 4) and features["2.weight"].shape == (6, 4)
    assert features["0.weight"].dtype == torch.float32

    grad_w1, grad_w2 = hand_gradient(w1.double(), w2.double(), x.double(), y)
    for layer, weight, grad in (("0.weight", w1, grad_w1), ("2.weight", w2, grad_w2)):
        assert torch.equal(column(features, layer, names, "w0", weight.shape), weight)
        assert torch.equal(column(features, layer, names, "abs_w0", weight.shape), weight.abs())
        torch.testing.assert_close(column(features, layer, names, "g0", weight.shape).double(), grad,
                                   rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(column(features, layer, names, "snip", weight.shape).double(),
                                   (weight.double() * grad).abs(), rtol=1e-5, atol=1e-8)
    assert float(grad_w1.abs().max()) > 1e-3  # the check above is not vacuous


def test_gradient_over_several_batches_is_their_mean():
    model = mlp_net()
    batches = [mlp_batch(1), mlp_batch(5, rows=4)]
    g0 = compute_features(model, batches, ["g0"])
    w1, w2 = model[0].weight.detach().double(), model[2].weight.detach().double()
    parts = [hand_gradient(w1, w2, x.double(), y) for x, y in batches]
    torch.testing.assert_close(g0["0.weight"][:, 0].view(3, 4).double(), (parts[0][0] + parts[1][0]) / 2,
                               rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(g0["2.weight"][:, 0].view(2, 3).double(), (parts[0][1] + parts[1][1]) / 2,
                               rtol=1e-5, atol=1e-7)


def test_grasp_is_weight_times_hessian_gradient_product_at_temperature_200():
    model = mlp_net().double()
    x, y = mlp_batch()
    x = x.double()
    grasp = compute_features(model, [(x, y)], ["grasp"])
    w1, w2 = model[0].weight.detach(), model[2].weight.detach()
    g1, g2 = hand_gradient(w1, w2, x, y, GRASP_TEMPERATURE)
    step = 1e-4 / math.sqrt(float((g1 ** 2).sum() + (g2 ** 2).sum()))  # central difference along g
    plus = hand_gradient(w1 + step * g1, w2 + step * g2, x, y, GRASP_TEMPERATURE)
    minus = hand_gradient(w1 - step * g1, w2 - step * g2, x, y, GRASP_TEMPERATURE)
    hg1, hg2 = (plus[0] - minus[0]) / (2 * step), (plus[1] - minus[1]) / (2 * step)
    torch.testing.assert_close(grasp["0.weight"][:, 0].view(3, 4).double(), w1 * hg1, rtol=1e-3, atol=1e-12)
    torch.testing.assert_close(grasp["2.weight"][:, 0].view(2, 3).double(), w2 * hg2, rtol=1e-3, atol=1e-12)
    assert float((w2 * hg2).abs().max()) > 1e-7


def test_synflow_matches_the_path_norm_derivative():
    model = mlp_net()
    x, y = mlp_batch()
    names = ["synflow", "synflow_z", "synflow_gz"]
    features = compute_features(model, [(x, y)], names)
    a1, a2 = model[0].weight.detach().double().abs(), model[2].weight.detach().double().abs()
    # R = 1^T |W2| |W1| 1 on an all-ones input: dR/dW1[i,j] = sum_k |W2[k,i]|, dR/dW2[k,i] = sum_j |W1[i,j]|.
    expected1 = a1 * a2.sum(0)[:, None]
    expected2 = a2 * a1.sum(1)[None, :]
    torch.testing.assert_close(column(features, "0.weight", names, "synflow", (3, 4)).double(), expected1,
                               rtol=1e-6, atol=0)
    torch.testing.assert_close(column(features, "2.weight", names, "synflow", (2, 3)).double(), expected2,
                               rtol=1e-6, atol=0)
    logs = {"0.weight": (expected1 + EPSILON).log().flatten(), "2.weight": (expected2 + EPSILON).log().flatten()}
    for layer, values in logs.items():
        torch.testing.assert_close(features[layer][:, 1].double(), standardized(values), rtol=1e-5, atol=1e-5)
    overall = standardized(torch.cat(list(logs.values())))
    torch.testing.assert_close(torch.cat([features[n][:, 2] for n in logs]).double(), overall, rtol=1e-5, atol=1e-5)


def test_synflow_needs_only_the_input_shape():
    model = mlp_net()
    with_data = compute_features(model, [mlp_batch()], ["synflow"])
    shape_only = compute_features(model, None, ["synflow"], input_shape=(4,))
    for layer in with_data:
        assert torch.equal(with_data[layer], shape_only[layer])


# ---------------------------------------------------------------- layer constants


def test_layer_constants_of_a_conv_and_linear_net():
    model = conv_net()
    names = ["depth", "log_fan_in", "log_fan_out", "kernel_size", "log_layer_size", "layer_kind", "log_layer_share"]
    features = compute_features(model, [conv_batch()], names)
    assert list(features) == ["0.weight", "3.weight"]
    expected = {
        # Conv2d(2, 3, 3): 54 weights, fan-in 2*9, fan-out 3*9. Linear(12, 5): 60 weights.
        "0.weight": [0.0, math.log(18), math.log(27), 9.0, math.log(54), 1.0, math.log(54 / 114)],
        "3.weight": [1.0, math.log(12), math.log(5), 1.0, math.log(60), 0.0, math.log(60 / 114)],
    }
    for layer, values in expected.items():
        matrix = features[layer]
        assert matrix.shape == (54 if layer == "0.weight" else 60, len(names))
        for index, value in enumerate(values):
            assert bool((matrix[:, index] == matrix[0, index]).all()), (layer, names[index])
            assert float(matrix[0, index]) == pytest.approx(value, rel=1e-6, abs=1e-7), (layer, names[index])
    shares = [math.exp(float(features[n][0, names.index("log_layer_share")])) for n in features]
    assert sum(shares) == pytest.approx(1.0, rel=1e-6)


def test_depth_is_spread_evenly_from_zero_to_one():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
    depth = compute_features(model, None, ["depth"])
    assert [float(depth[n][0, 0]) for n in depth] == [0.0, 0.5, 1.0]


# ---------------------------------------------------------------- standardized features


def test_layer_standardized_features_have_zero_mean_and_unit_std_per_layer():
    model = conv_net()
    names = ["w0_z", "g0_z", "log_snip_z", "synflow_z"]
    features = compute_features(model, [conv_batch()], names)
    for layer, matrix in features.items():
        for index, name in enumerate(names):
            values = matrix[:, index].double()
            assert float(values.mean()) == pytest.approx(0.0, abs=1e-5), (layer, name)
            assert float(values.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4), (layer, name)
    weight = model[0].weight.detach().flatten()
    torch.testing.assert_close(features["0.weight"][:, 0].double(), standardized(weight), rtol=1e-5, atol=1e-5)


def test_model_standardized_features_have_zero_mean_and_unit_std_over_the_model():
    model = conv_net()
    names = ["log_abs_w0_gz", "log_snip_gz", "synflow_gz"]
    features = compute_features(model, [conv_batch()], names)
    for index, name in enumerate(names):
        values = torch.cat([m[:, index] for m in features.values()]).double()
        assert float(values.mean()) == pytest.approx(0.0, abs=1e-5), name
        assert float(values.std(unbiased=False)) == pytest.approx(1.0, abs=1e-4), name
        # not standardized per layer: the two layers' means differ
        means = [float(m[:, index].double().mean()) for m in features.values()]
        assert abs(means[0] - means[1]) > 1e-3, name
    weights = torch.cat([model[0].weight.detach().flatten(), model[3].weight.detach().flatten()]).double()
    expected = standardized((weights.abs() + EPSILON).log())
    torch.testing.assert_close(torch.cat([m[:, 0] for m in features.values()]).double(), expected,
                               rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- every feature, side effects, errors


@pytest.mark.parametrize("name", sorted(ALL_FEATURES))
def test_every_feature_computes_on_a_conv_net_with_batch_norm(name):
    model = conv_net(batch_norm=True)
    features = compute_features(model, [conv_batch()], [name])
    assert list(features) == ["0.weight", "4.weight"]
    assert features["0.weight"].shape == (54, 1) and features["4.weight"].shape == (60, 1)
    for matrix in features.values():
        assert matrix.dtype == torch.float32
        assert bool(torch.isfinite(matrix).all())


def test_compute_features_leaves_the_model_untouched():
    model = conv_net(batch_norm=True).eval()
    with torch.no_grad():
        model[1].running_mean.fill_(0.25)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    features = compute_features(model, [conv_batch()], list(ALL_FEATURES))
    assert not model.training
    after = model.state_dict()
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    assert all(p.grad is None for p in model.parameters())
    features["0.weight"][:, ALL_FEATURES.index("w0")] = 0.0  # the result does not alias the weights
    assert torch.equal(model[0].weight.detach(), before["0.weight"])


def test_unknown_feature_raises_a_user_error_naming_it():
    with pytest.raises(UserError, match="no_such_feature") as error:
        compute_features(mlp_net(), [mlp_batch()], ["w0", "no_such_feature"])
    assert isinstance(error.value, UnknownNameError)


@pytest.mark.parametrize("name", ["g0", "snip", "grasp", "g0_z", "log_snip_z", "log_snip_gz"])
def test_data_feature_without_batches_raises_a_user_error(name):
    with pytest.raises(UserError, match="needs data"):
        compute_features(mlp_net(), None, [name])


def test_synflow_without_data_or_input_shape_raises_a_user_error():
    with pytest.raises(UserError, match="input shape"):
        compute_features(mlp_net(), None, ["synflow_z"])


def test_data_free_features_need_no_batches():
    model = mlp_net()
    features = compute_features(model, None, ["w0", "depth", "log_abs_w0_gz"])
    assert torch.equal(features["2.weight"][:, 0], model[2].weight.detach().flatten())


# ---------------------------------------------------------------- features of a masked network

MASK = Mask({"0.weight": torch.tensor([[1, 0, 1, 1], [0, 0, 0, 0], [1, 1, 0, 1]], dtype=torch.bool),
             "2.weight": torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.bool)})


def test_gradient_features_are_those_of_the_masked_network():
    model = mlp_net()
    x, y = mlp_batch()
    features = compute_features(masked_copy(model, MASK), [(x, y)], ["w0", "g0", "snip"], mask=MASK)
    w1 = model[0].weight.detach().double() * MASK["0.weight"]
    w2 = model[2].weight.detach().double() * MASK["2.weight"]
    grad_w1, grad_w2 = hand_gradient(w1, w2, x.double(), y)
    for layer, weight, grad, shape in (("0.weight", w1, grad_w1, (3, 4)), ("2.weight", w2, grad_w2, (2, 3))):
        assert torch.equal(features[layer][:, 0].view(shape).double(), weight)  # pruned weights read as zero
        torch.testing.assert_close(features[layer][:, 1].view(shape).double(), grad, rtol=1e-5, atol=1e-7)
        torch.testing.assert_close(features[layer][:, 2].view(shape).double(), (weight * grad).abs(),
                                   rtol=1e-5, atol=1e-8)


def test_standardization_runs_over_the_kept_weights_only():
    model = mlp_net()
    features = compute_features(masked_copy(model, MASK), [mlp_batch()], ["w0_z", "log_abs_w0_z", "log_abs_w0_gz"],
                                 mask=MASK)
    for layer in ("0.weight", "2.weight"):
        kept = MASK[layer].flatten()
        weights = model.state_dict()[layer].flatten().double()
        torch.testing.assert_close(features[layer][kept, 0].double(), standardized(weights[kept]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(features[layer][kept, 1].double(), standardized((weights[kept].abs() + EPSILON).log()),
                                   rtol=1e-5, atol=1e-5)
    kept_logs = torch.cat([(model.state_dict()[n].flatten().double().abs() + EPSILON).log()[MASK[n].flatten()]
                           for n in ("0.weight", "2.weight")])
    overall = torch.cat([features[n][MASK[n].flatten(), 2] for n in ("0.weight", "2.weight")]).double()
    torch.testing.assert_close(overall, standardized(kept_logs), rtol=1e-5, atol=1e-5)


def test_connectivity_features_hand_values():
    names = ["out_unit_kept", "in_unit_kept", "log_layer_density", "log_density"]
    features = compute_features(masked_copy(mlp_net(), MASK), None, names, mask=MASK)
    first = features["0.weight"]
    # rows of layer 0 keep 3/4, 0/4, 3/4 of their inputs; its columns keep 2/3, 1/3, 1/3, 2/3
    assert first[:, 0].view(3, 4)[:, 0].tolist() == [0.75, 0.0, 0.75]
    assert first[:, 1].view(3, 4)[0].tolist() == pytest.approx([2 / 3, 1 / 3, 1 / 3, 2 / 3])
    assert float(first[0, 2]) == pytest.approx(math.log(6 / 12))
    assert float(features["2.weight"][0, 2]) == pytest.approx(math.log(4 / 6))
    assert float(first[0, 3]) == pytest.approx(math.log(10 / 18)) == float(features["2.weight"][5, 3])


def test_conv_connectivity_counts_kernel_positions_per_unit():
    model = conv_net()
    kept = torch.ones(3, 2, 3, 3, dtype=torch.bool)
    kept[0, 1] = False  # output channel 0 loses its whole second input channel
    mask = Mask({"0.weight": kept, "3.weight": torch.ones(5, 12, dtype=torch.bool)})
    features = compute_features(masked_copy(model, mask), None, ["out_unit_kept", "in_unit_kept"], mask=mask)
    out_kept, in_kept = features["0.weight"][:, 0].view(3, 2, 3, 3), features["0.weight"][:, 1].view(3, 2, 3, 3)
    assert out_kept[:, 0, 0, 0].tolist() == [0.5, 1.0, 1.0]
    assert in_kept[0, :, 0, 0].tolist() == pytest.approx([1.0, 2 / 3])


def test_dense_mask_gives_the_unmasked_features():
    model = mlp_net()
    dense = Mask.dense(model)
    names = list(CONDITIONAL_FEATURES)
    plain = compute_features(mlp_net(), [mlp_batch()], names)
    masked = compute_features(masked_copy(model, dense), [mlp_batch()], names, mask=dense)
    for layer in plain:
        torch.testing.assert_close(plain[layer], masked[layer])

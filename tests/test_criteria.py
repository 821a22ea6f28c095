"""Pruning criteria against closed forms on tiny models, plus the prune() entry point's guarantees."""
from __future__ import annotations

import pytest
import torch
from torch import nn

import autosparse
from autosparse import CRITERIA, UserError, prunable_parameters
from autosparse.criteria import GRASP_TEMPERATURE, synflow_scores
from autosparse.masks import Mask, masked_copy

from helpers import two_layer_net


def single_linear(dtype=torch.float32) -> nn.Linear:
    torch.manual_seed(0)
    return nn.Linear(3, 2, bias=False).to(dtype)


def batch(size=5, features=3, classes=2, seed=0, dtype=torch.float32):
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(size, features, generator=generator).to(dtype)
    y = torch.randint(0, classes, (size,), generator=generator)
    return x, y


class BNNet(nn.Module):
    """Conv + BatchNorm + Linear on (1, 4, 4) inputs: has buffers that a careless criterion would update."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(3)
        self.conv = nn.Conv2d(1, 3, 3, padding=1)
        self.bn = nn.BatchNorm2d(3)
        self.fc = nn.Linear(3 * 16, 4)
        with torch.no_grad():  # non-trivial BN parameters and statistics
            self.bn.weight.uniform_(0.5, 1.5)
            self.bn.bias.uniform_(-0.5, 0.5)
            self.bn.running_mean.uniform_(-0.2, 0.2)
            self.bn.running_var.uniform_(0.5, 2.0)

    def forward(self, x):
        return self.fc(self.bn(self.conv(x)).relu().flatten(1))


def bn_batch(size=8, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(size, 1, 4, 4, generator=generator), torch.randint(0, 4, (size,), generator=generator)


def snapshot(model: nn.Module):
    return (
        {n: t.detach().clone() for n, t in model.state_dict().items()},
        {n: m.training for n, m in model.named_modules()},
        {n: (p.dtype, p.requires_grad) for n, p in model.named_parameters()},
    )


def assert_unchanged(model: nn.Module, before) -> None:
    state, modes, params = before
    after_state, after_modes, after_params = snapshot(model)
    assert after_state.keys() == state.keys()
    for name in state:
        assert torch.equal(after_state[name], state[name]), name
    assert after_modes == modes
    assert after_params == params
    assert all(p.grad is None for p in model.parameters())


# ---------------------------------------------------------------- magnitude


def test_magnitude_is_absolute_weight():
    net = two_layer_net()
    scores = autosparse.score(net, "magnitude")
    assert scores["0.weight"].tolist() == [[0.5, 1.0, 2.0], [0.25, 0.75, 1.5]]
    assert scores["1.weight"].tolist() == [[1.0, 2.0], [0.5, 3.0]]
    mask = autosparse.prune(net, 0.6, "magnitude")  # keep round(0.4 * 10) = 4 largest |w|: 2, 1.5, 2(W2), 3
    assert mask["0.weight"].tolist() == [[False, False, True], [False, False, True]]
    assert mask["1.weight"].tolist() == [[False, True], [False, True]]


# ---------------------------------------------------------------- SNIP


def hand_snip_gradient(w: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """dL/dW of mean softmax cross-entropy for logits W x: mean_b (softmax(W x_b) - onehot(y_b)) x_b^T."""
    w, x = w.double(), x.double()
    grad = torch.zeros_like(w)
    for xb, yb in zip(x, y):
        z = w @ xb
        p = torch.exp(z - z.max())
        p = p / p.sum()
        onehot = torch.zeros_like(p)
        onehot[yb] = 1.0
        grad += torch.outer(p - onehot, xb)
    return grad / len(x)


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_snip_closed_form_on_a_single_linear_layer(dtype, rtol):
    layer = single_linear(dtype)
    x, y = batch(dtype=dtype)
    w = layer.weight.detach().double()
    expected = (w * hand_snip_gradient(w, x, y)).abs()
    scores = autosparse.score(layer, "snip", data=(x, y))
    assert set(scores) == {"weight"}
    torch.testing.assert_close(scores["weight"].double(), expected, rtol=rtol, atol=0)


def test_snip_over_several_batches_averages_the_gradients():
    layer = single_linear(torch.float64)
    (x1, y1), (x2, y2) = batch(4, seed=1, dtype=torch.float64), batch(6, seed=2, dtype=torch.float64)
    w = layer.weight.detach()
    mean_gradient = (hand_snip_gradient(w, x1, y1) + hand_snip_gradient(w, x2, y2)) / 2
    scores = autosparse.score(layer, "snip", data=[(x1, y1), (x2, y2)])
    torch.testing.assert_close(scores["weight"], (w * mean_gradient).abs(), rtol=1e-10, atol=0)


# ---------------------------------------------------------------- GraSP


def softmax_rows(w: torch.Tensor, x: torch.Tensor, temperature: float) -> list[torch.Tensor]:
    probs = []
    for xb in x:
        z = (w @ xb) / temperature
        p = torch.exp(z - z.max())
        probs.append(p / p.sum())
    return probs


def hand_grasp(w: torch.Tensor, batches, temperature: float) -> torch.Tensor:
    """W * (H g): logits z = W x / T, g = dL/dW (mean over batches), H g = mean over batches of
    mean_b [(diag(p) - p p^T) (G x_b) / T^2] x_b^T, with G the overall g."""
    w = w.double()
    batches = [(x.double(), y) for x, y in batches]
    g = torch.zeros_like(w)
    for x, y in batches:
        for xb, yb, p in zip(x, y, softmax_rows(w, x, temperature)):
            onehot = torch.zeros_like(p)
            onehot[yb] = 1.0
            g += torch.outer(p - onehot, xb) / temperature / len(x) / len(batches)
    hg = torch.zeros_like(w)
    for x, _ in batches:
        for xb, p in zip(x, softmax_rows(w, x, temperature)):
            jacobian = torch.diag(p) - torch.outer(p, p)
            hg += torch.outer(jacobian @ (g @ xb) / temperature**2, xb) / len(x) / len(batches)
    return w * hg


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
def test_grasp_closed_form_on_a_single_linear_layer(dtype, rtol):
    assert GRASP_TEMPERATURE == 200.0
    layer = single_linear(dtype)
    x, y = batch(6, seed=4, dtype=dtype)
    expected = hand_grasp(layer.weight.detach(), [(x, y)], 200.0)
    assert expected.abs().min() > 0  # a meaningful comparison: no accidental zeros
    scores = autosparse.score(layer, "grasp", data=(x, y))
    torch.testing.assert_close(scores["weight"].double(), expected, rtol=rtol, atol=0)


def test_grasp_over_several_batches_uses_the_mean_gradient():
    layer = single_linear(torch.float64)
    batches = [batch(4, seed=5, dtype=torch.float64), batch(7, seed=6, dtype=torch.float64)]
    expected = hand_grasp(layer.weight.detach(), batches, 200.0)
    scores = autosparse.score(layer, "grasp", data=batches)
    torch.testing.assert_close(scores["weight"], expected, rtol=1e-9, atol=0)
    # not the same as pairing each batch's Hessian with its own gradient
    own = sum(hand_grasp(layer.weight.detach(), [b], 200.0) for b in batches) / 2
    assert not torch.allclose(own, expected, rtol=1e-3, atol=0)


# ---------------------------------------------------------------- SynFlow


def test_synflow_single_pass_closed_form():
    net = two_layer_net()
    w1, w2 = net[0].weight.detach().double(), net[1].weight.detach().double()
    before = snapshot(net)
    scores = synflow_scores(net, (3,))
    assert_unchanged(net, before)  # the pass runs on absolute-valued copies of the tensors, not on the model
    # R = 1^T |W2| |W1| 1
    expected_w1 = w1.abs() * w2.abs().sum(0)[:, None]  # |W1[i,j]| * sum_k |W2[k,i]|
    expected_w2 = w2.abs() * w1.abs().sum(1)[None, :]  # |W2[k,i]| * sum_j |W1[i,j]|
    torch.testing.assert_close(scores["0.weight"], expected_w1, rtol=1e-12, atol=0)
    torch.testing.assert_close(scores["1.weight"], expected_w2, rtol=1e-12, atol=0)
    # hand values: sum_k |W2[k,:]| = [1.5, 5.0], sum_j |W1[i,:]| = [3.5, 2.5]
    assert scores["0.weight"].tolist() == [[0.75, 1.5, 3.0], [1.25, 3.75, 7.5]]
    assert scores["1.weight"].tolist() == [[3.5, 5.0], [1.75, 7.5]]
    # conservation: every layer's scores sum to R
    r = float(w2.abs().sum(0) @ w1.abs().sum(1))
    assert float(scores["0.weight"].sum()) == pytest.approx(r) == float(scores["1.weight"].sum())


def test_synflow_single_pass_on_a_masked_copy_uses_masked_weights():
    net = two_layer_net()
    mask = Mask({"0.weight": torch.tensor([[True, False, True], [False, True, True]]),
                 "1.weight": torch.tensor([[True, True], [False, True]])})
    before = snapshot(net)
    scores = synflow_scores(masked_copy(net, mask), (3,))
    assert_unchanged(net, before)
    w1 = net[0].weight.detach().double().abs() * mask["0.weight"]
    w2 = net[1].weight.detach().double().abs() * mask["1.weight"]
    torch.testing.assert_close(scores["0.weight"], w1 * w2.sum(0)[:, None], rtol=1e-12, atol=0)
    torch.testing.assert_close(scores["1.weight"], w2 * w1.sum(1)[None, :], rtol=1e-12, atol=0)


def test_iterative_synflow_exact_density_and_model_unchanged():
    model = BNNet().train()
    before = snapshot(model)
    total = sum(p.numel() for p in prunable_parameters(model).values())  # 27 + 192 = 219
    mask = autosparse.prune(model, 0.9, "synflow", input_shape=(1, 4, 4))
    assert total == 219 and mask.num_kept() == 22
    assert mask.collapsed_layers() == []
    assert_unchanged(model, before)
    again = autosparse.prune(model, 0.9, "synflow", input_shape=(1, 4, 4))
    assert all(torch.equal(again[n], mask[n]) for n in mask)  # deterministic


def test_iterative_synflow_avoids_the_layer_collapse_of_magnitude():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(20, 20, bias=False), nn.ReLU(), nn.Linear(20, 20, bias=False), nn.ReLU(),
                        nn.Linear(20, 20, bias=False))
    with torch.no_grad():
        net[2].weight.mul_(1e-3)  # the middle layer's weights are all smaller than any other
    assert autosparse.prune(net, 0.97, "magnitude").collapsed_layers() == ["2.weight"]
    mask = autosparse.prune(net, 0.97, "synflow", input_shape=(20,))
    assert mask.collapsed_layers() == []
    assert mask.num_kept() == 36


def test_synflow_needs_an_input_shape_without_data():
    with pytest.raises(UserError, match="input_shape"):
        autosparse.prune(two_layer_net(), 0.5, "synflow")
    x, y = batch()
    from_data = autosparse.prune(two_layer_net(), 0.5, "synflow", data=(x, y))
    from_shape = autosparse.prune(two_layer_net(), 0.5, "synflow", input_shape=(3,))
    assert all(torch.equal(from_data[n], from_shape[n]) for n in from_shape)


# ---------------------------------------------------------------- random


def test_random_is_seeded_and_ignores_weights():
    model = BNNet()
    a = autosparse.prune(model, 0.7, "random", seed=5)
    b = autosparse.prune(model, 0.7, "random", seed=5)
    c = autosparse.prune(model, 0.7, "random", seed=6)
    assert all(torch.equal(a[n], b[n]) for n in a)
    assert any(not torch.equal(a[n], c[n]) for n in a)
    other = BNNet()
    with torch.no_grad():
        for p in other.parameters():
            p.mul_(-3.0)
    d = autosparse.prune(other, 0.7, "random", seed=5)
    assert all(torch.equal(a[n], d[n]) for n in a)
    assert a.num_kept() == round(0.3 * 219)


# ---------------------------------------------------------------- every criterion


@pytest.mark.parametrize("name", CRITERIA.names())
@pytest.mark.parametrize("mode", ["train", "eval", "mixed"])
def test_no_criterion_changes_weights_buffers_or_mode(name, mode):
    model = BNNet()
    model.train(mode != "eval")
    if mode == "mixed":
        model.bn.eval()  # a frozen BatchNorm inside a training model
    before = snapshot(model)
    data = bn_batch()
    mask = autosparse.prune(model, 0.8, name, data=data, input_shape=(1, 4, 4), seed=1)
    assert mask.num_kept() == round(0.2 * 219)
    mask.validate(model)
    assert_unchanged(model, before)


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize("sparsity", [0, 1, 1.5, -0.1, float("nan")])
def test_prune_rejects_sparsity_outside_open_unit_interval(sparsity):
    with pytest.raises(UserError, match=f"sparsity {sparsity!r}"):
        autosparse.prune(two_layer_net(), sparsity, "magnitude")


def test_prune_unknown_method_is_a_user_error_naming_it():
    with pytest.raises(UserError, match="'no_such_method'"):
        autosparse.prune(two_layer_net(), 0.5, "no_such_method")


@pytest.mark.parametrize("method", ["snip", "grasp"])
def test_data_of_the_wrong_shape_is_a_user_error_naming_the_shape(method):
    x, y = batch(5, features=4)
    with pytest.raises(UserError, match=r"shape \(5, 4\)"):
        autosparse.prune(two_layer_net(), 0.5, method, data=(x, y))


@pytest.mark.parametrize("kwargs", [{"data": batch(5, features=4)}, {"input_shape": (4,)}], ids=["data", "input_shape"])
def test_synflow_with_the_wrong_input_shape_is_a_user_error(kwargs):
    with pytest.raises(UserError, match=r"shape \(1?,? ?4,?\)"):
        autosparse.prune(two_layer_net(), 0.5, "synflow", **kwargs)


@pytest.mark.parametrize("method", sorted(n for n in CRITERIA.names() if CRITERIA.get(n).needs_data))
def test_data_needing_criterion_without_data(method):
    with pytest.raises(UserError, match=f"{method!r} needs data"):
        autosparse.prune(two_layer_net(), 0.5, method, data=None)


def test_snip_and_grasp_need_data():
    assert CRITERIA.get("snip").needs_data and CRITERIA.get("grasp").needs_data
    assert not any(CRITERIA.get(n).needs_data for n in ("random", "magnitude", "synflow"))


@pytest.mark.parametrize("data", [torch.randn(5, 3), [(torch.randn(5, 3),)], 42])
def test_malformed_data_is_a_user_error(data):
    with pytest.raises(UserError, match="data must be"):
        autosparse.prune(two_layer_net(), 0.5, "snip", data=data)

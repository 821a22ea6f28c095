"""How a pruned network is initialized, and how much signal it carries at initialization.

At 98-99% sparsity the kept weights of a layer are a few percent of its fan-in. Left at their dense
values, each layer shrinks the signal by about the square root of its density, and a deep enough network
outputs a constant: no learning rate trains it (DESIGN.md 1c). A sparse init rescales the kept weights of
the dense initialization, after the mask is chosen, so every method's mask is compared on a network that
carries a signal:

- `original`: the kept weights keep their dense initial values (no rescaling).
- `layer_variance`: the kept weights of each layer are multiplied by one factor per layer so that their
  squared norm is the dense layer's. For a random mask that factor is 1/sqrt(layer density); for a mask
  that kept the larger weights it is smaller, so no method's choice is over-amplified.
- `unit_fan_in`: the per-unit rule of Evci et al. 2022 ("Gradient Flow in Sparse Neural Networks and How
  Lottery Tickets Win"): a unit (output feature or channel) with kept fan-in k of n weights gets variance
  n/k times the dense one. Here it is made exact for any mask: each unit's kept weights are multiplied by
  one factor so that their squared norm is that of the unit's dense weights (sqrt(n/k) for a random mask).

- `calibrated`: `unit_fan_in`, then one factor per layer, layer by layer in forward order, so that the
  spread of the layer's output on a batch equals the dense network's (LSUV, Mishkin & Matas 2016, with the
  dense network as the target). The data-free rules count kept weights, not the signal that reaches them:
  at 98-99% many units keep no input, the kept weights downstream of them carry nothing, and the loss
  compounds with depth. Calibration measures it, so it needs a batch of inputs (the scoring batch).

All rescalings leave a dense network bit-identical, never revive a pruned weight and keep signs and the
relative sizes of kept weights within a unit; the data-free ones are idempotent. Biases and normalization
parameters are untouched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from contextlib import contextmanager
from typing import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Registry

ORIGINAL = "original"

Factors = Callable[[Tensor, Tensor], Tensor]


@dataclass(frozen=True)
class SparseInit:
    """`factors(weight, kept)`: the factor of every weight of one layer; `calibrates`: whether the layers are
    then calibrated on a batch against the dense network (`calibrate`); `description`: one line for reports."""

    factors: Factors
    description: str
    calibrates: bool = False


SPARSE_INITS: Registry[SparseInit] = Registry("sparse init")


def _restore_norm(dense_sq: Tensor, kept_sq: Tensor) -> Tensor:
    """sqrt(dense / kept) where anything is kept, else 1 (a unit or layer with no kept weight stays zero)."""
    return torch.where(kept_sq > 0, torch.sqrt(dense_sq / kept_sq.clamp_min(torch.finfo(kept_sq.dtype).tiny)),
                       torch.ones_like(kept_sq))


def original(weight: Tensor, kept: Tensor) -> Tensor:
    """The factor 1 for every weight: the dense initial values."""
    return torch.ones_like(weight)


def layer_variance(weight: Tensor, kept: Tensor) -> Tensor:
    """One factor per layer: the kept weights' squared norm becomes the dense layer's."""
    squares = weight.detach().square()
    return _restore_norm(squares.sum(), (squares * kept).sum()).expand_as(weight)


def unit_fan_in(weight: Tensor, kept: Tensor) -> Tensor:
    """One factor per unit (row of the weight): its kept weights' squared norm becomes its dense weights'."""
    squares = weight.detach().square().flatten(1)
    factor = _restore_norm(squares.sum(1), (squares * kept.flatten(1)).sum(1))
    return factor.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight)


SPARSE_INITS.register(ORIGINAL)(SparseInit(original, "kept weights keep their dense initial values"))
SPARSE_INITS.register("layer_variance")(SparseInit(
    layer_variance, "kept weights rescaled to each layer's dense squared norm"))
SPARSE_INITS.register("unit_fan_in")(SparseInit(
    unit_fan_in, "kept weights rescaled to each unit's dense squared norm (Evci et al. 2022)"))
SPARSE_INITS.register("calibrated")(SparseInit(
    unit_fan_in, "unit_fan_in, then each layer's output spread on the scoring batch matched to the dense "
    "network's", calibrates=True))


def kept_weight_factors(weight: Tensor, kept: Tensor, init: str) -> Tensor:
    """The factor each weight of one layer is multiplied by under `init` before any calibration (pruned
    weights: any value)."""
    return SPARSE_INITS.get(init).factors(weight, kept.to(weight.dtype))


@contextmanager
def _mode(model: nn.Module, training: bool) -> Iterator[None]:
    """Every module in training or evaluation mode for the block; each module's own mode is restored after."""
    modes = {module: module.training for module in model.modules()}
    model.train(training)
    try:
        yield
    finally:
        for module, mode in modes.items():
            module.training = mode


class _Reached(Exception):
    """Ends a forward pass once the layer being measured has produced its output."""


def _spread(output: Tensor, module: nn.Module) -> float:
    """The root mean square over units of each unit's std over the batch (and positions): units are the
    last dimension of a Linear output and the second of a convolution's."""
    units = output.movedim(1 if isinstance(module, nn.modules.conv._ConvNd) else -1, 0).flatten(1)
    return float(units.double().var(1, unbiased=False).mean().sqrt())


def _weight_layers(model: nn.Module, names: list[str]) -> dict[str, nn.Module]:
    """The module whose `weight` each prunable parameter is (parameters declared otherwise are skipped)."""
    layers = {}
    for name in names:
        owner, _, attribute = name.rpartition(".")
        module = model.get_submodule(owner)
        if attribute == "weight" and isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            layers[name] = module
    return layers


@torch.no_grad()
def output_spreads(model: nn.Module, names: list[str], inputs: Tensor) -> dict[str, float]:
    """The spread of each named layer's output on `inputs` (evaluation mode), in forward order."""
    spreads, handles = {}, []
    for name, module in _weight_layers(model, names).items():
        def record(module, args, output, name=name):
            spreads.setdefault(name, _spread(output, module))
        handles.append(module.register_forward_hook(record))
    try:
        with _mode(model, training=False):
            model(inputs)
    finally:
        for handle in handles:
            handle.remove()
    return spreads


@torch.no_grad()
def calibrate(model: nn.Module, dense_spreads: dict[str, float], inputs: Tensor) -> None:
    """Multiply each layer's weight, in forward order, by the factor that makes the spread of its output on
    `inputs` equal its dense spread; a layer whose output carries no spread at all keeps factor 1 (nothing
    reaches it)."""
    with _mode(model, training=False):
        for name, module in _weight_layers(model, list(dense_spreads)).items():
            measured = []

            def stop(module, args, output):
                measured.append(_spread(output, module))
                raise _Reached

            handle = module.register_forward_hook(stop)
            try:
                model(inputs)
            except _Reached:
                pass
            finally:
                handle.remove()
            if measured and measured[0] > 0:
                module.weight.mul_(dense_spreads[name] / measured[0])


@dataclass(frozen=True)
class SignalAtInit:
    """What the initialized (masked) network does on a batch before training.

    `logit_std`: the std over the batch of each logit, averaged over logits (about 0: a constant output,
    which cannot learn). `grad_norm`: the L2 norm of the loss gradient with respect to the prunable weights
    (pruned entries count as zero; biases are left out, since the output bias gets a gradient even from a
    constant output). `loss`: the training loss (about ln(classes) for a constant output).
    """

    loss: float
    logit_std: float
    grad_norm: float


def signal_at_init(model: nn.Module, inputs: Tensor, targets: Tensor) -> SignalAtInit:
    """One training-mode forward and backward pass on a batch; the model's mode and gradients are left as
    they were (normalization layers update their running statistics once, as in a training step)."""
    from .masks import prunable_parameters

    with _mode(model, training=True):
        logits = model(inputs)
        loss = F.cross_entropy(logits, targets)
        grads = torch.autograd.grad(loss, list(prunable_parameters(model).values()), allow_unused=True)
    grad_norm = math.sqrt(sum(float(g.detach().double().square().sum()) for g in grads if g is not None))
    return SignalAtInit(float(loss.detach()), float(logits.detach().double().std(0).mean()), grad_norm)

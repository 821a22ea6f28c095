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

Both rescalings leave a dense layer bit-identical, never revive a pruned weight, keep signs and the
relative sizes of kept weights, and are idempotent. Biases and normalization parameters are untouched.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .registry import Registry

ORIGINAL = "original"

SparseInit = Callable[[Tensor, Tensor], Tensor]
SPARSE_INITS: Registry[SparseInit] = Registry("sparse init")


def _restore_norm(dense_sq: Tensor, kept_sq: Tensor) -> Tensor:
    """sqrt(dense / kept) where anything is kept, else 1 (a unit or layer with no kept weight stays zero)."""
    return torch.where(kept_sq > 0, torch.sqrt(dense_sq / kept_sq.clamp_min(torch.finfo(kept_sq.dtype).tiny)),
                       torch.ones_like(kept_sq))


@SPARSE_INITS.register(ORIGINAL)
def original(weight: Tensor, kept: Tensor) -> Tensor:
    """The factor 1 for every weight: the dense initial values."""
    return torch.ones_like(weight)


@SPARSE_INITS.register("layer_variance")
def layer_variance(weight: Tensor, kept: Tensor) -> Tensor:
    """One factor per layer: the kept weights' squared norm becomes the dense layer's."""
    squares = weight.detach().square()
    return _restore_norm(squares.sum(), (squares * kept).sum()).expand_as(weight)


@SPARSE_INITS.register("unit_fan_in")
def unit_fan_in(weight: Tensor, kept: Tensor) -> Tensor:
    """One factor per unit (row of the weight): its kept weights' squared norm becomes its dense weights'."""
    squares = weight.detach().square().flatten(1)
    factor = _restore_norm(squares.sum(1), (squares * kept.flatten(1)).sum(1))
    return factor.view(-1, *([1] * (weight.dim() - 1))).expand_as(weight)


def kept_weight_factors(weight: Tensor, kept: Tensor, init: str) -> Tensor:
    """The factor each weight of one layer is multiplied by under `init` (pruned weights: any value)."""
    return SPARSE_INITS.get(init)(weight, kept.to(weight.dtype))


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

    modes = {module: module.training for module in model.modules()}
    model.train()
    logits = model(inputs)
    loss = F.cross_entropy(logits, targets)
    grads = torch.autograd.grad(loss, list(prunable_parameters(model).values()), allow_unused=True)
    for module, mode in modes.items():
        module.training = mode
    grad_norm = math.sqrt(sum(float(g.detach().double().square().sum()) for g in grads if g is not None))
    return SignalAtInit(float(loss.detach()), float(logits.detach().double().std(0).mean()), grad_norm)

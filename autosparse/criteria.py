"""Pruning-at-initialization criteria: each scores every prunable weight (higher = keep)."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Callable, Iterable, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .masks import Scope, select_top_k, prunable_parameters
from .registry import Registry

Batch = tuple[Tensor, Tensor]
Scores = dict[str, Tensor]
GRASP_TEMPERATURE = 200.0
SYNFLOW_ROUNDS = 100


@dataclass(frozen=True)
class ScoringContext:
    """Everything a criterion may use. `batches` are model-ready (inputs, targets) pairs or None."""

    model: nn.Module
    batches: Optional[Sequence[Batch]]
    density: float
    seed: int = 0
    scope: Scope = "global"
    input_shape: Optional[tuple[int, ...]] = None

    def require_batches(self, method: str) -> Sequence[Batch]:
        if not self.batches:
            raise ValueError(f"method {method!r} needs data: pass data=(inputs, targets)")
        return self.batches

    def sample_input_shape(self) -> tuple[int, ...]:
        if self.batches:
            return tuple(self.batches[0][0].shape[1:])
        if self.input_shape is None:
            raise ValueError("a data-free criterion needs input_shape= (or data) to know the input size")
        return tuple(self.input_shape)

    def device(self) -> torch.device:
        return next(self.model.parameters()).device


@dataclass(frozen=True)
class Criterion:
    name: str
    score: Callable[[ScoringContext], Scores]
    needs_data: bool

    def __call__(self, context: ScoringContext) -> Scores:
        if self.needs_data:
            context.require_batches(self.name)
        return self.score(context)


CRITERIA: Registry[Criterion] = Registry("pruning method")


def criterion(name: str, needs_data: bool) -> Callable[[Callable[[ScoringContext], Scores]], Criterion]:
    def register(score: Callable[[ScoringContext], Scores]) -> Criterion:
        return CRITERIA.register(name)(Criterion(name, score, needs_data))

    return register


def as_batches(data: object) -> Optional[list[Batch]]:
    """Accept None, one (inputs, targets) pair, or an iterable of such pairs."""
    if data is None:
        return None
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], Tensor):
        return [data]
    if isinstance(data, Iterable):
        batches = list(data)
        if batches and all(isinstance(b, (tuple, list)) and len(b) == 2 for b in batches):
            return [(b[0], b[1]) for b in batches]
    raise ValueError("data must be an (inputs, targets) pair or an iterable of such pairs")


def forward(model: nn.Module, inputs: Tensor) -> Tensor:
    """Run the model, turning a shape mismatch into a ValueError that names the batch shape."""
    try:
        return model(inputs)
    except RuntimeError as error:
        reason = str(error).splitlines()[0]
        raise ValueError(f"data of shape {tuple(inputs.shape)} does not fit the model: {reason}") from None


def scoring_copy(model: nn.Module) -> nn.Module:
    """A private copy to score on, so scoring never touches the caller's weights, buffers or mode."""
    return copy.deepcopy(model)


def loss_gradients(model: nn.Module, batches: Sequence[Batch], temperature: float = 1.0) -> Scores:
    """Mean cross-entropy gradient over the batches w.r.t. each prunable weight of `model`."""
    params = prunable_parameters(model)
    total = {n: torch.zeros_like(p) for n, p in params.items()}
    for inputs, targets in batches:
        loss = F.cross_entropy(forward(model, inputs) / temperature, targets)
        for name, grad in zip(params, torch.autograd.grad(loss, list(params.values()))):
            total[name] += grad / len(batches)
    return total


def hessian_gradient_product(model: nn.Module, batches: Sequence[Batch], temperature: float) -> Scores:
    """H g for the (temperature-scaled) mean loss, with g its gradient, per prunable weight."""
    params = prunable_parameters(model)
    gradient = loss_gradients(model, batches, temperature)
    product = {n: torch.zeros_like(p) for n, p in params.items()}
    for inputs, targets in batches:
        loss = F.cross_entropy(forward(model, inputs) / temperature, targets)
        grads = torch.autograd.grad(loss, list(params.values()), create_graph=True)
        inner = sum((g * gradient[n]).sum() for n, g in zip(params, grads))
        for name, hg in zip(params, torch.autograd.grad(inner, list(params.values()))):
            product[name] += hg / len(batches)
    return product


def synflow_scores(model: nn.Module, input_shape: tuple[int, ...], mask: Optional[dict[str, Tensor]] = None) -> Scores:
    """One SynFlow pass on `model` (modified in place: call on a copy): w * dR/dw with |w|, ones input."""
    model.double().eval()
    params = prunable_parameters(model)
    with torch.no_grad():
        for tensor in model.state_dict().values():
            if tensor.is_floating_point():
                tensor.abs_()
        if mask is not None:
            for name, param in params.items():
                param.mul_(mask[name])
    device = next(model.parameters()).device
    output = forward(model, torch.ones((1, *input_shape), dtype=torch.float64, device=device))
    grads = torch.autograd.grad(output.sum(), list(params.values()))
    return {n: (p * g).detach() for (n, p), g in zip(params.items(), grads)}


@criterion("random", needs_data=False)
def random_scores(context: ScoringContext) -> Scores:
    generator = torch.Generator().manual_seed(context.seed)
    return {n: torch.rand(p.shape, generator=generator) for n, p in prunable_parameters(context.model).items()}


@criterion("magnitude", needs_data=False)
def magnitude_scores(context: ScoringContext) -> Scores:
    return {n: p.detach().abs().clone() for n, p in prunable_parameters(context.model).items()}


@criterion("snip", needs_data=True)
def snip_scores(context: ScoringContext) -> Scores:
    """SNIP (Lee et al. 2019): |w * dL/dw| on the given batches."""
    net = scoring_copy(context.model).train()
    grads = loss_gradients(net, context.batches)
    return {n: (p * grads[n]).detach().abs() for n, p in prunable_parameters(net).items()}


@criterion("grasp", needs_data=True)
def grasp_scores(context: ScoringContext) -> Scores:
    """GraSP (Wang et al. 2020): w * Hg with logits / 200; keeping the highest preserves gradient flow."""
    net = scoring_copy(context.model).train()
    product = hessian_gradient_product(net, context.batches, GRASP_TEMPERATURE)
    return {n: (p * product[n]).detach() for n, p in prunable_parameters(net).items()}


@criterion("synflow", needs_data=False)
def iterative_synflow_scores(context: ScoringContext) -> Scores:
    """SynFlow (Tanaka et al. 2020): 100 rounds on an exponential density schedule down to the target.

    Returns the last round's scores with already-pruned weights at -inf, so selecting at the target
    density reproduces the iterative mask exactly.
    """
    input_shape = context.sample_input_shape()
    names = list(prunable_parameters(context.model))
    mask: Optional[dict[str, Tensor]] = None
    for round_index in range(1, SYNFLOW_ROUNDS + 1):
        scores = synflow_scores(scoring_copy(context.model), input_shape, mask)
        if mask is not None:
            scores = {n: s.masked_fill(~mask[n], -math.inf) for n, s in scores.items()}
        if round_index == SYNFLOW_ROUNDS:
            return {n: scores[n].float() for n in names}
        round_density = context.density ** (round_index / SYNFLOW_ROUNDS)
        mask = dict(select_top_k(scores, round_density, context.scope).to(context.device()))
    raise AssertionError("unreachable")


def erk_layer_densities(shapes: dict[str, torch.Size], density: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities (Evci et al. 2020): proportional to sum(shape)/prod(shape), capped at 1."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        scale = budget / sum(raw[n] * sizes[n] for n in raw if n not in dense)
        overfull = {n for n in raw if n not in dense and raw[n] * scale > 1}
        if not overfull:
            return {n: 1.0 if n in dense else raw[n] * scale for n in raw}
        dense |= overfull


@criterion("erk", needs_data=False)
def erk_scores(context: ScoringContext) -> Scores:
    """Random positions with ERK layer densities: within layer l, score = d_l / (random rank quantile),
    so a global threshold of 1 (hit at the target density) keeps exactly the ERK share of each layer."""
    params = prunable_parameters(context.model)
    densities = erk_layer_densities({n: p.shape for n, p in params.items()}, context.density)
    generator = torch.Generator().manual_seed(context.seed)
    scores = {}
    for name, param in params.items():
        quantile = (torch.randperm(param.numel(), generator=generator).double() + 0.5) / param.numel()
        scores[name] = (densities[name] / quantile).view(param.shape)
    return scores

"""Per-weight features at initialization (the scorer's inputs), as a versioned registry."""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .criteria import (GRASP_TEMPERATURE, Batch, hessian_gradient_product, loss_gradients, scoring_copy,
                       synflow_scores)
from .masks import prunable_parameters
from .registry import Registry

EPSILON = 1e-12


class FeatureContext:
    """Lazily computed quantities shared by features of one model at initialization."""

    def __init__(self, model: nn.Module, batches: Optional[Sequence[Batch]], input_shape: Optional[tuple[int, ...]] = None):
        self.model = model
        self.batches = batches
        self.input_shape = tuple(batches[0][0].shape[1:]) if batches else input_shape
        self.params = {n: p.detach() for n, p in prunable_parameters(model).items()}
        self.modules = {f"{prefix}.weight" if prefix else "weight": m for prefix, m in model.named_modules()
                        if isinstance(m, (nn.modules.conv._ConvNd, nn.Linear))}

    def _require_batches(self, feature: str) -> Sequence[Batch]:
        if not self.batches:
            raise ValueError(f"feature {feature!r} needs data: pass a batch of training data")
        return self.batches

    @cached_property
    def gradient(self) -> dict[str, Tensor]:
        return loss_gradients(scoring_copy(self.model).train(), self._require_batches("g0"))

    @cached_property
    def hessian_gradient(self) -> dict[str, Tensor]:
        return hessian_gradient_product(scoring_copy(self.model).train(), self._require_batches("grasp"),
                                        GRASP_TEMPERATURE)

    @cached_property
    def synflow(self) -> dict[str, Tensor]:
        if self.input_shape is None:
            raise ValueError("feature 'synflow' needs the input shape (pass data)")
        return {n: s.float() for n, s in synflow_scores(scoring_copy(self.model), self.input_shape).items()}

    def layer_constant(self, value: Callable[[int, str, nn.Module], float]) -> dict[str, Tensor]:
        return {n: torch.full_like(p, value(i, n, self.modules[n])) for i, (n, p) in enumerate(self.params.items())}


@dataclass(frozen=True)
class Feature:
    name: str
    version: int
    compute: Callable[[FeatureContext], dict[str, Tensor]]
    doc: str


FEATURES: Registry[Feature] = Registry("feature")


def feature(name: str, version: int = 1) -> Callable:
    def register(compute: Callable[[FeatureContext], dict[str, Tensor]]) -> Feature:
        return FEATURES.register(name)(Feature(name, version, compute, (compute.__doc__ or "").strip()))

    return register


def standardize(values: Tensor) -> Tensor:
    """Zero mean, unit variance within one layer (constant layers map to zeros)."""
    values = values.double()
    return ((values - values.mean()) / (values.std(unbiased=False) + EPSILON)).float()


def _fan_in(module: nn.Module) -> int:
    return module.weight[0].numel()


def _fan_out(module: nn.Module) -> int:
    return module.weight.shape[0] * math.prod(module.weight.shape[2:])


@feature("w0")
def w0(ctx: FeatureContext) -> dict[str, Tensor]:
    """The weight at initialization."""
    return dict(ctx.params)


@feature("abs_w0")
def abs_w0(ctx: FeatureContext) -> dict[str, Tensor]:
    """|w0|."""
    return {n: p.abs() for n, p in ctx.params.items()}


@feature("g0")
def g0(ctx: FeatureContext) -> dict[str, Tensor]:
    """Cross-entropy gradient at initialization on the feature batch."""
    return ctx.gradient


@feature("snip")
def snip(ctx: FeatureContext) -> dict[str, Tensor]:
    """SNIP saliency |w0 * g0|."""
    return {n: (p * ctx.gradient[n]).abs() for n, p in ctx.params.items()}


@feature("grasp")
def grasp(ctx: FeatureContext) -> dict[str, Tensor]:
    """GraSP score w0 * Hg (logits / 200)."""
    return {n: p * ctx.hessian_gradient[n] for n, p in ctx.params.items()}


@feature("synflow")
def synflow(ctx: FeatureContext) -> dict[str, Tensor]:
    """Single-shot SynFlow score (|w| network, all-ones input)."""
    return ctx.synflow


@feature("depth")
def depth(ctx: FeatureContext) -> dict[str, Tensor]:
    """Relative depth of the layer: 0 for the first prunable layer, 1 for the last."""
    last = max(len(ctx.params) - 1, 1)
    return ctx.layer_constant(lambda i, n, m: i / last)


@feature("log_fan_in")
def log_fan_in(ctx: FeatureContext) -> dict[str, Tensor]:
    """log(fan-in): input features (times kernel size for convolutions)."""
    return ctx.layer_constant(lambda i, n, m: math.log(_fan_in(m)))


@feature("log_fan_out")
def log_fan_out(ctx: FeatureContext) -> dict[str, Tensor]:
    """log(fan-out): output features (times kernel size for convolutions)."""
    return ctx.layer_constant(lambda i, n, m: math.log(_fan_out(m)))


@feature("kernel_size")
def kernel_size(ctx: FeatureContext) -> dict[str, Tensor]:
    """Number of kernel positions (1 for linear layers)."""
    return ctx.layer_constant(lambda i, n, m: float(math.prod(m.weight.shape[2:])))


@feature("log_layer_size")
def log_layer_size(ctx: FeatureContext) -> dict[str, Tensor]:
    """log(number of weights in the layer)."""
    return ctx.layer_constant(lambda i, n, m: math.log(m.weight.numel()))


@feature("layer_kind")
def layer_kind(ctx: FeatureContext) -> dict[str, Tensor]:
    """0 for linear layers, 1 for convolutions."""
    return ctx.layer_constant(lambda i, n, m: float(isinstance(m, nn.modules.conv._ConvNd)))


@feature("w0_z")
def w0_z(ctx: FeatureContext) -> dict[str, Tensor]:
    """w0 standardized within its layer."""
    return {n: standardize(p) for n, p in ctx.params.items()}


@feature("g0_z")
def g0_z(ctx: FeatureContext) -> dict[str, Tensor]:
    """g0 standardized within its layer."""
    return {n: standardize(g) for n, g in ctx.gradient.items()}


@feature("log_snip_z")
def log_snip_z(ctx: FeatureContext) -> dict[str, Tensor]:
    """log SNIP saliency, standardized within its layer."""
    return {n: standardize((p * ctx.gradient[n]).abs().double().add(EPSILON).log()) for n, p in ctx.params.items()}


@feature("synflow_z")
def synflow_z(ctx: FeatureContext) -> dict[str, Tensor]:
    """log SynFlow score, standardized within its layer."""
    return {n: standardize(s.double().add(EPSILON).log()) for n, s in ctx.synflow.items()}


@feature("log_layer_share")
def log_layer_share(ctx: FeatureContext) -> dict[str, Tensor]:
    """log(layer's share of all prunable weights): scale-free across model sizes."""
    total = sum(p.numel() for p in ctx.params.values())
    return ctx.layer_constant(lambda i, n, m: math.log(m.weight.numel() / total))


def standardize_over_model(values: dict[str, Tensor]) -> dict[str, Tensor]:
    """Zero mean, unit variance over all prunable weights of the model (keeps cross-layer order)."""
    flat = torch.cat([v.flatten().double() for v in values.values()])
    mean, std = flat.mean(), flat.std(unbiased=False) + EPSILON
    return {n: ((v.double() - mean) / std).float() for n, v in values.items()}


@feature("log_abs_w0_gz")
def log_abs_w0_gz(ctx: FeatureContext) -> dict[str, Tensor]:
    """log|w0|, standardized over the whole model."""
    return standardize_over_model({n: p.abs().double().add(EPSILON).log() for n, p in ctx.params.items()})


@feature("log_snip_gz")
def log_snip_gz(ctx: FeatureContext) -> dict[str, Tensor]:
    """log SNIP saliency, standardized over the whole model."""
    return standardize_over_model({n: (p * ctx.gradient[n]).abs().double().add(EPSILON).log()
                                   for n, p in ctx.params.items()})


@feature("synflow_gz")
def synflow_gz(ctx: FeatureContext) -> dict[str, Tensor]:
    """log SynFlow score, standardized over the whole model."""
    return standardize_over_model({n: s.double().add(EPSILON).log() for n, s in ctx.synflow.items()})


def feature_versions(names: Sequence[str]) -> dict[str, int]:
    return {name: FEATURES.get(name).version for name in names}


def compute_features(model: nn.Module, batches: Optional[Sequence[Batch]], names: Sequence[str],
                     input_shape: Optional[tuple[int, ...]] = None) -> dict[str, Tensor]:
    """Layer name -> (num_weights, len(names)) float32 matrix of the requested features at init."""
    context = FeatureContext(model, batches, input_shape)
    columns = [FEATURES.get(name).compute(context) for name in names]
    return {
        layer: torch.stack([column[layer].detach().flatten().float().cpu() for column in columns], dim=1)
        for layer in context.params
    }

"""Per-weight features of a network at initialization, possibly already pruned (the scorer's inputs).

Features are computed on the network as masked so far: gradients and SynFlow scores are those of the
masked network, standardizations run over the kept weights of a layer (or of the model), and the
connectivity features describe what the mask left. With a dense mask they are the classic init features.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from .criteria import (GRASP_TEMPERATURE, Batch, ScoringError, hessian_gradient_product, loss_gradients,
                       synflow_scores)
from .masks import Mask, prunable_parameters
from .registry import Registry

EPSILON = 1e-12


class FeatureContext:
    """Lazily computed quantities shared by the features of one (masked) network.

    `model` must be private to the caller (gradients are taken on it) with the weights `mask` prunes
    already zero; `mask` None means dense.
    """

    def __init__(self, model: nn.Module, batches: Optional[Sequence[Batch]], input_shape: Optional[tuple[int, ...]] = None,
                 mask: Optional[Mask] = None):
        self.model = model
        self.batches = batches
        self.input_shape = tuple(batches[0][0].shape[1:]) if batches else input_shape
        self.params = {n: p.detach() for n, p in prunable_parameters(model).items()}
        self.kept = {n: (mask[n] if mask is not None else torch.ones_like(p, dtype=torch.bool)).to(p.device)
                     for n, p in self.params.items()}

    def _require_batches(self, feature: str) -> Sequence[Batch]:
        if not self.batches:
            raise ScoringError(f"feature {feature!r} needs data: pass a batch of training data")
        return self.batches

    @cached_property
    def gradient(self) -> dict[str, Tensor]:
        return loss_gradients(self.model, self._require_batches("g0"))

    @cached_property
    def hessian_gradient(self) -> dict[str, Tensor]:
        return hessian_gradient_product(self.model, self._require_batches("grasp"), GRASP_TEMPERATURE)

    @cached_property
    def synflow(self) -> dict[str, Tensor]:
        if self.input_shape is None:
            raise ScoringError("feature 'synflow' needs the input shape (pass data)")
        return synflow_scores(self.model, self.input_shape)

    @cached_property
    def snip(self) -> dict[str, Tensor]:
        return {n: (p * self.gradient[n]).abs() for n, p in self.params.items()}

    def layer_constant(self, value: Callable[[int, str, Tensor], float]) -> dict[str, Tensor]:
        return {n: torch.full_like(p, value(i, n, p)) for i, (n, p) in enumerate(self.params.items())}

    def within_layer(self, values: dict[str, Tensor], log: bool = False) -> dict[str, Tensor]:
        """Standardized over each layer's kept weights (log(|v| + eps) first when `log`)."""
        return {n: standardize(_log(v) if log else v, self.kept[n]) for n, v in values.items()}

    def over_model(self, values: dict[str, Tensor]) -> dict[str, Tensor]:
        """log(|v| + eps), standardized over all kept weights of the model (keeps the cross-layer order)."""
        logs = {n: _log(v) for n, v in values.items()}
        kept = torch.cat([logs[n][self.kept[n]].flatten() for n in logs])
        mean, std = kept.mean(), kept.std(unbiased=False) + EPSILON
        return {n: ((v - mean) / std).float() for n, v in logs.items()}


def _log(values: Tensor) -> Tensor:
    return values.double().abs().add(EPSILON).log()


def standardize(values: Tensor, kept: Optional[Tensor] = None) -> Tensor:
    """Zero mean, unit variance over the kept entries (all when `kept` is None); constant -> zeros."""
    values = values.double()
    reference = values[kept] if kept is not None and bool(kept.any()) else values.flatten()
    return ((values - reference.mean()) / (reference.std(unbiased=False) + EPSILON)).float()


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


def _fan_in(weight: Tensor) -> int:
    return weight[0].numel()


def _fan_out(weight: Tensor) -> int:
    return weight.shape[0] * math.prod(weight.shape[2:])


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
    """Cross-entropy gradient of the (masked) network at initialization on the feature batch."""
    return ctx.gradient


@feature("snip")
def snip(ctx: FeatureContext) -> dict[str, Tensor]:
    """SNIP saliency |w0 * g0| of the (masked) network."""
    return ctx.snip


@feature("grasp")
def grasp(ctx: FeatureContext) -> dict[str, Tensor]:
    """GraSP score w0 * Hg (logits / 200)."""
    return {n: p * ctx.hessian_gradient[n] for n, p in ctx.params.items()}


@feature("synflow")
def synflow(ctx: FeatureContext) -> dict[str, Tensor]:
    """Single-pass SynFlow score of the (masked) network (|w| network, all-ones input)."""
    return {n: s.float() for n, s in ctx.synflow.items()}


def register_layer_constant(name: str, value: Callable[[int, int, Tensor, int], float], doc: str) -> None:
    """A feature constant over a layer: value(index, number of layers, weight, total prunable weights)."""
    def compute(ctx: FeatureContext) -> dict[str, Tensor]:
        total = sum(p.numel() for p in ctx.params.values())
        return ctx.layer_constant(lambda i, n, p: value(i, len(ctx.params), p, total))

    FEATURES.register(name)(Feature(name, 1, compute, doc))


def register_standardized(name: str, values: Callable[[FeatureContext], dict[str, Tensor]], log: bool,
                          over_model: bool, doc: str) -> None:
    """A feature standardized over each layer's kept weights, or (`over_model`, always logged) over all."""
    def compute(ctx: FeatureContext) -> dict[str, Tensor]:
        return ctx.over_model(values(ctx)) if over_model else ctx.within_layer(values(ctx), log)

    FEATURES.register(name)(Feature(name, 1, compute, doc))


for constant in [
    ("depth", lambda i, n, p, total: i / max(n - 1, 1),
     "Relative depth of the layer: 0 for the first prunable layer, 1 for the last."),
    ("log_fan_in", lambda i, n, p, total: math.log(_fan_in(p)),
     "log(fan-in): input features (times kernel size for convolutions)."),
    ("log_fan_out", lambda i, n, p, total: math.log(_fan_out(p)),
     "log(fan-out): output features (times kernel size for convolutions)."),
    ("kernel_size", lambda i, n, p, total: float(math.prod(p.shape[2:])),
     "Number of kernel positions (1 for linear layers)."),
    ("log_layer_size", lambda i, n, p, total: math.log(p.numel()), "log(number of weights in the layer)."),
    ("layer_kind", lambda i, n, p, total: float(p.dim() > 2), "0 for linear layers, 1 for convolutions."),
    ("log_layer_share", lambda i, n, p, total: math.log(p.numel() / total),
     "log(layer's share of all prunable weights): scale-free across model sizes."),
]:
    register_layer_constant(*constant)

for standardized in [
    ("w0_z", lambda ctx: ctx.params, False, False, "w0 standardized over its layer's kept weights."),
    ("log_abs_w0_z", lambda ctx: ctx.params, True, False,
     "log|w0| standardized over its layer's kept weights (the within-layer magnitude rank)."),
    ("g0_z", lambda ctx: ctx.gradient, False, False, "g0 standardized over its layer's kept weights."),
    ("log_snip_z", lambda ctx: ctx.snip, True, False,
     "log SNIP saliency, standardized over its layer's kept weights."),
    ("synflow_z", lambda ctx: ctx.synflow, True, False,
     "log SynFlow score, standardized over its layer's kept weights."),
    ("log_abs_w0_gz", lambda ctx: ctx.params, True, True,
     "log|w0|, standardized over all kept weights of the model."),
    ("log_snip_gz", lambda ctx: ctx.snip, True, True,
     "log SNIP saliency, standardized over all kept weights of the model."),
    ("synflow_gz", lambda ctx: ctx.synflow, True, True,
     "log SynFlow score, standardized over all kept weights of the model."),
]:
    register_standardized(*standardized)


@feature("log_layer_density")
def log_layer_density(ctx: FeatureContext) -> dict[str, Tensor]:
    """log of the share of the layer's weights still kept (0 when dense)."""
    return {n: torch.full_like(p, math.log(max(float(ctx.kept[n].float().mean()), EPSILON)))
            for n, p in ctx.params.items()}


@feature("log_density")
def log_density(ctx: FeatureContext) -> dict[str, Tensor]:
    """log of the share of the model's prunable weights still kept (0 when dense)."""
    share = sum(int(k.sum()) for k in ctx.kept.values()) / sum(k.numel() for k in ctx.kept.values())
    return ctx.layer_constant(lambda i, n, p: math.log(max(share, EPSILON)))


@feature("out_unit_kept")
def out_unit_kept(ctx: FeatureContext) -> dict[str, Tensor]:
    """Share of the weight's output unit's incoming weights (its row) still kept."""
    return {n: k.flatten(1).float().mean(1).view(-1, *[1] * (k.dim() - 1)).expand(k.shape).clone()
            for n, k in ctx.kept.items()}


@feature("in_unit_kept")
def in_unit_kept(ctx: FeatureContext) -> dict[str, Tensor]:
    """Share of the weight's input unit's outgoing weights in this layer (its column) still kept."""
    out = {}
    for name, kept in ctx.kept.items():
        share = kept.transpose(0, 1).flatten(1).float().mean(1)
        out[name] = share.view(1, -1, *[1] * (kept.dim() - 2)).expand(kept.shape).clone()
    return out


def all_feature_names() -> list[str]:
    return FEATURES.names()


def feature_versions(names: Sequence[str]) -> dict[str, int]:
    return {name: FEATURES.get(name).version for name in names}


def compute_features(model: nn.Module, batches: Optional[Sequence[Batch]], names: Sequence[str],
                     input_shape: Optional[tuple[int, ...]] = None, mask: Optional[Mask] = None) -> dict[str, Tensor]:
    """Layer name -> (num_weights, len(names)) float32 matrix of the requested features.

    `model` is used as given (gradients are taken on it): pass a private copy whose pruned weights are
    zero, e.g. `masks.masked_copy(model, mask)`.
    """
    context = FeatureContext(model, batches, input_shape, mask)
    columns = [FEATURES.get(name).compute(context) for name in names]
    return {
        layer: torch.stack([column[layer].detach().flatten().float().cpu() for column in columns], dim=1)
        for layer in context.params
    }

"""The learned layer allocation: a small network from layer context and global density to how much of
the layer IRP keeps, fitted on every (layer, pruning round) of some IRP chains.

It predicts the log ratio of a layer's density to the global density; at pruning time the predictions
for the target's layers are turned into exact per-layer counts (one common factor, capped at dense,
at least one weight per layer). Saved as safetensors with a JSON header, like the scorer.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from .config import AllocatorConfig
from .errors import UserError
from .layer_allocation import Counts, counts_from_densities, keep_count
from .methods import LEARNED_FILES
from .scorer.networks import MLPScorer
from .storage import load_network_file, save_network_file
from .survival import SurvivalDataset

FORMAT = "autosparse.allocator"
FORMAT_VERSION = 1
FIT_VERSION = 1  # how `fit_allocator` fits (enters the allocator stage's hash): bump when its result changes
CONTEXT = ["depth", "is_first", "is_last", "log_fan_in", "log_fan_out", "log_kernel_size", "log_layer_share",
           "layer_kind", "log_density", "log_density*log_layer_share", "log_density*is_last", "log_density*log_fan_in"]
EVALUATION_DENSITIES = (0.05, 0.02, 0.01)


class AllocatorFormatError(UserError):
    """The file is not a loadable allocator for this version of autosparse."""


def layer_context(shapes: Mapping[str, Sequence[int]], density: float) -> Tensor:
    """(layers, len(CONTEXT)) float32: where each layer sits, its shape, the global density, and how the
    density interacts with the layer's share, position and fan-in (a linear model in these extrapolates
    across architectures far better than an MLP on the plain context: BENCHMARKS.md, "Learned allocation")."""
    names = list(shapes)
    total = sum(math.prod(s) for s in shapes.values())
    last = max(len(names) - 1, 1)
    log_density = math.log(density)
    rows = []
    for index, name in enumerate(names):
        shape = list(shapes[name])
        kernel = math.prod(shape[2:])
        is_last, log_fan_in, log_share = float(index == len(names) - 1), math.log(math.prod(shape[1:])), \
            math.log(math.prod(shape) / total)
        rows.append([index / last, float(index == 0), is_last, log_fan_in, math.log(shape[0] * kernel), math.log(kernel),
                     log_share, float(len(shape) > 2), log_density, log_density * log_share, log_density * is_last,
                     log_density * log_fan_in])
    return torch.tensor(rows, dtype=torch.float32)


def layer_densities_by_round(data: SurvivalDataset) -> list[tuple[float, dict[str, float]]]:
    """(global density, per-layer density) after each pruning round r = 1..R of one chain."""
    dense = data.select(data.round == 0)
    sizes = torch.bincount(dense.layer_index, minlength=len(data.layers)).double()
    out = []
    for r in range(1, data.rounds + 1):
        kept = torch.bincount(dense.layer_index, weights=(dense.survival >= r).double(), minlength=len(data.layers))
        out.append((float(kept.sum() / sizes.sum()), {n: float(kept[i] / sizes[i]) for i, n in enumerate(data.layers)}))
    return out


def examples(data: SurvivalDataset) -> tuple[Tensor, Tensor]:
    """Inputs (layer context at each round's global density) and targets (log layer / global density)."""
    shapes = {n: data.metadata["layer_shapes"][n] for n in data.layers}
    sizes = [math.prod(s) for s in shapes.values()]
    inputs, targets = [], []
    for density, layers in layer_densities_by_round(data):
        inputs.append(layer_context(shapes, density))
        targets.append(torch.tensor([math.log(max(layers[n], 1 / size) / density)
                                     for n, size in zip(shapes, sizes)], dtype=torch.float32))
    return torch.cat(inputs), torch.cat(targets)


@dataclass
class Allocator:
    """Predicts each layer's density; call it as an allocation: (shapes, density) -> exact counts."""

    network: nn.Module
    mean: Tensor
    std: Tensor
    header: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def log_ratios(self, shapes: Mapping[str, Sequence[int]], density: float) -> Tensor:
        self.network.eval()
        return self.network((layer_context(shapes, density) - self.mean) / self.std)

    def densities(self, shapes: Mapping[str, Sequence[int]], density: float) -> dict[str, float]:
        """Per-layer densities with exactly the global density (before rounding to whole weights)."""
        sizes = {n: math.prod(s) for n, s in shapes.items()}
        counts = self(shapes, density)
        return {n: counts[n] / sizes[n] for n in sizes}

    def __call__(self, shapes: Mapping[str, Sequence[int]], density: float) -> Counts:
        sizes = {n: math.prod(s) for n, s in shapes.items()}
        ratios = self.log_ratios(shapes, density).exp().tolist()
        return counts_from_densities(sizes, dict(zip(sizes, ratios)), keep_count(sum(sizes.values()), density))

    def save(self, path: str | os.PathLike) -> None:
        save_network_file(path, self.network.state_dict(), self.mean, self.std, self.header, FORMAT, FORMAT_VERSION)


def _train(datasets: Sequence[SurvivalDataset], config: AllocatorConfig) -> Allocator:
    pairs = [examples(d) for d in datasets]
    inputs, targets = torch.cat([p[0] for p in pairs]), torch.cat([p[1] for p in pairs])
    mean, std = inputs.mean(0), inputs.std(0).clamp_min(1e-6)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = MLPScorer(len(CONTEXT), list(config.hidden), batch_norm=False)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    normalized = (inputs - mean) / std
    for _ in range(config.epochs):
        loss = torch.nn.functional.mse_loss(network(normalized), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    network.eval()
    return Allocator(network, mean, std, {"train_loss": loss.item()})


def density_error(allocator: Allocator, data: SurvivalDataset) -> dict[str, float]:
    """Mean |log(predicted / IRP layer density)| at the rounds closest to 5%, 2% and 1% density."""
    shapes = {n: data.metadata["layer_shapes"][n] for n in data.layers}
    rounds = layer_densities_by_round(data)
    metrics = {}
    for target in EVALUATION_DENSITIES:
        density, irp = min(rounds, key=lambda item: abs(math.log(item[0] / target)))
        if abs(math.log(density / target)) > 0.5:
            continue
        predicted = allocator.densities(shapes, density)
        sizes = {n: math.prod(s) for n, s in shapes.items()}
        errors = [abs(math.log(max(predicted[n], 1 / sizes[n]) / max(irp[n], 1 / sizes[n]))) for n in shapes]
        metrics[f"layer_density_error_{target * 100:.0f}pct"] = sum(errors) / len(errors)
    return metrics


def fit_allocator(datasets: Sequence[SurvivalDataset], config: AllocatorConfig) -> tuple[Allocator, dict[str, float]]:
    """Fit on every chain; with several chains, first score leave-one-chain-out fits on the chain left out.

    Returns the allocator fitted on all chains and its validation metrics (`heldout_*`, averaged over
    the chains left out; absent with a single chain) and training-chain metrics (`train_*`).
    """
    metrics: dict[str, list[float]] = {}
    if len(datasets) > 1:
        for index, held in enumerate(datasets):
            partial = _train([d for i, d in enumerate(datasets) if i != index], config)
            for key, value in density_error(partial, held).items():
                metrics.setdefault(f"heldout_{key}", []).append(value)
    allocator = _train(datasets, config)
    for data in datasets:
        for key, value in density_error(allocator, data).items():
            metrics.setdefault(f"train_{key}", []).append(value)
    summary = {key: sum(v) / len(v) for key, v in metrics.items()}
    allocator.header.update({"hidden": list(config.hidden), "context": CONTEXT, "metrics": summary,
                             "sources": [d.label for d in datasets]})
    return allocator, summary


@LEARNED_FILES.register("allocator")
def load_allocator(path: str | os.PathLike) -> Allocator:
    """Load and validate an allocator file; clear errors for foreign, truncated or incompatible files."""
    header, state, mean, std = load_network_file(path, AllocatorFormatError, FORMAT, FORMAT_VERSION, "allocator")
    if header.get("context") != CONTEXT:
        raise AllocatorFormatError(f"{str(path)!r} uses layer context {header.get('context')}, "
                                   f"this autosparse computes {CONTEXT}")
    network = MLPScorer(len(CONTEXT), header["hidden"], batch_norm=False)
    network.load_state_dict(state)
    network.eval()
    return Allocator(network, mean, std, header)

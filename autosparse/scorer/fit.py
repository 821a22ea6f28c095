"""Fitting an AutoS scorer on survival datasets, validated on weights it never trains on."""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..config import ScorerConfig
from ..schema import ConfigError
from ..survival import SurvivalDataset
from .losses import SCORER_LOSSES
from .metrics import iou_at_densities, round_for_density, spearman
from .networks import SCORER_NETWORKS

INFERENCE_CHUNK = 1 << 18
METRIC_ROWS = 400_000


@dataclass
class Rows:
    """Feature rows of one survival dataset (or part of it) with their survival counts."""

    features: Tensor
    survival: Tensor
    rounds: int
    prune_fraction: float
    label: str

    def targets(self, bce_density: float) -> Tensor:
        kept = self.survival >= round_for_density(bce_density, self.prune_fraction)
        return torch.stack([self.survival.float() / self.rounds, kept.float()], dim=1)


@dataclass
class Normalization:
    mean: Tensor
    std: Tensor

    @classmethod
    def fit(cls, features: Tensor, kind: str) -> "Normalization":
        if kind == "none":
            return cls(torch.zeros(features.shape[1]), torch.ones(features.shape[1]))
        values = features.double()
        return cls(values.mean(0).float(), values.std(0).clamp_min(1e-8).float())

    def __call__(self, features: Tensor) -> Tensor:
        return (features - self.mean) / self.std

    def to(self, device: torch.device) -> "Normalization":
        return Normalization(self.mean.to(device), self.std.to(device))


@dataclass
class FitResult:
    network: nn.Module
    normalization: Normalization
    history: list[dict[str, float]] = field(default_factory=list)
    best: dict[str, float] = field(default_factory=dict)
    train_rows: int = 0
    validation_rows: int = 0


def validation_layers(sizes: list[int], fraction: float, seed: int) -> set[int]:
    """Whole layers to hold out: seeded order, adding layers while the held-out share stays near `fraction`.

    At least one layer is held out and at least one kept for training.
    """
    if len(sizes) < 2:
        raise ConfigError("validation: 'layers' needs a model with at least two prunable layers; use 'sources'")
    order = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(seed)).tolist()
    total, held, chosen = sum(sizes), 0, set()
    for index in order:
        if len(chosen) == len(sizes) - 1:
            break
        if not chosen or held + sizes[index] <= 2 * fraction * total:
            chosen.add(index)
            held += sizes[index]
    return chosen


def all_rows(data: SurvivalDataset, features: list[str]) -> Rows:
    meta = data.metadata
    return Rows(data.feature_matrix(features), data.survival, data.rounds, float(meta["prune_fraction"]),
                f"{meta['model']}/{meta['dataset']}/seed{meta['seed']}")


def split_rows(datasets: list[SurvivalDataset], config: ScorerConfig, features: list[str]) -> tuple[list[Rows], list[Rows]]:
    """Training and validation rows that never share a weight: whole layers or whole datasets."""
    if config.validation == "sources" and len(datasets) < 2:
        raise ConfigError("validation: 'sources' needs at least two survival datasets (hold one out)")
    train, validation = [], []
    for position, data in enumerate(datasets):
        rows = all_rows(data, features)
        if config.validation == "sources":
            (validation if position == len(datasets) - 1 else train).append(rows)
            continue
        sizes = torch.bincount(data.layer_index, minlength=len(data.layers)).tolist()
        held = torch.zeros(len(data.layers), dtype=torch.bool)
        held[list(validation_layers(sizes, config.validation_fraction, config.seed + position))] = True
        is_validation = held[data.layer_index]
        for part, chosen in ((train, ~is_validation), (validation, is_validation)):
            part.append(Rows(rows.features[chosen], rows.survival[chosen], rows.rounds, rows.prune_fraction,
                             rows.label))
    return train, validation


@torch.no_grad()
def predict(network: nn.Module, normalization: Normalization, features: Tensor) -> Tensor:
    """Scores for many rows in large chunks on the network's device, gathered in one CPU tensor."""
    network.eval()
    device = next(network.parameters()).device
    normalization = normalization.to(device)
    output = torch.empty(len(features))
    for start in range(0, len(features), INFERENCE_CHUNK):
        chunk = features[start:start + INFERENCE_CHUNK].to(device, non_blocking=True)
        output[start:start + INFERENCE_CHUNK] = network(normalization(chunk)).cpu()
    return output


def evaluate_rows(network: nn.Module, normalization: Normalization, parts: list[Rows], seed: int) -> dict[str, float]:
    """Spearman and top-k IoU per validation part, averaged over parts (Spearman on a row sample)."""
    collected: dict[str, list[float]] = {}
    for part in parts:
        predicted = predict(network, normalization, part.features)
        sample = torch.randperm(len(part.survival), generator=torch.Generator().manual_seed(seed))[:METRIC_ROWS]
        values = {"spearman": spearman(predicted[sample], part.survival[sample]),
                  **iou_at_densities(predicted, part.survival, part.rounds, part.prune_fraction)}
        for key, value in values.items():
            if math.isfinite(value):
                collected.setdefault(key, []).append(value)
    return {key: sum(v) / len(v) for key, v in collected.items()}


def fit_scorer(
    datasets: list[SurvivalDataset],
    config: ScorerConfig,
    *,
    held_out: Sequence[SurvivalDataset] = (),
    on_epoch: Optional[Callable[[int, dict[str, float]], None]] = None,
    progress: bool = False,
) -> FitResult:
    """Train the configured scorer network; early-stop on validation Spearman, keep the best epoch.

    `held_out` datasets (other models or datasets) are scored every epoch as `heldout_*` metrics;
    they never influence training or early stopping.
    """
    train_parts, validation_parts = split_rows(datasets, config, config.features)
    held_out_parts = [all_rows(data, config.features) for data in held_out]
    features = torch.cat([p.features for p in train_parts])
    targets = torch.cat([p.targets(config.bce_density) for p in train_parts])
    normalization = Normalization.fit(features, config.normalization)
    inputs = normalization(features)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = SCORER_NETWORKS.get(config.network)(len(config.features), list(config.hidden))
    loss_fn = SCORER_LOSSES.get(config.loss)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    result = FitResult(network, normalization, train_rows=len(features),
                       validation_rows=sum(len(p.survival) for p in validation_parts))
    best_state, best_score, stale = None, -math.inf, 0
    epochs = range(config.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc="fit-scorer", unit="epoch", leave=False)
    for epoch in epochs:
        network.train()
        rows = torch.randint(0, len(inputs), (config.rows_per_epoch,), generator=generator)
        total = 0.0
        batches = rows.split(config.batch_size)
        for batch in batches:
            loss = loss_fn(network(inputs[batch]), targets[batch], generator)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item()
        metrics = {"loss": total / len(batches),
                   **evaluate_rows(network, normalization, validation_parts, config.seed)}
        if held_out_parts:
            heldout = evaluate_rows(network, normalization, held_out_parts, config.seed)
            metrics.update({f"heldout_{k}": v for k, v in heldout.items()})
        result.history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        if metrics.get("spearman", -math.inf) > best_score:
            best_score, best_state, stale = metrics["spearman"], copy.deepcopy(network.state_dict()), 0
            result.best = {"epoch": float(epoch), **metrics}
        else:
            stale += 1
            if stale >= config.patience:
                break
    if best_state is not None:
        network.load_state_dict(best_state)
    network.eval()
    return result

"""Fitting an AutoS scorer on survival datasets.

Two passes. First the rows are split (whole layers or whole survival datasets held out, never single
rows), the network trains on one side, and the epoch whose validation metrics best predict pruning
quality is chosen (early stopping with patience). Then a fresh network and its normalization are fitted
on every row of every source for that many epochs: that is the saved scorer. Validation only chooses.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
from torch import Tensor, nn

from ..config import ScorerConfig
from ..schema import ConfigError
from ..survival import SurvivalDataset
from .losses import SCORER_LOSSES
from .metrics import (IOU_DENSITIES, density_key, layer_density_error, round_for_density, spearman,
                      within_layer_iou)
from .networks import SCORER_NETWORKS

FIT_VERSION = 3  # bump when fitting or the saved header changes under an unchanged config (enters stage hashes)
INFERENCE_CHUNK = 1 << 18
METRIC_ROWS = 400_000
SELECTION = "within_layer_iou"


@dataclass
class Part:
    """Rows of one survival dataset (or some of its layers) with their training targets."""

    features: Tensor
    targets: Tensor
    survival: Tensor
    round: Tensor
    layer_index: Tensor
    rounds: int
    prune_fraction: float
    label: str
    whole_network: bool

    def __len__(self) -> int:
        return len(self.targets)


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
    epochs: int = 0
    train_rows: int = 0
    validation_rows: int = 0


def targets_for(config: ScorerConfig, data: SurvivalDataset) -> Tensor:
    """The training target per row: survival / R, kept at `bce_density`, or survived the next pruning."""
    if config.target == "next_round":
        return (data.survival.long() > data.round).float()
    if config.loss == "bce":
        return (data.survival >= round_for_density(config.bce_density, float(data.metadata["prune_fraction"]))).float()
    return data.survival.float() / data.rounds


def training_rows(config: ScorerConfig, data: SurvivalDataset) -> SurvivalDataset:
    """A one-shot scorer learns from the dense network (round 0); a conditional one from every round."""
    return data if config.target == "next_round" else data.select(data.round == 0)


def to_part(config: ScorerConfig, data: SurvivalDataset, whole_network: bool) -> Part:
    return Part(data.feature_matrix(config.features), targets_for(config, data), data.survival, data.round,
                data.layer_index, data.rounds, float(data.metadata["prune_fraction"]), data.label, whole_network)


def validation_layers(sizes: list[int], fraction: float, seed: int) -> set[int]:
    """Whole layers to hold out, in a seeded order, while their share of weights stays within `fraction`.

    At least one layer is held out (the smallest, if none fits) and at least two are kept for training.
    """
    if len(sizes) < 3:
        raise ConfigError(f"validation: 'layers' needs a model with at least three prunable layers (this one has "
                          f"{len(sizes)}); use 'sources'")
    order = torch.randperm(len(sizes), generator=torch.Generator().manual_seed(seed)).tolist()
    total, held, chosen = sum(sizes), 0, set()
    for index in order:
        if len(chosen) == len(sizes) - 2:
            break
        if held + sizes[index] <= fraction * total:
            chosen.add(index)
            held += sizes[index]
    return chosen or {min(range(len(sizes)), key=lambda i: (sizes[i], i))}


def split_parts(datasets: Sequence[SurvivalDataset], config: ScorerConfig) -> tuple[list[Part], list[Part]]:
    """Training and validation parts that never share a weight: whole layers or whole datasets."""
    if config.validation == "sources" and len(datasets) < 2:
        raise ConfigError("validation: 'sources' needs at least two survival datasets (hold one out)")
    train, validation = [], []
    for position, data in enumerate(datasets):
        rows = training_rows(config, data)
        if config.validation == "sources":
            (validation if position == len(datasets) - 1 else train).append(to_part(config, rows, True))
            continue
        held = torch.zeros(len(data.layers), dtype=torch.bool)
        held[list(validation_layers(data.layer_sizes(), config.validation_fraction, config.seed + position))] = True
        is_validation = held[rows.layer_index]
        train.append(to_part(config, rows.select(~is_validation), False))
        validation.append(to_part(config, rows.select(is_validation), False))
    return train, validation


def metric_densities(rounds: int, prune_fraction: float) -> list[float]:
    """5%, 2% and 1% where the chain got there; else only its final density."""
    reached = [d for d in IOU_DENSITIES if round_for_density(d, prune_fraction) <= rounds]
    return reached or [(1 - prune_fraction) ** rounds]


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


def part_metrics(predicted: Tensor, part: Part, conditional: bool, seed: int) -> dict[str, float]:
    """Pruning-quality metrics of one validation part (see scorer/metrics.py)."""
    metrics: dict[str, float] = {}
    available = sorted(set(part.round.tolist()))
    for density in metric_densities(part.rounds, part.prune_fraction):
        target_round = round_for_density(density, part.prune_fraction)
        base = max([r for r in available if r < target_round], default=None) if conditional else 0
        if base is None:
            continue
        rows = part.round == base
        kept = part.survival[rows] >= target_round
        key = density_key(density)
        metrics[f"within_layer_iou_{key}"] = within_layer_iou(predicted[rows], kept, part.layer_index[rows])
        if part.whole_network:
            metrics[f"layer_density_error_{key}"] = layer_density_error(predicted[rows], kept, part.layer_index[rows])
    if not conditional:
        sample = torch.randperm(len(part), generator=torch.Generator().manual_seed(seed))[:METRIC_ROWS]
        metrics["spearman"] = spearman(predicted[sample], part.survival[sample])
    return metrics


def evaluate_parts(network: nn.Module, normalization: Normalization, parts: Sequence[Part], conditional: bool,
                   seed: int) -> dict[str, float]:
    """Metrics averaged over parts, plus the selection metric: the mean within-layer IoU."""
    collected: dict[str, list[float]] = {}
    for part in parts:
        values = part_metrics(predict(network, normalization, part.features), part, conditional, seed)
        for key, value in values.items():
            if math.isfinite(value):
                collected.setdefault(key, []).append(value)
    metrics = {key: sum(v) / len(v) for key, v in collected.items()}
    ious = [v for k, v in metrics.items() if k.startswith("within_layer_iou_")]
    if ious:
        metrics[SELECTION] = sum(ious) / len(ious)
    return metrics


def train_network(parts: Sequence[Part], config: ScorerConfig, epochs: int,
                  on_epoch: Optional[Callable[[int, nn.Module, Normalization, float], bool]] = None,
                  progress: bool = False, description: str = "fit-scorer") -> tuple[nn.Module, Normalization]:
    """Train a fresh network on the parts; `on_epoch(epoch, network, normalization, loss)` returning
    False stops early."""
    features = torch.cat([p.features for p in parts])
    targets = torch.cat([p.targets for p in parts])
    normalization = Normalization.fit(features, config.normalization)
    inputs = normalization(features)
    generator = torch.Generator().manual_seed(config.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(config.seed)
        network = SCORER_NETWORKS.get(config.network)(len(config.features), list(config.hidden))
    loss_fn = SCORER_LOSSES.get(config.loss)
    optimizer = torch.optim.AdamW(network.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    iterator = range(epochs)
    if progress:
        from tqdm.auto import tqdm

        iterator = tqdm(iterator, desc=description, unit="epoch", leave=False)
    for epoch in iterator:
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
        if on_epoch is not None and on_epoch(epoch, network, normalization, total / len(batches)) is False:
            break
    network.eval()
    return network, normalization


def fit_scorer(
    datasets: Sequence[SurvivalDataset],
    config: ScorerConfig,
    *,
    held_out: Sequence[SurvivalDataset] = (),
    on_epoch: Optional[Callable[[int, dict[str, float]], None]] = None,
    progress: bool = False,
) -> FitResult:
    """Choose the number of epochs on validation rows, then fit the scorer on every row.

    `held_out` datasets (other models or datasets) are scored every epoch as `heldout_*` metrics;
    they never influence training or the choice of epochs.
    """
    conditional = config.target == "next_round"
    train_parts, validation_parts = split_parts(datasets, config)
    held_out_parts = [to_part(config, training_rows(config, data), True) for data in held_out]
    history: list[dict[str, float]] = []
    scores: list[float] = []
    stale = [0]

    def after_epoch(epoch: int, network: nn.Module, normalization: Normalization, loss: float) -> bool:
        metrics = {"loss": loss, **evaluate_parts(network, normalization, validation_parts, conditional, config.seed)}
        if held_out_parts:
            heldout = evaluate_parts(network, normalization, held_out_parts, conditional, config.seed)
            metrics.update({f"heldout_{k}": v for k, v in heldout.items()})
        history.append(metrics)
        if on_epoch is not None:
            on_epoch(epoch, metrics)
        scores.append(metrics.get(SELECTION, -metrics["loss"]))
        stale[0] = 0 if scores[-1] >= max(scores) - config.selection_tolerance else stale[0] + 1
        return stale[0] < config.patience

    train_network(train_parts, config, config.epochs, after_epoch, progress, "fit-scorer (choose epochs)")
    best = chosen_epoch(scores, config.selection_tolerance)
    epochs = best + 1
    all_parts = [to_part(config, training_rows(config, data), True) for data in datasets]
    network, normalization = train_network(all_parts, config, epochs, progress=progress,
                                           description="fit-scorer (all rows)")
    return FitResult(network, normalization, history, {"epoch": float(best), **history[best]},
                     epochs, sum(len(p) for p in all_parts), sum(len(p) for p in validation_parts))


def chosen_epoch(scores: Sequence[float], tolerance: float) -> int:
    """The latest epoch whose validation score is within `tolerance` of the best one.

    The pruning metrics are flat within noise over many epochs; taking the first peak once chose a scorer
    trained for a single epoch (BENCHMARKS.md, "Choosing the AutoS design"). Early stopping likewise
    counts only epochs more than `tolerance` below the best.
    """
    best = max(scores)
    return max(i for i, score in enumerate(scores) if score >= best - tolerance)

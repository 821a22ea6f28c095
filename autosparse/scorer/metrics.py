"""Validation metrics for a scorer that predict pruning quality.

- `within_layer_iou_<d>pct`: inside each layer, the scorer keeps as many weights as IRP kept at density
  d (the per-layer counts are given, as under an imposed allocation); IoU of the chosen and IRP's kept
  sets, pooled over layers. For a conditional scorer this is teacher-forced: rows are the weights kept at
  the round before, as IRP stood then.
- `layer_density_error_<d>pct`: under one global threshold over the scorer's predictions, the mean
  |log| ratio of each layer's density to IRP's (0 = IRP's allocation exactly); whole networks only.
- `spearman`: rank correlation with survival (the paper's proxy; one-shot scorers only).
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

IOU_DENSITIES = (0.05, 0.02, 0.01)


def spearman(predicted: Tensor, survival: Tensor) -> float:
    """Spearman rank correlation (ties get average ranks)."""
    from scipy.stats import spearmanr  # scipy takes a second to import: only fitting needs it

    value = spearmanr(predicted.double().numpy(), survival.double().numpy()).statistic
    return float(value) if math.isfinite(value) else 0.0


def round_for_density(density: float, prune_fraction: float) -> int:
    """The IRP round whose kept set is closest to `density` (in log space)."""
    return max(1, round(math.log(density) / math.log(1.0 - prune_fraction)))


def within_layer_iou(predicted: Tensor, kept: Tensor, layer_index: Tensor) -> float:
    """Pooled IoU when each layer keeps its top-|kept ∩ layer| predictions (NaN when nothing is kept)."""
    intersection = union = 0
    for layer in torch.unique(layer_index).tolist():
        rows = layer_index == layer
        target = kept[rows]
        k = int(target.sum())
        chosen = torch.zeros_like(target)
        chosen[torch.argsort(predicted[rows], descending=True, stable=True)[:k]] = True
        intersection += int((chosen & target).sum())
        union += int((chosen | target).sum())
    return intersection / union if union else float("nan")


def layer_density_error(predicted: Tensor, kept: Tensor, layer_index: Tensor) -> float:
    """Mean |log(d_pred / d_irp)| over layers when one global top-|kept| over `predicted` decides."""
    k = int(kept.sum())
    chosen = torch.zeros_like(kept)
    chosen[torch.argsort(predicted, descending=True, stable=True)[:k]] = True
    errors = []
    for layer in torch.unique(layer_index).tolist():
        rows = layer_index == layer
        size = int(rows.sum())
        irp = max(int(kept[rows].sum()), 1) / size
        ours = max(int(chosen[rows].sum()), 1) / size
        errors.append(abs(math.log(ours / irp)))
    return sum(errors) / len(errors)


def density_key(density: float) -> str:
    return f"{density * 100:.0f}pct"

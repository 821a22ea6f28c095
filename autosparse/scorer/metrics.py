"""Proxy metrics for a scorer: rank correlation with survival and top-k overlap with IRP's kept set."""
from __future__ import annotations

import math

import torch
from scipy.stats import spearmanr
from torch import Tensor

IOU_DENSITIES = (0.10, 0.05, 0.02, 0.01)


def spearman(predicted: Tensor, survival: Tensor) -> float:
    """Spearman rank correlation (ties get average ranks)."""
    value = spearmanr(predicted.double().numpy(), survival.double().numpy()).statistic
    return float(value) if math.isfinite(value) else 0.0


def round_for_density(density: float, prune_fraction: float) -> int:
    """The IRP round whose kept set is closest to `density` (in log space)."""
    return max(1, round(math.log(density) / math.log(1.0 - prune_fraction)))


def top_k_iou(predicted: Tensor, survival: Tensor, min_survival: int) -> float:
    """IoU between IRP's kept set {survival >= min_survival} and the scorer's top-k of the same size."""
    kept = survival >= min_survival
    k = int(kept.sum())
    if k == 0:
        return float("nan")
    chosen = torch.zeros_like(kept)
    chosen[torch.argsort(predicted, descending=True, stable=True)[:k]] = True
    return int((chosen & kept).sum()) / int((chosen | kept).sum())


def iou_at_densities(predicted: Tensor, survival: Tensor, rounds: int, prune_fraction: float) -> dict[str, float]:
    """`iou_10pct` etc. (top-k IoU at 10% density) for the densities IRP reached in `rounds` rounds."""
    result = {}
    for density in IOU_DENSITIES:
        r = round_for_density(density, prune_fraction)
        if r <= rounds:
            result[f"iou_{density * 100:.0f}pct"] = top_k_iou(predicted, survival, r)
    return result

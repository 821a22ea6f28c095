"""Scorer training losses on one target per row (survival / R, or a 0/1 label for `bce`)."""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import Registry

ScorerLoss = Callable[[Tensor, Tensor, torch.Generator], Tensor]
SCORER_LOSSES: Registry[ScorerLoss] = Registry("scorer loss")


@SCORER_LOSSES.register("mse")
def mse(output: Tensor, targets: Tensor, generator: torch.Generator) -> Tensor:
    """Regression on the target (survival / R: the paper's loss)."""
    return F.mse_loss(output, targets)


@SCORER_LOSSES.register("pairwise")
def pairwise(output: Tensor, targets: Tensor, generator: torch.Generator) -> Tensor:
    """Logistic ranking loss on random pairs in the batch with different survival (RankNet)."""
    partner = torch.randperm(len(output), generator=generator)
    sign = torch.sign(targets - targets[partner])
    valid = sign != 0
    if not bool(valid.any()):
        return output.sum() * 0.0
    return F.softplus(-sign[valid] * (output[valid] - output[partner][valid])).mean()


@SCORER_LOSSES.register("bce")
def bce(output: Tensor, targets: Tensor, generator: torch.Generator) -> Tensor:
    """Classification of a 0/1 label: kept at `bce_density`, or survived the next pruning."""
    return F.binary_cross_entropy_with_logits(output, targets)

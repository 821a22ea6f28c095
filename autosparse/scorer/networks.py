"""Scorer networks: map a (rows, features) matrix to one survival score per row."""
from __future__ import annotations

from typing import Callable

from torch import Tensor, nn

from ..registry import Registry

ScorerNetworkFactory = Callable[[int, list[int]], nn.Module]
SCORER_NETWORKS: Registry[ScorerNetworkFactory] = Registry("scorer network")
PAPER_HIDDEN = [16, 64, 1024, 1024, 64]


class MLPScorer(nn.Module):
    """Linear layers with ReLU (optionally batch norm), ending in one output per row."""

    def __init__(self, num_features: int, hidden: list[int], batch_norm: bool):
        super().__init__()
        layers: list[nn.Module] = []
        width = num_features
        for size in hidden:
            layers.append(nn.Linear(width, size))
            if batch_norm:
                layers.append(nn.BatchNorm1d(size))
            layers.append(nn.ReLU())
            width = size
        layers.append(nn.Linear(width, 1))
        self.layers = nn.Sequential(*layers)

    def forward(self, features: Tensor) -> Tensor:
        return self.layers(features).squeeze(-1)


@SCORER_NETWORKS.register("paper_mlp")
def paper_mlp(num_features: int, hidden: list[int]) -> nn.Module:
    """The AutoSparse paper's scorer: 2-16-64-1024-1024-64-1 with batch norm (hidden sizes fixed)."""
    return MLPScorer(num_features, PAPER_HIDDEN, batch_norm=True)


@SCORER_NETWORKS.register("compact_mlp")
def compact_mlp(num_features: int, hidden: list[int]) -> nn.Module:
    """A small ReLU MLP with configurable hidden sizes: cheap enough to score millions of weights a second."""
    return MLPScorer(num_features, hidden, batch_norm=False)

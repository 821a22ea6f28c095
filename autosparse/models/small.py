"""Small models for the embedded datasets: LeNet-300-100 MLP, a 2-D conv net, a 1-D conv net."""
from __future__ import annotations

import math

from torch import nn

from .base import MODELS, require_rank


def classifier(features: int, num_classes: int) -> list[nn.Module]:
    """Flatten, then a 128-unit hidden layer and the output layer."""
    return [nn.Flatten(), nn.Linear(features, 128), nn.ReLU(), nn.Linear(128, num_classes)]


@MODELS.register("mlp")
def mlp(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """LeNet-300-100: flatten -> 300 -> 100 -> classes."""
    return nn.Sequential(
        nn.Flatten(),
        nn.Linear(math.prod(input_shape), 300), nn.ReLU(),
        nn.Linear(300, 100), nn.ReLU(),
        nn.Linear(100, num_classes),
    )


@MODELS.register("conv")
def conv(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Two 3x3 conv layers (32, 64), max-pool, pooled to 4x4, then 128 -> classes."""
    require_rank("conv", input_shape, 3)
    return nn.Sequential(
        nn.Conv2d(input_shape[0], 32, 3, padding=1), nn.ReLU(),
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2), nn.AdaptiveAvgPool2d(4),
        *classifier(64 * 16, num_classes),
    )


@MODELS.register("conv1d")
def conv1d(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Three 1-D conv layers (32, 64, 64), pooled to length 8, then 128 -> classes."""
    require_rank("conv1d", input_shape, 2)
    return nn.Sequential(
        nn.Conv1d(input_shape[0], 32, 5, padding=2), nn.ReLU(),
        nn.Conv1d(32, 64, 3, padding=1, stride=2), nn.ReLU(),
        nn.Conv1d(64, 64, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool1d(8),
        *classifier(64 * 8, num_classes),
    )

"""Deep networks without normalization for choosing the sparse init, apart from the test set of
benchmarks/foreign_architectures.py (no design is chosen on those). Models are named
`validation_architectures:<class>` (run the scripts from benchmarks/, or with it on the path)."""
from __future__ import annotations

import math

from torch import nn


class DeepNarrowMLP(nn.Sequential):
    """Seven ReLU hidden layers of 128 units."""

    def __init__(self, input_shape, num_classes):
        layers, width = [nn.Flatten()], math.prod(input_shape)
        for _ in range(7):
            layers += [nn.Linear(width, 128), nn.ReLU()]
            width = 128
        super().__init__(*layers, nn.Linear(width, num_classes))


class PooledConvNet(nn.Module):
    """Four 5-wide convolutions of 24 channels (ReLU, max-pooling after the second), a linear head over the
    globally averaged features."""

    def __init__(self, input_shape, num_classes):
        super().__init__()
        two_d = len(input_shape) == 3
        conv, pool = (nn.Conv2d, nn.MaxPool2d) if two_d else (nn.Conv1d, nn.MaxPool1d)
        layers, channels = [], input_shape[0]
        for index in range(4):
            layers += [conv(channels, 24, 5, padding=2), nn.ReLU()]
            if index == 1:
                layers.append(pool(2))
            channels = 24
        self.features = nn.Sequential(*layers)
        self.head = nn.Linear(24, num_classes)

    def forward(self, x):
        return self.head(self.features(x).flatten(2).mean(2))

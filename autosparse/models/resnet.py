"""CIFAR-style ResNets with a 3x3 stem: ResNet-18 (64..512 channels) and ResNet-20/32 (16..64)."""
from __future__ import annotations

from torch import Tensor, nn

from .base import MODELS, require_rank


class BasicBlock(nn.Module):
    def __init__(self, in_channels: int, channels: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, channels, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)
        self.shortcut = nn.Sequential()
        if stride != 1 or in_channels != channels:
            self.shortcut = nn.Sequential(
                nn.Conv2d(in_channels, channels, 1, stride=stride, bias=False), nn.BatchNorm2d(channels)
            )

    def forward(self, x: Tensor) -> Tensor:
        out = self.bn1(self.conv1(x)).relu()
        return (self.bn2(self.conv2(out)) + self.shortcut(x)).relu()


class ResNet(nn.Module):
    def __init__(self, in_channels: int, num_classes: int, widths: list[int], blocks_per_stage: int | list[int]):
        super().__init__()
        counts = blocks_per_stage if isinstance(blocks_per_stage, list) else [blocks_per_stage] * len(widths)
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        stages, channels = [], widths[0]
        for index, (width, count) in enumerate(zip(widths, counts)):
            for block in range(count):
                stride = 2 if index > 0 and block == 0 else 1
                stages.append(BasicBlock(channels, width, stride))
                channels = width
        self.blocks = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(channels, num_classes)
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")

    def forward(self, x: Tensor) -> Tensor:
        out = self.blocks(self.bn1(self.conv1(x)).relu())
        return self.fc(self.pool(out).flatten(1))


def _register(name: str, widths: list[int], blocks: int | list[int]) -> None:
    def factory(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        require_rank(name, input_shape, 3)
        return ResNet(input_shape[0], num_classes, widths, blocks)

    factory.__doc__ = f"CIFAR-style {name} (3x3 stem, stage widths {widths})."
    MODELS.register(name)(factory)


_register("resnet18", [64, 128, 256, 512], [2, 2, 2, 2])
_register("resnet20", [16, 32, 64], 3)
_register("resnet32", [16, 32, 64], 5)

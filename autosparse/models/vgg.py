"""CIFAR-style VGG with batch norm (11, 16, 19); pooling stops once the feature map is 1x1."""
from __future__ import annotations

from torch import nn

from .base import MODELS, require_rank

POOL = "M"
LAYOUTS = {
    "vgg11": [64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL, 512, 512, POOL],
    "vgg16": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, POOL, 512, 512, 512, POOL, 512, 512, 512, POOL],
    "vgg19": [64, 64, POOL, 128, 128, POOL, 256, 256, 256, 256, POOL, 512, 512, 512, 512, POOL,
              512, 512, 512, 512, POOL],
}


def vgg(layout: list, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    layers: list[nn.Module] = []
    channels, size = input_shape[0], min(input_shape[1:])
    for item in layout:
        if item == POOL:
            if size > 1:
                layers.append(nn.MaxPool2d(2))
                size //= 2
            continue
        layers += [nn.Conv2d(channels, item, 3, padding=1, bias=False), nn.BatchNorm2d(item), nn.ReLU(inplace=True)]
        channels = item
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(channels, num_classes)]
    model = nn.Sequential(*layers)
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
    return model


def _register(name: str) -> None:
    def factory(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
        require_rank(name, input_shape, 3)
        return vgg(LAYOUTS[name], input_shape, num_classes)

    factory.__doc__ = f"CIFAR-style {name} with batch norm."
    MODELS.register(name)(factory)


for _name in LAYOUTS:
    _register(_name)

"""Models registry: factories sized from the dataset's input shape and class count."""
from __future__ import annotations

import importlib
from typing import Callable

import torch
from torch import nn

from ..errors import UserError
from ..registry import Registry, UnknownNameError

class ModelInputError(UserError):
    """A model cannot be built for the given input shape, or its factory returned no nn.Module."""


ModelFactory = Callable[..., nn.Module]  # factory(input_shape=..., num_classes=...) -> nn.Module
MODELS: Registry[ModelFactory] = Registry("model")


def resolve_factory(name: str) -> ModelFactory:
    """A registered model name, or a user model given as `package.module:factory`."""
    if ":" not in name:
        return MODELS.get(name)
    module_name, _, attr = name.partition(":")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as error:
        raise UnknownNameError(f"cannot import model factory {name!r}: {error}") from None
    if not callable(factory):
        raise UnknownNameError(f"model factory {name!r} is not callable")
    return factory


def build_model(name: str, input_shape: tuple[int, ...], num_classes: int, seed: int = 0) -> nn.Module:
    """Build a model with a seeded initialization that leaves the global RNG untouched."""
    factory = resolve_factory(name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = factory(input_shape=tuple(input_shape), num_classes=num_classes)
    if not isinstance(model, nn.Module):
        raise ModelInputError(f"model factory {name!r} returned {type(model).__name__}, not an nn.Module")
    return model


def require_rank(name: str, input_shape: tuple[int, ...], rank: int) -> None:
    """Models built for images (C, H, W) or signals (C, L) reject other input shapes clearly."""
    if len(input_shape) != rank:
        kinds = {2: "(channels, length) signals", 3: "(channels, height, width) images"}
        raise ModelInputError(f"model {name!r} needs {kinds[rank]}, got input shape {tuple(input_shape)}")

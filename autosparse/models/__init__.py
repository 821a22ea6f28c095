"""Models registry: embedded-data models, CIFAR ResNets and VGGs, and user models by import path."""
from . import resnet, small, vgg  # noqa: F401  (registers the factories)
from .base import MODELS, build_model, resolve_factory

__all__ = ["MODELS", "build_model", "resolve_factory"]

"""Datasets registry: embedded (digits, mnist1d) and torchvision-backed image datasets."""
from . import embedded, vision  # noqa: F401  (registers the loaders)
from .base import DATASETS, Dataset, DatasetUnavailableError, Split, load_dataset

__all__ = ["DATASETS", "Dataset", "DatasetUnavailableError", "Split", "load_dataset"]

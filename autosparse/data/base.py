"""In-memory datasets held as tensors on the training device, with batched on-device preprocessing."""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import torch
from torch import Tensor

from ..errors import UserError
from ..registry import Registry


DEFAULT_DATA_ROOT = "~/.cache/autosparse/data"


class DatasetUnavailableError(UserError):
    """A dataset's files are missing (with downloads off) or its data root is unusable."""


@dataclass(frozen=True)
class Split:
    """Inputs and integer labels of one split; inputs may be uint8 images or float features."""

    inputs: Tensor
    targets: Tensor

    def __post_init__(self) -> None:
        if len(self.inputs) != len(self.targets):
            raise ValueError(f"split has {len(self.inputs)} inputs but {len(self.targets)} targets")

    def __len__(self) -> int:
        return len(self.targets)

    def to(self, device: torch.device | str) -> "Split":
        return Split(self.inputs.to(device), self.targets.to(device))


Augment = Callable[[Tensor, torch.Generator], Tensor]


@dataclass(frozen=True)
class Dataset:
    """A train/test pair with its shape metadata and batched preprocessing.

    `mean`/`std` are per-channel and applied on the device after converting a batch to float
    (uint8 inputs are scaled to [0, 1] first); `augment` runs on whole training batches.
    """

    name: str
    train: Split
    test: Split
    num_classes: int
    mean: tuple[float, ...] = ()
    std: tuple[float, ...] = ()
    augment: Optional[Augment] = field(default=None, compare=False)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.inputs.shape[1:])

    def to(self, device: torch.device | str) -> "Dataset":
        return replace(self, train=self.train.to(device), test=self.test.to(device))

    def sample_batch(self, size: int, seed: int) -> tuple[Tensor, Tensor]:
        """A seeded random subset of the training split, preprocessed without augmentation."""
        generator = torch.Generator().manual_seed(seed)
        index = torch.randperm(len(self.train), generator=generator)[: min(size, len(self.train))]
        index = index.to(self.train.inputs.device)
        return self.prepare(self.train.inputs[index], train=False), self.train.targets[index]

    def prepare(self, inputs: Tensor, *, train: bool, generator: Optional[torch.Generator] = None) -> Tensor:
        """Turn a raw batch into model input: float, normalized, and augmented when training."""
        x = inputs.float().div_(255.0) if inputs.dtype == torch.uint8 else inputs.float()
        if self.mean:
            shape = (1, -1) + (1,) * (x.dim() - 2)
            mean = torch.tensor(self.mean, device=x.device).view(shape)
            std = torch.tensor(self.std, device=x.device).view(shape)
            x = (x - mean) / std
        if train and self.augment is not None:
            if generator is None:
                raise ValueError("augmentation needs a seeded generator")
            x = self.augment(x, generator)
        return x


DatasetLoader = Callable[[Path, bool], Dataset]
DATASETS: Registry[DatasetLoader] = Registry("dataset")


def check_data_root(data_root: Path, *, writable: bool) -> None:
    """Fail with one clear line when the data root cannot be read (or written, when downloading)."""
    if data_root.exists():
        mode = os.R_OK | os.X_OK | (os.W_OK if writable else 0)
        if not os.access(data_root, mode):
            need = "read/write" if writable else "read"
            raise DatasetUnavailableError(f"data root {str(data_root)!r} is not accessible ({need} permission denied)")


def load_dataset(name: str, data_root: str | Path = DEFAULT_DATA_ROOT, download: bool = False) -> Dataset:
    """Load a registered dataset by name (cached per process); downloads only when `download` is true."""
    loader = DATASETS.get(name)
    root = Path(data_root).expanduser()
    check_data_root(root, writable=download)
    return _load_cached(name, root, download, loader)


@functools.lru_cache(maxsize=4)
def _load_cached(name: str, root: Path, download: bool, loader: DatasetLoader) -> Dataset:
    return loader(root, download)

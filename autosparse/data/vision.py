"""Image datasets on disk: CIFAR-10/100 and (Fashion-)MNIST via torchvision's formats, and Tiny-ImageNet-200.

Every loader returns whole splits as uint8 (N, C, H, W) tensors; normalization and augmentation happen later,
batched on the device (`Dataset.prepare`). Nothing touches the network unless `download` is true.

CIFAR's python pickles are read here rather than through `torchvision.datasets.CIFAR10(...)`: torchvision's
constructor md5-checks every batch file against the official archive, so it rejects any other file in the same
format (a subset, a re-pickled copy, a test fixture). The reader below mirrors torchvision's (same files, same
pickle keys); when `download` is true, torchvision still fetches the archive and verifies its checksums.
"""
from __future__ import annotations

import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from torch import Tensor

from .augment import random_crop_flip
from .base import DATASETS, Augment, Dataset, DatasetUnavailableError, Split

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# What a damaged or partial dataset raises while being read (torchvision reports missing files as RuntimeError).
_READ_ERRORS = (OSError, RuntimeError, ValueError, TypeError, KeyError, IndexError, EOFError, AssertionError,
                pickle.UnpicklingError)


def _read_cifar(tv_cls: type, root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """One CIFAR split from torchvision's extracted pickles; the rows are already channel-first (N, 3, 32, 32)."""
    folder = root / tv_cls.base_folder
    images, labels = [], []
    for file_name, _md5 in tv_cls.train_list if train else tv_cls.test_list:
        with open(folder / file_name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")  # the official Python 2 pickles give str keys
        entry = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in entry.items()}  # or re-pickled
        images.append(np.asarray(entry["data"], dtype=np.uint8))
        labels.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
    inputs = torch.from_numpy(np.concatenate(images).reshape(-1, 3, 32, 32))
    return inputs, torch.tensor(labels, dtype=torch.long)


def _read_mnist(tv_cls: type, root: Path, train: bool) -> tuple[Tensor, Tensor]:
    """One (Fashion-)MNIST split from the raw idx files under `root/<ClassName>/raw/` (no checksums involved)."""
    ds = tv_cls(root=str(root), train=train, download=False)
    return ds.data.unsqueeze(1).contiguous(), ds.targets.long()


@dataclass(frozen=True)
class _TorchvisionSpec:
    class_name: str  # in torchvision.datasets; it also names the files and downloads them
    read: Callable[[type, Path, bool], tuple[Tensor, Tensor]]
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    augment: Optional[Augment] = None


_TORCHVISION: dict[str, _TorchvisionSpec] = {
    "cifar10": _TorchvisionSpec("CIFAR10", _read_cifar, 10, (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616),
                                random_crop_flip(4)),
    "cifar100": _TorchvisionSpec("CIFAR100", _read_cifar, 100, (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762),
                                 random_crop_flip(4)),
    "mnist": _TorchvisionSpec("MNIST", _read_mnist, 10, (0.1307,), (0.3081,)),
    "fashion_mnist": _TorchvisionSpec("FashionMNIST", _read_mnist, 10, (0.2860,), (0.3530,)),
}


def _not_found(name: str, root: Path) -> DatasetUnavailableError:
    return DatasetUnavailableError(
        f"dataset {name!r} not found under {str(root)!r} (downloads are off; pass download=True / "
        f"set data.download: true, or put the files there)"
    )


def _load_torchvision(name: str, root: Path, download: bool) -> Dataset:
    import torchvision.datasets  # imported lazily: it is slow and only these loaders need it

    spec = _TORCHVISION[name]
    tv_cls = getattr(torchvision.datasets, spec.class_name)

    def read() -> tuple[Split, Split]:
        return Split(*spec.read(tv_cls, root, True)), Split(*spec.read(tv_cls, root, False))

    try:
        train, test = read()
    except _READ_ERRORS as exc:
        if not download:
            raise _not_found(name, root) from exc
        try:
            tv_cls(root=str(root), train=True, download=True)  # fetches every split and verifies the checksums
            train, test = read()
        except _READ_ERRORS as download_exc:  # no network, a checksum mismatch, ...
            raise DatasetUnavailableError(
                f"dataset {name!r} could not be downloaded into {str(root)!r}: {download_exc}"
            ) from download_exc
    return Dataset(name=name, train=train, test=test, num_classes=spec.num_classes, mean=spec.mean, std=spec.std,
                   augment=spec.augment)


def _register_torchvision(name: str) -> None:
    @DATASETS.register(name)
    def load(data_root: Path, download: bool) -> Dataset:
        return _load_torchvision(name, data_root, download)

    load.__name__ = load.__qualname__ = f"load_{name}"
    load.__doc__ = f"{name} from torchvision's on-disk format under `data_root` (downloaded only when asked)."


for _name in _TORCHVISION:
    _register_torchvision(_name)


TINY_IMAGENET_FOLDER = "tiny-imagenet-200"
TINY_IMAGENET_URL = "http://cs231n.stanford.edu/tiny-imagenet-200.zip"
TINY_IMAGENET_SIZE = 64


def _decode_images(paths: list[Path]) -> Tensor:
    """Decode image files into one preallocated uint8 (N, 3, 64, 64) tensor (grayscale JPEGs become RGB).

    PIL rather than torchvision.io, whose image decoders are deprecated since torchvision 0.29.
    """
    from PIL import Image

    size = TINY_IMAGENET_SIZE
    out = torch.empty((len(paths), 3, size, size), dtype=torch.uint8)
    for i, path in enumerate(paths):
        with Image.open(path) as image:
            image = image.convert("RGB")
            if image.size != (size, size):
                image = image.resize((size, size), Image.Resampling.BILINEAR)
            out[i] = torch.from_numpy(np.array(image)).permute(2, 0, 1)
    return out


@DATASETS.register("tiny_imagenet")
def load_tiny_imagenet(data_root: Path, download: bool) -> Dataset:
    """Tiny-ImageNet-200 (64x64, 200 classes) from its unzipped folder; the labelled val set serves as test set."""
    folder = data_root / TINY_IMAGENET_FOLDER
    wnids_file = folder / "wnids.txt"
    annotations = folder / "val" / "val_annotations.txt"
    if not (wnids_file.is_file() and annotations.is_file()):
        how = "download=True is not supported for it" if download else "downloads are off and not supported for it"
        raise DatasetUnavailableError(
            f"dataset 'tiny_imagenet' not found under {str(folder)!r} ({how}; download {TINY_IMAGENET_URL} "
            f"and unzip it into {str(data_root)!r})"
        )
    try:
        wnids = sorted({line.strip() for line in wnids_file.read_text().splitlines() if line.strip()})
        index = {wnid: i for i, wnid in enumerate(wnids)}

        train_paths: list[Path] = []
        train_labels: list[int] = []
        for wnid in wnids:
            images = sorted((folder / "train" / wnid / "images").glob("*.JPEG"))
            train_paths += images
            train_labels += [index[wnid]] * len(images)

        test_paths: list[Path] = []
        test_labels: list[int] = []
        for line in annotations.read_text().splitlines():
            if line.strip():
                file_name, wnid = line.split("\t")[:2]
                test_paths.append(folder / "val" / "images" / file_name)
                test_labels.append(index[wnid])
        if not train_paths or not test_paths:
            raise ValueError("no train or no val images found")

        train = Split(_decode_images(train_paths), torch.tensor(train_labels, dtype=torch.long))
        test = Split(_decode_images(test_paths), torch.tensor(test_labels, dtype=torch.long))
    except _READ_ERRORS as exc:
        raise DatasetUnavailableError(
            f"dataset 'tiny_imagenet' under {str(folder)!r} is incomplete or unreadable ({exc}); "
            f"re-download {TINY_IMAGENET_URL} and unzip it into {str(data_root)!r}"
        ) from exc
    return Dataset(name="tiny_imagenet", train=train, test=test, num_classes=len(wnids), mean=IMAGENET_MEAN,
                   std=IMAGENET_STD, augment=random_crop_flip(8))

"""Random image datasets written in each dataset's real on-disk format (torchvision's layouts).

Used by the loader tests (tiny sizes) and, as a script, to give a machine without internet CIFAR-10 and
Tiny-ImageNet folders that the real loaders read (e.g. to check a GPU machine or a cluster end to end):

    python tests/datafiles.py DATA_ROOT [--cifar10-per-batch 10000] [--tiny-imagenet-per-class 500]
"""
from __future__ import annotations

import argparse
import pickle
import struct
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

RNG = np.random.default_rng(0)


def write_pickle(path: Path, obj: dict) -> None:
    with open(path, "wb") as f:
        pickle.dump(obj, f, protocol=2)


def cifar_batch(n: int, label_key: str, num_classes: int) -> tuple[dict, np.ndarray, list[int]]:
    # The official files are Python 2 pickles whose keys are byte strings; loaded with encoding="latin1" (as
    # torchvision does) they come back as str keys, which is what a Python 3 pickle with str keys gives too.
    data = RNG.integers(0, 256, (n, 3072), dtype=np.uint8)
    labels = RNG.integers(0, num_classes, n).tolist()
    return {"batch_label": "x", label_key: labels, "data": data, "filenames": ["f"] * n}, data, labels


def write_cifar10(root: Path, per_batch: int = 3, test: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    train_x, train_y = [], []
    for i in range(1, 6):
        entry, x, y = cifar_batch(per_batch, "labels", 10)
        write_pickle(folder / f"data_batch_{i}", entry)
        train_x.append(x)
        train_y += y
    entry, test_x, test_y = cifar_batch(test, "labels", 10)
    write_pickle(folder / "test_batch", entry)
    write_pickle(folder / "batches.meta", {"label_names": [f"c{i}" for i in range(10)]})
    return {"train": (np.concatenate(train_x), train_y), "test": (test_x, test_y)}


def write_cifar100(root: Path, train: int = 6, test: int = 4) -> dict[str, tuple[np.ndarray, list[int]]]:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    written = {}
    for split, n in (("train", train), ("test", test)):
        entry, x, y = cifar_batch(n, "fine_labels", 100)
        entry["coarse_labels"] = [label // 5 for label in y]
        write_pickle(folder / split, entry)
        written[split] = (x, y)
    write_pickle(folder / "meta", {"fine_label_names": [f"c{i}" for i in range(100)]})
    return written


def write_idx(path: Path, array: np.ndarray) -> None:
    magic = 0x0800 + array.ndim  # unsigned byte data, `ndim` dimensions: 2051 for images, 2049 for labels
    with open(path, "wb") as f:
        f.write(struct.pack(">I", magic))
        f.write(struct.pack(f">{array.ndim}I", *array.shape))
        f.write(array.astype(np.uint8).tobytes())


def write_mnist(root: Path, folder: str, train: int = 5, test: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    written = {}
    for prefix, n in (("train", train), ("t10k", test)):
        images = RNG.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = RNG.integers(0, 10, n, dtype=np.uint8)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        written[prefix] = (images, labels)
    return written


def write_tiny_imagenet(root: Path, wnids: Sequence[str] = ("n02", "n01", "n03"), per_class: int = 2,
                        val_wnids: Sequence[str] = ("n03", "n01", "n02", "n03")) -> tuple[list[str], dict[str, list[int]]]:
    """`wnids` in file order (the class index is the position in the *sorted* list); the first validation
    image is grayscale, as some real ones are."""
    folder = root / "tiny-imagenet-200"
    (folder / "val" / "images").mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    classes = sorted(wnids)
    train_labels = []
    for wnid in classes:
        images = folder / "train" / wnid / "images"
        images.mkdir(parents=True)
        for i in range(per_class):
            Image.fromarray(RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(images / f"{wnid}_{i}.JPEG")
            train_labels.append(classes.index(wnid))
        with open(folder / "train" / wnid / f"{wnid}_boxes.txt", "w") as f:
            f.write(f"{wnid}_0.JPEG\t0\t0\t63\t63\n")
    lines = []
    for i, wnid in enumerate(val_wnids):
        array = RNG.integers(0, 256, (64, 64), dtype=np.uint8)
        image = Image.fromarray(array) if i == 0 else Image.fromarray(np.stack([array] * 3, -1))
        image.save(folder / "val" / "images" / f"val_{i}.JPEG")
        lines.append(f"val_{i}.JPEG\t{wnid}\t0\t0\t63\t63")
    (folder / "val" / "val_annotations.txt").write_text("\n".join(lines) + "\n")
    return list(wnids), {"train": train_labels, "test": [classes.index(w) for w in val_wnids]}


def main() -> None:
    parser = argparse.ArgumentParser(description="Write random CIFAR-10 and Tiny-ImageNet in their real formats.")
    parser.add_argument("root", type=Path)
    parser.add_argument("--cifar10-per-batch", type=int, default=10_000, help="images per training batch file (x5)")
    parser.add_argument("--tiny-imagenet-per-class", type=int, default=500, help="training images per class (x200)")
    args = parser.parse_args()
    write_cifar10(args.root, args.cifar10_per_batch, args.cifar10_per_batch)  # the real ratio: 50,000 / 10,000
    wnids = [f"n{i:08d}" for i in range(200)]
    validation = [wnids[i % 200] for i in range(200 * max(1, args.tiny_imagenet_per_class // 10))]  # 500 / 50
    write_tiny_imagenet(args.root, wnids, args.tiny_imagenet_per_class, validation)
    print(f"wrote CIFAR-10 ({5 * args.cifar10_per_batch} train) and Tiny-ImageNet "
          f"({200 * args.tiny_imagenet_per_class} train) under {args.root}")


if __name__ == "__main__":
    main()

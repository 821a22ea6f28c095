"""Datasets that need no download: scikit-learn's digits and locally generated MNIST-1D."""
from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import torch

from .base import DATASETS, Dataset, Split

SPLIT_SEED = 0
EMBEDDED = ("digits", "mnist1d")  # shipped or generated locally: never missing


@DATASETS.register("digits")
def load_digits(data_root: Path, download: bool) -> Dataset:
    """scikit-learn's 1,797 8x8 handwritten digits; a fixed stratified 75/25 train/test split."""
    from sklearn.datasets import load_digits as sk_digits
    from sklearn.model_selection import train_test_split

    bunch = sk_digits()
    images = (bunch.images / 16.0).astype(np.float32)[:, None]
    train_x, test_x, train_y, test_y = train_test_split(
        images, bunch.target, test_size=0.25, random_state=SPLIT_SEED, stratify=bunch.target
    )
    mean, std = float(train_x.mean()), float(train_x.std())
    return Dataset(
        name="digits",
        train=Split(torch.from_numpy(train_x), torch.from_numpy(train_y).long()),
        test=Split(torch.from_numpy(test_x), torch.from_numpy(test_y).long()),
        num_classes=10,
        mean=(mean,),
        std=(std,),
    )


@DATASETS.register("mnist1d")
def load_mnist1d(data_root: Path, download: bool) -> Dataset:
    """MNIST-1D generated from the package's templates (5,000 signals of length 40, 80/20 split)."""
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.seed = SPLIT_SEED + 42
    saved_states = random.getstate(), np.random.get_state()
    try:
        data = make_dataset(args)  # seeds Python's and NumPy's global RNGs: restore them after
    finally:
        random.setstate(saved_states[0])
        np.random.set_state(saved_states[1])

    def split(x: np.ndarray, y: np.ndarray) -> Split:
        return Split(torch.from_numpy(x.astype(np.float32))[:, None], torch.from_numpy(y).long())

    return Dataset(name="mnist1d", train=split(data["x"], data["y"]), test=split(data["x_test"], data["y_test"]), num_classes=10)

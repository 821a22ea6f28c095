"""Image dataset loaders, fed tiny files written in each dataset's real on-disk format (no network)."""
from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from autosparse.data import DATASETS, Dataset, DatasetUnavailableError, load_dataset
from autosparse.data import base as data_base
from datafiles import write_cifar10, write_cifar100, write_mnist, write_pickle, write_tiny_imagenet


def _check_common(ds: Dataset, shape: tuple[int, ...], num_classes: int) -> None:
    assert ds.input_shape == shape
    assert ds.num_classes == num_classes
    for split in (ds.train, ds.test):
        assert split.inputs.dtype == torch.uint8
        assert split.targets.dtype == torch.long
        assert split.inputs.shape[1:] == shape
    assert len(ds.mean) == len(ds.std) == shape[0]
    assert not torch.equal(ds.train.inputs[: len(ds.test)], ds.test.inputs)
    batch = ds.train.inputs[:3]
    g = torch.Generator().manual_seed(0)
    for train in (True, False):
        x = ds.prepare(batch, train=train, generator=g)
        assert x.dtype == torch.float32 and x.shape == batch.shape
        assert torch.isfinite(x).all()


# ---------------------------------------------------------------- CIFAR


@pytest.mark.parametrize(
    "name, writer, num_classes", [("cifar10", write_cifar10, 10), ("cifar100", write_cifar100, 100)]
)
def test_cifar(tmp_path, name, writer, num_classes):
    written = writer(tmp_path)
    ds = load_dataset(name, data_root=tmp_path, download=False)
    assert ds.name == name
    _check_common(ds, (3, 32, 32), num_classes)
    assert ds.augment is not None
    for split, (x, y) in ((ds.train, written["train"]), (ds.test, written["test"])):
        assert torch.equal(split.inputs, torch.from_numpy(x).view(-1, 3, 32, 32))
        assert split.targets.tolist() == y
    # channel-first like torchvision's NHWC .data after permute: first pixel's red value is byte 0, green byte 1024
    first = torch.from_numpy(written["test"][0][0])
    assert ds.test.inputs[0, 0, 0, 0] == first[0] and ds.test.inputs[0, 1, 0, 0] == first[1024]


def test_cifar_layout_matches_torchvision(tmp_path, monkeypatch):
    """Our reader gives what torchvision's own CIFAR10 gives (its md5 checks bypassed for the tiny files)."""
    import torchvision.datasets.cifar as tv_cifar

    write_cifar10(tmp_path)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))
    ds = load_dataset("cifar10", data_root=tmp_path, download=False)
    for train in (True, False):
        ref = tv_cifar.CIFAR10(root=str(tmp_path), train=train, download=False)
        split = ds.train if train else ds.test
        assert torch.equal(split.inputs, torch.from_numpy(ref.data).permute(0, 3, 1, 2))
        assert split.targets.tolist() == ref.targets


def test_cifar_bytes_keys(tmp_path):
    """A copy re-pickled from `pickle.load(f, encoding="bytes")` (keys b"data", b"labels") loads the same."""
    written = write_cifar10(tmp_path)
    for path in (tmp_path / "cifar-10-batches-py").iterdir():
        with open(path, "rb") as f:
            entry = pickle.load(f)
        write_pickle(path, {k.encode(): v for k, v in entry.items()})
    ds = load_dataset("cifar10", data_root=tmp_path, download=False)
    assert ds.test.targets.tolist() == written["test"][1]


def test_cifar_download_goes_through_torchvision(tmp_path, monkeypatch):
    import torchvision.datasets.cifar as tv_cifar

    calls = []

    def fake_download(url, download_root, filename=None, md5=None, **kwargs):
        calls.append((url, md5))
        write_cifar10(Path(download_root))

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", fake_download)
    monkeypatch.setattr(tv_cifar, "check_integrity", lambda path, md5=None: os.path.isfile(path))  # tiny files
    ds = load_dataset("cifar10", data_root=tmp_path, download=True)
    assert len(calls) == 1 and calls[0][1] == tv_cifar.CIFAR10.tgz_md5
    assert len(ds.train) == 15 and len(ds.test) == 4
    load_dataset("cifar10", data_root=tmp_path, download=True)  # already there: no second download
    assert len(calls) == 1


def test_failed_download_is_unavailable(tmp_path, monkeypatch):
    import urllib.error

    import torchvision.datasets.cifar as tv_cifar

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setattr(tv_cifar, "download_and_extract_archive", offline)
    with pytest.raises(DatasetUnavailableError, match="could not be downloaded") as info:
        load_dataset("cifar100", data_root=tmp_path, download=True)
    assert "cifar100" in str(info.value) and str(tmp_path) in str(info.value)


def test_cifar_corrupt_file_is_unavailable(tmp_path):
    write_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"not a pickle")
    with pytest.raises(DatasetUnavailableError, match="cifar10"):
        load_dataset("cifar10", data_root=tmp_path, download=False)


# ---------------------------------------------------------------- MNIST


@pytest.mark.parametrize("name, folder", [("mnist", "MNIST"), ("fashion_mnist", "FashionMNIST")])
def test_mnist(tmp_path, name, folder):
    written = write_mnist(tmp_path, folder)
    ds = load_dataset(name, data_root=tmp_path, download=False)
    assert ds.name == name
    _check_common(ds, (1, 28, 28), 10)
    assert ds.augment is None
    for split, (x, y) in ((ds.train, written["train"]), (ds.test, written["t10k"])):
        assert torch.equal(split.inputs, torch.from_numpy(x)[:, None])
        assert split.targets.tolist() == y.tolist()


def test_mnist_files_do_not_count_as_fashion_mnist(tmp_path):
    write_mnist(tmp_path, "MNIST")
    with pytest.raises(DatasetUnavailableError, match="fashion_mnist"):
        load_dataset("fashion_mnist", data_root=tmp_path, download=False)


# ---------------------------------------------------------------- Tiny-ImageNet


def test_tiny_imagenet(tmp_path):
    wnids, labels = write_tiny_imagenet(tmp_path)
    ds = load_dataset("tiny_imagenet", data_root=tmp_path, download=False)
    assert ds.name == "tiny_imagenet"
    _check_common(ds, (3, 64, 64), len(wnids))
    assert ds.augment is not None
    assert len(ds.train) == 6 and len(ds.test) == 4
    assert ds.train.targets.tolist() == labels["train"]
    assert ds.test.targets.tolist() == labels["test"]
    # pixels survive JPEG roughly (quality 75 on noise is lossy, so compare loosely against a fresh PIL decode)
    path = tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_1.JPEG"
    ref = torch.from_numpy(np.array(Image.open(path).convert("RGB"))).permute(2, 0, 1)
    assert (ds.test.inputs[1].int() - ref.int()).abs().float().mean() < 3
    gray = ds.test.inputs[0]  # a grayscale JPEG comes back as three equal channels
    assert torch.equal(gray[0], gray[1]) and torch.equal(gray[1], gray[2])


@pytest.mark.parametrize("download", [False, True])
def test_tiny_imagenet_missing(tmp_path, download):
    with pytest.raises(DatasetUnavailableError, match="tiny_imagenet") as info:
        load_dataset("tiny_imagenet", data_root=tmp_path, download=download)
    assert str(tmp_path) in str(info.value) and "unzip" in str(info.value)


def test_tiny_imagenet_missing_image(tmp_path):
    write_tiny_imagenet(tmp_path)
    (tmp_path / "tiny-imagenet-200" / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DatasetUnavailableError, match="tiny_imagenet"):
        load_dataset("tiny_imagenet", data_root=tmp_path, download=False)


# ---------------------------------------------------------------- errors


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "mnist", "fashion_mnist", "tiny_imagenet"])
def test_missing_dataset_is_one_clear_error(tmp_path, name, capsys, monkeypatch):
    import urllib.request

    def no_network(*args, **kwargs):
        raise AssertionError("network access attempted with download=False")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    assert name in DATASETS
    with pytest.raises(DatasetUnavailableError) as info:
        load_dataset(name, data_root=tmp_path, download=False)
    message = str(info.value)
    assert repr(name) in message and str(tmp_path) in message
    assert "\n" not in message
    captured = capsys.readouterr()
    assert captured.out == "" and captured.err == ""


def test_missing_data_root_is_unavailable(tmp_path):
    with pytest.raises(DatasetUnavailableError, match="not found"):
        load_dataset("cifar10", data_root=tmp_path / "does-not-exist", download=False)


def test_unreadable_data_root(tmp_path, monkeypatch):
    root = tmp_path / "data"
    root.mkdir()
    if os.geteuid() != 0:  # root reads everything regardless of mode bits
        root.chmod(0o000)
        try:
            with pytest.raises(DatasetUnavailableError, match="permission"):
                load_dataset("cifar10", data_root=root, download=False)
        finally:
            root.chmod(0o755)
    real_access = os.access
    monkeypatch.setattr(
        data_base.os, "access", lambda path, mode: False if Path(path) == root else real_access(path, mode)
    )
    with pytest.raises(DatasetUnavailableError, match="permission") as info:
        load_dataset("cifar10", data_root=root, download=False)
    assert str(root) in str(info.value)

"""Default training recipes: how long and how fast each (dataset, model family) trains to convergence.

This is the one place the defaults live. A pipeline config's `irp.train` and `matrix.train` only
override fields of these. Every recipe is SGD with momentum 0.9 and a cosine schedule unless it says
otherwise. Where the numbers come from:

- digits and MNIST-1D (embedded, 2 CPU cores): chosen so that dense references reach their published
  level and sparse networks at 98% sparsity have about converged (benchmarks/recipes.py checks that doubling
  the epochs moves SNIP and SynFlow by about a point or less; BENCHMARKS.md "Recipes"). Dense references
  on the accuracy benchmark (seeds 1-3): digits mlp 98.0 ± 0.2%, conv 98.4 ± 0.7%, resnet20 97.7 ± 1.0%;
  MNIST-1D mlp 69.9 ± 0.3% (published MLP: 68%), conv1d 96.2 ± 0.4% (published CNN: 94%; Greydanus 2020,
  the MNIST-1D README).
- CIFAR-10/100, Tiny-ImageNet: the AutoSparse paper's setting (160 epochs, lr 0.01 divided by 5 at
  epochs 60 and 120, weight decay 5e-4, batch 128), as in SynFlow's and GraSP's CIFAR experiments.
- MNIST, Fashion-MNIST: LeNet-300-100's usual budget (about 50k steps of batch 60 in Frankle & Carbin
  2019), expressed as 60 epochs of SGD at batch 64; not measured on this machine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping

from .config import TrainConfig
from .schema import from_dict, to_dict

PAPER_CIFAR = {"epochs": 160, "batch_size": 128, "lr": 0.01, "schedule": "multistep", "milestones": [60, 120],
               "gamma": 0.2, "weight_decay": 5e-4}

# (dataset, model family) -> recipe; (dataset, "*") is the dataset's default for other families.
RECIPES: dict[tuple[str, str], dict[str, Any]] = {
    ("digits", "mlp"): {"epochs": 60, "batch_size": 64, "lr": 0.05},
    ("digits", "conv"): {"epochs": 50, "batch_size": 64, "lr": 0.1},
    ("digits", "resnet"): {"epochs": 30, "batch_size": 64, "lr": 0.1},
    ("digits", "*"): {"epochs": 40, "batch_size": 64, "lr": 0.1},
    ("mnist1d", "mlp"): {"epochs": 60, "batch_size": 64, "lr": 0.1, "weight_decay": 1e-3},
    ("mnist1d", "conv1d"): {"epochs": 80, "batch_size": 64, "lr": 0.1},
    ("mnist1d", "*"): {"epochs": 60, "batch_size": 64, "lr": 0.1},
    ("mnist", "*"): {"epochs": 60, "batch_size": 64, "lr": 0.05},
    ("fashion_mnist", "*"): {"epochs": 60, "batch_size": 64, "lr": 0.05},
    ("cifar10", "*"): PAPER_CIFAR,
    ("cifar100", "*"): PAPER_CIFAR,
    ("tiny_imagenet", "*"): PAPER_CIFAR,
}
FALLBACK: dict[str, Any] = {}  # TrainConfig's own defaults, for datasets registered by users


@dataclass(frozen=True)
class Anchor:
    """A published test accuracy (%) for a (dataset, model, method, sparsity); `model` is a model name,
    a family or `*`; method `dense` is the unpruned network (sparsity 0)."""

    dataset: str
    model: str
    method: str
    sparsity: float
    accuracy: float
    source: str


SYNFLOW_RESULTS = "SynFlow's released results (Tanaka et al. 2020), ResNet-18 on CIFAR-10"
ANCHORS = [
    Anchor("mnist1d", "mlp", "dense", 0.0, 68.0, "MNIST-1D README (Greydanus 2020), MLP"),
    Anchor("mnist1d", "conv1d", "dense", 0.0, 94.0, "MNIST-1D README (Greydanus 2020), CNN"),
    Anchor("mnist1d", "*", "logistic regression", 0.0, 32.0, "MNIST-1D README (Greydanus 2020)"),
    Anchor("cifar10", "resnet18", "snip", 0.99, 90.8, SYNFLOW_RESULTS),
    Anchor("cifar10", "resnet18", "synflow", 0.99, 90.4, SYNFLOW_RESULTS),
    Anchor("cifar10", "resnet18", "grasp", 0.99, 89.7, SYNFLOW_RESULTS),
    Anchor("cifar10", "resnet18", "random", 0.99, 83.0, SYNFLOW_RESULTS),
]


def model_family(model: str) -> str:
    """`resnet18` -> `resnet`, `vgg16` -> `vgg`; registered small models are their own family; user
    models (`package.module:factory`) have none."""
    if ":" in model:
        return ""
    for family in ("resnet", "vgg"):
        if model.startswith(family):
            return family
    return model


def recipe(dataset: str, model: str) -> dict[str, Any]:
    """The recipe fields for a pair (only what differs from TrainConfig's defaults)."""
    family = model_family(model)
    return dict(RECIPES.get((dataset, family), RECIPES.get((dataset, "*"), FALLBACK)))


def train_config(dataset: str, model: str, overrides: Mapping[str, Any] = (), where: str = "train") -> TrainConfig:
    """The recipe of a (dataset, model) pair with a config's overrides applied, validated."""
    merged = {**to_dict(TrainConfig()), **recipe(dataset, model), **dict(overrides)}
    return from_dict(TrainConfig, merged, where=f"{where} ({model}/{dataset})")


def anchors(dataset: str, model: str) -> list[Anchor]:
    """The published references for a (dataset, model) pair."""
    return [a for a in ANCHORS if a.dataset == dataset and a.model in (model, model_family(model), "*")]

"""One generalization-matrix cell: prune a target network at initialization, train it, evaluate it."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
import torch.nn.functional as F

from .allocation import LEARNED
from .config import ModelOnData, TrainConfig
from .data import Dataset
from .errors import UserError
from .masks import Mask, apply_mask
from .models import build_model
from .pruning import MethodSpec, prune
from .sanity import reinit_seed, shuffle_mask
from .training import Shard, train

DENSE = "dense"


@dataclass
class CellSpec:
    """What a cell computes. `method` is `dense` or a method string (autosparse/pruning.py); an AutoS
    method names its scorer stage in `scorer`, a learned allocation its allocator stage in `allocator`.
    `train` is the resolved recipe of the target."""

    target: ModelOnData
    method: str
    sparsity: float
    seed: int
    train: TrainConfig
    variant: Optional[str] = None
    scorer: Optional[str] = None
    allocator: Optional[str] = None
    score_batch_size: int = 256

    @property
    def label(self) -> str:
        """The method as shown in tables: `snip`, `snip/iter20@alloc:synflow+shuffle`."""
        return f"{self.method}+{self.variant}" if self.variant else self.method


def cell_mask(spec: CellSpec, model: torch.nn.Module, dataset: Dataset, scorer_path: Optional[Path] = None,
              allocator_path: Optional[Path] = None) -> Mask:
    """The cell's mask: its method (inverted at every step, or shuffled, for those sanity variants)."""
    method = MethodSpec.parse(spec.method)
    if method.is_autos and scorer_path is None:
        raise UserError(f"cell {spec.label}: an AutoS method needs its scorer file")
    if method.allocation == LEARNED and allocator_path is None:
        raise UserError(f"cell {spec.label}: allocation 'learned' needs its allocator file")
    mask = prune(model, spec.sparsity, scorer_path if method.is_autos else method.criterion,
                 dataset.sample_batch(spec.score_batch_size, spec.seed),
                 allocation=allocator_path if method.allocation == LEARNED else method.allocation,
                 steps=method.steps, invert=spec.variant == "invert", seed=spec.seed)
    return shuffle_mask(mask, spec.seed) if spec.variant == "shuffle" else mask


@torch.no_grad()
def initial_loss(model: torch.nn.Module, dataset: Dataset, batch_size: int, seed: int) -> float:
    """Training loss of the (masked) network before training, on a seeded batch: the 'did not train' yardstick."""
    inputs, targets = dataset.sample_batch(batch_size, seed)
    modes = {module: module.training for module in model.modules()}
    model.train()
    loss = float(F.cross_entropy(model(inputs), targets))
    for module, mode in modes.items():
        module.training = mode
    return loss


def run_cell(spec: CellSpec, dataset: Dataset, scorer_path: Optional[Path] = None,
             allocator_path: Optional[Path] = None, shard: Shard = Shard(), wrap=lambda model: model,
             agree=lambda mask: mask) -> dict:
    """Prune (unless dense), train and evaluate; returns per-epoch curves, the mask (None when dense) and
    its layer densities."""
    started = time.time()
    device = dataset.train.inputs.device
    model = build_model(spec.target.model, dataset.input_shape, dataset.num_classes, spec.seed).to(device)
    mask = None
    if spec.method != DENSE:
        mask = agree(cell_mask(spec, model, dataset, scorer_path, allocator_path))
        if spec.variant == "reinit":
            model = build_model(spec.target.model, dataset.input_shape, dataset.num_classes,
                                reinit_seed(spec.seed)).to(device)
        apply_mask(model, mask.to(device))
    pruned = time.time()
    start_loss = initial_loss(model, dataset, spec.score_batch_size, spec.seed)
    history = train(wrap(model), dataset, spec.train, seed=spec.seed, shard=shard)
    return {
        "test_accuracy": history.final_accuracy,
        "test_accuracy_per_epoch": history.test_accuracy,
        "train_loss_per_epoch": history.train_loss,
        "initial_loss": start_loss,
        "num_classes": dataset.num_classes,
        "density": mask.density() if mask is not None else 1.0,
        "layer_densities": mask.layer_densities() if mask is not None else {},
        "collapsed_layers": mask.collapsed_layers() if mask is not None else [],
        "empty_units": mask.empty_units() if mask is not None else {},
        "mask": mask,
        "prune_seconds": pruned - started,
        "seconds": time.time() - started,
        "started": started,
        "finished": time.time(),
    }

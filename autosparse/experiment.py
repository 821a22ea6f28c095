"""One generalization-matrix cell: prune a target network at initialization, train it, evaluate it."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch

from .config import ModelOnData, TrainConfig
from .data import Dataset
from .masks import Mask, apply_mask, select_top_k
from .models import build_model
from .pruning import score
from .sanity import invert_scores, reinit_seed, shuffle_mask
from .training import Shard, train

DENSE = "dense"
AUTOS = "autos"


@dataclass
class CellSpec:
    """What a cell computes. `method` is a criterion name, 'dense', or 'autos' (then `scorer` is the scorer
    stage's hash, `scorer_name` its config name and `source` its IRP source, e.g. 'conv/digits')."""

    target: ModelOnData
    method: str
    sparsity: float
    seed: int
    train: TrainConfig
    scope: str = "global"
    variant: Optional[str] = None
    scorer: Optional[str] = None
    scorer_name: Optional[str] = None
    source: Optional[str] = None
    score_batch_size: int = 256

    @property
    def label(self) -> str:
        """The method as shown in tables: `snip`, `snip+shuffle`, `autos:compact@conv/digits`."""
        name = f"{AUTOS}:{self.scorer_name}@{self.source}" if self.method == AUTOS else self.method
        return f"{name}+{self.variant}" if self.variant else name


def cell_mask(spec: CellSpec, model: torch.nn.Module, dataset: Dataset, scorer_path: Optional[Path]) -> Mask:
    """The cell's mask: the method's top-k (inverted or shuffled for those sanity variants)."""
    density = 1.0 - spec.sparsity
    method = scorer_path if spec.method == AUTOS else spec.method
    batch = dataset.sample_batch(spec.score_batch_size, spec.seed)
    scores = score(model, density, method, batch, scope=spec.scope, seed=spec.seed)
    if spec.variant == "invert":
        scores = invert_scores(scores)
    mask = select_top_k(scores, density, spec.scope)
    return shuffle_mask(mask, spec.seed) if spec.variant == "shuffle" else mask


def run_cell(spec: CellSpec, dataset: Dataset, scorer_path: Optional[Path] = None, shard: Shard = Shard(),
             wrap=lambda model: model, agree=lambda mask: mask) -> dict:
    """Prune (unless dense), train and evaluate; returns per-epoch curves and the mask's layer densities."""
    started = time.perf_counter()
    device = dataset.train.inputs.device
    model = build_model(spec.target.model, dataset.input_shape, dataset.num_classes, spec.seed).to(device)
    mask = None
    if spec.method != DENSE:
        mask = agree(cell_mask(spec, model, dataset, scorer_path))
        if spec.variant == "reinit":
            model = build_model(spec.target.model, dataset.input_shape, dataset.num_classes,
                                reinit_seed(spec.seed)).to(device)
        apply_mask(model, mask.to(device))
    history = train(wrap(model), dataset, spec.train, seed=spec.seed, shard=shard)
    return {
        "test_accuracy": history.final_accuracy,
        "test_accuracy_per_epoch": history.test_accuracy,
        "train_loss_per_epoch": history.train_loss,
        "density": mask.density() if mask is not None else 1.0,
        "layer_densities": mask.layer_densities() if mask is not None else {},
        "collapsed_layers": mask.collapsed_layers() if mask is not None else [],
        "seconds": time.perf_counter() - started,
    }

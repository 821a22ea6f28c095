"""One generalization-matrix cell: prune a target network at initialization, train it, evaluate it."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Optional

import torch

from .config import DEFAULT_INIT, ModelOnData, TrainConfig
from .data import Dataset
from .masks import Mask, apply_mask
from .methods import Method
from .models import build_model
from .pruning import prune
from .sanity import reinit_seed
from .sparse_init import ORIGINAL, signal_at_init
from .training import Shard, train

DENSE = "dense"
INIT_MARK = " init:"  # in a label, before the sparse init of cells compared under another one


@dataclass
class CellSpec:
    """What a cell computes. `method` is `dense` or a method without its variant (autosparse/methods.py),
    `variant` its sanity variant; an AutoS
    method names its scorer stage in `scorer`, a learned allocation its allocator stage in `allocator`.
    `train` is the resolved recipe of the target; `init` the sparse init of the kept weights
    (autosparse/sparse_init.py), applied after pruning to every method alike."""

    target: ModelOnData
    method: str
    sparsity: float
    seed: int
    train: TrainConfig
    variant: Optional[str] = None
    scorer: Optional[str] = None
    allocator: Optional[str] = None
    score_batch_size: int = 256
    init: str = ORIGINAL

    @property
    def label(self) -> str:
        """The method as shown in tables: `snip`, `snip/iter20@alloc:synflow+shuffle`, and with a sparse
        init other than the default: `synflow init:original` (a dense network has no sparse init)."""
        if self.method == DENSE:
            return DENSE
        return init_label(self.pruning.label, self.init)

    @property
    def pruning(self) -> Optional[Method]:
        """The method with its variant (None for the dense reference)."""
        return None if self.method == DENSE else replace(Method.parse(self.method), variant=self.variant)


def init_label(label: str, init: str) -> str:
    """A method label, suffixed with its sparse init unless that is the default one."""
    return label if init == DEFAULT_INIT else f"{label}{INIT_MARK}{init}"


def label_method(label: str) -> Optional[Method]:
    """The method (with its variant) of a cell's label; None for the dense reference."""
    return None if label == DENSE else Method.parse(label.partition(INIT_MARK)[0])


def cell_mask(spec: CellSpec, model: torch.nn.Module, dataset: Dataset, scorer_path: Optional[Path] = None,
              allocator_path: Optional[Path] = None) -> Mask:
    """The cell's mask: its method (inverted at every step, or shuffled, for those sanity variants)."""
    return prune(model, spec.sparsity, spec.pruning.with_files(scorer_path, allocator_path),
                 dataset.sample_batch(spec.score_batch_size, spec.seed), seed=spec.seed)


def run_cell(spec: CellSpec, dataset: Dataset, scorer_path: Optional[Path] = None,
             allocator_path: Optional[Path] = None, shard: Shard = Shard(), wrap=lambda model: model,
             agree=lambda mask: mask) -> dict:
    """Prune (unless dense), apply the sparse init, train and evaluate; returns per-epoch curves, the signal
    at init (after the sparse init, on the scoring batch), the mask (None when dense) and its layer
    densities."""
    started = time.time()
    device = dataset.train.inputs.device
    model = build_model(spec.target.model, dataset.input_shape, dataset.num_classes, spec.seed).to(device)
    mask, batch = None, dataset.sample_batch(spec.score_batch_size, spec.seed)
    if spec.method != DENSE:
        mask = agree(cell_mask(spec, model, dataset, scorer_path, allocator_path))
        if spec.variant == "reinit":
            model = build_model(spec.target.model, dataset.input_shape, dataset.num_classes,
                                reinit_seed(spec.seed)).to(device)
        apply_mask(model, mask.to(device), spec.init, batch[0])
    pruned = time.time()
    signal = signal_at_init(model, *batch)
    history = train(wrap(model), dataset, spec.train, seed=spec.seed, shard=shard)
    return {
        "test_accuracy": history.final_accuracy,
        "test_accuracy_per_epoch": history.test_accuracy,
        "train_loss_per_epoch": history.train_loss,
        "initial_loss": signal.loss,
        "init_logit_std": signal.logit_std,
        "init_grad_norm": signal.grad_norm,
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

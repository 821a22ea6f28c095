"""Masked training and evaluation on in-memory datasets; deterministic for a seed on CPU."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from torch import nn

from .config import TrainConfig
from .data import Dataset, Split
from .errors import UserError


class NonFiniteLossError(UserError):
    """Training produced a NaN or infinite loss (usually a learning rate too high for the network)."""


@dataclass
class TrainHistory:
    train_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)

    @property
    def final_accuracy(self) -> float:
        return self.test_accuracy[-1]


@dataclass(frozen=True)
class Shard:
    """This process's share of every batch under data parallelism (rank r of world size w)."""

    rank: int = 0
    world_size: int = 1


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, momentum=config.momentum,
                               weight_decay=config.weight_decay)
    return torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)


def make_schedule(optimizer: torch.optim.Optimizer, config: TrainConfig) -> torch.optim.lr_scheduler.LRScheduler:
    """Per-epoch learning rate: a linear warm-up over `warmup_epochs`, then the schedule."""
    warmup = config.warmup_epochs

    def factor(epoch: int) -> float:
        if epoch < warmup:
            return (epoch + 1) / (warmup + 1)
        if config.schedule == "multistep":
            return config.gamma ** sum(epoch >= m for m in config.milestones)
        if config.schedule == "cosine":
            return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / (config.epochs - warmup)))
        return 1.0

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def epoch_generator(seed: int, epoch: int, device: torch.device) -> torch.Generator:
    """The batch order and augmentation of an epoch depend only on (seed, epoch): resumable."""
    return torch.Generator(device=device).manual_seed(seed * 100_003 + epoch)


@torch.no_grad()
def evaluate(model: nn.Module, dataset: Dataset, split: Optional[Split] = None, batch_size: int = 1024) -> float:
    """Top-1 accuracy on a split (the test split by default); restores the model's mode."""
    split = dataset.test if split is None else split
    modes = {module: module.training for module in model.modules()}
    model.eval()
    correct = 0
    for start in range(0, len(split), batch_size):
        inputs = dataset.prepare(split.inputs[start:start + batch_size], train=False)
        correct += int((model(inputs).argmax(1) == split.targets[start:start + batch_size]).sum())
    for module, mode in modes.items():
        module.training = mode
    return correct / len(split)


def train(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    *,
    seed: int,
    shard: Shard = Shard(),
    optimizer: Optional[torch.optim.Optimizer] = None,
    on_step: Optional[Callable[[int], None]] = None,
    on_epoch: Optional[Callable[[int, float, float], None]] = None,
    progress: bool = False,
) -> TrainHistory:
    """Train `model` (already masked with `apply_mask` if sparse) and evaluate after every epoch.

    `model` may be a DistributedDataParallel wrapper: each rank then trains on its shard of every
    batch. `on_step(step)` runs after each optimizer step, `on_epoch(epoch, loss, accuracy)` after
    each epoch. Raises NonFiniteLossError on a NaN/Inf loss.
    """
    optimizer = optimizer or make_optimizer(model, config)
    schedule = make_schedule(optimizer, config)
    device = dataset.train.inputs.device
    history = TrainHistory()
    epochs = range(config.epochs)
    if progress:
        from tqdm.auto import tqdm

        epochs = tqdm(epochs, desc="train", unit="epoch", leave=False)
    step = 0
    for epoch in epochs:
        model.train()
        generator = epoch_generator(seed, epoch, device)
        order = torch.randperm(len(dataset.train), generator=generator, device=device)
        loss_sum, batches = torch.zeros((), device=device), 0
        for start in range(0, len(order), config.batch_size):
            batch = order[start:start + config.batch_size]
            if len(batch) < shard.world_size:  # every rank must step together under DDP
                continue
            index = batch[shard.rank::shard.world_size]
            inputs = dataset.prepare(dataset.train.inputs[index], train=True, generator=generator)
            loss = F.cross_entropy(model(inputs), dataset.train.targets[index])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
            if on_step is not None:
                on_step(step)
            loss_sum += loss.detach()
            batches += 1
        mean_loss = float(loss_sum) / max(batches, 1)
        if not math.isfinite(mean_loss):
            raise NonFiniteLossError(f"training loss became {mean_loss} in epoch {epoch + 1} (lr {config.lr})")
        schedule.step()
        accuracy = evaluate(model, dataset)
        history.train_loss.append(mean_loss)
        history.test_accuracy.append(accuracy)
        if on_epoch is not None:
            on_epoch(epoch, mean_loss, accuracy)
    return history

"""Iterative rewind pruning (the lottery-ticket procedure), pure PyTorch and resumable per round."""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch import Tensor, nn

from .config import IRPChainConfig
from .criteria import CRITERIA, ScoringContext
from .data import Dataset
from .errors import UserError
from .layer_allocation import global_counts, keep_count, top_k_within_layers
from .masks import Mask, apply_mask, masked_copy
from .models import build_model
from .pruning import allocation_counts, exclude_pruned
from .survival import RoundFeatures
from .training import Shard, make_optimizer, train

FEATURE_BATCH_SEED_OFFSET = 7919


@dataclass
class RoundRecord:
    """Round r trains the network at density (1-p)^r and then (if r < R) prunes it."""

    round: int
    density: float
    test_accuracy: float
    train_loss: float
    seconds: float


@dataclass
class IRPState:
    """Everything needed to continue a chain after `completed` trainings (rounds 0..completed-1)."""

    completed: int
    mask: Mask
    survival: dict[str, Tensor]
    initial: dict[str, Tensor]
    rewind: dict[str, Tensor]
    history: list[RoundRecord] = field(default_factory=list)

    def to_tensors(self) -> dict:
        """Plain tensors/lists, loadable with torch.load(weights_only=True)."""
        return {
            "completed": self.completed,
            "mask": dict(self.mask),
            "survival": self.survival,
            "initial": self.initial,
            "rewind": self.rewind,
            "history": [[r.round, r.density, r.test_accuracy, r.train_loss, r.seconds] for r in self.history],
        }

    @classmethod
    def from_tensors(cls, data: dict) -> "IRPState":
        return cls(data["completed"], Mask(data["mask"]), data["survival"], data["initial"], data["rewind"],
                   [RoundRecord(int(r[0]), *map(float, r[1:])) for r in data["history"]])


def density_after(rounds: int, prune_fraction: float) -> float:
    """Density after `rounds` prunings that each remove `prune_fraction` of the remaining weights."""
    return (1.0 - prune_fraction) ** rounds


def clone_state(model: nn.Module) -> dict[str, Tensor]:
    return {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}


def feature_batch(dataset: Dataset, size: int, seed: int) -> tuple[Tensor, Tensor]:
    """The fixed, seeded batch used for init features and data-driven scores of one chain."""
    return dataset.sample_batch(size, seed + FEATURE_BATCH_SEED_OFFSET)


def initial_state(model: nn.Module) -> IRPState:
    initial = clone_state(model)
    mask = Mask.dense(model)
    return IRPState(0, mask, {n: torch.zeros(m.shape, dtype=torch.int16) for n, m in mask.items()}, initial, initial)


def prune_trained(model: nn.Module, mask: Mask, density: float, criterion: str, batch, allocation: str) -> Mask:
    """Remove weights from the trained network by one scoring of `criterion` under `allocation` (resolved as
    in `prune`), never reviving pruned ones."""
    scores = exclude_pruned(CRITERIA.get(criterion)(ScoringContext(model, [batch])), mask)
    counts = allocation_counts(allocation, model, density, [batch])
    return top_k_within_layers(scores, global_counts(scores, keep_count(mask.num_total(), density))
                               if counts is None else counts)


def run_irp(
    config: IRPChainConfig,
    dataset: Dataset,
    *,
    state: Optional[IRPState] = None,
    device: torch.device | str = "cpu",
    shard: Shard = Shard(),
    wrap: Callable[[nn.Module], nn.Module] = lambda model: model,
    agree: Callable[[Mask], Mask] = lambda mask: mask,
    on_round: Optional[Callable[[IRPState, nn.Module, torch.optim.Optimizer], None]] = None,
) -> IRPState:
    """Run (or continue) an IRP chain: rounds 0..R train, rounds 0..R-1 also prune by a fraction p.

    `wrap` may wrap the model for data parallelism; `agree` makes all ranks share rank 0's mask.
    `on_round` is called after every round with the new state, the trained model and optimizer.
    The result's `survival[w]` counts the prunings weight w survived (0..R).
    """
    irp, recipe = config.irp, config.train
    model = build_model(config.model, dataset.input_shape, dataset.num_classes, config.seed).to(device)
    state = state or initial_state(model)
    batch = feature_batch(dataset, config.score_batch_size, config.seed)
    for round_index in range(state.completed, irp.rounds + 1):
        started = time.perf_counter()
        model.load_state_dict(state.rewind if round_index > 0 else state.initial)
        apply_mask(model, state.mask.to(device), irp.init, batch[0].to(device))
        net = wrap(model)
        optimizer = make_optimizer(net, recipe)
        capture_rewind = round_index == 0 and irp.rewind_step > 0

        def on_step(step: int) -> None:
            if capture_rewind and step == irp.rewind_step:
                state.rewind = clone_state(model)

        history = train(net, dataset, recipe, seed=config.seed * 1000 + round_index, shard=shard,
                        optimizer=optimizer, on_step=on_step)
        if capture_rewind and state.rewind is state.initial:
            raise UserError(f"rewind_step {irp.rewind_step} is beyond the first round's training steps")
        if round_index < irp.rounds:
            density = density_after(round_index + 1, irp.prune_fraction)
            state.mask = agree(prune_trained(model, state.mask, density, irp.trained_criterion, batch, irp.allocation))
            state.survival = {n: s + state.mask[n].cpu().to(torch.int16) for n, s in state.survival.items()}
        state.history.append(RoundRecord(round_index, density_after(round_index, irp.prune_fraction),
                                         history.final_accuracy, history.train_loss[-1],
                                         time.perf_counter() - started))
        state.completed = round_index + 1
        if on_round is not None:
            on_round(state, model, optimizer)
    return state


def check_schedule(state: IRPState, config: IRPChainConfig) -> None:
    """After R prunings the mask must hold (1-p)^R of the weights, to within one weight."""
    expected = density_after(config.irp.rounds, config.irp.prune_fraction) * state.mask.num_total()
    if abs(state.mask.num_kept() - expected) > 1:
        raise AssertionError(f"IRP kept {state.mask.num_kept()} weights, expected {expected:.1f}")


def feature_rounds(config: IRPChainConfig) -> list[int]:
    """The rounds whose masked networks get feature rows: 0, s, 2s, ... below R (s the stride)."""
    return list(range(0, config.irp.rounds, config.irp.feature_round_stride))


def chain_features(config: IRPChainConfig, dataset: Dataset, state: IRPState) -> list[RoundFeatures]:
    """For each feature round r: the features of the initial network masked by round r's mask (the
    weights that survived r prunings), on the chain's fixed feature batch, for the weights kept then."""
    from .features import compute_features

    model = build_model(config.model, dataset.input_shape, dataset.num_classes, config.seed)
    model.load_state_dict(state.initial)
    batch = feature_batch(dataset.to("cpu"), config.score_batch_size, config.seed)
    blocks = []
    for round_index in feature_rounds(config):
        mask = Mask({n: s >= round_index for n, s in state.survival.items()})
        features = compute_features(masked_copy(model, mask), [batch], config.irp.features, mask=mask)
        positions = {n: torch.nonzero(kept.flatten()).flatten() for n, kept in mask.items()}
        blocks.append(RoundFeatures(round_index, positions, {n: features[n][positions[n]] for n in features}))
    return blocks


def survival_metadata(config: IRPChainConfig, state: IRPState, config_hash: str) -> dict:
    from . import __version__
    from .features import feature_versions

    return {
        "model": config.model, "dataset": config.dataset, "seed": config.seed,
        "rounds": config.irp.rounds, "prune_fraction": config.irp.prune_fraction,
        "rewind_step": config.irp.rewind_step, "trained_criterion": config.irp.trained_criterion,
        "allocation": config.irp.allocation, "feature_names": list(config.irp.features),
        "feature_versions": feature_versions(config.irp.features),
        "history": [vars(r) for r in state.history], "config_hash": config_hash,
        "library_version": __version__,
    }

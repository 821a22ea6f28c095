"""Pruning at initialization as scores, allocation and top-k, one-shot or iterated.

`prune` makes one private copy of the model. For k steps on an exponential density schedule it scores
the network as pruned so far (one criterion call, i.e. one backward pass for data-driven criteria),
keeps each layer's allotted top-k, and zeroes the rest in the copy. One step is one-shot pruning; a
pruned weight is never revived. With the `global` allocation step s keeps the global top
round(d^(s/k) * total); with any other allocation the final per-layer counts are fixed first and each
layer follows its own exponential schedule down to them.

Iterating SNIP this way is Iterative SNIP from de Jorge et al. 2021, "Progressive Skeletonization:
Trimming more fat from a network at initialization" (ICLR): saliency |w * dL/dw| evaluated on the pruned
network, an exponential schedule of kept weights, and no resurrection of pruned weights. (Their FORCE
variant also lets pruned weights return; it is not implemented here.)
"""
from __future__ import annotations

import copy
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from .criteria import CRITERIA, Scores, ScoringContext, as_batches
from .errors import UserError
from .layer_allocation import (GLOBAL, LEARNED, SHAPE_ALLOCATIONS, Counts, DensityError, check_density, counts_of,
                               global_counts, keep_count, step_counts, top_k_within_layers)
from .masks import Mask, prunable_parameters, zero_pruned
from .registry import UnknownNameError

ScoreFunction = Callable[[ScoringContext], Scores]
Method = Union[str, Path, ScoreFunction]
Allocation = Union[str, Path, Callable[[dict, float], Counts]]
NEG_INF = -math.inf
AUTOS = "autos"

METHOD_PATTERN = re.compile(r"^(?P<criterion>[A-Za-z0-9_.:-]+?)(?:/iter(?P<steps>\d+))?(?:@alloc:(?P<alloc>[A-Za-z0-9_-]+))?$")


class MethodSpecError(UserError):
    """A method string does not parse, or names steps < 1."""


@dataclass(frozen=True)
class MethodSpec:
    """A pruning method: a criterion (or `autos:<scorer name>`), its number of steps and its allocation.

    Written `criterion[/iterK][@alloc:NAME]`, e.g. `snip`, `snip/iter20@alloc:synflow`,
    `autos:conditional/iter20@alloc:learned`. Without `/iterK` the criterion's own default is used
    (100 for SynFlow, 1 otherwise); without `@alloc:` the allocation is global.
    """

    criterion: str
    steps: Optional[int] = None
    allocation: str = GLOBAL

    @classmethod
    def parse(cls, text: str) -> "MethodSpec":
        match = METHOD_PATTERN.match(str(text).strip())
        if not match:
            raise MethodSpecError(f"method {text!r} does not look like criterion[/iterK][@alloc:NAME]")
        steps = int(match["steps"]) if match["steps"] else None
        if steps is not None and steps < 1:
            raise MethodSpecError(f"method {text!r}: steps must be at least 1")
        return cls(match["criterion"], steps, match["alloc"] or GLOBAL)

    @property
    def is_autos(self) -> bool:
        return self.criterion.split(":")[0] == AUTOS

    @property
    def scorer_name(self) -> Optional[str]:
        return self.criterion.partition(":")[2] or None if self.is_autos else None

    def label(self) -> str:
        steps = f"/iter{self.steps}" if self.steps is not None else ""
        allocation = f"@alloc:{self.allocation}" if self.allocation != GLOBAL else ""
        return f"{self.criterion}{steps}{allocation}"

    def validate(self, scorer_names: Optional[list[str]] = None) -> None:
        """Names exist: the criterion (or scorer) and the allocation."""
        if self.is_autos:
            if scorer_names is not None and self.scorer_name not in scorer_names:
                raise UnknownNameError(f"method {self.label()!r}: no scorer named {self.scorer_name!r} "
                                       f"(scorers: {', '.join(scorer_names) or 'none'})")
        else:
            CRITERIA.get(self.criterion)
        check_allocation_name(self.allocation)


def check_allocation_name(name: str) -> None:
    if name in (GLOBAL, LEARNED) or name in SHAPE_ALLOCATIONS or name in CRITERIA:
        return
    known = ", ".join([GLOBAL, LEARNED, *SHAPE_ALLOCATIONS.names(), *CRITERIA.names()])
    raise UnknownNameError(f"unknown allocation {name!r} (known: {known})")


def resolve_method(method: Method) -> ScoreFunction:
    """A criterion name, a path to a saved AutoS scorer, or a scorer/criterion object."""
    if callable(method):
        return method
    if isinstance(method, (str, Path)):
        if str(method) in CRITERIA:
            return CRITERIA.get(str(method))
        if Path(method).suffix or Path(method).exists():
            from .scorer.artifact import load_scorer

            return load_scorer(method)
        return CRITERIA.get(str(method))
    raise MethodSpecError(f"method must be a name, a scorer path or a scorer object, got {type(method).__name__}")


def default_steps(function: ScoreFunction) -> int:
    return int(getattr(function, "default_steps", 1))


def step_batches(batches: Optional[list], size: Optional[int], step: int) -> Optional[list]:
    """The data step `step` (from 1) scores on: all of `batches`, or with `size` the next `size` examples in
    turn (slices of the concatenated batches, cycling; a last partial slice is not used)."""
    if batches is None or size is None:
        return batches
    inputs, targets = torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
    if size >= len(inputs):
        return batches
    start = (step - 1) % (len(inputs) // size) * size
    return [(inputs[start:start + size], targets[start:start + size])]


def score(model: nn.Module, method: Method, data: object = None, *, seed: int = 0,
          input_shape: Optional[tuple[int, ...]] = None) -> Scores:
    """One scoring pass over every prunable weight of the dense `model` (left unchanged)."""
    context = ScoringContext(copy.deepcopy(model), as_batches(data), seed, input_shape)
    return resolve_method(method)(context)


def fixed_counts(allocation: Allocation, net: nn.Module, density: float, batches, seed: int,
                 input_shape: Optional[tuple[int, ...]]) -> Optional[Counts]:
    """Final per-layer counts of a fixed allocation; None for `global` (counts follow the scores)."""
    shapes = {n: p.shape for n, p in prunable_parameters(net).items()}
    if callable(allocation):
        return allocation(shapes, density)
    name = str(allocation)
    if name == GLOBAL:
        return None
    if name in SHAPE_ALLOCATIONS:
        return SHAPE_ALLOCATIONS.get(name).counts(shapes, density)
    if name in CRITERIA:
        mask = prune(net, 1 - density, name, batches, seed=seed, input_shape=input_shape)
        return counts_of(mask)
    if Path(name).suffix or Path(name).exists():
        from .learned_allocation import load_allocator

        return load_allocator(name)(shapes, density)
    if name == LEARNED:
        raise UserError("allocation 'learned' needs a fitted allocator: pass its file (allocator.safetensors) "
                        "or an Allocator object")
    check_allocation_name(name)
    raise AssertionError("unreachable")


def prune(
    model: nn.Module,
    sparsity: float,
    method: Method = "magnitude",
    data: object = None,
    *,
    allocation: Allocation = GLOBAL,
    steps: Optional[int] = None,
    step_batch_size: Optional[int] = None,
    invert: bool = False,
    seed: int = 0,
    input_shape: Optional[tuple[int, ...]] = None,
    on_step: Optional[Callable[[int, Mask], None]] = None,
) -> Mask:
    """A mask removing exactly `sparsity` of the prunable weights, chosen by `method`.

    `data` is an (inputs, targets) pair or an iterable of pairs (model-ready tensors); data-free
    criteria accept None (pass `input_shape=` for SynFlow then). `allocation` is `global`, `uniform`,
    `erk`, a criterion name (that criterion's own per-layer counts), a fitted allocator (file or object),
    or a function (shapes, density) -> counts. `steps` defaults to the method's own (SynFlow 100, a
    conditional AutoS scorer its fitted value, others 1). `step_batch_size` (default: the method's own,
    else None) makes step s score on the s-th slice of that many examples of `data`, in turn, instead of
    all of it: a cheaper gradient per step. `invert` keeps the lowest scores at every step
    (the sanity check). `model` is not modified: apply the mask with `apply_mask`.
    """
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
        raise DensityError(f"sparsity {sparsity!r} is outside (0, 1)")
    density = 1.0 - sparsity
    check_density(density)
    function = resolve_method(method)
    steps = default_steps(function) if steps is None else steps
    if steps < 1:
        raise MethodSpecError(f"steps must be at least 1, got {steps}")
    if step_batch_size is None:
        step_batch_size = getattr(function, "default_step_batch_size", None)
    if step_batch_size is not None and step_batch_size < 1:
        raise MethodSpecError(f"step_batch_size must be at least 1, got {step_batch_size}")
    batches = as_batches(data)
    net = copy.deepcopy(model)
    sizes = {n: p.numel() for n, p in prunable_parameters(net).items()}
    keep = keep_count(sum(sizes.values()), density)
    final = fixed_counts(allocation, net, density, batches, seed, input_shape)
    mask = Mask.dense(net)
    for step, scheduled in enumerate(step_densities(density, steps), start=1):
        context = ScoringContext(net, step_batches(batches, step_batch_size, step), seed, input_shape, mask)
        scores = exclude_pruned(function(context), mask, invert)
        if final is None:
            step_keep = keep if step == steps else max(keep, round(scheduled * sum(sizes.values())))
            counts = global_counts(scores, step_keep)
        else:
            counts = step_counts(sizes, final, step, steps)
        mask = top_k_within_layers(scores, counts)
        zero_pruned(net, mask)
        if on_step is not None:
            on_step(step, mask)
    return mask


def exclude_pruned(scores: Scores, mask: Mask, invert: bool = False) -> Scores:
    """Float64 scores where every kept weight (even one scored NaN or -inf) ranks above every pruned
    one, so that no top-k can revive a pruned weight; `invert` reverses the ranking of kept weights."""
    lowest = torch.finfo(torch.float64).min
    out = {}
    for name, values in scores.items():
        values = torch.nan_to_num(values.detach().double().cpu(), nan=lowest, neginf=lowest, posinf=-lowest)
        out[name] = (-values if invert else values).masked_fill(~mask[name].cpu(), NEG_INF)
    return out


def step_densities(density: float, steps: int) -> list[float]:
    """The global schedule: the density after each step, d^(s/k) for s = 1..k."""
    return [density ** (step / steps) for step in range(1, steps + 1)]

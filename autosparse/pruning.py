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
from pathlib import Path
from typing import Callable, Optional, Union

import torch
from torch import nn

from .criteria import CRITERIA, Scores, ScoringContext, ScoringPlugin, as_batches
from .errors import UserError
from .layer_allocation import (GLOBAL, LEARNED, SHAPE_ALLOCATIONS, Counts, DensityError, check_density, counts_of,
                               global_counts, keep_count, step_counts, top_k_within_layers)
from .masks import Mask, prunable_parameters, zero_pruned
from .methods import Method, MethodError, check_allocation_name, load_learned_file, names_file
from .sanity import shuffle_mask

ScoreFunction = Callable[[ScoringContext], Scores]
Scoring = Union[str, Path, Method, ScoreFunction]
Allocation = Union[str, Path, Callable[[dict, float], Counts]]
NEG_INF = -math.inf


def resolve_method(scores: Union[str, Path, ScoreFunction]) -> ScoreFunction:
    """What scores: a criterion name, a saved AutoS scorer file, or a scorer/criterion object."""
    if callable(scores):
        return scores
    if isinstance(scores, (str, Path)):
        if names_file(scores):
            return load_learned_file("scorer", scores)
        if Method(str(scores)).is_autos:
            raise UserError(f"method {str(scores)!r} names a scorer that a pipeline fits: pass its file instead")
        return CRITERIA.get(str(scores))
    raise MethodError(f"method must be a name, a scorer path or a scorer object, got {type(scores).__name__}")


def plugin_defaults(function: ScoreFunction) -> tuple[int, Optional[int]]:
    """Steps and step batch size a scoring plug-in prunes with unless told otherwise (a plain function: one
    step on the whole batch)."""
    if isinstance(function, ScoringPlugin):
        return function.default_steps, function.default_step_batch_size
    return 1, None


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


def score(model: nn.Module, method: Union[str, Path, ScoreFunction], data: object = None, *, seed: int = 0,
          input_shape: Optional[tuple[int, ...]] = None) -> Scores:
    """One scoring pass over every prunable weight of the dense `model` (left unchanged)."""
    context = ScoringContext(copy.deepcopy(model), as_batches(data), seed, input_shape)
    return resolve_method(method)(context)


def allocation_counts(allocation: Allocation, net: nn.Module, density: float, batches, seed: int = 0,
                      input_shape: Optional[tuple[int, ...]] = None) -> Optional[Counts]:
    """Final per-layer counts of an allocation at `density`; None for `global` (counts follow the scores).
    The one resolver of allocation names, files and objects, for `prune` and for IRP's prunings."""
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
    if names_file(name):
        return load_learned_file("allocator", name)(shapes, density)
    if name == LEARNED:
        raise UserError("allocation 'learned' needs a fitted allocator: pass its file (allocator.safetensors) "
                        "or an Allocator object")
    check_allocation_name(name)
    raise AssertionError("unreachable")


def prune(
    model: nn.Module,
    sparsity: float,
    method: Scoring = "magnitude",
    data: object = None,
    *,
    allocation: Optional[Allocation] = None,
    steps: Optional[int] = None,
    step_batch_size: Optional[int] = None,
    invert: bool = False,
    seed: int = 0,
    input_shape: Optional[tuple[int, ...]] = None,
    on_step: Optional[Callable[[int, Mask], None]] = None,
) -> Mask:
    """A mask removing exactly `sparsity` of the prunable weights, chosen by `method`.

    `method` is a method (autosparse/methods.py: its text such as `snip/iter20@alloc:synflow`, whose criterion
    may be a scorer file, or a `Method`), a scorer file `Path`, or a scoring object or function; the keyword
    arguments below override the parts the method names. Its `invert` variant is `invert=True`, its `shuffle`
    variant shuffles the final mask within each layer (seeded by `seed`); `reinit` changes the network the
    mask is applied to, not the mask.

    `data` is an (inputs, targets) pair or an iterable of pairs (model-ready tensors); data-free criteria
    accept None (pass `input_shape=` for SynFlow then). `allocation` is `global`, `uniform`,
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
    variant = None
    if isinstance(method, (str, Path, Method)):
        spec = method if isinstance(method, Method) else Method(str(method)) if isinstance(method, Path) \
            else Method.parse(method)
        method, variant = spec.scores, spec.variant
        steps = spec.steps if steps is None else steps
        step_batch_size = spec.step_batch if step_batch_size is None else step_batch_size
        allocation = spec.allocation if allocation is None else allocation
        invert = invert or variant == "invert"
    function = resolve_method(method)
    own_steps, own_step_batch_size = plugin_defaults(function)
    steps = own_steps if steps is None else steps
    if steps < 1:
        raise MethodError(f"steps must be at least 1, got {steps}")
    if step_batch_size is None:
        step_batch_size = own_step_batch_size
    if step_batch_size is not None and step_batch_size < 1:
        raise MethodError(f"step_batch_size must be at least 1, got {step_batch_size}")
    batches = as_batches(data)
    net = copy.deepcopy(model)
    sizes = {n: p.numel() for n, p in prunable_parameters(net).items()}
    keep = keep_count(sum(sizes.values()), density)
    final = allocation_counts(GLOBAL if allocation is None else allocation, net, density, batches, seed, input_shape)
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
    return shuffle_mask(mask, seed) if variant == "shuffle" else mask


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

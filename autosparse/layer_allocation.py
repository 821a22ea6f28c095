"""Per-layer allocation (how many weights each prunable layer keeps) and exact top-k within layers.

A mask is three steps, as in jaxpruner: per-weight scores, a per-layer allocation, and a top-k inside
each layer. The `global` allocation derives the counts from the scores themselves (one threshold over
every layer); every other allocation fixes the counts first (from layer shapes, from another method's
mask, or from a learned model) and the scores then only rank weights within each layer.

Counts always sum to exactly `round(density * total)`; ties in the scores break by position (earlier
positions are kept first) and NaN counts as the lowest score.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Mapping

import torch
from torch import Tensor

from .errors import UserError
from .masks import Mask
from .registry import Registry

Counts = dict[str, int]
Shapes = Mapping[str, torch.Size]
GLOBAL = "global"  # counts follow the scores: one threshold over every layer
LEARNED = "learned"  # counts from a fitted allocator (autosparse/learned_allocation.py)


class DensityError(UserError):
    """A requested density (or sparsity) is outside (0, 1) or keeps no weight."""


def check_density(density: float) -> None:
    if isinstance(density, bool) or not isinstance(density, (int, float)) or math.isnan(density) \
            or not 0.0 < density < 1.0:
        raise DensityError(f"density {density!r} is outside (0, 1)")


def keep_count(total: int, density: float) -> int:
    """round(density * total), which must keep at least one weight."""
    check_density(density)
    keep = round(density * total)
    if keep == 0:
        raise DensityError(f"density {density} keeps no weight of {total}")
    return keep


def _flat(scores: Tensor) -> Tensor:
    return torch.nan_to_num(scores.detach().flatten().double().cpu(), nan=-math.inf)


def _top_k_flat(values: Tensor, k: int) -> Tensor:
    """Bool mask of the k largest values; ties at the threshold go to the earliest positions (O(n))."""
    kept = torch.zeros(values.numel(), dtype=torch.bool)
    if k <= 0:
        return kept
    if k >= values.numel():
        return ~kept
    threshold = torch.kthvalue(values, values.numel() - k + 1).values
    above = values > threshold
    ties = torch.nonzero(values == threshold).flatten()[: k - int(above.sum())]
    above[ties] = True
    return above


def top_k_within_layers(scores: Mapping[str, Tensor], counts: Mapping[str, int]) -> Mask:
    """Keep the `counts[layer]` highest scores of every layer."""
    return Mask({name: _top_k_flat(_flat(s), counts[name]).view(s.shape) for name, s in scores.items()})


def global_counts(scores: Mapping[str, Tensor], keep: int) -> Counts:
    """The per-layer counts of one global top-`keep` over all scores (the `global` allocation)."""
    flat = [_flat(s) for s in scores.values()]
    kept = _top_k_flat(torch.cat(flat), keep)
    return {name: int(piece.sum()) for name, piece in zip(scores, kept.split([f.numel() for f in flat]))}


def counts_from_densities(sizes: Mapping[str, int], densities: Mapping[str, float], keep: int,
                          minimum: int = 1) -> Counts:
    """Integer counts proportional to `densities` (up to one common factor), capped at each layer's size,
    at least `minimum` per layer where the budget allows, and summing to exactly `keep`.

    Water-filling: the common factor s solves sum_l clamp(s * d_l * n_l, floor_l, n_l) = keep (bisection),
    then the fractional parts are rounded by largest remainder.
    """
    total = sum(sizes.values())
    if not 0 < keep <= total:
        raise DensityError(f"cannot keep {keep} of {total} weights")
    floors = {n: min(minimum, sizes[n]) for n in sizes}
    if sum(floors.values()) > keep:
        floors = {n: 0 for n in sizes}
    weight = {n: max(float(densities[n]), 1e-12) * sizes[n] for n in sizes}

    def filled(scale: float) -> dict[str, float]:
        return {n: min(float(sizes[n]), max(float(floors[n]), scale * weight[n])) for n in sizes}

    low, high = 0.0, 1.0
    while sum(filled(high).values()) < keep:
        high *= 2.0
    for _ in range(200):
        middle = (low + high) / 2
        low, high = (middle, high) if sum(filled(middle).values()) < keep else (low, middle)
    exact = filled(high)
    counts = {n: min(sizes[n], max(floors[n], math.floor(exact[n] + 1e-9))) for n in sizes}
    while sum(counts.values()) != keep:
        grow = sum(counts.values()) < keep
        candidates = [n for n in sizes if (counts[n] < sizes[n] if grow else counts[n] > floors[n])]
        name = max(candidates, key=lambda n: (exact[n] - counts[n]) if grow else (counts[n] - exact[n]))
        counts[name] += 1 if grow else -1
    return counts


def counts_of(mask: Mask) -> Counts:
    return {name: int(kept.sum()) for name, kept in mask.items()}


def step_counts(sizes: Mapping[str, int], final: Mapping[str, int], step: int, steps: int) -> Counts:
    """Counts after `step` of `steps` on each layer's own exponential schedule from dense to `final`.

    Layer l keeps round(n_l * (final_l / n_l) ** (step / steps)): never more than at the step before,
    never fewer than `final`, and exactly `final` at the last step.
    """
    if step >= steps:
        return dict(final)
    return {n: max(final[n], round(sizes[n] * (max(final[n], 1) / sizes[n]) ** (step / steps))) for n in sizes}


def erk_densities(shapes: Shapes, density: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel (Evci et al. 2020): density proportional to sum(shape) / prod(shape), capped at 1."""
    sizes = {n: math.prod(s) for n, s in shapes.items()}
    raw = {n: sum(s) / sizes[n] for n, s in shapes.items()}
    dense: set[str] = set()
    while True:
        budget = density * sum(sizes.values()) - sum(sizes[n] for n in dense)
        scale = budget / sum(raw[n] * sizes[n] for n in raw if n not in dense)
        overfull = {n for n in raw if n not in dense and raw[n] * scale > 1}
        if not overfull:
            return {n: 1.0 if n in dense else raw[n] * scale for n in raw}
        dense |= overfull


@dataclass(frozen=True)
class ShapeAllocation:
    """An allocation computed from layer shapes alone."""

    name: str
    densities: Callable[[Shapes, float], dict[str, float]]
    doc: str

    def counts(self, shapes: Shapes, density: float) -> Counts:
        sizes = {n: math.prod(s) for n, s in shapes.items()}
        return counts_from_densities(sizes, self.densities(shapes, density), keep_count(sum(sizes.values()), density))


SHAPE_ALLOCATIONS: Registry[ShapeAllocation] = Registry("allocation")


def shape_allocation(name: str) -> Callable:
    def register(densities: Callable[[Shapes, float], dict[str, float]]) -> ShapeAllocation:
        return SHAPE_ALLOCATIONS.register(name)(ShapeAllocation(name, densities, (densities.__doc__ or "").strip()))

    return register


@shape_allocation("uniform")
def uniform_densities(shapes: Shapes, density: float) -> dict[str, float]:
    """Every layer keeps the same share of its weights."""
    return {n: density for n in shapes}


@shape_allocation("erk")
def erk(shapes: Shapes, density: float) -> dict[str, float]:
    """Erdos-Renyi-Kernel densities (Evci et al. 2020, RigL)."""
    return erk_densities(shapes, density)


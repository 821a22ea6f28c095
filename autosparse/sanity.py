"""Sanity checks for pruning methods (Frankle et al. 2021): shuffle and reinit (invert is `prune(invert=True)`)."""
from __future__ import annotations

import torch

from .masks import Mask


def shuffle_mask(mask: Mask, seed: int) -> Mask:
    """Randomly permute kept positions within each layer: same per-layer density, new positions."""
    generator = torch.Generator().manual_seed(seed)
    return Mask({
        name: kept.flatten().cpu()[torch.randperm(kept.numel(), generator=generator)].view(kept.shape)
        for name, kept in mask.items()
    })


def reinit_seed(seed: int) -> int:
    """The init seed of the freshly initialized network a `reinit` mask is applied to."""
    return seed + 1_000_003

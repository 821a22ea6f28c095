"""Batched on-device augmentation (no per-sample Python)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def random_crop_flip(padding: int = 4):
    """Random crop with zero padding plus horizontal flip, for a whole (B, C, H, W) batch."""

    def augment(x: Tensor, generator: torch.Generator) -> Tensor:
        b, _, h, w = x.shape
        gen_device = generator.device
        offsets = torch.randint(0, 2 * padding + 1, (2, b), generator=generator, device=gen_device).to(x.device)
        flip = (torch.rand(b, generator=generator, device=gen_device) < 0.5).to(x.device)
        padded = F.pad(x, (padding,) * 4)
        rows = (offsets[0][:, None] + torch.arange(h, device=x.device))[:, :, None]
        cols = (offsets[1][:, None] + torch.arange(w, device=x.device))[:, None, :]
        batch = torch.arange(b, device=x.device)[:, None, None]
        cropped = padded.permute(0, 2, 3, 1)[batch, rows, cols].permute(0, 3, 1, 2)
        return torch.where(flip[:, None, None, None], cropped.flip(-1), cropped)

    return augment

"""Masks over prunable weights, exact top-k selection, and applying a mask so pruned weights stay zero."""
from __future__ import annotations

import math
import os
from typing import Iterator, Literal, Mapping

import torch
from torch import Tensor, nn

from .io import atomic_write

Scope = Literal["global", "layerwise"]
SCOPES = ("global", "layerwise")


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The `weight` of every Conv and Linear layer, keyed as in `model.named_parameters()`."""
    return {
        f"{prefix}.weight" if prefix else "weight": module.weight
        for prefix, module in model.named_modules()
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
    }


class Mask(Mapping[str, Tensor]):
    """Prunable parameter name -> bool tensor of the same shape (True = kept)."""

    def __init__(self, tensors: Mapping[str, Tensor]):
        for name, tensor in tensors.items():
            if not isinstance(tensor, Tensor) or tensor.dtype != torch.bool:
                raise ValueError(f"mask entry {name!r} must be a bool tensor")
        self._tensors = dict(tensors)

    @classmethod
    def dense(cls, model: nn.Module) -> "Mask":
        return cls({n: torch.ones_like(p, dtype=torch.bool) for n, p in prunable_parameters(model).items()})

    def __getitem__(self, name: str) -> Tensor:
        return self._tensors[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._tensors)

    def __len__(self) -> int:
        return len(self._tensors)

    def num_kept(self) -> int:
        return sum(int(t.sum()) for t in self._tensors.values())

    def num_total(self) -> int:
        return sum(t.numel() for t in self._tensors.values())

    def density(self) -> float:
        return self.num_kept() / self.num_total()

    def sparsity(self) -> float:
        return 1.0 - self.density()

    def layer_densities(self) -> dict[str, float]:
        return {n: float(t.float().mean()) for n, t in self._tensors.items()}

    def collapsed_layers(self) -> list[str]:
        """Layers with no kept weight at all (layer collapse: the network cannot pass signal)."""
        return [n for n, t in self._tensors.items() if not bool(t.any())]

    def to(self, device: torch.device | str) -> "Mask":
        return Mask({n: t.to(device) for n, t in self._tensors.items()})

    def validate(self, model: nn.Module) -> None:
        """Raise ValueError unless this mask has exactly the model's prunable weights and shapes."""
        params = prunable_parameters(model)
        missing, extra = set(params) - set(self), set(self) - set(params)
        if missing or extra:
            detail = f"missing {sorted(missing)}" if missing else f"unknown {sorted(extra)}"
            raise ValueError(f"mask does not fit the model: {detail} prunable parameters")
        for name, param in params.items():
            if tuple(self[name].shape) != tuple(param.shape):
                raise ValueError(
                    f"mask for {name!r} has shape {tuple(self[name].shape)}, the model's is {tuple(param.shape)}"
                )

    def save(self, path: str | os.PathLike) -> None:
        tensors = {n: t.cpu() for n, t in self._tensors.items()}
        atomic_write(path, lambda tmp: torch.save(tensors, tmp))

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Mask":
        try:
            tensors = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as error:  # truncated or foreign files raise many different types
            raise ValueError(f"{str(path)!r} is not a readable mask file: {type(error).__name__}") from None
        if not isinstance(tensors, dict) or not tensors:
            raise ValueError(f"{str(path)!r} is not a mask file")
        return cls(tensors)


def check_density(density: float) -> None:
    if not (isinstance(density, (int, float)) and 0.0 < density < 1.0) or math.isnan(density):
        raise ValueError(f"density {density!r} is outside (0, 1)")


def select_top_k(scores: Mapping[str, Tensor], density: float, scope: Scope = "global") -> Mask:
    """Keep the highest scores so that exactly round(density * total) weights survive.

    Ties break by position (stable sort), NaN counts as the lowest score. `layerwise` gives every
    layer the same density, distributing the rounding remainder by largest fractional part.
    """
    check_density(density)
    if scope not in SCOPES:
        raise ValueError(f"unknown scope {scope!r} (known: {', '.join(SCOPES)})")
    flat = {n: torch.nan_to_num(s.detach().flatten().float().cpu(), nan=-math.inf) for n, s in scores.items()}
    total = sum(s.numel() for s in flat.values())
    keep = round(density * total)
    if keep == 0:
        raise ValueError(f"density {density} keeps no weight of {total}")
    if scope == "global":
        order = torch.argsort(torch.cat(list(flat.values())), descending=True, stable=True)
        kept = torch.zeros(total, dtype=torch.bool)
        kept[order[:keep]] = True
        pieces = kept.split([s.numel() for s in flat.values()])
    else:
        quotas = _layer_quotas([s.numel() for s in flat.values()], keep)
        pieces = [_top_k_flat(s, k) for s, k in zip(flat.values(), quotas)]
    return Mask({n: p.view(scores[n].shape) for n, p in zip(flat, pieces)})


def _top_k_flat(scores: Tensor, k: int) -> Tensor:
    kept = torch.zeros(scores.numel(), dtype=torch.bool)
    kept[torch.argsort(scores, descending=True, stable=True)[:k]] = True
    return kept


def _layer_quotas(sizes: list[int], keep: int) -> list[int]:
    total = sum(sizes)
    exact = [keep * n / total for n in sizes]
    quotas = [math.floor(q) for q in exact]
    by_remainder = sorted(range(len(sizes)), key=lambda i: (-(exact[i] - quotas[i]), i))
    for i in by_remainder[: keep - sum(quotas)]:
        quotas[i] += 1
    return quotas


def apply_mask(model: nn.Module, mask: Mask) -> None:
    """Zero pruned weights and keep them zero while training.

    Gradients of pruned entries are zeroed by hooks, so SGD momentum, weight decay and Adam moments
    never move them. Re-applying replaces the previous mask's hooks.
    """
    mask.validate(model)
    for handle in getattr(model, "_autosparse_mask_hooks", []):
        handle.remove()
    handles = []
    with torch.no_grad():
        for name, param in prunable_parameters(model).items():
            keep = mask[name].to(param.device)
            param.mul_(keep)
            handles.append(param.register_hook(lambda grad, keep=keep: grad * keep))
    model._autosparse_mask_hooks = handles

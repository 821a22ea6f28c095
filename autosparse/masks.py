"""Masks over prunable weights, and applying a mask so pruned weights stay zero while training."""
from __future__ import annotations

import copy
import os
from typing import Iterator, Mapping, Optional

import torch
from torch import Tensor, nn

from .errors import UserError
from .sparse_init import ORIGINAL, SPARSE_INITS, calibrate, kept_weight_factors, output_spreads
from .storage import atomic_write

PRUNABLE_HOOK = "prunable_parameter_names"


class MaskError(UserError):
    """A mask file is unreadable, or a mask does not fit the model it is applied to."""


def prunable_parameters(model: nn.Module) -> dict[str, nn.Parameter]:
    """The tensors pruning may remove, keyed as in `model.named_parameters()`.

    A model may declare them with a method `prunable_parameter_names()`; by default they are the
    `weight` of every Conv and Linear layer (classifier included). Biases and norms are never pruned.
    """
    declared = getattr(model, PRUNABLE_HOOK, None)
    if callable(declared):
        params = dict(model.named_parameters())
        return {name: params[name] for name in declared()}
    return {
        f"{prefix}.weight" if prefix else "weight": module.weight
        for prefix, module in model.named_modules()
        if isinstance(module, (nn.modules.conv._ConvNd, nn.Linear))
    }


def masked_copy(model: nn.Module, mask: "Mask") -> nn.Module:
    """A private copy of `model` with the weights `mask` prunes set to zero (no hooks: for scoring)."""
    net = copy.deepcopy(model)
    zero_pruned(net, mask)
    return net


@torch.no_grad()
def zero_pruned(model: nn.Module, mask: "Mask") -> None:
    for name, param in prunable_parameters(model).items():
        param.mul_(mask[name].to(param.device))


class Mask(Mapping[str, Tensor]):
    """Prunable parameter name -> bool tensor of the same shape (True = kept)."""

    def __init__(self, tensors: Mapping[str, Tensor]):
        for name, tensor in tensors.items():
            if not isinstance(tensor, Tensor) or tensor.dtype != torch.bool:
                raise MaskError(f"mask entry {name!r} must be a bool tensor")
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

    def empty_units(self) -> dict[str, int]:
        """Per layer, how many output units (rows: output features or channels) keep no incoming weight.
        In the last layer of a classifier these are classes the network can no longer tell apart."""
        return {n: int((~t.flatten(1).any(1)).sum()) for n, t in self._tensors.items()}

    def collapsed_layers(self) -> list[str]:
        """Layers with no kept weight at all (layer collapse: the network cannot pass signal)."""
        return [n for n, t in self._tensors.items() if not bool(t.any())]

    def to(self, device: torch.device | str) -> "Mask":
        return Mask({n: t.to(device) for n, t in self._tensors.items()})

    def validate(self, model: nn.Module) -> None:
        """Raise MaskError unless this mask has exactly the model's prunable weights and shapes."""
        params = prunable_parameters(model)
        missing, extra = set(params) - set(self), set(self) - set(params)
        if missing or extra:
            detail = f"missing {sorted(missing)}" if missing else f"unknown {sorted(extra)}"
            raise MaskError(f"mask does not fit the model: {detail} prunable parameters")
        for name, param in params.items():
            if tuple(self[name].shape) != tuple(param.shape):
                raise MaskError(
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
            raise MaskError(f"mask file {str(path)!r} does not exist") from None
        except Exception as error:  # truncated or foreign files raise many different types
            raise MaskError(f"{str(path)!r} is not a readable mask file: {type(error).__name__}") from None
        if not isinstance(tensors, dict) or not tensors:
            raise MaskError(f"{str(path)!r} is not a mask file")
        return cls(tensors)


def apply_mask(model: nn.Module, mask: Mask, init: str = ORIGINAL, inputs: Optional[Tensor] = None) -> None:
    """Zero pruned weights, rescale kept ones by the sparse init `init`, and keep pruned weights zero while
    training.

    `init` names an entry of `SPARSE_INITS` (autosparse/sparse_init.py): `original` keeps the dense initial
    values; `layer_variance` and `unit_fan_in` restore each layer's or each unit's squared norm;
    `calibrated` then matches each layer's output spread on `inputs` (a batch, e.g. the scoring batch) to
    the dense network's. Apply it to the dense initialization. Gradients of pruned entries are zeroed by
    hooks, so SGD momentum, weight decay and Adam moments never move them. Re-applying replaces the
    previous mask's hooks.
    """
    mask.validate(model)
    rule = SPARSE_INITS.get(init)
    if rule.calibrates and inputs is None:
        raise UserError(f"sparse init {init!r} calibrates on a batch: pass `inputs`")
    params = prunable_parameters(model)
    dense_spreads = output_spreads(model, list(params), inputs) if rule.calibrates else None
    for handle in getattr(model, "_autosparse_mask_hooks", []):
        handle.remove()
    handles = []
    with torch.no_grad():
        for name, param in params.items():
            keep = mask[name].to(param.device)
            if init != ORIGINAL:
                param.mul_(kept_weight_factors(param, keep, init))
            param.mul_(keep)
            handles.append(param.register_hook(lambda grad, keep=keep: grad * keep))
    model._autosparse_mask_hooks = handles
    if dense_spreads is not None:
        calibrate(model, dense_spreads, inputs)


def broadcast_mask(mask: Mask, src: int = 0) -> Mask:
    """Every rank of the default process group adopts rank `src`'s mask (data-parallel training)."""
    import torch.distributed as dist

    device = torch.device("cuda") if dist.get_backend() == "nccl" else torch.device("cpu")
    synced = {}
    for name, kept in mask.items():
        tensor = kept.to(device=device, dtype=torch.uint8)
        dist.broadcast(tensor, src=src)
        synced[name] = tensor.bool().cpu()
    return Mask(synced)

"""Effective sparsity: which kept weights can still carry signal from the input to the output.

A kept weight whose input unit receives nothing, or whose output unit feeds nothing, is kept in name only.
Vysogorets & Kempe (2023, "Connectivity Matters: Neural Network Pruning Through the Lens of Effective
Sparsity") count only weights on an input-output path. A weight is on such a path exactly when its
SynFlow score on the masked network is non-zero, once biases (and batch-norm means) are set to zero: a
bias is a constant, not a path from the input.
"""
from __future__ import annotations

import torch
from torch import nn

from .criteria import synflow_scores
from .masks import Mask, masked_copy


def effective_mask(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> Mask:
    """The kept weights of `mask` that lie on a path from the network's input to its output."""
    net = masked_copy(model, mask)
    with torch.no_grad():
        for name, tensor in [*net.named_parameters(), *net.named_buffers()]:
            if name.endswith(("bias", "running_mean")):
                tensor.zero_()
    flow = synflow_scores(net, input_shape)
    return Mask({name: mask[name] & (flow[name] > 0).to(mask[name].device) for name in mask})


def effective_density(model: nn.Module, mask: Mask, input_shape: tuple[int, ...]) -> float:
    """Share of all prunable weights that are kept and on an input-output path (at most `mask.density()`)."""
    return effective_mask(model, mask, input_shape).density()


__all__ = ["effective_density", "effective_mask"]

"""Effective sparsity: kept weights off every input-output path do not count."""
from __future__ import annotations

import torch
from torch import nn

from autosparse.connectivity import effective_density, effective_mask
from autosparse.masks import Mask


def test_weights_off_every_path_are_not_effective():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
    first = torch.zeros(3, 2, dtype=torch.bool)
    first[0, 0] = first[1, 1] = True      # h0 <- x0 (used), h1 <- x1 (h1 feeds nothing)
    second = torch.zeros(2, 3, dtype=torch.bool)
    second[0, 0] = second[1, 2] = True    # o0 <- h0 (used), o1 <- h2 (h2 receives nothing)
    mask = Mask({"0.weight": first, "2.weight": second})
    effective = effective_mask(model, mask, (2,))
    assert effective["0.weight"].nonzero().tolist() == [[0, 0]]
    assert effective["2.weight"].nonzero().tolist() == [[0, 0]]
    assert effective_density(model, mask, (2,)) == 2 / 12
    assert mask.density() == 4 / 12


def test_a_dense_network_is_fully_effective():
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))
    assert effective_density(model, Mask.dense(model), (1, 6, 6)) == 1.0

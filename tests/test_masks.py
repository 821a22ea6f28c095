"""Masks: prunable parameters, exact top-k selection, Mask bookkeeping and I/O, apply_mask under training."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import autosparse
from autosparse import Mask, apply_mask, prunable_parameters
from autosparse.masks import MaskError

from helpers import two_layer_net


class Nested(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2), nn.ReLU())
        self.signal = nn.Conv1d(2, 3, 1)
        self.up = nn.ConvTranspose2d(2, 2, 2)
        self.norm = nn.LayerNorm(4)
        self.embed = nn.Embedding(5, 4)
        self.head = nn.Linear(4, 3)


# ---------------------------------------------------------------- prunable_parameters


def test_prunable_parameters_only_conv_and_linear_weights_with_parameter_names():
    model = Nested()
    params = prunable_parameters(model)
    assert list(params) == ["features.0.weight", "signal.weight", "up.weight", "head.weight"]
    named = dict(model.named_parameters())
    for name, param in params.items():
        assert param is named[name]  # the very Parameter object, not a copy
    assert "features.0.bias" not in params and "features.1.weight" not in params  # no bias, no BatchNorm
    assert "norm.weight" not in params and "embed.weight" not in params


def test_prunable_parameters_of_a_bare_layer_and_of_a_module_without_any():
    layer = nn.Linear(3, 2)
    assert prunable_parameters(layer) == {"weight": layer.weight}
    assert prunable_parameters(nn.Sequential(nn.BatchNorm1d(3), nn.ReLU())) == {}


# ---------------------------------------------------------------- Mask


def random_mask(seed: int) -> Mask:
    generator = torch.Generator().manual_seed(seed)
    return Mask({n: torch.rand(s, generator=generator) < 0.3 for n, s in {"a": (7,), "b": (13, 2), "c": (1,)}.items()})


def test_mask_bookkeeping():
    mask = Mask({
        "a": torch.tensor([True, False, False, False]),
        "b": torch.zeros(2, 2, dtype=torch.bool),
        "c": torch.tensor([[True, True], [True, False]]),
    })
    assert len(mask) == 3 and list(mask) == ["a", "b", "c"]
    assert mask.num_kept() == 4 and mask.num_total() == 12
    assert mask.density() == pytest.approx(1 / 3)
    assert mask.sparsity() == pytest.approx(2 / 3)
    assert mask.layer_densities() == {"a": 0.25, "b": 0.0, "c": 0.75}
    assert mask.collapsed_layers() == ["b"]


def test_mask_rejects_non_bool_tensors():
    with pytest.raises(MaskError, match="'w'"):
        Mask({"w": torch.ones(3)})
    with pytest.raises(MaskError, match="'w'"):
        Mask({"w": [True, False]})


def test_dense_mask_covers_all_prunable_weights():
    model = Nested()
    mask = Mask.dense(model)
    assert list(mask) == list(prunable_parameters(model))
    assert mask.density() == 1.0 and mask.collapsed_layers() == []
    mask.validate(model)


def test_validate_names_the_parameter_with_the_wrong_shape():
    model = two_layer_net()
    mask = Mask({"0.weight": torch.ones(2, 3, dtype=torch.bool), "1.weight": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(MaskError, match=r"'1\.weight'.*\(2, 3\).*\(2, 2\)"):
        mask.validate(model)


def test_validate_names_missing_and_unknown_parameters():
    model = two_layer_net()
    missing = Mask({"0.weight": torch.ones(2, 3, dtype=torch.bool)})
    with pytest.raises(MaskError, match=r"missing.*1\.weight"):
        missing.validate(model)
    extra = Mask({**Mask.dense(model), "2.weight": torch.ones(2, 2, dtype=torch.bool)})
    with pytest.raises(MaskError, match=r"unknown.*2\.weight"):
        extra.validate(model)
    with pytest.raises(MaskError, match=r"missing.*1\.weight"):
        apply_mask(model, missing)


def test_save_load_round_trip(tmp_path):
    mask = random_mask(1)
    path = tmp_path / "sub" / "mask.pt"
    mask.save(path)
    loaded = Mask.load(path)
    assert list(loaded) == list(mask)
    for name in mask:
        assert loaded[name].dtype == torch.bool
        assert torch.equal(loaded[name], mask[name])
    assert loaded.num_kept() == mask.num_kept() > 0
    assert [p.name for p in path.parent.iterdir()] == ["mask.pt"]  # no temporary file left behind


def test_load_rejects_garbage_truncated_and_foreign_files(tmp_path):
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"this is not a torch file at all")
    with pytest.raises(MaskError, match="garbage.pt"):
        Mask.load(garbage)

    good = tmp_path / "good.pt"
    random_mask(0).save(good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(MaskError, match="truncated.pt"):
        Mask.load(truncated)

    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(MaskError):
        Mask.load(empty)

    a_list = tmp_path / "list.pt"
    torch.save([torch.ones(2, dtype=torch.bool)], a_list)
    with pytest.raises(MaskError, match="not a mask file"):
        Mask.load(a_list)

    floats = tmp_path / "floats.pt"
    torch.save({"w": torch.ones(2)}, floats)
    with pytest.raises(MaskError, match="'w'"):
        Mask.load(floats)

    with pytest.raises(MaskError, match="missing.pt.*does not exist"):
        Mask.load(tmp_path / "missing.pt")


# ---------------------------------------------------------------- apply_mask


def mlp() -> nn.Sequential:
    torch.manual_seed(1)
    return nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 8), nn.ReLU(), nn.Linear(8, 3))


def half_mask(model: nn.Module, seed: int) -> Mask:
    return autosparse.prune(model, 0.5, "random", seed=seed)


def run_steps(model: nn.Module, optimizer: torch.optim.Optimizer, steps: int = 6) -> None:
    generator = torch.Generator().manual_seed(0)
    for _ in range(steps):
        x = torch.randn(16, 6, generator=generator)
        y = torch.randint(0, 3, (16,), generator=generator)
        optimizer.zero_grad()
        F.cross_entropy(model(x), y).backward()
        optimizer.step()


@pytest.mark.parametrize("make_optimizer", [
    lambda params: torch.optim.SGD(params, lr=0.1, momentum=0.9, weight_decay=5e-4),
    lambda params: torch.optim.Adam(params, lr=0.01),
    lambda params: torch.optim.Adam(params, lr=0.01, weight_decay=5e-4),
    lambda params: torch.optim.AdamW(params, lr=0.01, weight_decay=0.1),
], ids=["sgd-momentum-wd", "adam", "adam-wd", "adamw"])
def test_apply_mask_keeps_pruned_weights_exactly_zero(make_optimizer):
    model = mlp()
    before = {n: p.detach().clone() for n, p in prunable_parameters(model).items()}
    mask = half_mask(model, 0)
    apply_mask(model, mask)
    for name, param in prunable_parameters(model).items():
        assert (param[~mask[name]] == 0).all()
        assert torch.equal(param[mask[name]], before[name][mask[name]])  # kept weights untouched
    optimizer = make_optimizer(model.parameters())
    run_steps(model, optimizer)
    for name, param in prunable_parameters(model).items():
        assert (param[~mask[name]] == 0).all(), name
        assert (param.grad[~mask[name]] == 0).all(), name
        assert not torch.equal(param[mask[name]], before[name][mask[name]]), name  # training did happen


def test_reapplying_a_mask_replaces_the_old_hooks():
    model = mlp()
    first, second = half_mask(model, 0), half_mask(model, 1)
    apply_mask(model, first)
    apply_mask(model, second)
    assert len(model._autosparse_mask_hooks) == len(prunable_parameters(model))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    run_steps(model, optimizer)
    revived = 0
    for name, param in prunable_parameters(model).items():
        assert (param[~second[name]] == 0).all(), name
        # pruned by the first mask, kept by the second: the old hook must no longer zero their gradient
        freed = ~first[name] & second[name]
        assert freed.any()
        revived += int((param[freed] != 0).sum())
        assert (param.grad[freed] != 0).any(), name
    assert revived > 0


def test_dense_mask_leaves_training_unchanged():
    masked, plain = mlp(), mlp()
    apply_mask(masked, Mask.dense(masked))
    run_steps(masked, torch.optim.SGD(masked.parameters(), lr=0.1, momentum=0.9))
    run_steps(plain, torch.optim.SGD(plain.parameters(), lr=0.1, momentum=0.9))
    for (name, a), b in zip(masked.named_parameters(), plain.parameters()):
        assert torch.equal(a, b), name


def test_apply_mask_rejects_a_mask_for_another_model():
    model = mlp()
    with pytest.raises(MaskError, match="missing"):
        apply_mask(model, Mask.dense(two_layer_net()))
    assert not hasattr(model, "_autosparse_mask_hooks")
    for name, param in model.named_parameters():  # nothing was zeroed
        assert torch.equal(param, dict(mlp().named_parameters())[name]), name


def test_empty_units_count_rows_without_any_kept_weight():
    mask = Mask({"conv": torch.tensor([[[1, 0]], [[0, 0]], [[0, 1]]], dtype=torch.bool),  # 3 channels, 1 empty
                 "head": torch.tensor([[0, 0, 0], [1, 0, 0]], dtype=torch.bool)})
    assert mask.empty_units() == {"conv": 1, "head": 1}
    assert Mask.dense(nn.Linear(3, 2)).empty_units() == {"weight": 0}

"""The one-shot pruning entry point: score with a criterion or an AutoS scorer, keep the top-k."""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Optional, Union

from torch import nn

from .criteria import CRITERIA, ScoringContext, Scores, as_batches
from .masks import Mask, Scope, check_density, select_top_k

Method = Union[str, Path, Callable[[ScoringContext], Scores]]


def resolve_method(method: Method) -> Callable[[ScoringContext], Scores]:
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
    raise ValueError(f"method must be a name, a scorer path or a scorer object, got {type(method).__name__}")


def score(
    model: nn.Module,
    density: float,
    method: Method,
    data: object = None,
    *,
    scope: Scope = "global",
    seed: int = 0,
    input_shape: Optional[tuple[int, ...]] = None,
) -> Scores:
    """Scores for every prunable weight of `model` (higher = keep); `model` is left unchanged."""
    check_density(density)
    context = ScoringContext(model, as_batches(data), density, seed, scope, input_shape)
    return resolve_method(method)(context)


def prune(
    model: nn.Module,
    sparsity: float,
    method: Method = "magnitude",
    data: object = None,
    *,
    scope: Scope = "global",
    seed: int = 0,
    input_shape: Optional[tuple[int, ...]] = None,
) -> Mask:
    """A mask removing exactly `sparsity` of the prunable weights, chosen by `method`.

    `data` is an (inputs, targets) pair or an iterable of pairs (model-ready tensors); data-free
    criteria accept None. `model` is not modified: apply the mask with `apply_mask`.
    """
    if not isinstance(sparsity, (int, float)) or not 0 < sparsity < 1:
        raise ValueError(f"sparsity {sparsity!r} is outside (0, 1)")
    scores = score(model, 1 - sparsity, method, data, scope=scope, seed=seed, input_shape=input_shape)
    return select_top_k(scores, 1 - sparsity, scope)

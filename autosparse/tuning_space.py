"""Tune search spaces over ScorerConfig fields, validated against the same typed schema."""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Optional

from .config import ALL_FEATURES, TRANSFERABLE_FEATURES, ScorerConfig, load_yaml
from .schema import ConfigError, check, from_dict

DEFAULT_FEATURE_GROUPS = {"transferable": TRANSFERABLE_FEATURES, "paper": ["w0", "g0"], "all": ALL_FEATURES}
SCORER_FIELDS = {f.name for f in dataclasses.fields(ScorerConfig)}


@dataclass
class Dimension:
    """One searched field: exactly one of choice, uniform, loguniform, randint."""

    choice: Optional[list[Any]] = None
    uniform: Optional[list[float]] = None
    loguniform: Optional[list[float]] = None
    randint: Optional[list[int]] = None

    def __post_init__(self) -> None:
        given = [k for k in ("choice", "uniform", "loguniform", "randint") if getattr(self, k) is not None]
        check(len(given) == 1, "dimension", f"needs exactly one of choice/uniform/loguniform/randint, got {given}")
        bounds = self.uniform or self.loguniform or self.randint
        if bounds is not None:
            check(len(bounds) == 2 and bounds[0] < bounds[1], given[0], f"needs [low, high], got {bounds}")
        if self.loguniform is not None:
            check(self.loguniform[0] > 0, "loguniform", "bounds must be positive")

    def values_to_check(self) -> list[Any]:
        return self.choice if self.choice is not None else list(self.uniform or self.loguniform or self.randint)

    def to_tune(self):
        from ray import tune

        if self.choice is not None:
            return tune.choice(self.choice)
        if self.uniform is not None:
            return tune.uniform(*self.uniform)
        if self.loguniform is not None:
            return tune.loguniform(*self.loguniform)
        return tune.randint(*self.randint)


@dataclass
class ASHAConfig:
    grace_period: int = 2
    reduction_factor: int = 2


@dataclass
class TuneSpace:
    """A scorer search: `space` and `fixed` keys must be ScorerConfig fields (`features` may name groups)."""

    space: dict[str, Dimension]
    fixed: dict[str, Any] = field(default_factory=dict)
    feature_groups: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_FEATURE_GROUPS))
    objective: Literal["proxy", "downstream"] = "proxy"
    metric: str = "heldout_spearman"
    num_samples: int = 8
    max_concurrent: int = 2
    cpus_per_trial: float = 1.0
    gpus_per_trial: float = 0.0
    search: Literal["random", "optuna"] = "optuna"
    scheduler: ASHAConfig = field(default_factory=ASHAConfig)
    downstream_sparsity: float = 0.98
    downstream_epochs: int = 5

    def __post_init__(self) -> None:
        for key in list(self.space) + list(self.fixed):
            check(key in SCORER_FIELDS, key, f"is not a scorer field (fields: {', '.join(sorted(SCORER_FIELDS))})")
        check(not set(self.space) & set(self.fixed), "fixed", "a field cannot be both searched and fixed")
        check(self.num_samples > 0, "num_samples", "must be positive")
        check(self.max_concurrent > 0, "max_concurrent", "must be positive")
        check(0 < self.downstream_sparsity < 1, "downstream_sparsity", "must be in (0, 1)")

    def resolve(self, values: dict[str, Any]) -> ScorerConfig:
        """A ScorerConfig from fixed + sampled values, with feature group names expanded."""
        data = {**self.fixed, **values}
        if isinstance(data.get("features"), str):
            group = data["features"]
            if group not in self.feature_groups:
                raise ConfigError(f"features: unknown group {group!r} (groups: {', '.join(self.feature_groups)})")
            data["features"] = list(self.feature_groups[group])
        return from_dict(ScorerConfig, data, where="scorer")

    def validate(self) -> None:
        """Every candidate value of every dimension makes a valid ScorerConfig."""
        self.resolve({})
        for key, dimension in self.space.items():
            for value in dimension.values_to_check():
                try:
                    self.resolve({key: value})
                except ConfigError as error:
                    raise ConfigError(f"space.{key}: {error}") from None


def load_space(path: str | Path) -> TuneSpace:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"search space file {str(path)!r} does not exist")
    try:
        space = from_dict(TuneSpace, load_yaml(path), where="space")
        space.validate()
    except ConfigError as error:
        raise ConfigError(f"{path}: {error}") from None
    return space

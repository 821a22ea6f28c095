"""A pruning method as one object: what scores the weights, in how many steps and on how many examples per
step, under which per-layer allocation, and with which sanity variant.

Written `SCORES[/iterK][/batchN][@alloc:NAME][+VARIANT]`, e.g. `snip`, `snip/iter20@alloc:synflow`,
`autos:conditional/iter20@alloc:learned`, `synflow+shuffle`:

- SCORES: a registered criterion (autosparse/criteria.py), `autos:<name>` (an AutoS scorer a pipeline
  fits), or a saved scorer file;
- `/iterK`: K re-scoring steps (default: the criterion's or scorer's own, e.g. 100 for SynFlow);
- `/batchN`: each step scores on the next N examples of the scoring batch (default: the scorer's own);
- `@alloc:NAME`: how many weights each layer keeps: `global` (the default, one threshold over all
  scores), `uniform`, `erk`, a criterion's own counts, `learned` (a fitted allocator), or an allocator file;
- `+VARIANT`: a sanity check of Frankle et al. 2021 (`shuffle`, `invert` or `reinit`).

`Method.parse(text).label == text` for a text in this form; `Method.parse(method.label) == method` always.
Learned plug-in files (scorers, allocators) are loaded through `LEARNED_FILES`, which their modules fill.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Optional

from .criteria import CRITERIA
from .errors import UserError
from .layer_allocation import GLOBAL, LEARNED, SHAPE_ALLOCATIONS
from .registry import Registry, UnknownNameError

AUTOS = "autos"
VARIANTS = ("shuffle", "invert", "reinit")  # sanity variants (autosparse/sanity.py): the mask shuffled per
# layer, the lowest scores kept at every step, the kept weights re-initialized
FORM = "SCORES[/iterK][/batchN][@alloc:NAME][+VARIANT]"
PATTERN = re.compile(r"^(?P<scores>[^@+\s]+?)(?:/iter(?P<steps>\d+))?(?:/batch(?P<batch>\d+))?"
                     r"(?:@alloc:(?P<allocation>[^@+\s]+))?(?:\+(?P<variant>\w+))?$")

LEARNED_FILES: Registry[Callable[[str | os.PathLike], Any]] = Registry("learned file kind")
"""Loaders of learned plug-in files by what they hold (`scorer`, `allocator`), registered by the modules that
write them (autosparse/scorer/artifact.py, autosparse/learned_allocation.py)."""


class MethodError(UserError):
    """A method string does not parse, or names steps, a step batch or a variant that cannot be."""


def names_file(text: str | os.PathLike) -> bool:
    """Whether a method's scores or allocation name a file (a saved scorer or allocator), not a registered
    name: a path that exists, or one with a folder or a suffix (no registered name has either)."""
    text = str(text)
    return text not in CRITERIA and (os.sep in text or bool(Path(text).suffix) or Path(text).exists())


def allocation_names() -> list[str]:
    """Every allocation a method may name (besides a file)."""
    return [GLOBAL, LEARNED, *SHAPE_ALLOCATIONS.names(), *CRITERIA.names()]


def check_allocation_name(name: str) -> None:
    if name not in allocation_names() and not names_file(name):
        raise UnknownNameError(f"unknown allocation {name!r} (known: {', '.join(allocation_names())})")


def check_variant(name: str) -> None:
    if name not in VARIANTS:
        raise UnknownNameError(f"unknown sanity variant {name!r} (known: {', '.join(VARIANTS)})")


@dataclass(frozen=True)
class Method:
    """A pruning method (see the module docstring). `scores` is a criterion name, `autos:<name>` or a scorer
    file; `steps` and `step_batch` None mean the scorer's own; `allocation` a name or an allocator file."""

    scores: str
    steps: Optional[int] = None
    step_batch: Optional[int] = None
    allocation: str = GLOBAL
    variant: Optional[str] = None

    def __post_init__(self) -> None:
        for key, value in (("steps", self.steps), ("step batch", self.step_batch)):
            if value is not None and value < 1:
                raise MethodError(f"method {self.label!r}: {key} must be at least 1")
        if self.variant is not None:
            check_variant(self.variant)

    @classmethod
    def parse(cls, text: str | os.PathLike) -> "Method":
        """The method written `text`; one-line errors for malformed text, steps < 1 or unknown variants."""
        match = PATTERN.match(str(text).strip())
        if not match:
            raise MethodError(f"method {str(text)!r} does not look like {FORM}")
        steps, batch = (int(match[key]) if match[key] else None for key in ("steps", "batch"))
        return cls(match["scores"], steps, batch, match["allocation"] or GLOBAL, match["variant"])

    @property
    def label(self) -> str:
        """The method as written (and as shown in tables): the inverse of `parse`."""
        return (self.scores + (f"/iter{self.steps}" if self.steps is not None else "")
                + (f"/batch{self.step_batch}" if self.step_batch is not None else "")
                + (f"@alloc:{self.allocation}" if self.allocation != GLOBAL else "")
                + (f"+{self.variant}" if self.variant else ""))

    @property
    def plain(self) -> "Method":
        """The method without its sanity variant (the arm a variant checks)."""
        return replace(self, variant=None)

    @property
    def is_autos(self) -> bool:
        """Scored by an AutoS scorer a pipeline fits (`autos:<name>`)."""
        return self.scores.partition(":")[0] == AUTOS and not self.scorer_file

    @property
    def scorer_name(self) -> Optional[str]:
        return self.scores.partition(":")[2] or None if self.is_autos else None

    @property
    def scorer_file(self) -> bool:
        """Scored by a saved scorer file."""
        return names_file(self.scores)

    @property
    def criterion(self) -> str:
        """What scores, as a family: the criterion's name, or `autos` for any learned scorer."""
        return AUTOS if self.is_autos or self.scorer_file else self.scores

    @property
    def learned_allocation(self) -> bool:
        """Allocated by a fitted allocator a pipeline fits (`@alloc:learned`)."""
        return self.allocation == LEARNED

    def validate(self, scorer_names: Optional[list[str]] = None) -> None:
        """The names exist: the criterion (or scorer, among `scorer_names` when given) and the allocation."""
        if self.is_autos:
            if scorer_names is not None and self.scorer_name not in scorer_names:
                raise UnknownNameError(f"method {self.label!r}: no scorer named {self.scorer_name!r} "
                                       f"(scorers: {', '.join(scorer_names) or 'none'})")
        elif not self.scorer_file:
            CRITERIA.get(self.scores)
        check_allocation_name(self.allocation)

    def with_files(self, scorer: Optional[str | os.PathLike] = None,
                   allocator: Optional[str | os.PathLike] = None) -> "Method":
        """The method with its pipeline-fitted parts replaced by their files: `autos:<name>` by the scorer
        file, `learned` by the allocator file; a missing file is a `UserError`."""
        if self.is_autos and scorer is None:
            raise UserError(f"method {self.label!r}: an AutoS method needs its scorer file")
        if self.learned_allocation and allocator is None:
            raise UserError(f"method {self.label!r}: allocation 'learned' needs its allocator file")
        return replace(self, scores=str(scorer) if self.is_autos else self.scores,
                       allocation=str(allocator) if self.learned_allocation else self.allocation)

    def selected_by(self, names: Optional[list[str]]) -> bool:
        """Whether a list of methods such as `matrix.variant_methods` names this one, by its label, its
        criterion or (for any AutoS method) `autos`; None names every method."""
        return names is None or self.plain.label in names or self.scores in names or self.criterion in names


def load_learned_file(kind: str, path: str | os.PathLike) -> Any:
    """A learned plug-in (`scorer` or `allocator`) from its file, by the loader its module registered."""
    return LEARNED_FILES.get(kind)(path)

"""Turning failures into one-line messages for the command line."""
from __future__ import annotations

from .data import DatasetUnavailableError
from .registry import UnknownNameError
from .schema import ConfigError
from .survival import SurvivalFormatError
from .training import NonFiniteLossError

USER_ERRORS = (ConfigError, UnknownNameError, DatasetUnavailableError, SurvivalFormatError, NonFiniteLossError,
               ValueError, KeyError, FileNotFoundError, PermissionError)


def _root_cause(error: BaseException) -> BaseException:
    """Ray wraps worker exceptions; find the innermost one we know how to describe."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        inner = getattr(error, "cause", None) or error.__cause__
        worker_errors = getattr(error, "worker_failures", None) or getattr(error, "errors", None)
        if isinstance(worker_errors, dict) and worker_errors:
            inner = next(iter(worker_errors.values()))
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error


def is_user_error(error: BaseException) -> bool:
    from .orchestration.runtime import RayUnavailableError
    from .orchestration.tracking import TrackingUnavailableError
    from .scorer import ScorerFormatError

    return isinstance(_root_cause(error), USER_ERRORS + (RayUnavailableError, TrackingUnavailableError,
                                                         ScorerFormatError))


def describe(error: BaseException) -> str:
    root = _root_cause(error)
    text = str(root).strip().splitlines()
    message = text[0] if text else type(root).__name__
    return message if is_user_error(error) else f"{type(root).__name__}: {message}"

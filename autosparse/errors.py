"""Turning failures into one-line messages for the command line."""
from __future__ import annotations

from .data import DatasetUnavailableError
from .registry import UnknownNameError
from .schema import ConfigError
from .survival import SurvivalFormatError
from .training import NonFiniteLossError

def user_error_types() -> tuple[type, ...]:
    from .orchestration.runtime import RayUnavailableError
    from .orchestration.tracking import TrackingUnavailableError
    from .scorer import ScorerFormatError

    return (ConfigError, UnknownNameError, DatasetUnavailableError, SurvivalFormatError, NonFiniteLossError,
            ScorerFormatError, RayUnavailableError, TrackingUnavailableError, ValueError, KeyError,
            FileNotFoundError, PermissionError)


def _root_cause(error: BaseException) -> BaseException:
    """Unwrap Ray's wrappers (task and training failures) down to the first error we can describe."""
    known = user_error_types()
    seen = set()
    while not isinstance(error, known) and id(error) not in seen:
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
    return isinstance(_root_cause(error), user_error_types())


def describe(error: BaseException) -> str:
    """One line: the message of the innermost describable error (with its type if it is a bug)."""
    root = _root_cause(error)
    text = str(root).strip().splitlines()
    message = text[0] if text else type(root).__name__
    return message if is_user_error(root) else f"{type(root).__name__}: {message}"

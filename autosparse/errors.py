"""The error taxonomy: `UserError` for anything the user can fix; everything else is a bug.

The command line prints a `UserError` as one line and exits 2. Any other exception is a bug: one line
naming its type and exit 1 (the traceback with `-v`). Ray wraps errors raised in tasks and training
workers; `root_cause` unwraps them so a user error raised inside Ray is still reported as one.
"""
from __future__ import annotations


class UserError(Exception):
    """Bad input, configuration, data or environment; the message names the value, key or path."""

    def __str__(self) -> str:  # KeyError-like subclasses would otherwise quote the message
        return str(self.args[0]) if self.args else type(self).__name__


def root_cause(error: BaseException) -> BaseException:
    """The innermost user error inside Ray's task and training wrappers (or the error itself)."""
    seen = set()
    while id(error) not in seen:
        seen.add(id(error))
        cause = getattr(error, "cause", None)  # Ray's task error, also when it subclasses the error it wraps
        if isinstance(error, UserError) and not isinstance(cause, BaseException):
            break
        inner = cause or error.__cause__
        worker_errors = getattr(error, "worker_failures", None) or getattr(error, "errors", None)
        if isinstance(worker_errors, dict) and worker_errors:
            inner = next(iter(worker_errors.values()))
        if not isinstance(inner, BaseException):
            break
        error = inner
    return error


def is_user_error(error: BaseException) -> bool:
    return isinstance(root_cause(error), UserError)


def describe(error: BaseException) -> str:
    """One line: a user error's message, or a bug's type and first line."""
    root = root_cause(error)
    text = str(root).strip().splitlines()
    message = text[0] if text else type(root).__name__
    return message if isinstance(root, UserError) else f"{type(root).__name__}: {message}"

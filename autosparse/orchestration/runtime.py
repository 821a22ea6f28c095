"""Starting or joining Ray with quiet, safe local defaults."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Optional

from ..errors import UserError

LOCAL_ENV = {
    "RAY_AUTH_MODE": "disabled",
    "RAY_USAGE_STATS_ENABLED": "0",
    "RAY_TRAIN_ENABLE_PREEMPTION_WATCHER": "0",
    "RAY_TRAIN_HEALTH_CHECK_INTERVAL_S": "0.5",
    "RAY_DEDUP_LOGS": "1",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "RAY_AIR_NEW_OUTPUT": "0",
}


def set_local_defaults() -> None:
    """Environment defaults for local runs (an explicit user setting always wins)."""
    for key, value in LOCAL_ENV.items():
        os.environ.setdefault(key, value)


@dataclass
class RunOptions:
    """Where a job runs and is tracked: a Ray address (None: RAY_ADDRESS or a local Ray), an MLflow
    tracking URI (None: MLFLOW_TRACKING_URI or SQLite in the workspace), logs and progress bars."""

    ray_address: Optional[str] = None
    tracking_uri: Optional[str] = None
    verbose: bool = False
    progress: bool = True


class RayUnavailableError(UserError):
    """The Ray cluster given by address could not be joined."""


def dialed_address(address: str) -> str:
    """The host:port `ray.init(address)` connects to: Ray rewrites a bare loopback address to this
    machine's network address (a `ray://` client address is dialed as given)."""
    from ray._private.services import canonicalize_bootstrap_address

    if "://" in address:
        return address.split("://", 1)[1].rstrip("/")
    try:
        return canonicalize_bootstrap_address(address) or address
    except ValueError as error:
        raise RayUnavailableError(f"cannot reach Ray at {address!r}: {error}") from None


def check_ray_address(address: Optional[str], timeout: float = 5.0) -> None:
    """Fail fast (a TCP connect, not Ray's minutes of retries) when a given Ray address is unreachable at
    the host and port `ray.init` will dial."""
    import socket

    if not address or address in ("auto", "local"):
        return
    target = dialed_address(address)
    host, _, port = target.rpartition(":")
    dials = "" if target == address else f" (Ray dials {target})"
    try:
        with socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout):
            return
    except (OSError, ValueError) as error:
        raise RayUnavailableError(f"cannot reach Ray at {address!r}{dials}: {error}") from None


def init_ray(address: Optional[str] = None, num_cpus: Optional[int] = None, verbose: bool = False) -> None:
    """Join `address` (or RAY_ADDRESS) if given, else start a local Ray; no-op when already connected."""
    import ray

    set_local_defaults()
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS") or None
    check_ray_address(address)
    kwargs = dict(logging_level=logging.INFO if verbose else logging.CRITICAL, log_to_driver=verbose,
                  configure_logging=True)
    if address is None:
        kwargs.update(num_cpus=num_cpus, include_dashboard=False)
    try:
        ray.init(address=address, **kwargs)
    except (ConnectionError, RuntimeError, ValueError) as error:
        raise RayUnavailableError(f"cannot reach Ray at {address!r}: {str(error).splitlines()[0]}") from None

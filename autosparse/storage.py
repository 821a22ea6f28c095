"""Atomic file writes: write to a temporary name beside the target, then rename into place; failed writes
caused by their storage (full, read-only, not permitted) told apart from bugs."""
from __future__ import annotations

import errno
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Callable, Optional

from .errors import UserError

LOW_SPACE = 2**20
STORAGE_PROBLEMS = {errno.ENOSPC: "no space left on device", errno.EDQUOT: "disk quota exceeded",
                    errno.EROFS: "read-only file system", errno.EACCES: "permission denied",
                    errno.EPERM: "permission denied"}
SQLITE_PROBLEMS = {"disk is full": errno.ENOSPC, "readonly database": errno.EROFS}


class StorageError(UserError):
    """A write failed because of where it goes: no space left, a read-only file system, no permission."""


def free_bytes(path: str | os.PathLike) -> float:
    """Bytes an unprivileged writer may still use on the file system holding `path` (or its nearest
    existing parent); infinite when that cannot be told."""
    path = Path(path)
    while not path.exists() and path != path.parent:
        path = path.parent
    try:
        stat = os.statvfs(path)
    except OSError:
        return float("inf")
    return stat.f_bavail * stat.f_frsize


def storage_error(error: BaseException, path: str | os.PathLike) -> Optional[StorageError]:
    """A `StorageError` naming `path` when `error`, raised writing there, came from its storage; else None.

    Reads the errno of an `OSError`, or the one pyarrow (`[errno N]`) and SQLite (`disk is full`,
    `readonly database`) only name in their message.
    """
    if not isinstance(error, Exception) or isinstance(error, UserError):
        return None
    code, text = getattr(error, "errno", None), str(error)
    found = re.search(r"\[errno (\d+)\]", text, re.IGNORECASE)
    if code is None:
        code = int(found.group(1)) if found else next((c for phrase, c in SQLITE_PROBLEMS.items() if phrase in text), None)
    problem = STORAGE_PROBLEMS.get(code)
    return StorageError(f"cannot write {str(path)!r}: {problem}") if problem else None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` and rename the result to `path`; nothing is left behind on failure.

    The file gets the usual permissions for a new file (0666 less the umask), not mkstemp's 0600. A writer
    that fails without an errno (torch.save's `unexpected pos`) while its file system is full raises an
    `OSError` with `ENOSPC`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as error:
        full = isinstance(error, Exception) and free_bytes(tmp) < LOW_SPACE  # before the partial file goes
        Path(tmp).unlink(missing_ok=True)
        if full and storage_error(error, path) is None:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2) + "\n"))  # keeps order


def read_header(raw: Any, path: Path, error: type[Exception], expected_format: str, version: int,
                container: str, kind: str) -> dict:
    """Parse and check a file's JSON header (format name and version), raising `error` naming the file."""
    try:
        header = json.loads(raw) if raw else {}
    except ValueError:
        header = None
    if not isinstance(header, dict):
        raise error(f"{str(path)!r} has a malformed {kind} header")
    if header.get("format") != expected_format:
        raise error(f"{str(path)!r} is a {container} but not an autosparse {kind}")
    if header.get("format_version") != version:
        raise error(f"{str(path)!r} has {kind} format version {header.get('format_version')}, "
                    f"this autosparse reads version {version}")
    return header


HEADER_KEY = "autosparse"


def save_network_file(path: str | os.PathLike, state: dict, mean: Any, std: Any, header: dict, file_format: str,
                      version: int) -> None:
    """A small network (its state dict), its input normalization and a JSON header, as safetensors."""
    from safetensors.torch import save_file

    tensors = {f"network.{k}": v.detach().cpu().contiguous() for k, v in state.items()}
    tensors.update({"normalization.mean": mean.contiguous(), "normalization.std": std.contiguous()})
    metadata = {HEADER_KEY: json.dumps({**header, "format": file_format, "format_version": version})}
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=metadata))


def load_network_file(path: str | os.PathLike, error: type[Exception], file_format: str, version: int,
                      kind: str) -> tuple[dict, dict, Any, Any]:
    """(header without format keys, network state dict, normalization mean, std) of a file written by
    `save_network_file`; `error` (naming the file) for a missing, truncated, foreign or other-version file."""
    from safetensors import SafetensorError, safe_open
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise error(f"{kind} file {str(path)!r} does not exist")
    try:
        with safe_open(str(path), framework="pt") as handle:
            raw = (handle.metadata() or {}).get(HEADER_KEY)
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as failure:
        raise error(f"{str(path)!r} is not a readable {kind} file (truncated or foreign: "
                    f"{str(failure).splitlines()[0]})") from None
    header = read_header(raw, path, error, file_format, version, "safetensors file", kind)
    state = {k[len("network."):]: v for k, v in tensors.items() if k.startswith("network.")}
    if "normalization.mean" not in tensors or "normalization.std" not in tensors:
        raise error(f"{str(path)!r} lacks the normalization of its inputs")
    return ({k: v for k, v in header.items() if k not in ("format", "format_version")}, state,
            tensors["normalization.mean"], tensors["normalization.std"])

"""Atomic file writes: write to a temporary name beside the target, then rename into place."""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Call `write(tmp_path)` and rename the result to `path`; nothing is left behind on failure.

    The file gets the usual permissions for a new file (0666 less the umask), not mkstemp's 0600.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(tmp)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json(path: str | os.PathLike, data: Any) -> None:
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n"))


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

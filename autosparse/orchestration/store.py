"""Content-addressed stage outputs, `<workspace>/<kind>/<hash>/`, on a local path or a shared-storage URI.

A stage counts as finished once its marker file (`stage.json`) exists. On a local (or shared POSIX)
path a stage directory appears by one atomic rename. On an object store (`s3://`, `gs://`, or any
pyarrow/fsspec filesystem) the files are uploaded first and the marker last, so a half-uploaded stage is
never seen as finished; each node keeps a local cache of the stages it has read or written.
"""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, Optional

import pyarrow.fs as pafs

from ..errors import UserError
from ..storage import storage_error

MARKER = "stage.json"
CACHE_ENV = "AUTOSPARSE_CACHE"


class WorkspaceError(UserError):
    """The workspace cannot be used: unreachable, an unknown URI scheme, or a path that is not a folder."""


def is_uri(location: str | os.PathLike) -> bool:
    return "://" in str(location)


def _first_line(error: BaseException) -> str:
    return (str(error).strip().splitlines() or [type(error).__name__])[0]


def open_filesystem(uri: str) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem and root path for a URI: pyarrow's own (s3, gs, hdfs, file), else fsspec's."""
    try:
        return pafs.FileSystem.from_uri(uri)
    except OSError as error:
        raise WorkspaceError(f"workspace {uri!r} is not reachable: {_first_line(error)}") from None
    except ValueError as arrow_error:  # a scheme pyarrow does not know
        import fsspec

        try:
            fs, path = fsspec.core.url_to_fs(uri)
        except (ValueError, ImportError, OSError) as error:
            raise WorkspaceError(f"workspace {uri!r}: no filesystem for this URI ({_first_line(error)}; "
                              f"pyarrow: {_first_line(arrow_error)})") from None
        return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def default_cache(uri: str) -> Path:
    base = Path(os.environ.get(CACHE_ENV) or "~/.cache/autosparse/workspaces").expanduser()
    return base / hashlib.sha256(uri.encode()).hexdigest()[:16]


def _rename_into_place(tmp: Path, final: Path) -> None:
    """Rename `tmp` to `final`; if another writer put `final` there first, drop `tmp` (same content)."""
    try:
        os.rename(tmp, final)
    except OSError:
        if not final.is_dir():
            raise
        shutil.rmtree(tmp, ignore_errors=True)


class StageStore:
    """Finished stages of one workspace, which is a local path or a URI shared by every node.

    `location` is what to hand to Ray tasks (they open their own store); `local` is a folder on this
    machine holding the workspace itself (path workspaces) or this node's cache of it (URI workspaces).
    """

    def __init__(self, workspace: str | os.PathLike, cache: str | os.PathLike | None = None):
        if is_uri(workspace):
            self.location = str(workspace).rstrip("/")
            self.fs, self.root = open_filesystem(self.location)
            self.remote = not isinstance(self.fs, pafs.LocalFileSystem)
            self.local = Path(cache).expanduser() if cache else (
                default_cache(self.location) if self.remote else Path(self.root))
            try:
                self.fs.get_file_info(self.root)
            except OSError as error:
                raise WorkspaceError(f"workspace {self.location!r} is not reachable: {_first_line(error)}") from None
        else:
            self.local = Path(workspace).expanduser().resolve()
            if self.local.exists() and not self.local.is_dir():
                raise WorkspaceError(f"workspace {str(workspace)!r} is a file, not a folder")
            self.location, self.fs, self.root, self.remote = str(self.local), pafs.LocalFileSystem(), str(self.local), False

    def path(self, *parts: str) -> str:
        """A path inside the workspace, as its filesystem (`self.fs`) names it."""
        return "/".join([self.root.rstrip("/"), *parts])

    def uri(self, *parts: str) -> str:
        return "/".join([self.location, *parts])

    def _is_file(self, path: str) -> bool:
        return self.fs.get_file_info(path).type == pafs.FileType.File

    def done(self, kind: str, digest: str) -> bool:
        """Whether the stage is finished in the workspace (the shared one decides, not a node's cache)."""
        if not self.remote:
            return (self.local / kind / digest / MARKER).is_file()
        with self.reaching(f"reading {kind}/{digest}"):
            return self._is_file(self.path(kind, digest, MARKER))

    def output(self, kind: str, digest: str) -> Path:
        """The local folder of a stage; a finished remote stage is downloaded into the cache first."""
        folder = self.local / kind / digest
        if self.remote and not (folder / MARKER).is_file() and self._is_file(self.path(kind, digest, MARKER)):
            self.pull(f"{kind}/{digest}")
        return folder

    def record(self, kind: str, digest: str) -> dict:
        return json.loads((self.output(kind, digest) / MARKER).read_text())

    def finished(self, kind: str) -> list[str]:
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(kind), allow_not_found=True, recursive=True))
        base = self.path(kind).rstrip("/") + "/"
        names = {info.path[len(base):].split("/")[0] for info in infos
                 if info.path.startswith(base) and info.path[len(base):].count("/") == 1
                 and info.path.endswith("/" + MARKER)}
        return sorted(name for name in names if not name.startswith("."))

    @contextmanager
    def writing(self, kind: str, digest: str) -> Iterator[tuple[Path, dict]]:
        """Yield a temporary directory and a record to fill; on success write the record as the marker
        and publish the directory as the finished stage."""
        final = self.local / kind / digest
        tmp = final.parent / f".tmp-{digest}-{uuid.uuid4().hex[:8]}"
        if final.parent.is_dir():  # an earlier attempt at this job was killed mid-write: its files are stale
            for stale in final.parent.glob(f".tmp-{digest}-*"):
                shutil.rmtree(stale, ignore_errors=True)
        try:
            tmp.mkdir(parents=True)
        except (FileExistsError, NotADirectoryError) as error:
            raise WorkspaceError(f"cannot write stage outputs under {str(final.parent)!r}: {error.strerror}") from None
        except OSError as error:
            raise storage_error(error, final.parent) or error from None
        record: dict = {}
        try:
            yield tmp, record
            marker = json.dumps({"kind": kind, "hash": digest, **record}, indent=2)  # keeps layer order
            if self.remote:
                with self.reaching(f"uploading {kind}/{digest}"):
                    self._upload(tmp, self.path(kind, digest), last={MARKER: marker})
            (tmp / MARKER).write_text(marker)
            _rename_into_place(tmp, final)
        except BaseException as error:
            shutil.rmtree(tmp, ignore_errors=True)
            problem = storage_error(error, final)
            if problem is not None:
                raise problem from None
            raise

    @contextmanager
    def reaching(self, doing: str) -> Iterator[None]:
        """Turn the shared workspace's connection errors while `doing` something into a `WorkspaceError`."""
        try:
            yield
        except OSError as error:
            if not self.remote:
                raise
            raise WorkspaceError(f"lost the workspace {self.location!r} while {doing} ({_first_line(error)}); "
                                 "finished stages are kept: rerun the same command once it is reachable") from None

    def _upload(self, folder: Path, destination: str, last: Optional[dict[str, str]] = None) -> None:
        """Copy a local folder's files up, then write the `last` files (the commit point)."""
        for file in sorted(p for p in folder.rglob("*") if p.is_file()):
            relative = file.relative_to(folder).as_posix()
            pafs.copy_files(str(file), f"{destination}/{relative}", source_filesystem=pafs.LocalFileSystem(),
                            destination_filesystem=self.fs)
        for name, text in (last or {}).items():
            with self.fs.open_output_stream(f"{destination}/{name}") as stream:
                stream.write(text.encode())

    def push(self, relative: str) -> None:
        """Upload a local folder of the workspace (reports, tuning results) to the shared workspace."""
        if self.remote:
            self._upload(self.local / relative, self.path(relative))

    def pull(self, relative: str) -> Path:
        """Download a folder of the shared workspace into the local cache (atomically); returns it."""
        final = self.local / relative
        if not self.remote:
            return final
        tmp = final.parent / f".tmp-{final.name}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            with self.reaching(f"downloading {relative}"):
                pafs.copy_files(self.path(relative), str(tmp), source_filesystem=self.fs,
                                destination_filesystem=pafs.LocalFileSystem())
            if final.exists() and not (final / MARKER).is_file():
                shutil.rmtree(final)  # a stale cache copy of a non-stage folder: the shared one wins
            _rename_into_place(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    def list_dirs(self, relative: str, prefix: str = "") -> list[str]:
        """Paths (as `self.fs` names them) of the sub-folders of a workspace folder starting with `prefix`."""
        infos = self.fs.get_file_info(pafs.FileSelector(self.path(relative), allow_not_found=True))
        return sorted(i.path for i in infos if i.type == pafs.FileType.Directory
                      and i.path.rstrip("/").rsplit("/", 1)[-1].startswith(prefix))

    def remove(self, kind: str) -> int:
        """Delete every finished output of one stage kind (for --force); returns how many."""
        names = self.finished(kind)
        for name in names:
            if self.remote:
                self.fs.delete_dir(self.path(kind, name))
            shutil.rmtree(self.local / kind / name, ignore_errors=True)
        return len(names)

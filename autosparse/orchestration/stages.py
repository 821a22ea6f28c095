"""Content-addressed stage outputs: `<workspace>/<kind>/<hash>/`, created only by an atomic rename."""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator

from ..schema import content_hash, to_dict

STAGE_KINDS = ("irp", "scorer", "cell")
MARKER = "stage.json"


def stage_hash(kind: str, config: Any, inputs: list[str] = ()) -> str:
    """Hash of the stage kind, its canonical config and the hashes of its inputs."""
    return content_hash({"kind": kind, "config": to_dict(config), "inputs": sorted(inputs)})


class StageStore:
    """Finished stages are complete directories; in-progress ones live under a temporary name."""

    def __init__(self, workspace: str | os.PathLike):
        if "://" in str(workspace):
            from ..schema import ConfigError

            raise ConfigError(f"workspace {str(workspace)!r}: object-store URIs are not supported yet; use a path "
                              "on a filesystem every node shares (NFS, EFS, Filestore, a ReadWriteMany volume)")
        self.workspace = Path(workspace).expanduser().resolve()

    def output(self, kind: str, digest: str) -> Path:
        return self.workspace / kind / digest

    def done(self, kind: str, digest: str) -> bool:
        return (self.output(kind, digest) / MARKER).is_file()

    def record(self, kind: str, digest: str) -> dict:
        return json.loads((self.output(kind, digest) / MARKER).read_text())

    def finished(self, kind: str) -> list[str]:
        folder = self.workspace / kind
        return sorted(p.name for p in folder.iterdir() if (p / MARKER).is_file()) if folder.is_dir() else []

    @contextmanager
    def writing(self, kind: str, digest: str, record: dict) -> Iterator[Path]:
        """Yield a temporary directory; on success write the marker and rename it into place."""
        final = self.output(kind, digest)
        tmp = final.parent / f".tmp-{digest}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir(parents=True)
        try:
            yield tmp
            (tmp / MARKER).write_text(json.dumps({"kind": kind, "hash": digest, **record}, indent=2, sort_keys=True))
            try:
                os.rename(tmp, final)
            except OSError:
                if not self.done(kind, digest):
                    raise
                shutil.rmtree(tmp)  # another writer finished the same stage first
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise

    def remove(self, kind: str) -> int:
        """Delete every finished output of one stage kind (for --force); returns how many."""
        names = self.finished(kind)
        for name in names:
            shutil.rmtree(self.output(kind, name))
        return len(names)

"""Where file bytes live: a small interface, and the local-directory store used by default.

An object store (S3, GCS) implements the same three methods; every process that runs jobs or
serves files must then see the same store.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from typing import Protocol


class BlobStore(Protocol):
    def put_file(self, file_id: str, source: Path) -> tuple[int, str]:
        """Store a copy of `source`; return its size and sha256."""

    def path(self, file_id: str) -> Path | None:
        """A local path holding the bytes, or None when the file is unknown or purged."""

    def delete(self, file_id: str) -> None: ...


class LocalBlobStore:
    """Files under `root/<first two hex digits>/<file id>`."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, file_id: str) -> Path:
        return self.root / file_id[:2] / file_id

    def put_file(self, file_id: str, source: Path) -> tuple[int, str]:
        target = self._path(file_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        digest = hashlib.sha256()
        size = 0
        with open(source, "rb") as src, open(tmp, "wb") as dst:
            while chunk := src.read(1024 * 1024):
                digest.update(chunk)
                size += len(chunk)
                dst.write(chunk)
        os.replace(tmp, target)
        return size, digest.hexdigest()

    def put_bytes(self, file_id: str, data: bytes) -> tuple[int, str]:
        target = self._path(file_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_suffix(".part")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return len(data), hashlib.sha256(data).hexdigest()

    def move_in(self, file_id: str, source: Path) -> None:
        """Take `source` itself as the file's bytes (a rename; a copy across file systems)."""
        target = self._path(file_id)
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(source, target)
        except OSError:  # another file system: copy, then remove the source
            tmp = target.with_suffix(".part")
            shutil.copyfile(source, tmp)
            os.replace(tmp, target)
            source.unlink(missing_ok=True)

    def path(self, file_id: str) -> Path | None:
        p = self._path(file_id)
        return p if p.exists() else None

    def delete(self, file_id: str) -> None:
        self._path(file_id).unlink(missing_ok=True)

    def copy_to(self, file_id: str, target: Path) -> bool:
        source = self.path(file_id)
        if source is None:
            return False
        shutil.copyfile(source, target)
        return True

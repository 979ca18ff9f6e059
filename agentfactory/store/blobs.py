"""The blob store (SPEC §9): the bytes of uploads and artifacts, by key ("uploads/up_x",
"artifacts/12/3"). The local filesystem here (`LocalBlobs`); the database in `store.dbblobs`
(`DbBlobs`, any replica on the same database serves its blobs); an S3-compatible bucket fits the
same small interface (docs/files.md, on paper).

Writes go to a temporary file first and appear under their key only when `commit` says so: a
refused or interrupted upload leaves nothing behind. Everything here is blocking: callers run it
on a thread.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO, Protocol

CHUNK = 1 << 20


class BlobWriter(Protocol):
    def write(self, data: bytes) -> int: ...

    def reader(self) -> BinaryIO:
        """What was written so far, read back before it is committed (to check it)."""
        ...

    def commit(self) -> None: ...

    def abort(self) -> None: ...


class BlobStore(Protocol):
    def writer(self, key: str) -> BlobWriter: ...

    def open(self, key: str) -> BinaryIO:
        """The blob's bytes; FileNotFoundError when there is none."""
        ...

    def size(self, key: str) -> int: ...

    def delete(self, key: str) -> None:
        """Remove the blob, or every blob under `key/`; a missing one is fine."""
        ...


def check_key(key: str) -> str:
    """The key, if it is one ("a/b/c", no empty, "." or ".." part); else ValueError."""
    if not key or any(p in ("", ".", "..") for p in key.split("/")):
        raise ValueError(f"bad blob key {key!r}")
    return key


class StagedWriter:
    """A blob being written: staged in a temporary file of `tmp_dir` until `commit` keeps it
    (each store's own way) or `abort` drops it."""

    def __init__(self, tmp_dir: Path):
        fd, name = tempfile.mkstemp(prefix=".partial-", dir=tmp_dir)
        self._path = Path(name)
        self._file = os.fdopen(fd, "wb")

    def write(self, data: bytes) -> int:
        return self._file.write(data)

    def reader(self) -> BinaryIO:
        self._file.flush()
        return open(self._path, "rb")

    def commit(self) -> None:
        raise NotImplementedError

    def abort(self) -> None:
        self._file.close()
        with contextlib.suppress(FileNotFoundError):
            self._path.unlink()


class _FileWriter(StagedWriter):
    def __init__(self, final: Path, tmp_dir: Path):
        super().__init__(tmp_dir)
        self._final = final

    def commit(self) -> None:
        self._file.close()
        self._final.parent.mkdir(parents=True, exist_ok=True)
        os.replace(self._path, self._final)


class LocalBlobs:
    """Blobs as files under `root` (partial writes under `root/.tmp`, removed at start)."""

    def __init__(self, root: Path):
        self.root = Path(root)
        self._tmp = self.root / ".tmp"
        shutil.rmtree(self._tmp, ignore_errors=True)
        self._tmp.mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        return self.root.joinpath(*check_key(key).split("/"))

    def writer(self, key: str) -> _FileWriter:
        return _FileWriter(self._path(key), self._tmp)

    def open(self, key: str) -> BinaryIO:
        return open(self._path(key), "rb")

    def size(self, key: str) -> int:
        return self._path(key).stat().st_size

    def delete(self, key: str) -> None:
        path = self._path(key)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    def partials(self) -> list[str]:
        """Names of writes in progress or abandoned (a test checks that refusals leave none)."""
        return sorted(p.name for p in self._tmp.iterdir())


def read_chunks(f: BinaryIO, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """The bytes [start, end) of an open blob, in chunks; closes it."""
    with f:
        f.seek(start)
        left = None if end is None else end - start
        while left is None or left > 0:
            data = f.read(CHUNK if left is None else min(CHUNK, left))
            if not data:
                return
            if left is not None:
                left -= len(data)
            yield data


def new_key_suffix() -> str:
    return uuid.uuid4().hex

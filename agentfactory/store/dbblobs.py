"""The database blob store (SPEC §9, AGENTFACTORY_FILES_STORE=db): blobs any replica on the same
database serves, with no shared directory.

A blob is a `blobs` row (key, size) and its bytes in `blob_chunks` rows of CHUNK (1 MiB) each. A
write goes to a local temporary file first (an upload is checked there before it is kept); `commit`
copies it into the database a chunk at a time, in one transaction with the `blobs` row, so a blob
appears whole or not at all, and a crash mid-way leaves nothing behind. A read fetches one chunk at
a time (`Range` seeks to the chunk it starts in): never a whole blob in memory, on either side.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import tempfile
import time
from pathlib import Path
from typing import BinaryIO, cast

from agentfactory.store import queries
from agentfactory.store.blobs import CHUNK, StagedWriter, check_key
from agentfactory.store.engine import Store

STALE_STAGING = 86_400.0


class _DbWriter(StagedWriter):
    def __init__(self, store: Store, key: str, tmp_dir: Path):
        super().__init__(tmp_dir)
        self._store = store
        self._key = key

    def commit(self) -> None:
        self._file.close()
        try:
            with self._store.session() as s, open(self._path, "rb") as f:
                queries.delete_blobs(session=s, key=self._key)  # a blob written again replaces the old one
                size = n = 0
                while data := f.read(CHUNK):
                    queries.insert_blob_chunk(session=s, key=self._key, n=n, data=data)
                    size += len(data)
                    n += 1
                queries.insert_blob(session=s, key=self._key, size=size, chunk_bytes=CHUNK, created_at=time.time())
        finally:
            with contextlib.suppress(FileNotFoundError):
                self._path.unlink()


class DbBlobReader(io.RawIOBase):
    """A blob read from the database a chunk at a time (seekable; holds at most one chunk)."""

    def __init__(self, store: Store, key: str, size: int, chunk_bytes: int):
        super().__init__()
        self._store = store
        self._key = key
        self._size = size
        self._chunk_bytes = chunk_bytes
        self._pos = 0
        self._n = -1
        self._chunk = b""

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def _part(self, size: int) -> bytes:
        """Up to `size` bytes from the position, within the chunk it falls in (fetched if need be)."""
        if self._pos >= self._size or size <= 0:
            return b""
        n, offset = divmod(self._pos, self._chunk_bytes)
        if n != self._n:
            self._chunk = b""  # the old chunk goes before the next one comes
            with self._store.session() as s:
                data = queries.get_blob_chunk(session=s, key=self._key, n=n)
            if data is None:
                raise FileNotFoundError(f"blob {self._key!r} lost its chunk {n}")
            self._n, self._chunk = n, bytes(data)
        part = self._chunk[offset : offset + size]  # the whole chunk: the same object, not a copy
        self._pos += len(part)
        return part

    def readinto(self, buffer: memoryview) -> int:  # type: ignore[override]
        part = self._part(len(buffer))
        buffer[: len(part)] = part
        return len(part)

    def read(self, size: int | None = -1) -> bytes:
        """At most `size` bytes, up to the end of the chunk the position is in (a short read)."""
        return self._part(self._size - self._pos if size is None or size < 0 else size)


class DbBlobs:
    """Blobs in the database. Writes are staged in a directory of this process's own under
    `staging` (replicas may be given one files directory); a dead process's is removed a day on."""

    def __init__(self, store: Store, staging: Path):
        self.store = store
        staging = Path(staging)
        staging.mkdir(parents=True, exist_ok=True)
        for old in staging.iterdir():
            with contextlib.suppress(OSError):
                if old.is_dir() and old.name.startswith("p-") and old.stat().st_mtime < time.time() - STALE_STAGING:
                    shutil.rmtree(old, ignore_errors=True)
        self._tmp = Path(tempfile.mkdtemp(prefix="p-", dir=staging))

    def writer(self, key: str) -> _DbWriter:
        self._tmp.mkdir(parents=True, exist_ok=True)  # an idle process's, removed by a replica starting a day on
        return _DbWriter(self.store, check_key(key), self._tmp)

    def open(self, key: str) -> BinaryIO:
        with self.store.session() as s:
            row = queries.get_blob(session=s, key=check_key(key))
        if row is None:
            raise FileNotFoundError(key)
        return cast(BinaryIO, DbBlobReader(self.store, key, row.size, row.chunk_bytes))

    def size(self, key: str) -> int:
        with self.store.session() as s:
            row = queries.get_blob(session=s, key=check_key(key))
        if row is None:
            raise FileNotFoundError(key)
        return row.size

    def delete(self, key: str) -> None:
        with self.store.session() as s:
            queries.delete_blobs(session=s, key=check_key(key))

    def partials(self) -> list[str]:
        """Names of writes in progress or abandoned (a test checks that refusals leave none)."""
        return sorted(p.name for p in self._tmp.iterdir())

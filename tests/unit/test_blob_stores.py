"""The blob stores behind one interface (SPEC §9): the local filesystem, and the database on SQLite
and on PostgreSQL (a real cluster of the run's own). What a server does with a blob: write it,
check it before committing, read it whole or from an offset, replace it, delete a key and the keys
under it, and never hold a whole blob in memory."""

from __future__ import annotations

import hashlib
import os
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfactory.store import Store
from agentfactory.store.blobs import CHUNK, LocalBlobs, read_chunks
from agentfactory.store.dbblobs import DbBlobs
from tests.support.db import rows
from tests.support.postgres import LocalPostgres

MIB = 1024 * 1024
Blobs = LocalBlobs | DbBlobs


@pytest.fixture(params=["fs", "db-sqlite", "db-postgres"])
def blobs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Blobs]:
    if request.param == "fs":
        yield LocalBlobs(tmp_path / "files")
        return
    if request.param == "db-sqlite":
        url = f"sqlite:///{tmp_path / 'blobs.db'}"
    else:
        postgres: LocalPostgres = request.getfixturevalue("postgres")
        url = postgres.new_database("blobs")
    store = Store(url)
    store.migrate()
    try:
        yield DbBlobs(store, tmp_path / "files" / ".tmp")
    finally:
        store.engine.dispose()


def put(blobs: Blobs, key: str, data: bytes) -> None:
    w = blobs.writer(key)
    for i in range(0, len(data), 300_000):  # writes that do not line up with the chunks
        w.write(data[i : i + 300_000])
    w.commit()


def read(blobs: Blobs, key: str, start: int = 0, end: int | None = None) -> bytes:
    return b"".join(read_chunks(blobs.open(key), start, end))


def test_a_blob_round_trips_whole_and_by_range(blobs: Blobs) -> None:
    data = os.urandom(3 * CHUNK + 12345)
    put(blobs, "artifacts/7/0", data)
    put(blobs, "artifacts/7/1", b"")
    assert blobs.size("artifacts/7/0") == len(data) and blobs.size("artifacts/7/1") == 0
    assert read(blobs, "artifacts/7/0") == data and read(blobs, "artifacts/7/1") == b""
    for start, end in ((10, 20), (CHUNK - 5, CHUNK + 5), (2 * CHUNK, len(data)), (len(data) - 1, len(data))):
        assert read(blobs, "artifacts/7/0", start, end) == data[start:end], (start, end)
    put(blobs, "artifacts/7/0", b"again")  # written again: replaced
    assert read(blobs, "artifacts/7/0") == b"again" and blobs.size("artifacts/7/0") == 5
    with pytest.raises(FileNotFoundError):
        blobs.open("artifacts/7/9")
    with pytest.raises(FileNotFoundError):
        blobs.size("uploads/up_missing")
    with pytest.raises(ValueError):
        blobs.writer("artifacts/../x")


def test_an_aborted_write_leaves_nothing_and_a_checked_one_is_read_back_first(blobs: Blobs) -> None:
    w = blobs.writer("uploads/up_refused")
    w.write(b"x" * (2 * CHUNK))
    with w.reader() as f:
        assert hashlib.sha256(f.read()).digest() == hashlib.sha256(b"x" * (2 * CHUNK)).digest()
    w.abort()
    with pytest.raises(FileNotFoundError):
        blobs.open("uploads/up_refused")
    assert blobs.partials() == []


def test_delete_takes_the_key_and_the_keys_under_it_only(blobs: Blobs) -> None:
    for key in ("artifacts/1/0", "artifacts/1/1", "artifacts/10/0", "artifacts/1x", "uploads/up_a_b"):
        put(blobs, key, key.encode())
    blobs.delete("artifacts/1")
    blobs.delete("uploads/up_a%")  # LIKE's wildcards are no wildcards here
    blobs.delete("artifacts/404")  # a missing one is fine
    for gone in ("artifacts/1/0", "artifacts/1/1"):
        with pytest.raises(FileNotFoundError):
            blobs.open(gone)
    for kept in ("artifacts/10/0", "artifacts/1x", "uploads/up_a_b"):
        assert read(blobs, kept) == kept.encode()
    if isinstance(blobs, DbBlobs):
        chunks = rows(blobs.store.url, "SELECT key FROM blob_chunks ORDER BY key")
        assert [k for (k,) in chunks] == ["artifacts/10/0", "artifacts/1x", "uploads/up_a_b"]


def test_writing_and_reading_a_large_blob_holds_a_few_chunks_at_most(blobs: Blobs) -> None:
    data = os.urandom(24 * MIB)
    w = blobs.writer("artifacts/3/0")
    for i in range(0, len(data), CHUNK):
        w.write(data[i : i + CHUNK])
    expected = hashlib.sha256(data).hexdigest()
    del data
    digest = hashlib.sha256()
    tracemalloc.start()
    try:
        w.commit()
        for chunk in read_chunks(blobs.open("artifacts/3/0")):
            digest.update(chunk)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert blobs.size("artifacts/3/0") == 24 * MIB
    assert peak < 6 * MIB, f"peak {peak / MIB:.1f} MiB while writing and reading 24 MiB"
    assert digest.hexdigest() == expected

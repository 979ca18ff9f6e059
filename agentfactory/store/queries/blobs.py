"""The database blob store (SPEC §9): a blob is a `blobs` row and its bytes in `blob_chunks`.

A key and the keys under it ("artifacts/12" and "artifacts/12/3") are selected as a range, not with
LIKE: "/" sorts just before "0", so the keys under `k/` are exactly those in ["k/", "k0").
"""

from __future__ import annotations

from sqlalchemy import ColumnElement, delete, func, insert, or_, select
from sqlalchemy.orm import InstrumentedAttribute, Session

from agentfactory.store.tables import BlobChunkRow, BlobRow


def _key_or_under(col: InstrumentedAttribute[str], key: str) -> ColumnElement[bool]:
    return or_(col == key, (col >= key + "/") & (col < key + "0"))


def delete_blobs(*, session: Session, key: str) -> int:
    """Remove the blob `key` and every blob under `key/`; answers how many went."""
    gone = list(session.scalars(delete(BlobRow).where(_key_or_under(BlobRow.key, key)).returning(BlobRow.key)))
    session.execute(delete(BlobChunkRow).where(_key_or_under(BlobChunkRow.key, key)))
    return len(gone)


def insert_blob_chunk(*, session: Session, key: str, n: int, data: bytes) -> None:
    """One chunk of a blob being written (its `blobs` row comes last, in the same transaction)."""
    session.execute(insert(BlobChunkRow), {"key": key, "n": n, "data": data})


def insert_blob(*, session: Session, key: str, size: int, chunk_bytes: int, created_at: float) -> None:
    session.execute(insert(BlobRow), {"key": key, "size": size, "chunk_bytes": chunk_bytes, "created_at": created_at})


def get_blob(*, session: Session, key: str) -> BlobRow | None:
    return session.get(BlobRow, key)


def get_blob_chunk(*, session: Session, key: str, n: int) -> bytes | None:
    """The chunk's bytes, read without keeping an ORM object (nor the bytes) in the session."""
    return session.scalar(select(BlobChunkRow.data).where(BlobChunkRow.key == key, BlobChunkRow.n == n))


def count_blobs(*, session: Session, key: str) -> int:
    """How many blobs are `key` or under `key/` (a test checks that refusals and purges leave none)."""
    return int(session.scalar(select(func.count()).select_from(BlobRow).where(_key_or_under(BlobRow.key, key))) or 0)

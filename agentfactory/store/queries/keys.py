"""API keys (stored as their hash, the bootstrap admin kept in step) and the server's own keys."""

from __future__ import annotations

import hashlib
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.orm import Session

from agentfactory.store.queries.logs import BOOTSTRAP_MAX_STREAMS
from agentfactory.store.tables import (
    ApiKeyRow,
    ServerKeyRow,
)


def hash_api_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def get_api_key_by_hash(*, session: Session, key_hash: str) -> ApiKeyRow | None:
    return session.scalars(select(ApiKeyRow).where(ApiKeyRow.key_hash == key_hash)).first()


def get_api_key(*, session: Session, key_id: str) -> ApiKeyRow | None:
    return session.get(ApiKeyRow, key_id)


def list_api_keys(*, session: Session) -> list[ApiKeyRow]:
    return list(session.scalars(select(ApiKeyRow).order_by(ApiKeyRow.created_at)))


def lock_api_key(*, session: Session, key_id: str) -> None:
    """Serialise concurrent admissions for one key: a write first takes the row (PG) or the
    database (SQLite) lock, so the count that follows cannot be raced."""
    session.execute(update(ApiKeyRow).where(ApiKeyRow.id == key_id).values(lock_version=ApiKeyRow.lock_version + 1))


def insert_api_key(*, session: Session, **values: Any) -> ApiKeyRow:
    row = ApiKeyRow(lock_version=0, **values)
    session.add(row)
    session.flush()
    return row


def revoke_api_key(*, session: Session, key_id: str, now: float) -> ApiKeyRow | None:
    """Revoke the key at `now` (a revoked key keeps its first revocation time); None if unknown."""
    row = session.get(ApiKeyRow, key_id)
    if row is not None and row.revoked_at is None:
        row.revoked_at = now
    return row


def sync_bootstrap_admin(*, session: Session, key_id: str, key: str | None, now: float) -> None:
    """Keep the bootstrap admin key's row in step with the configured key (revoked when unset)."""
    row = session.get(ApiKeyRow, key_id)
    if not key:
        if row is not None and row.revoked_at is None:
            row.revoked_at = now
        return
    digest = hash_api_key(key)
    if row is None:
        session.add(
            ApiKeyRow(
                id=key_id,
                name="bootstrap admin",
                key_hash=digest,
                prefix="",  # the operator chose this key: none of its characters is shown
                admin=True,
                models=[],
                tools=[],
                max_concurrent_agents=1000,
                max_requests_per_minute=100_000,
                max_ttl_seconds=10**9,
                max_streams=BOOTSTRAP_MAX_STREAMS,
                created_at=now,
                lock_version=0,
            )
        )
    else:
        row.key_hash, row.prefix, row.revoked_at = digest, "", None
        row.max_streams = BOOTSTRAP_MAX_STREAMS


def get_server_key(*, session: Session, name: str) -> str | None:
    row = session.get(ServerKeyRow, name)
    return None if row is None else row.secret


def add_server_key(*, session: Session, name: str, secret: str, created_at: float) -> None:
    """Insert a key; raises IntegrityError when another replica made it first."""
    session.add(ServerKeyRow(name=name, secret=secret, created_at=created_at))
    session.flush()

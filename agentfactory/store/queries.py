"""Queries, verb-first with keyword-only arguments. Each takes the session its caller opened."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import Any

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy import text as sql
from sqlalchemy.orm import Session

from agentfactory.store.tables import (
    ACTIVE,
    STDERR,
    TERMINAL,
    AgentRow,
    ApiKeyRow,
    LogChunkRow,
    RateBucketRow,
    ReplicaRow,
)


def get_agent(*, session: Session, agent_id: str, key_id: str | None = None) -> AgentRow | None:
    """The agent, or None; with key_id, only when that key owns it."""
    q = select(AgentRow).where(AgentRow.id == agent_id)
    if key_id is not None:
        q = q.where(AgentRow.key_id == key_id)
    return session.scalars(q).first()


def get_agent_states(*, session: Session, agent_ids: Sequence[str]) -> dict[str, tuple[int, str]]:
    """{agent id: (pk, status)} of those ids that have a row: one query for a whole engine listing."""
    q = select(AgentRow.id, AgentRow.pk, AgentRow.status).where(AgentRow.id.in_(agent_ids))
    return {agent_id: (pk, status) for agent_id, pk, status in session.execute(q)}


def get_agent_by_pk(*, session: Session, pk: int) -> AgentRow | None:
    return session.get(AgentRow, pk)


def get_agent_by_gateway_token(*, session: Session, token: str) -> AgentRow | None:
    digest = hashlib.sha256(token.encode()).hexdigest()
    return session.scalars(select(AgentRow).where(AgentRow.gateway_token_hash == digest)).first()


def list_agents(
    *, session: Session, key_id: str | None, status: str | None, limit: int, before_pk: int | None
) -> list[AgentRow]:
    """Newest first; key_id None lists every key's agents (admin)."""
    q = select(AgentRow).order_by(AgentRow.pk.desc()).limit(limit)
    if key_id is not None:
        q = q.where(AgentRow.key_id == key_id)
    if status is not None:
        q = q.where(AgentRow.status == status)
    if before_pk is not None:
        q = q.where(AgentRow.pk < before_pk)
    return list(session.scalars(q))


def list_agents_in(*, session: Session, statuses: Sequence[str], owner: str | None = None) -> list[AgentRow]:
    """Agents in these statuses (with owner: only those that replica owns), oldest first."""
    q = select(AgentRow).where(AgentRow.status.in_(statuses)).order_by(AgentRow.pk)
    if owner is not None:
        q = q.where(AgentRow.owner == owner)
    return list(session.scalars(q))


def insert_agent(*, session: Session, **values: Any) -> AgentRow:
    """A new agent row (pending); flushed, so its pk is set."""
    row = AgentRow(**values)
    session.add(row)
    session.flush()
    return row


def delete_agent(*, session: Session, pk: int) -> None:
    """Forget an agent that never had a container (the engine was unreachable at launch)."""
    session.execute(delete(LogChunkRow).where(LogChunkRow.agent_pk == pk))
    session.execute(delete(AgentRow).where(AgentRow.pk == pk))


def set_stop_reason(*, session: Session, pk: int, stop_reason: str) -> None:
    """Record why an active agent is being stopped (the first reason wins)."""
    session.execute(
        update(AgentRow)
        .where(AgentRow.pk == pk, AgentRow.status.in_(ACTIVE), AgentRow.stop_reason.is_(None))
        .values(stop_reason=stop_reason)
    )


def save_resource_usage(*, session: Session, samples: Sequence[tuple[int, int | None, float | None]]) -> None:
    """(pk, peak memory bytes, cpu seconds) of running agents: the peak only grows, CPU is the latest."""
    for pk, peak, cpu in samples:
        if peak is not None:
            session.execute(
                update(AgentRow)
                .where(AgentRow.pk == pk, AgentRow.status == "running")
                .where((AgentRow.peak_memory_bytes.is_(None)) | (AgentRow.peak_memory_bytes < peak))
                .values(peak_memory_bytes=peak)
            )
        if cpu is not None:
            session.execute(
                update(AgentRow).where(AgentRow.pk == pk, AgentRow.status == "running").values(cpu_seconds=cpu)
            )


def count_active_agents(*, session: Session, key_id: str) -> int:
    q = select(func.count()).select_from(AgentRow).where(AgentRow.key_id == key_id, AgentRow.status.in_(ACTIVE))
    return int(session.scalar(q) or 0)


def find_idempotent_agent(*, session: Session, key_id: str, idempotency_key: str) -> AgentRow | None:
    q = select(AgentRow).where(AgentRow.key_id == key_id, AgentRow.idempotency_key == idempotency_key)
    return session.scalars(q).first()


def update_agent(
    *,
    session: Session,
    pk: int,
    only_if_status: Iterable[str] | None = None,
    only_if_owner: str | None = None,
    **values: Any,
) -> bool:
    """Set columns; with only_if_status, only while the agent is in one of those statuses; with
    only_if_owner, only while that replica owns it (an agent another replica adopted is not ours).

    Returns whether a row changed: the compare-and-set every state transition goes through.
    """
    q = update(AgentRow).where(AgentRow.pk == pk)
    if only_if_status is not None:
        q = q.where(AgentRow.status.in_(tuple(only_if_status)))
    if only_if_owner is not None:
        q = q.where(AgentRow.owner == only_if_owner)
    return bool(session.execute(q.values(**values)).rowcount)  # type: ignore[attr-defined]


def mark_engine_lost(*, session: Session, pks: Sequence[int], at: float) -> None:
    """Note that the engine of these running agents was unreachable at `at` (the first note stays)."""
    if pks:
        session.execute(
            update(AgentRow)
            .where(AgentRow.pk.in_(pks), AgentRow.status == "running", AgentRow.engine_lost_at.is_(None))
            .values(engine_lost_at=at)
        )


def clear_engine_lost(*, session: Session, pk: int) -> None:
    """The agent's container was seen running after an engine outage: the outage did not end it."""
    session.execute(update(AgentRow).where(AgentRow.pk == pk).values(engine_lost_at=None))


def add_token_usage(*, session: Session, pk: int, prompt_tokens: int, completion_tokens: int) -> None:
    session.execute(
        update(AgentRow)
        .where(AgentRow.pk == pk)
        .values(
            tokens_prompt=AgentRow.tokens_prompt + prompt_tokens,
            tokens_completion=AgentRow.tokens_completion + completion_tokens,
            model_calls=AgentRow.model_calls + 1,
        )
    )


CHUNKS_PER_READ = 64


def store_log_chunks(
    *,
    session: Session,
    rows: Sequence[tuple[int, int, int, float, int, str]],
    positions: dict[int, tuple[int, int, int, int]],
    first_output_at: dict[int, float],
    owner: str | None = None,
) -> set[int]:
    """Insert log chunk rows (agent_pk, last_seq, first_seq, ts, stream, text) and record each
    agent's resume position (stdout_consumed, stderr_consumed, dropped lines, dropped bytes) and
    first output time, in the caller's one transaction. The rows go through the driver's
    executemany: a flood's chunks cost no ORM objects.

    With `owner`, only for agents that replica still owns: positions are written first (on
    PostgreSQL this takes each agent's row lock, so an adoption waits for the batch or skips the
    row), and an agent another replica adopted meanwhile is fenced off: none of its lines are
    stored, its adopter resumes from the position stored before. Returns the fenced agents."""
    conn = session.connection()
    fenced: set[int] = set()
    for pk, (stdout_consumed, stderr_consumed, dropped_lines, dropped_bytes) in positions.items():
        q = update(AgentRow).where(AgentRow.pk == pk)
        if owner is not None:
            q = q.where(AgentRow.owner == owner)
        moved = conn.execute(
            q.values(
                stdout_consumed=stdout_consumed,
                stderr_consumed=stderr_consumed,
                log_dropped_lines=dropped_lines,
                log_dropped_bytes=dropped_bytes,
            )
        )
        if not moved.rowcount:
            fenced.add(pk)
    kept = [r for r in rows if r[0] not in fenced] if fenced else rows
    if kept:
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(
            "INSERT INTO log_chunks (agent_pk, last_seq, first_seq, ts, stream, text) VALUES "
            f"({', '.join([mark] * 6)})",
            list(kept),
        )
    for pk, ts in first_output_at.items():
        if pk not in fenced:
            conn.execute(
                update(AgentRow).where(AgentRow.pk == pk, AgentRow.first_output_at.is_(None)).values(first_output_at=ts)
            )
    return fenced


def read_log_lines(
    *, session: Session, agent_pk: int, after: int, limit: int, stream: int | None = None
) -> list[tuple[int, float, int, str]]:
    """Lines with seq > after, in order: (seq, ts, stream, text). Reads whole chunks, a few at a
    time, until `limit` lines are found."""
    out: list[tuple[int, float, int, str]] = []
    cursor = after
    while len(out) < limit:
        q = (
            select(LogChunkRow.first_seq, LogChunkRow.last_seq, LogChunkRow.ts, LogChunkRow.stream, LogChunkRow.text)
            .where(LogChunkRow.agent_pk == agent_pk, LogChunkRow.last_seq > cursor)
            .order_by(LogChunkRow.last_seq)
            .limit(CHUNKS_PER_READ)
        )
        if stream is not None:
            q = q.where(LogChunkRow.stream == stream)
        chunks = session.execute(q).all()
        for first, last, ts, st, text in chunks:
            lines = text.split("\n")
            skip = max(0, after + 1 - first)
            n = len(lines) - skip
            out.extend(zip(range(first + skip, last + 1), repeat(ts, n), repeat(st, n), lines[skip:], strict=True))
            cursor = last
            if len(out) >= limit:
                break
        if len(chunks) < CHUNKS_PER_READ:
            break
    return out[:limit]


def last_stderr_line(*, session: Session, agent_pk: int) -> str | None:
    q = (
        select(LogChunkRow.text)
        .where(LogChunkRow.agent_pk == agent_pk, LogChunkRow.stream == STDERR)
        .order_by(LogChunkRow.last_seq.desc())
        .limit(1)
    )
    text = session.scalars(q).first()
    return None if text is None else text.rsplit("\n", 1)[-1]


def last_log_seq(*, session: Session, agent_pk: int) -> int:
    return int(session.scalar(select(func.max(LogChunkRow.last_seq)).where(LogChunkRow.agent_pk == agent_pk)) or 0)


def iter_log_chunks(*, session: Session, agent_pk: int, batch: int = 500) -> Iterable[str]:
    """Every stored chunk's text (its lines joined by "\n") in seq order (for the seal)."""
    after = 0
    while True:
        rows = session.execute(
            select(LogChunkRow.last_seq, LogChunkRow.text)
            .where(LogChunkRow.agent_pk == agent_pk, LogChunkRow.last_seq > after)
            .order_by(LogChunkRow.last_seq)
            .limit(batch)
        ).all()
        if not rows:
            return
        for _seq, text in rows:
            yield text
        after = rows[-1][0]


def seal_stored_lines(*, session: Session, agent_pk: int) -> tuple[int, int, str]:
    """(lines, bytes, sha256) over every stored line: its UTF-8 text followed by one b"\n"."""
    digest = hashlib.sha256()
    lines = nbytes = 0
    for text in iter_log_chunks(session=session, agent_pk=agent_pk):
        data = text.encode("utf-8") + b"\n"
        digest.update(data)
        lines += data.count(b"\n")
        nbytes += len(data)
    return lines, nbytes, digest.hexdigest()


def purge_agents_finished_before(*, session: Session, cutoff: float, limit: int = 500) -> int:
    """Delete finished agents (and their lines) that ended before cutoff; returns how many."""
    pks = list(
        session.scalars(
            select(AgentRow.pk).where(AgentRow.status.in_(TERMINAL), AgentRow.finished_at < cutoff).limit(limit)
        )
    )
    if pks:
        session.execute(delete(LogChunkRow).where(LogChunkRow.agent_pk.in_(pks)))
        session.execute(delete(AgentRow).where(AgentRow.pk.in_(pks)))
    return len(pks)


# --- replicas: leases, ownership, adoption ---------------------------------------------------


def db_now(*, session: Session) -> float:
    """The database's clock, in epoch seconds: the one clock every replica's lease is judged by."""
    if session.get_bind().dialect.name == "postgresql":
        return float(session.execute(sql("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())
    return float(session.execute(sql("SELECT (julianday('now') - 2440587.5) * 86400.0")).scalar_one())


def heartbeat_replica(
    *, session: Session, replica_id: str, host: str, pid: int, url: str | None, engine_id: str | None
) -> tuple[float, list[ReplicaRow]]:
    """Renew this replica's lease (heartbeat_at = the database's now); returns (that now, every lease)."""
    now = db_now(session=session)
    values = {"host": host, "pid": pid, "url": url, "engine_id": engine_id, "heartbeat_at": now}
    changed = session.execute(update(ReplicaRow).where(ReplicaRow.id == replica_id).values(**values)).rowcount  # type: ignore[attr-defined]
    if not changed:
        session.add(ReplicaRow(id=replica_id, started_at=now, **values))
        session.flush()
    return now, list(session.scalars(select(ReplicaRow).order_by(ReplicaRow.started_at)))


def release_replica(*, session: Session, replica_id: str) -> int:
    """A replica that stops: its active agents are left ownerless (another replica, or its
    successor, adopts them at its next pass) and its lease is gone. Returns how many agents."""
    n = session.execute(
        update(AgentRow).where(AgentRow.owner == replica_id, AgentRow.status.in_(ACTIVE)).values(owner=None)
    ).rowcount  # type: ignore[attr-defined]
    session.execute(delete(ReplicaRow).where(ReplicaRow.id == replica_id))
    return int(n)


def delete_replicas_lapsed_before(*, session: Session, cutoff: float) -> int:
    """Forget leases not renewed since `cutoff` (the database's clock); their agents stay adoptable."""
    return int(session.execute(delete(ReplicaRow).where(ReplicaRow.heartbeat_at < cutoff)).rowcount)  # type: ignore[attr-defined]


def claim_agents(
    *,
    session: Session,
    owner: str,
    engine_id: str,
    lease_seconds: float,
    dead: Sequence[str] = (),
    limit: int = 500,
) -> list[int]:
    """Adopt the active agents nobody live owns, on this engine (or on none yet): owner NULL, or a
    replica whose lease was not renewed within lease_seconds by the database's clock, or one in
    `dead`. Each row is taken with a compare-and-set on its owner (and, on PostgreSQL, locked
    FOR UPDATE SKIP LOCKED first), so two replicas never adopt the same agent. Returns their pks."""
    now = db_now(session=session)
    live = select(ReplicaRow.id).where(ReplicaRow.heartbeat_at >= now - lease_seconds)
    if dead:
        live = live.where(ReplicaRow.id.not_in(list(dead)))
    q = (
        select(AgentRow.pk, AgentRow.owner)
        .where(
            AgentRow.status.in_(ACTIVE),
            or_(AgentRow.owner.is_(None), and_(AgentRow.owner != owner, AgentRow.owner.not_in(live))),
            or_(AgentRow.engine_id.is_(None), AgentRow.engine_id == engine_id),
        )
        .order_by(AgentRow.pk)
        .limit(limit)
    )
    if session.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True, of=AgentRow)
    claimed: list[int] = []
    for pk, old in session.execute(q).all():
        same = AgentRow.owner.is_(None) if old is None else AgentRow.owner == old
        cas = update(AgentRow).where(AgentRow.pk == pk, same, AgentRow.status.in_(ACTIVE)).values(owner=owner)
        if session.execute(cas).rowcount:  # type: ignore[attr-defined]
            claimed.append(pk)
    return claimed


def claim_overdue_elsewhere(*, session: Session, owner: str, engine_id: str, before: float) -> list[str]:
    """Running agents another replica owns, on this engine, past their TTL since before `before`
    and not being stopped: mark them `ttl_expired` (their owner, or their adopter, finalizes them)
    and return their ids, so that their containers are stopped on time even while their owner
    is dead and not yet replaced."""
    ids = list(
        session.scalars(
            select(AgentRow.id).where(
                AgentRow.status == "running",
                AgentRow.expires_at < before,
                AgentRow.stop_reason.is_(None),
                AgentRow.engine_id == engine_id,
                or_(AgentRow.owner.is_(None), AgentRow.owner != owner),
            )
        )
    )
    if ids:
        session.execute(
            update(AgentRow)
            .where(AgentRow.id.in_(ids), AgentRow.stop_reason.is_(None))
            .values(stop_reason="ttl_expired")
        )
    return ids


def owned_among(*, session: Session, owner: str, pks: Sequence[int]) -> set[int]:
    """Which of these agents `owner` still owns (the others were adopted by another replica)."""
    if not pks:
        return set()
    return set(session.scalars(select(AgentRow.pk).where(AgentRow.pk.in_(list(pks)), AgentRow.owner == owner)))


def get_agent_owners(*, session: Session, agent_ids: Sequence[str]) -> dict[str, tuple[int, str, str | None]]:
    """{agent id: (pk, status, owner)} of those ids that have a row (orphan checks)."""
    q = select(AgentRow.id, AgentRow.pk, AgentRow.status, AgentRow.owner).where(AgentRow.id.in_(agent_ids))
    return {agent_id: (pk, status, owner) for agent_id, pk, status, owner in session.execute(q)}


def take_rate_token(*, session: Session, key_id: str, per_minute: int) -> int | None:
    """Take one request token from the key's shared bucket (capacity per_minute, refilled
    continuously, by the database's clock) under its row lock: None when admitted, else the
    seconds until a token is back. PostgreSQL (the bucket row is created on first use)."""
    from sqlalchemy.dialects.postgresql import insert

    rate = per_minute / 60.0
    now_expr = sql("extract(epoch FROM clock_timestamp())")
    q = select(RateBucketRow, now_expr).where(RateBucketRow.key_id == key_id).with_for_update()
    found = session.execute(q).first()
    if found is None:
        now = db_now(session=session)
        new = insert(RateBucketRow).values(key_id=key_id, tokens=float(per_minute), updated_at=now)
        session.execute(new.on_conflict_do_nothing(index_elements=["key_id"]))
        found = session.execute(q).first()
        assert found is not None
    bucket, now = found[0], float(found[1])
    tokens = min(float(per_minute), bucket.tokens + max(0.0, now - bucket.updated_at) * rate)
    admitted = tokens >= 1
    bucket.tokens, bucket.updated_at = (tokens - 1 if admitted else tokens), now
    return None if admitted else max(1, math.ceil((1 - tokens) / rate))


# --- API keys ---------------------------------------------------------------------------------


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
                prefix=key[:9],
                admin=True,
                models=[],
                tools=[],
                max_concurrent_agents=1000,
                max_requests_per_minute=100_000,
                max_ttl_seconds=10**9,
                created_at=now,
                lock_version=0,
            )
        )
    else:
        row.key_hash, row.prefix, row.revoked_at = digest, key[:9], None

"""Queries, verb-first with keyword-only arguments. Each takes the session its caller opened."""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from itertools import repeat
from typing import Any

from sqlalchemy import BigInteger, String, and_, case, cast, delete, exists, func, or_, select, update
from sqlalchemy import text as sql
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from agentfactory.store.tables import (
    ACTIVE,
    STDERR,
    TERMINAL,
    AgentFilesRow,
    AgentRow,
    ApiKeyRow,
    ArtifactRow,
    CursorRow,
    DeliveryAttemptRow,
    DeliveryRow,
    EventRow,
    LogChunkRow,
    RateBucketRow,
    ReplicaRow,
    ServerKeyRow,
    UiSessionRow,
    UploadRow,
    WebhookRow,
)
from agentfactory.vocabulary import UNDELIVERED, DeliveryStatus


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
    *,
    session: Session,
    key_id: str | None,
    status: str | None,
    limit: int,
    before_pk: int | None,
    metadata: Sequence[tuple[str, str]] = (),
    model: str | None = None,
) -> list[AgentRow]:
    """Newest first; key_id None lists every key's agents (admin). `metadata` pairs all must match
    (see `metadata_matches`)."""
    q = select(AgentRow).order_by(AgentRow.pk.desc()).limit(limit)
    if key_id is not None:
        q = q.where(AgentRow.key_id == key_id)
    if status is not None:
        q = q.where(AgentRow.status == status)
    if model is not None:
        q = q.where(AgentRow.model == model)
    if before_pk is not None:
        q = q.where(AgentRow.pk < before_pk)
    for key, value in metadata:
        q = q.where(metadata_matches(session.get_bind().dialect.name, key, value))
    return list(session.scalars(q))


def metadata_matches(dialect: str, key: str, value: str) -> ColumnElement[bool]:
    """The agent's metadata has `key` and its value, as text, is `value`: a string is itself, a
    number its JSON text (`42`, `1.5`), a boolean `true`/`false`; a null matches nothing. The same
    answer on SQLite (json_each: the key is compared as a string, never parsed as a JSON path) and
    PostgreSQL (`->>`). No index serves it: it narrows the caller's own agents, newest first."""
    if dialect == "postgresql":
        return AgentRow.meta.op("->>")(key) == value
    entry = func.json_each(AgentRow.meta).table_valued("key", "value", "type").alias("meta_entry")
    as_text = case(
        (entry.c.type == "true", "true"),
        (entry.c.type == "false", "false"),
        else_=cast(entry.c.value, String),
    )
    return exists(select(1).select_from(entry).where(entry.c.key == key, entry.c.type != "null", as_text == value))


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
BOOTSTRAP_MAX_STREAMS = 10_000  # the bootstrap admin key's max_streams


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
        if owner is not None and not moved.rowcount:
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


def iter_log_lines(
    *, session: Session, agent_pk: int, after: int, stream: int | None = None
) -> Iterator[tuple[int, float, int, str]]:
    """Lines with seq > after, in order: (seq, ts, stream, text), read a few whole chunks at a time
    (more as the reader keeps going): a caller that stops early has read little."""
    cursor, fetch = after, 4
    while True:
        q = (
            select(LogChunkRow.first_seq, LogChunkRow.last_seq, LogChunkRow.ts, LogChunkRow.stream, LogChunkRow.text)
            .where(LogChunkRow.agent_pk == agent_pk, LogChunkRow.last_seq > cursor)
            .order_by(LogChunkRow.last_seq)
            .limit(fetch)
        )
        if stream is not None:
            q = q.where(LogChunkRow.stream == stream)
        chunks = session.execute(q).all()
        for first, last, ts, st, text in chunks:
            lines = text.split("\n")
            skip = max(0, after + 1 - first)
            n = len(lines) - skip
            yield from zip(range(first + skip, last + 1), repeat(ts, n), repeat(st, n), lines[skip:], strict=True)
            cursor = last
        if len(chunks) < fetch:
            return
        fetch = min(fetch * 2, CHUNKS_PER_READ)


def _text_bytes(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode("utf-8", "surrogatepass"))


def read_log_lines(
    *, session: Session, agent_pk: int, after: int, limit: int, stream: int | None = None, max_bytes: int | None = None
) -> list[tuple[int, float, int, str]]:
    """Lines with seq > after, in order: (seq, ts, stream, text); at most `limit` of them, and
    with `max_bytes`, no more once their text (UTF-8) reaches it (but at least one line)."""
    return read_log_page(
        session=session, agent_pk=agent_pk, after=after, limit=limit, stream=stream, max_bytes=max_bytes
    )[0]


def read_log_page(
    *, session: Session, agent_pk: int, after: int, limit: int, stream: int | None = None, max_bytes: int | None = None
) -> tuple[list[tuple[int, float, int, str]], bool]:
    """`read_log_lines`, and whether more lines follow the ones returned."""
    out: list[tuple[int, float, int, str]] = []
    total = 0
    for line in iter_log_lines(session=session, agent_pk=agent_pk, after=after, stream=stream):
        if len(out) >= limit:
            return out, True
        if max_bytes is not None:
            size = _text_bytes(line[3])
            if out and total + size > max_bytes:
                return out, True
            total += size
        out.append(line)
    return out, False


def read_last_log_lines(
    *, session: Session, agent_pk: int, count: int, stream: int | None = None, max_bytes: int | None = None
) -> list[tuple[int, float, int, str]]:
    """The last `count` lines (of one stream, if given), oldest first: whole chunks read from the
    end backwards, a few at a time, so a tail costs the same on a 10-line and a 10M-line agent.
    With `max_bytes`, only the newest lines whose text (UTF-8) fits in it (at least one)."""
    newest_first: list[tuple[int, float, int, str]] = []
    total = 0
    before: int | None = None
    fetch = 4
    while len(newest_first) < count:
        q = (
            select(LogChunkRow.first_seq, LogChunkRow.last_seq, LogChunkRow.ts, LogChunkRow.stream, LogChunkRow.text)
            .where(LogChunkRow.agent_pk == agent_pk)
            .order_by(LogChunkRow.last_seq.desc())
            .limit(fetch)
        )
        if stream is not None:
            q = q.where(LogChunkRow.stream == stream)
        if before is not None:
            q = q.where(LogChunkRow.last_seq < before)
        chunks = session.execute(q).all()
        for first, last, ts, st, text in chunks:
            lines = text.split("\n")
            for seq, line in zip(range(last, first - 1, -1), reversed(lines), strict=True):
                if len(newest_first) >= count:
                    break
                if max_bytes is not None:
                    size = _text_bytes(line)
                    if newest_first and total + size > max_bytes:
                        return newest_first[::-1]
                    total += size
                newest_first.append((seq, ts, st, line))
            before = first
            if len(newest_first) >= count:
                break
        if len(chunks) < fetch:
            break
        fetch = min(fetch * 2, CHUNKS_PER_READ)
    return newest_first[::-1]


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
        session.execute(delete(ArtifactRow).where(ArtifactRow.agent_pk.in_(pks)))
        session.execute(delete(AgentFilesRow).where(AgentFilesRow.agent_pk.in_(pks)))
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


def purge_agents_finished_before_with_pks(*, session: Session, cutoff: float, limit: int = 500) -> list[int]:
    """Like purge_agents_finished_before, answering the purged agents' pks (their blobs go next)."""
    pks = list(
        session.scalars(
            select(AgentRow.pk).where(AgentRow.status.in_(TERMINAL), AgentRow.finished_at < cutoff).limit(limit)
        )
    )
    if pks:
        purge_agents_finished_before(session=session, cutoff=cutoff, limit=limit)
    return pks


# --- files in and out (SPEC §9) ---------------------------------------------------------------


def insert_upload(*, session: Session, **values: Any) -> UploadRow:
    row = UploadRow(**values)
    session.add(row)
    session.flush()
    return row


def use_upload(*, session: Session, upload_id: str, key_id: str, now: float) -> UploadRow | None:
    """The key's unexpired upload, marked used (it is kept with the agent from now on); else None."""
    row = session.get(UploadRow, upload_id)
    if row is None or row.key_id != key_id or (row.used_at is None and row.expires_at <= now):
        return None
    if row.used_at is None:
        row.used_at = now
    return row


def get_upload(*, session: Session, upload_id: str) -> UploadRow | None:
    return session.get(UploadRow, upload_id)


def purge_unused_uploads(*, session: Session, now: float, limit: int = 500) -> list[str]:
    """Delete the uploads no agent used that expired; answers their ids (their blobs go next)."""
    ids = list(
        session.scalars(
            select(UploadRow.id).where(UploadRow.used_at.is_(None), UploadRow.expires_at <= now).limit(limit)
        )
    )
    if ids:
        session.execute(delete(UploadRow).where(UploadRow.id.in_(ids)))
    return ids


def purge_used_uploads_of_gone_agents(*, session: Session, limit: int = 500) -> list[str]:
    """Uploads an agent used, once no agent that refers to them is left; answers their ids."""
    referenced = select(AgentFilesRow.workspace).where(AgentFilesRow.workspace.is_not(None))
    ids = list(
        session.scalars(
            select(UploadRow.id).where(UploadRow.used_at.is_not(None), UploadRow.id.not_in(referenced)).limit(limit)
        )
    )
    if ids:
        session.execute(delete(UploadRow).where(UploadRow.id.in_(ids)))
    return ids


def insert_agent_files(*, session: Session, agent_pk: int, workspace: str | None, artifacts: list[str]) -> None:
    session.add(AgentFilesRow(agent_pk=agent_pk, workspace=workspace, artifacts=list(artifacts), collected=False))
    session.flush()


def get_agent_files(*, session: Session, agent_pk: int) -> AgentFilesRow | None:
    return session.get(AgentFilesRow, agent_pk)


def store_artifacts(
    *, session: Session, agent_pk: int, kept: Sequence[tuple[str, int, str]], dropped: Sequence[tuple[str, int]]
) -> bool:
    """Record an agent's collected artifacts once (kept: path, bytes, sha256 in blob order; dropped:
    path, bytes); False (nothing written) when they were already recorded."""
    files = session.get(AgentFilesRow, agent_pk, with_for_update=True)
    if files is None or files.collected:
        return False
    seq = 0
    for path, nbytes, sha in kept:
        session.add(ArtifactRow(agent_pk=agent_pk, seq=seq, path=path, bytes=nbytes, sha256=sha, dropped=False))
        seq += 1
    for path, nbytes in dropped:
        session.add(ArtifactRow(agent_pk=agent_pk, seq=seq, path=path, bytes=nbytes, sha256=None, dropped=True))
        seq += 1
    files.collected = True
    return True


def list_artifacts(*, session: Session, agent_pk: int) -> list[ArtifactRow]:
    return list(session.scalars(select(ArtifactRow).where(ArtifactRow.agent_pk == agent_pk).order_by(ArtifactRow.seq)))


def get_artifact(*, session: Session, agent_pk: int, path: str) -> ArtifactRow | None:
    q = select(ArtifactRow).where(
        ArtifactRow.agent_pk == agent_pk, ArtifactRow.path == path, ArtifactRow.dropped.is_(False)
    )
    return session.scalars(q).first()


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


# --- the model gateway ----------------------------------------------------------------------------

GATEWAY_LIVE = ("starting", "running")


def get_gateway_grant(*, session: Session, token_hash: str) -> tuple[int, str, str, str, int, int, int] | None:
    """(pk, id, model, status, token_budget, tokens used, tokens reserved) of a gateway token's agent."""
    q = select(
        AgentRow.pk,
        AgentRow.id,
        AgentRow.model,
        AgentRow.status,
        AgentRow.token_budget,
        AgentRow.tokens_prompt + AgentRow.tokens_completion,
        AgentRow.tokens_reserved,
    ).where(AgentRow.gateway_token_hash == token_hash)
    row = session.execute(q).first()
    return None if row is None else (row[0], row[1], row[2], row[3], int(row[4]), int(row[5] or 0), int(row[6] or 0))


def get_token_account(*, session: Session, pk: int) -> tuple[str, int, int, int] | None:
    """(status, token_budget, tokens used, tokens reserved) of an agent."""
    used = AgentRow.tokens_prompt + AgentRow.tokens_completion
    q = select(AgentRow.status, AgentRow.token_budget, used, AgentRow.tokens_reserved).where(AgentRow.pk == pk)
    row = session.execute(q).first()
    return None if row is None else (row[0], int(row[1]), int(row[2] or 0), int(row[3] or 0))


def reserve_tokens(*, session: Session, pk: int, tokens: int) -> bool:
    """Hold `tokens` of a live agent's budget for a model call, only if used + reserved stays within
    the budget: one conditional UPDATE, so concurrent reservations can never overshoot it."""
    q = (
        update(AgentRow)
        .where(
            AgentRow.pk == pk,
            AgentRow.status.in_(GATEWAY_LIVE),
            AgentRow.tokens_prompt + AgentRow.tokens_completion + AgentRow.tokens_reserved + tokens
            <= AgentRow.token_budget,
        )
        .values(tokens_reserved=AgentRow.tokens_reserved + tokens)
    )
    return bool(session.execute(q).rowcount)  # type: ignore[attr-defined]


def settle_tokens(
    *, session: Session, pk: int, reserved: int, prompt_tokens: int, completion_tokens: int, calls: int
) -> None:
    """Release a call's reservation and add what it really used (nothing, for a call that failed)."""
    left = AgentRow.tokens_reserved - reserved
    session.execute(
        update(AgentRow)
        .where(AgentRow.pk == pk)
        .values(
            tokens_reserved=case((left < 0, 0), else_=left),
            tokens_prompt=AgentRow.tokens_prompt + prompt_tokens,
            tokens_completion=AgentRow.tokens_completion + completion_tokens,
            model_calls=AgentRow.model_calls + calls,
        )
    )


def clear_token_reservations(*, session: Session) -> int:
    """Drop every reservation: at the gateway's start no call of a previous run is in flight."""
    q = update(AgentRow).where(AgentRow.tokens_reserved != 0).values(tokens_reserved=0)
    return int(session.execute(q).rowcount)  # type: ignore[attr-defined]


# --- the event log (SPEC §11) ------------------------------------------------------------------

# Key of the PostgreSQL advisory lock that serialises appends to the event log: a sequence hands
# out ids in one order and transactions may commit in another, and a reader that saw id 7 before 6
# committed would skip 6 for good. Held to the end of the appending transaction.
EVENT_LOG_LOCK = 0x61666576


class CursorMoved(Exception):
    """Another dispatcher (replica) moved the event cursor first; this transaction is void."""


def append_event(*, session: Session, type: str, agent_id: str, key_id: str, agent: str, at: float) -> int:
    """Add an event (`agent`: the agent's wire JSON) to the log in the caller's transaction; its id."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(sql("SELECT pg_advisory_xact_lock(:k)"), {"k": EVENT_LOG_LOCK})
    row = EventRow(type=type, agent_id=agent_id, key_id=key_id, agent=agent, created_at=at)
    session.add(row)
    session.flush()
    return row.id


def transition_agent(
    *,
    session: Session,
    pk: int,
    only_if_status: Iterable[str] | None,
    event: str | None,
    document: Callable[[AgentRow], str],
    at: float,
    **values: Any,
) -> bool:
    """`update_agent`'s compare-and-set; when it changed the row and `event` is set, the event
    (with `document(row)`: the agent's wire JSON after the change) joins the log in the same
    transaction. So every status change that has an event has exactly one, and no event tells of
    a change that did not happen."""
    changed = update_agent(session=session, pk=pk, only_if_status=only_if_status, **values)
    if changed and event is not None:
        row = session.get(AgentRow, pk, populate_existing=True)
        assert row is not None
        append_event(session=session, type=event, agent_id=row.id, key_id=row.key_id, agent=document(row), at=at)
    return changed


def list_events(
    *,
    session: Session,
    after: int,
    limit: int,
    key_id: str | None = None,
    agent_id: str | None = None,
    types: Sequence[str] | None = None,
) -> list[EventRow]:
    """Events with id > after, oldest first; key_id None: every key's (admin)."""
    q = select(EventRow).where(EventRow.id > after).order_by(EventRow.id).limit(limit)
    if key_id is not None:
        q = q.where(EventRow.key_id == key_id)
    if agent_id is not None:
        q = q.where(EventRow.agent_id == agent_id)
    if types:
        q = q.where(EventRow.type.in_(tuple(types)))
    return list(session.scalars(q))


def last_event_id(*, session: Session) -> int:
    return int(session.scalar(select(func.max(EventRow.id))) or 0)


def purge_events_before(*, session: Session, cutoff: float, limit: int = 1000) -> int:
    """Delete events older than cutoff, with their webhook deliveries and attempts; how many."""
    ids = list(session.scalars(select(EventRow.id).where(EventRow.created_at < cutoff).limit(limit)))
    if ids:
        deliveries = select(DeliveryRow.id).where(DeliveryRow.event_id.in_(ids))
        session.execute(delete(DeliveryAttemptRow).where(DeliveryAttemptRow.delivery_id.in_(deliveries)))
        session.execute(delete(DeliveryRow).where(DeliveryRow.event_id.in_(ids)))
        session.execute(delete(EventRow).where(EventRow.id.in_(ids)))
    return len(ids)


# --- webhooks -----------------------------------------------------------------------------------


def insert_webhook(*, session: Session, **values: Any) -> WebhookRow:
    """A new webhook; it receives the events appended after this transaction's view of the log."""
    row = WebhookRow(after_event_id=last_event_id(session=session), consecutive_failures=0, **values)
    session.add(row)
    session.flush()
    return row


def get_webhook(*, session: Session, webhook_id: str, key_id: str | None = None) -> WebhookRow | None:
    """The webhook, or None; with key_id, only when that key owns it."""
    q = select(WebhookRow).where(WebhookRow.id == webhook_id)
    if key_id is not None:
        q = q.where(WebhookRow.key_id == key_id)
    return session.scalars(q).first()


def list_webhooks(*, session: Session, key_id: str | None) -> list[WebhookRow]:
    q = select(WebhookRow).order_by(WebhookRow.created_at)
    if key_id is not None:
        q = q.where(WebhookRow.key_id == key_id)
    return list(session.scalars(q))


def delete_webhook(*, session: Session, webhook_id: str, key_id: str | None = None) -> WebhookRow | None:
    """Delete the webhook with its deliveries and their attempts; the row, or None if not found."""
    row = get_webhook(session=session, webhook_id=webhook_id, key_id=key_id)
    if row is not None:
        deliveries = select(DeliveryRow.id).where(DeliveryRow.webhook_id == webhook_id)
        session.execute(delete(DeliveryAttemptRow).where(DeliveryAttemptRow.delivery_id.in_(deliveries)))
        session.execute(delete(DeliveryRow).where(DeliveryRow.webhook_id == webhook_id))
        session.delete(row)
    return row


def _wants(hook: WebhookRow, event: EventRow, agent_metadata: Callable[[], dict[str, Any]]) -> bool:
    if event.id <= hook.after_event_id or event.type not in hook.events:
        return False
    if not hook.all_keys and hook.key_id != event.key_id:
        return False
    if hook.meta:
        meta = agent_metadata()
        return all(k in meta and meta[k] == v for k, v in hook.meta.items())
    return True


def dispatch_events(*, session: Session, now: float, agent_metadata: Callable[[str], dict[str, Any]],
                    cursor: str = "webhooks", limit: int = 500) -> tuple[int, int]:  # fmt: skip
    """Fan the events after the stored cursor out to the webhooks that want them: one `pending`
    delivery per (event, webhook), and the cursor moved past them, in one transaction. The cursor
    moves by compare-and-set, so two replicas never fan one event out twice (the loser's
    transaction fails and is rolled back). `agent_metadata(agent_json)` reads an event's agent
    metadata for webhooks with a metadata filter. Returns (events read, deliveries made)."""
    position = session.get(CursorRow, cursor)
    if position is None:
        position = CursorRow(name=cursor, value=0)
        session.add(position)
        session.flush()
    start = position.value
    events = list(session.scalars(select(EventRow).where(EventRow.id > start).order_by(EventRow.id).limit(limit)))
    if not events:
        return 0, 0
    live_keys = select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_(None))
    hooks = list(session.scalars(select(WebhookRow).where(WebhookRow.key_id.in_(live_keys))))
    made = 0
    for ev in events:
        meta: dict[str, Any] | None = None

        def metadata(ev: EventRow = ev) -> dict[str, Any]:
            nonlocal meta
            if meta is None:
                meta = agent_metadata(ev.agent)
            return meta

        for hook in hooks:
            if _wants(hook, ev, metadata):
                session.add(
                    DeliveryRow(
                        webhook_id=hook.id,
                        event_id=ev.id,
                        status=DeliveryStatus.PENDING,
                        attempts=0,
                        retry_index=0,
                        next_attempt_at=now,
                        created_at=now,
                    )
                )
                made += 1
    moved = session.execute(
        update(CursorRow).where(CursorRow.name == cursor, CursorRow.value == start).values(value=events[-1].id)
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        raise CursorMoved(cursor)
    return len(events), made


def claim_webhook_deliveries(
    *, session: Session, now: float, lease_until: float, token: str, max_webhooks: int, batch: int,
    circuit_failures: int,
) -> list[tuple[WebhookRow, list[tuple[DeliveryRow, EventRow]]]]:  # fmt: skip
    """Lease up to `max_webhooks` webhooks that have due deliveries, nobody else sends to and whose
    circuit is not open, each with its due deliveries in event order (up to `batch`; a single probe
    when its circuit is half-open). The lease (`token`, until `lease_until`) makes this worker the
    only sender to each of them, across replicas too."""
    free = or_(WebhookRow.lease_until.is_(None), WebhookRow.lease_until < now)
    closed = or_(WebhookRow.circuit_open_until.is_(None), WebhookRow.circuit_open_until <= now)
    candidates = session.execute(
        select(DeliveryRow.webhook_id)
        .join(WebhookRow, WebhookRow.id == DeliveryRow.webhook_id)
        .where(DeliveryRow.status.in_(UNDELIVERED), DeliveryRow.next_attempt_at <= now, free, closed)
        .group_by(DeliveryRow.webhook_id)
        .order_by(func.min(DeliveryRow.next_attempt_at))
        .limit(max_webhooks)
    ).scalars()
    claimed: list[tuple[WebhookRow, list[tuple[DeliveryRow, EventRow]]]] = []
    for webhook_id in list(candidates):
        got = session.execute(
            update(WebhookRow)
            .where(WebhookRow.id == webhook_id, free, closed)
            .values(lease_until=lease_until, lease_token=token)
        )
        if not got.rowcount:  # type: ignore[attr-defined]
            continue
        hook = session.get(WebhookRow, webhook_id, populate_existing=True)
        assert hook is not None
        half_open = hook.consecutive_failures >= circuit_failures
        rows = session.execute(
            select(DeliveryRow, EventRow)
            .join(EventRow, EventRow.id == DeliveryRow.event_id)
            .where(
                DeliveryRow.webhook_id == webhook_id,
                DeliveryRow.status.in_(UNDELIVERED),
                DeliveryRow.next_attempt_at <= now,
            )
            .order_by(DeliveryRow.event_id)
            .limit(1 if half_open else batch)
        ).all()
        claimed.append((hook, [(d, e) for d, e in rows]))
    return claimed


@dataclass(frozen=True)
class AttemptRecord:
    """One attempt and what it decided for its delivery (see `record_delivery_attempts`)."""

    delivery_id: int
    at: float
    duration: float
    http_status: int | None
    error: str | None
    status: str
    retry_index: int
    next_attempt_at: float


def record_delivery_attempts(
    *,
    session: Session,
    webhook_id: str,
    token: str,
    attempts: Sequence[AttemptRecord],
    consecutive_failures: int,
    circuit_open_until: float | None,
    lease_until: float | None,
) -> bool:
    """Record attempts to one webhook and their consequences (each delivery's status and next time,
    the webhook's circuit), renewing the lease until `lease_until` (None: releasing it), in one
    transaction; False when the lease was lost (another worker took the webhook over)."""
    for a in attempts:
        session.add(
            DeliveryAttemptRow(
                delivery_id=a.delivery_id, at=a.at, duration=a.duration, http_status=a.http_status,
                error=a.error and a.error[:200],
            )
        )  # fmt: skip
        done = a.status in (DeliveryStatus.SUCCEEDED, DeliveryStatus.DEAD)
        session.execute(
            update(DeliveryRow)
            .where(DeliveryRow.id == a.delivery_id, DeliveryRow.status.in_(UNDELIVERED))
            .values(
                status=a.status,
                attempts=DeliveryRow.attempts + 1,
                retry_index=a.retry_index,
                next_attempt_at=a.next_attempt_at,
                finished_at=a.at + a.duration if done else None,
            )
        )
    held = session.execute(
        update(WebhookRow)
        .where(WebhookRow.id == webhook_id, WebhookRow.lease_token == token)
        .values(
            consecutive_failures=consecutive_failures,
            circuit_open_until=circuit_open_until,
            lease_until=lease_until,
            lease_token=token if lease_until is not None else None,
        )
    )
    return bool(held.rowcount)  # type: ignore[attr-defined]


def release_webhook(*, session: Session, webhook_id: str, token: str) -> None:
    session.execute(
        update(WebhookRow)
        .where(WebhookRow.id == webhook_id, WebhookRow.lease_token == token)
        .values(lease_until=None, lease_token=None)
    )


def next_webhook_due(*, session: Session) -> float | None:
    """When the next delivery could be sent: per webhook, its earliest due delivery, but not
    before its circuit closes or another worker's lease runs out (wakes the deliverer)."""
    rows = session.execute(
        select(func.min(DeliveryRow.next_attempt_at), WebhookRow.circuit_open_until, WebhookRow.lease_until)
        .join(WebhookRow, WebhookRow.id == DeliveryRow.webhook_id)
        .where(DeliveryRow.status.in_(UNDELIVERED))
        .group_by(DeliveryRow.webhook_id, WebhookRow.circuit_open_until, WebhookRow.lease_until)
    ).all()
    return min((max(due, circuit or 0.0, lease or 0.0) for due, circuit, lease in rows), default=None)


def get_delivery(*, session: Session, webhook_id: str, delivery_id: int) -> DeliveryRow | None:
    q = select(DeliveryRow).where(DeliveryRow.id == delivery_id, DeliveryRow.webhook_id == webhook_id)
    return session.scalars(q).first()


def list_deliveries(
    *, session: Session, webhook_id: str, status: str | None, limit: int, before_id: int | None
) -> list[tuple[DeliveryRow, str | None, str | None, list[DeliveryAttemptRow]]]:
    """A webhook's deliveries, newest first: (delivery, event type, agent id, attempts oldest first)."""
    q = (
        select(DeliveryRow, EventRow.type, EventRow.agent_id)
        .outerjoin(EventRow, EventRow.id == DeliveryRow.event_id)
        .where(DeliveryRow.webhook_id == webhook_id)
        .order_by(DeliveryRow.id.desc())
        .limit(limit)
    )
    if status is not None:
        q = q.where(DeliveryRow.status == status)
    if before_id is not None:
        q = q.where(DeliveryRow.id < before_id)
    rows = session.execute(q).all()
    attempts: dict[int, list[DeliveryAttemptRow]] = {d.id: [] for d, _, _ in rows}
    if attempts:
        for a in session.scalars(
            select(DeliveryAttemptRow)
            .where(DeliveryAttemptRow.delivery_id.in_(list(attempts)))
            .order_by(DeliveryAttemptRow.id)
        ):
            attempts[a.delivery_id].append(a)
    return [(d, etype, agent_id, attempts[d.id]) for d, etype, agent_id in rows]


def requeue_delivery(*, session: Session, webhook_id: str, delivery_id: int, now: float, retry_index: int) -> bool:
    """Send a dead (or failed) delivery again now, past an open circuit (a manual retry is the
    probe); False if it is not dead or failed."""
    moved = session.execute(
        update(DeliveryRow)
        .where(
            DeliveryRow.id == delivery_id,
            DeliveryRow.webhook_id == webhook_id,
            DeliveryRow.status.in_((DeliveryStatus.DEAD, DeliveryStatus.FAILED)),
        )
        .values(status=DeliveryStatus.PENDING, next_attempt_at=now, retry_index=retry_index, finished_at=None)
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        return False
    session.execute(
        update(WebhookRow)
        .where(WebhookRow.id == webhook_id, WebhookRow.circuit_open_until > now)
        .values(circuit_open_until=now)
    )
    return True


def webhook_health(*, session: Session, circuit_failures: int) -> tuple[int, int]:
    """(dead deliveries stored, webhooks whose circuit is open or half-open)."""
    dead = session.scalar(
        select(func.count()).select_from(DeliveryRow).where(DeliveryRow.status == DeliveryStatus.DEAD)
    )
    tripped = session.scalar(
        select(func.count()).select_from(WebhookRow).where(WebhookRow.consecutive_failures >= circuit_failures)
    )
    return int(dead or 0), int(tripped or 0)


# --- the server's own keys --------------------------------------------------------------------


def get_server_key(*, session: Session, name: str) -> str | None:
    row = session.get(ServerKeyRow, name)
    return None if row is None else row.secret


def add_server_key(*, session: Session, name: str, secret: str, created_at: float) -> None:
    """Insert a key; raises IntegrityError when another replica made it first."""
    session.add(ServerKeyRow(name=name, secret=secret, created_at=created_at))
    session.flush()


# -- the queue and the cluster's capacity (SPEC §10) ----------------------------------------------

CAPACITY_CURSOR = "capacity"


def lock_capacity(*, session: Session) -> None:
    """Serialise everything that hands out the cluster's slots (admissions, the dispatcher of every
    replica): a write to the capacity row takes its row lock (PG) or the database's (SQLite) before
    the counts that follow are read."""
    session.execute(update(CursorRow).where(CursorRow.name == CAPACITY_CURSOR).values(value=CursorRow.value + 1))


def count_cluster_active(*, session: Session) -> int:
    """Agents holding a slot: pending, starting and running, of every key."""
    return int(session.scalar(select(func.count()).select_from(AgentRow).where(AgentRow.status.in_(ACTIVE))) or 0)


def count_queued(*, session: Session, key_id: str | None = None) -> int:
    q = select(func.count()).select_from(AgentRow).where(AgentRow.status == "queued")
    if key_id is not None:
        q = q.where(AgentRow.key_id == key_id)
    return int(session.scalar(q) or 0)


def next_queue_round(*, session: Session, key_id: str) -> int:
    """The round a new queued agent of this key joins: after the key's last queued agent, and never
    before the queue's head round (a key that had nothing queued joins the round being served)."""
    queued = AgentRow.status == "queued"
    head = session.scalar(select(func.min(AgentRow.queue_round)).where(queued))
    last = session.scalar(select(func.max(AgentRow.queue_round)).where(queued, AgentRow.key_id == key_id))
    return max(int(head or 0), int(last) + 1 if last is not None else 0)


def queue_order(*, session: Session) -> list[tuple[int, str, int]]:
    """(pk, key_id, round) of every queued agent in the order slots go to them: round, then arrival.
    One statement, so one consistent snapshot of the queue."""
    q = select(AgentRow.pk, AgentRow.key_id, AgentRow.queue_round).where(AgentRow.status == "queued")
    return [(pk, key, rnd or 0) for pk, key, rnd in session.execute(q.order_by(AgentRow.queue_round, AgentRow.pk))]


def claim_queued_agents(
    *, session: Session, max_running: int, now: float, owner: str | None = None, scan: int = 1000
) -> list[AgentRow]:
    """Give free slots to queued agents, in queue order, skipping those whose key runs its
    `max_concurrent_agents` already: each moves `queued → pending` by compare-and-set, so no agent
    is started twice and, under the capacity lock, no slot is given twice. The claimed rows, now
    owned by `owner` (the replica that launches them)."""
    lock_capacity(session=session)
    free = max_running - count_cluster_active(session=session)
    if free <= 0:
        return []
    waiting = session.execute(
        select(AgentRow.pk, AgentRow.key_id)
        .where(AgentRow.status == "queued", or_(AgentRow.queue_deadline.is_(None), AgentRow.queue_deadline > now))
        .order_by(AgentRow.queue_round, AgentRow.pk)
        .limit(scan)
    ).all()
    if not waiting:
        return []
    keys = {key for _pk, key in waiting}
    limits = dict(
        session.execute(select(ApiKeyRow.id, ApiKeyRow.max_concurrent_agents).where(ApiKeyRow.id.in_(keys))).all()
    )
    running = dict(
        session.execute(
            select(AgentRow.key_id, func.count())
            .where(AgentRow.status.in_(ACTIVE), AgentRow.key_id.in_(keys))
            .group_by(AgentRow.key_id)
        ).all()
    )
    claimed: list[int] = []
    for pk, key in waiting:
        if len(claimed) >= free:
            break
        if running.get(key, 0) >= limits.get(key, 0):
            continue
        if update_agent(
            session=session, pk=pk, only_if_status=("queued",), status="pending", dequeued_at=now, owner=owner
        ):
            claimed.append(pk)
            running[key] = running.get(key, 0) + 1
    if not claimed:
        return []
    return list(session.scalars(select(AgentRow).where(AgentRow.pk.in_(claimed)).order_by(AgentRow.pk)))


def overdue_queued_agents(*, session: Session, now: float) -> list[int]:
    """pks of queued agents past their queue deadline."""
    q = select(AgentRow.pk).where(AgentRow.status == "queued", AgentRow.queue_deadline <= now)
    return list(session.scalars(q.order_by(AgentRow.queue_deadline)))


def next_queue_deadline(*, session: Session) -> float | None:
    return session.scalar(select(func.min(AgentRow.queue_deadline)).where(AgentRow.status == "queued"))


def recent_ends(*, session: Session, limit: int = 20) -> list[tuple[float, float, float]]:
    """(finished_at, launch seconds, slot seconds) of the last agents that ran and finished, newest
    first: the queue's pace. Both durations count from when the agent got its slot (left the queue,
    or was admitted): the launch to running, the slot to its end."""
    q = (
        select(AgentRow.finished_at, AgentRow.started_at, AgentRow.dequeued_at, AgentRow.created_at)
        .where(AgentRow.finished_at.is_not(None), AgentRow.started_at.is_not(None))
        .order_by(AgentRow.finished_at.desc())
        .limit(limit)
    )
    out = []
    for end, start, dequeued, created in session.execute(q):
        if end is not None and start is not None:
            slot = float(dequeued or created)
            out.append((float(end), max(0.0, float(start) - slot), max(0.0, float(end) - slot)))
    return out


def count_agents_by_key(*, session: Session) -> dict[str, tuple[int, int]]:
    """key_id → (agents holding a slot, agents queued)."""
    q = (
        select(AgentRow.key_id, AgentRow.status, func.count())
        .where(AgentRow.status.in_((*ACTIVE, "queued")))
        .group_by(AgentRow.key_id, AgentRow.status)
    )
    out: dict[str, tuple[int, int]] = {}
    for key, status, n in session.execute(q):
        active, queued = out.get(key, (0, 0))
        out[key] = (active, queued + n) if status == "queued" else (active + n, queued)
    return out


# --- the dashboard's sessions and usage -------------------------------------------------------------


def insert_ui_session(
    *, session: Session, token_hash: str, key_id: str, csrf: str, now: float, expires_at: float
) -> None:
    """A new sign-in; expired sessions are swept on the way (there are few, one per sign-in)."""
    session.execute(delete(UiSessionRow).where(UiSessionRow.expires_at < now))
    session.add(UiSessionRow(token_hash=token_hash, key_id=key_id, csrf=csrf, created_at=now, expires_at=expires_at))


def get_ui_session(*, session: Session, token_hash: str, now: float) -> tuple[UiSessionRow, ApiKeyRow] | None:
    """The live session and its key (revoked or not: the caller decides), or None."""
    q = (
        select(UiSessionRow, ApiKeyRow)
        .join(ApiKeyRow, ApiKeyRow.id == UiSessionRow.key_id)
        .where(UiSessionRow.token_hash == token_hash, UiSessionRow.expires_at > now)
    )
    found = session.execute(q).first()
    return (found[0], found[1]) if found is not None else None


def delete_ui_session(*, session: Session, token_hash: str) -> None:
    session.execute(delete(UiSessionRow).where(UiSessionRow.token_hash == token_hash))


def delete_ui_sessions_of_key(*, session: Session, key_id: str) -> None:
    session.execute(delete(UiSessionRow).where(UiSessionRow.key_id == key_id))


def usage_by_key(*, session: Session, since: float, bucket_seconds: int) -> list[tuple[str, int, int, int, int]]:
    """(key id, bucket start, agents, failures, tokens) of agents created since `since`, per key and
    time bucket (a whole multiple of `bucket_seconds` since the epoch): the dashboard's usage charts."""
    bucket = (cast(AgentRow.created_at / bucket_seconds, BigInteger)) * bucket_seconds
    q = (
        select(
            AgentRow.key_id,
            bucket.label("bucket"),
            func.count(),
            func.sum(case((AgentRow.status == "failed", 1), else_=0)),
            func.sum(AgentRow.tokens_prompt + AgentRow.tokens_completion),
        )
        .where(AgentRow.created_at >= since)
        .group_by(AgentRow.key_id, "bucket")
        .order_by(AgentRow.key_id, "bucket")
    )
    return [(k, int(b), int(n), int(f or 0), int(t or 0)) for k, b, n, f, t in session.execute(q)]


def count_agents_by_status(*, session: Session, key_id: str | None) -> dict[str, int]:
    """{status: count} over the active statuses (what the fleet is doing now); key_id None: every key's."""
    q = select(AgentRow.status, func.count()).where(AgentRow.status.in_(ACTIVE)).group_by(AgentRow.status)
    if key_id is not None:
        q = q.where(AgentRow.key_id == key_id)
    return {status: int(n) for status, n in session.execute(q)}

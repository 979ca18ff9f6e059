"""Queries, verb-first with keyword-only arguments. Each takes the session its caller opened."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any

from sqlalchemy import String, case, cast, delete, exists, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.elements import ColumnElement

from agentfactory.store.tables import ACTIVE, STDERR, TERMINAL, AgentRow, ApiKeyRow, LogChunkRow


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
) -> list[AgentRow]:
    """Newest first; key_id None lists every key's agents (admin). `metadata` pairs all must match
    (see `metadata_matches`)."""
    q = select(AgentRow).order_by(AgentRow.pk.desc()).limit(limit)
    if key_id is not None:
        q = q.where(AgentRow.key_id == key_id)
    if status is not None:
        q = q.where(AgentRow.status == status)
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


def list_agents_in(*, session: Session, statuses: Sequence[str]) -> list[AgentRow]:
    return list(session.scalars(select(AgentRow).where(AgentRow.status.in_(statuses)).order_by(AgentRow.pk)))


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


def update_agent(*, session: Session, pk: int, only_if_status: Iterable[str] | None = None, **values: Any) -> bool:
    """Set columns; with only_if_status, only while the agent is in one of those statuses.

    Returns whether a row changed: the compare-and-set every state transition goes through.
    """
    q = update(AgentRow).where(AgentRow.pk == pk)
    if only_if_status is not None:
        q = q.where(AgentRow.status.in_(tuple(only_if_status)))
    return bool(session.execute(q.values(**values)).rowcount)  # type: ignore[attr-defined]


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
) -> None:
    """Insert log chunk rows (agent_pk, last_seq, first_seq, ts, stream, text) and record each
    agent's resume position (stdout_consumed, stderr_consumed, dropped lines, dropped bytes) and
    first output time, in the caller's one transaction. The rows go through the driver's
    executemany: a flood's chunks cost no ORM objects."""
    conn = session.connection()
    if rows:
        mark = "?" if conn.dialect.paramstyle == "qmark" else "%s"
        conn.exec_driver_sql(
            "INSERT INTO log_chunks (agent_pk, last_seq, first_seq, ts, stream, text) VALUES "
            f"({', '.join([mark] * 6)})",
            list(rows),
        )
    for pk, (stdout_consumed, stderr_consumed, dropped_lines, dropped_bytes) in positions.items():
        conn.execute(
            update(AgentRow)
            .where(AgentRow.pk == pk)
            .values(
                stdout_consumed=stdout_consumed,
                stderr_consumed=stderr_consumed,
                log_dropped_lines=dropped_lines,
                log_dropped_bytes=dropped_bytes,
            )
        )
    for pk, ts in first_output_at.items():
        conn.execute(
            update(AgentRow).where(AgentRow.pk == pk, AgentRow.first_output_at.is_(None)).values(first_output_at=ts)
        )


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
        session.execute(delete(AgentRow).where(AgentRow.pk.in_(pks)))
    return len(pks)


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
                max_streams=BOOTSTRAP_MAX_STREAMS,
                created_at=now,
                lock_version=0,
            )
        )
    else:
        row.key_hash, row.prefix, row.revoked_at = digest, key[:9], None
        row.max_streams = BOOTSTRAP_MAX_STREAMS

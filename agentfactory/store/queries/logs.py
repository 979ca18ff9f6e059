"""Captured output: log chunks stored in batches with each agent's resume position, read back as
pages, tails and the seal, and purged with their agent by retention."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Iterator, Sequence
from itertools import repeat
from typing import Any

from sqlalchemy import delete, func, select, update
from sqlalchemy.orm import Session

from agentfactory.store.tables import (
    STDERR,
    TERMINAL,
    AgentFilesRow,
    AgentRow,
    ArtifactRow,
    LogChunkRow,
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
        values: dict[str, Any] = {
            "stdout_consumed": stdout_consumed,
            "stderr_consumed": stderr_consumed,
            "log_dropped_lines": dropped_lines,
            "log_dropped_bytes": dropped_bytes,
        }
        if pk in first_output_at:  # kept once set: the first batch's time
            values["first_output_at"] = func.coalesce(AgentRow.first_output_at, first_output_at[pk])
        moved = conn.execute(q.values(**values))
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

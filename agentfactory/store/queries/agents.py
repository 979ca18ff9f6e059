"""Agents: reads, the keyset-paged list with its metadata selector, inserts, and the compare-and-set
every status change goes through."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from typing import Any

from sqlalchemy import String, case, cast, delete, exists, func, select, update
from sqlalchemy.orm import Session
from sqlalchemy.sql.dml import Update
from sqlalchemy.sql.elements import ColumnElement

from agentfactory.store.tables import (
    ACTIVE,
    AgentRow,
    LogChunkRow,
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
    q = agent_update(pk, only_if_status, only_if_owner).values(**values)
    return bool(session.execute(q).rowcount)  # type: ignore[attr-defined]


def agent_update(pk: int, only_if_status: Iterable[str] | None, only_if_owner: str | None = None) -> Update:
    """The UPDATE of one agent, guarded by its status and owner when those are given."""
    q = update(AgentRow).where(AgentRow.pk == pk)
    if only_if_status is not None:
        q = q.where(AgentRow.status.in_(tuple(only_if_status)))
    if only_if_owner is not None:
        q = q.where(AgentRow.owner == only_if_owner)
    return q


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

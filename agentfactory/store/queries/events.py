"""The event log (SPEC §11): the outbox of status changes, read after a cursor, purged by age."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import Any

from sqlalchemy import delete, func, select
from sqlalchemy import text as sql
from sqlalchemy.orm import Session

from agentfactory.store.queries.agents import agent_update
from agentfactory.store.tables import (
    AgentFilesRow,
    AgentRow,
    DeliveryAttemptRow,
    DeliveryRow,
    EventRow,
)
from agentfactory.vocabulary import EventType

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
    only_if_owner: str | None = None,
    **values: Any,
) -> AgentRow | None:
    """`update_agent`'s compare-and-set; when it changed the row and `event` is set, the event
    (with `document(row)`: the agent's wire JSON after the change) joins the log in the same
    transaction. So every status change that has an event has exactly one, and no event tells of
    a change that did not happen. Returns the row as the change left it (None: nothing changed),
    so the caller need not read it again. An agent that asked for artifacts also gets `agent.artifacts_ready`
    with its `agent.finished`: its runtime hands them back before it exits, so when the agent is
    finished their collection is over (SPEC §9: the manifest is `complete`)."""
    # One statement: the row comes back from the UPDATE (RETURNING: SQLite ≥ 3.35, PostgreSQL).
    changed = agent_update(pk, only_if_status, only_if_owner).values(**values).returning(AgentRow)
    row = session.scalars(changed, execution_options={"populate_existing": True}).one_or_none()
    if row is None:
        return None
    if event is not None:
        doc = document(row)
        append_event(session=session, type=event, agent_id=row.id, key_id=row.key_id, agent=doc, at=at)
        if event == EventType.FINISHED:
            files = session.get(AgentFilesRow, pk)
            if files is not None and files.artifacts:
                ready = EventType.ARTIFACTS_READY
                append_event(session=session, type=ready, agent_id=row.id, key_id=row.key_id, agent=doc, at=at)
    return row


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

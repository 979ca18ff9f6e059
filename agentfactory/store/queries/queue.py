"""Capacity and the queue (SPEC §10): the cluster's slots counted under one lock, queued agents
claimed fairly by compare-and-set, the pace of recent ends for the ETA."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from sqlalchemy import func, or_, select, update
from sqlalchemy.orm import Session

from agentfactory.store.queries.agents import update_agent
from agentfactory.store.queries.events import transition_agent
from agentfactory.store.tables import (
    ACTIVE,
    AgentRow,
    ApiKeyRow,
    CursorRow,
)
from agentfactory.vocabulary import EventType

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


@dataclass(frozen=True)
class QueueSnapshot:
    """The queue as one statement saw it: `order` is (pk, key_id, round) of every queued agent in the
    order slots go to them (round, then arrival); `active_keys` the keys with an agent holding a slot."""

    order: list[tuple[int, str, int]]
    active_keys: frozenset[str]


def queue_order(*, session: Session) -> QueueSnapshot:
    """The queued agents and the keys holding slots, read in one statement: one consistent snapshot."""
    q = select(AgentRow.pk, AgentRow.key_id, AgentRow.queue_round, AgentRow.status).where(
        AgentRow.status.in_(("queued", *ACTIVE))
    )
    order, active = [], set()
    for pk, key, rnd, status in session.execute(q.order_by(AgentRow.queue_round, AgentRow.pk)):
        if status == "queued":
            order.append((pk, key, rnd or 0))
        else:
            active.add(key)
    return QueueSnapshot(order=order, active_keys=frozenset(active))


def claim_queued_agents(
    *, session: Session, max_running: int, now: float, owner: str | None = None, scan: int = 1000
) -> list[AgentRow]:
    """Give free slots to queued agents, in queue order, skipping those whose key runs its
    `max_concurrent_agents` already and, until their retry time, those the cluster could not place:
    each moves `queued → pending` by compare-and-set, so no agent is started twice and, under the
    capacity lock, no slot is given twice. The claimed rows, now owned by `owner` (the replica that
    launches them)."""
    lock_capacity(session=session)
    free = max_running - count_cluster_active(session=session)
    if free <= 0:
        return []
    waiting = session.execute(
        select(AgentRow.pk, AgentRow.key_id)
        .where(
            AgentRow.status == "queued",
            or_(AgentRow.queue_deadline.is_(None), AgentRow.queue_deadline > now),
            or_(AgentRow.queue_retry_at.is_(None), AgentRow.queue_retry_at <= now),
        )
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
            session=session,
            pk=pk,
            only_if_status=("queued",),
            status="pending",
            dequeued_at=now,
            owner=owner,
            error=None,  # why the cluster could not place it last time: it is being tried again
            queue_retry_at=None,
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
    """The next time the queue changes by itself: a queued agent's deadline, or its retry time."""
    queued = AgentRow.status == "queued"
    deadline = session.scalar(select(func.min(AgentRow.queue_deadline)).where(queued))
    retry = session.scalar(select(func.min(AgentRow.queue_retry_at)).where(queued))
    return min((t for t in (deadline, retry) if t is not None), default=None)


def requeue_unplaced(
    *,
    session: Session,
    pk: int,
    owner: str,
    error: str,
    retry_at: float,
    at: float,
    document: Callable[[AgentRow], str],
) -> bool:
    """An agent whose launch the cluster could not place (no node has the resources or the labels)
    goes back to the queue, `starting → queued` by compare-and-set (on status and owner), with the
    cluster's reason in `error`, not to be tried again before `retry_at`, and `agent.queued` in the
    same transaction. It keeps its round (an agent admitted without queueing joins its key's next
    one), so it goes first once the cluster has room. Only for an agent that asked to wait (its
    queue deadline is set): False otherwise, or when it is no longer starting (cancelled)."""
    row = session.get(AgentRow, pk, populate_existing=True)
    if row is None or row.status != "starting" or row.owner != owner or row.queue_deadline is None:
        return False
    rnd = row.queue_round if row.queue_round is not None else next_queue_round(session=session, key_id=row.key_id)
    moved = transition_agent(
        session=session,
        pk=pk,
        only_if_status=("starting",),
        only_if_owner=owner,
        event=EventType.QUEUED,
        document=document,
        at=at,
        status="queued",
        error=error,
        queue_round=rnd,
        queue_retry_at=retry_at,
        dequeued_at=None,
        container_id=None,
        engine_id=None,
    )
    return moved is not None


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

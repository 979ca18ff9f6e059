"""Replicas (SPEC §13): leases on the database's clock, each agent's owner, adoption of a dead
replica's agents by compare-and-set."""

from __future__ import annotations

import math
from collections.abc import Sequence

from sqlalchemy import and_, delete, func, or_, select, update
from sqlalchemy import text as sql
from sqlalchemy.orm import Session

from agentfactory.store.queries.logs import purge_agents_finished_before
from agentfactory.store.tables import (
    ACTIVE,
    TERMINAL,
    AgentRow,
    RateBucketRow,
    ReplicaRow,
)


def db_now(*, session: Session) -> float:
    """The database's clock, in epoch seconds: the one clock every replica's lease is judged by."""
    if session.get_bind().dialect.name == "postgresql":
        return float(session.execute(sql("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())
    return float(session.execute(sql("SELECT (julianday('now') - 2440587.5) * 86400.0")).scalar_one())


def heartbeat_replica(
    *,
    session: Session,
    replica_id: str,
    host: str,
    pid: int,
    url: str | None,
    engine_id: str | None,
    warm: tuple[int, int] | None = None,
) -> tuple[float, list[ReplicaRow]]:
    """Renew this replica's lease (heartbeat_at = the database's now) and say its warm pool (idle,
    target); returns (that now, every lease)."""
    now = db_now(session=session)
    values = {"host": host, "pid": pid, "url": url, "engine_id": engine_id, "heartbeat_at": now}
    values["warm_idle"], values["warm_target"] = warm if warm is not None else (None, None)
    changed = session.execute(update(ReplicaRow).where(ReplicaRow.id == replica_id).values(**values)).rowcount  # type: ignore[attr-defined]
    if not changed:
        session.add(ReplicaRow(id=replica_id, started_at=now, **values))
        session.flush()
    return now, list(session.scalars(select(ReplicaRow).order_by(ReplicaRow.started_at)))


def list_live_replicas(*, session: Session, lease_seconds: float) -> tuple[float, list[ReplicaRow]]:
    """(the database's now, the replicas whose lease was renewed within lease_seconds, oldest first)."""
    now = db_now(session=session)
    q = select(ReplicaRow).where(ReplicaRow.heartbeat_at >= now - lease_seconds).order_by(ReplicaRow.started_at)
    return now, list(session.scalars(q))


def count_agents_by_owner(*, session: Session) -> dict[str | None, int]:
    """{replica id (None: nobody yet): active agents it owns}: the dashboard's replica list."""
    q = select(AgentRow.owner, func.count()).where(AgentRow.status.in_(ACTIVE)).group_by(AgentRow.owner)
    return {owner: int(n) for owner, n in session.execute(q)}


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

"""Webhooks (SPEC §11): endpoints, the dispatch of events into deliveries, leased sending,
attempts, retries and dead letters."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import delete, func, or_, select, update
from sqlalchemy.orm import Session

from agentfactory.store.queries.events import CursorMoved, last_event_id
from agentfactory.store.tables import (
    ApiKeyRow,
    CursorRow,
    DeliveryAttemptRow,
    DeliveryRow,
    EventRow,
    WebhookRow,
)
from agentfactory.vocabulary import UNDELIVERED, DeliveryStatus


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
    newest = session.scalar(select(func.max(EventRow.id)))
    if newest is None or newest <= start:
        return 0, 0
    live_keys = select(ApiKeyRow.id).where(ApiKeyRow.revoked_at.is_(None))
    hooks = list(session.scalars(select(WebhookRow).where(WebhookRow.key_id.in_(live_keys))))
    if not hooks:  # nobody to tell: the cursor jumps past what was logged before the webhooks were read
        _move_cursor(session, cursor, start, newest)
        return 0, 0
    events = list(session.scalars(select(EventRow).where(EventRow.id > start).order_by(EventRow.id).limit(limit)))
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
    _move_cursor(session, cursor, start, events[-1].id)
    return len(events), made


def _move_cursor(session: Session, cursor: str, start: int, to: int) -> None:
    moved = session.execute(
        update(CursorRow).where(CursorRow.name == cursor, CursorRow.value == start).values(value=to)
    )
    if not moved.rowcount:  # type: ignore[attr-defined]
        raise CursorMoved(cursor)


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

"""The dashboard's sessions and usage figures (SPEC §12)."""

from __future__ import annotations

from sqlalchemy import BigInteger, case, cast, delete, func, select
from sqlalchemy.orm import Session

from agentfactory.store.tables import (
    ACTIVE,
    AgentRow,
    ApiKeyRow,
    QuotaRejectionRow,
    UiSessionRow,
)


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
    start = AgentRow.created_at / bucket_seconds
    if session.get_bind().dialect.name == "postgresql":
        # PostgreSQL's cast of a float to an integer rounds (an agent of the bucket's second half
        # landed in the next one, past the chart's end); SQLite's truncates, which is floor here (>= 0).
        start = func.floor(start)
    bucket = cast(start, BigInteger) * bucket_seconds
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


def add_quota_rejections(*, session: Session, counts: dict[tuple[int, str, str], int]) -> None:
    """Add {(hour start, key id, reason): refusals} to the per-hour counters: one upsert for a
    replica's tally of the last few seconds (its size is bounded by keys x reasons x hours)."""
    if not counts:
        return
    if session.get_bind().dialect.name == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        from sqlalchemy.dialects.sqlite import insert  # type: ignore[assignment]
    rows = [{"bucket": b, "key_id": k, "reason": r, "refused": n} for (b, k, r), n in sorted(counts.items())]
    q = insert(QuotaRejectionRow).values(rows)
    added = {"refused": QuotaRejectionRow.refused + q.excluded.refused}
    session.execute(q.on_conflict_do_update(index_elements=["bucket", "key_id", "reason"], set_=added))


def quota_rejections_by_key(*, session: Session, since: float, bucket_seconds: int) -> list[tuple[str, int, str, int]]:
    """(key id, bucket start, reason, refusals) since `since`, per key, time bucket (a whole number
    of hours) and reason: the usage charts' fourth series."""
    bucket = (QuotaRejectionRow.bucket // bucket_seconds) * bucket_seconds
    q = (
        select(QuotaRejectionRow.key_id, bucket.label("b"), QuotaRejectionRow.reason)
        .add_columns(func.sum(QuotaRejectionRow.refused))
        .where(QuotaRejectionRow.bucket >= int(since))
        .group_by(QuotaRejectionRow.key_id, "b", QuotaRejectionRow.reason)
    )
    return [(k, int(b), r, int(n or 0)) for k, b, r, n in session.execute(q)]


def purge_quota_rejections_before(*, session: Session, cutoff: float) -> int:
    return int(session.execute(delete(QuotaRejectionRow).where(QuotaRejectionRow.bucket < cutoff)).rowcount)  # type: ignore[attr-defined]

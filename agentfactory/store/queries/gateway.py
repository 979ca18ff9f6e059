"""The model gateway's ledger: token grants, reservations and their settlement."""

from __future__ import annotations

from sqlalchemy import case, select, update
from sqlalchemy.orm import Session

from agentfactory.store.tables import (
    AgentRow,
)

GATEWAY_LIVE = ("starting", "running")


def get_gateway_grant(*, session: Session, token_hash: str) -> tuple[int, str, str, str, int, int, int, str] | None:
    """(pk, id, model, status, token_budget, tokens used, tokens reserved, key id) of a gateway token's agent."""
    q = select(
        AgentRow.pk,
        AgentRow.id,
        AgentRow.model,
        AgentRow.status,
        AgentRow.token_budget,
        AgentRow.tokens_prompt + AgentRow.tokens_completion,
        AgentRow.tokens_reserved,
        AgentRow.key_id,
    ).where(AgentRow.gateway_token_hash == token_hash)
    row = session.execute(q).first()
    if row is None:
        return None
    return (row[0], row[1], row[2], row[3], int(row[4]), int(row[5] or 0), int(row[6] or 0), row[7])


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

"""The gateway's token ledger (SPEC §6, §14): which agent a token belongs to, and its hard token budget.

Every call reserves its prompt (bounded by its size) plus its completion (`max_tokens`, clamped to what
is left) in one conditional UPDATE before the upstream is called, and settles to the real usage after,
so concurrent calls never overshoot. Its methods block on the store: the gateway runs them on threads
of its own, each statement in one round trip on PostgreSQL (`Store.autocommit`).
"""

from __future__ import annotations

from dataclasses import dataclass

from structlog.typing import FilteringBoundLogger

from agentfactory.gateway.providers import Usage
from agentfactory.store import queries
from agentfactory.store.engine import Store
from agentfactory.store.tables import AgentRow

LIVE_STATUSES = ("starting", "running")
RESERVE_ATTEMPTS = 8


@dataclass(frozen=True)
class AgentGrant:
    """What the gateway needs to know about the agent a token belongs to."""

    pk: int
    id: str
    model: str
    status: str
    token_budget: int
    tokens_used: int
    tokens_reserved: int
    key_id: str = ""  # the key that launched it: a budget refusal is counted against it


@dataclass(frozen=True)
class Reservation:
    tokens: int  # held on the agent's row until the call settles
    max_tokens: int  # the completion bound sent upstream


class TokenLedger:
    """The store work of the gateway: token lookups, reservations and their settlement."""

    def __init__(self, store: Store, logger: FilteringBoundLogger) -> None:
        self._store = store
        self._log = logger

    def clear_reservations(self) -> int:
        with self._store.session() as s:
            return queries.clear_token_reservations(session=s)

    def find_agent(self, digest: str) -> AgentGrant | None:
        row = self._store.autocommit(queries.get_gateway_grant, token_hash=digest)
        return None if row is None else AgentGrant(*row)

    def spec_fields(self, pk: int) -> AgentRow | None:
        with self._store.session() as s:
            return queries.get_agent_by_pk(session=s, pk=pk)

    def try_reserve(self, agent: AgentGrant, prompt: int, want: int) -> tuple[str, int]:
        """("ok", completion tokens granted) | ("spent", tokens left) | ("busy", 0) | ("gone", 0).

        Optimistic: from what is left (first as the token's lookup just read it), reserve with an
        UPDATE that only applies while it still fits; if another call reserved in between, read again."""
        account: tuple[str, int, int, int] | None = (
            agent.status,
            agent.token_budget,
            agent.tokens_used,
            agent.tokens_reserved,
        )
        for _ in range(RESERVE_ATTEMPTS):
            if account is None or account[0] not in LIVE_STATUSES:
                return "gone", 0
            _status, budget, used, reserved = account
            if prompt >= budget - used:
                return "spent", budget - used
            grant = min(want, budget - used - reserved - prompt)
            if grant >= 1:
                if self._store.autocommit(queries.reserve_tokens, pk=agent.pk, tokens=prompt + grant):
                    return "ok", grant
            elif reserved == 0:
                return "busy", 0
            fresh = self._store.autocommit(queries.get_token_account, pk=agent.pk)
            if fresh == account:
                return "busy", 0
            account = fresh
        return "busy", 0

    def settle(self, agent: AgentGrant, held: Reservation, usage: Usage | None) -> None:
        used = usage or Usage(0, 0)
        if used.prompt_tokens + used.completion_tokens > held.tokens:
            self._log.warning(
                "gateway_usage_over_reservation",
                agent_id=agent.id,
                reserved=held.tokens,
                prompt_tokens=used.prompt_tokens,
                completion_tokens=used.completion_tokens,
            )
        self._store.autocommit(
            queries.settle_tokens,
            pk=agent.pk,
            reserved=held.tokens,
            prompt_tokens=used.prompt_tokens,
            completion_tokens=used.completion_tokens,
            calls=0 if usage is None else 1,
        )

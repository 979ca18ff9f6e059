"""What one agent may send the model gateway (SPEC §14), and the per-token bookkeeping that enforces it.

Limits are keyed by the SHA-256 of the bearer token, known as soon as a request's head is read and
before the store is asked who the token belongs to, so a flood costs the gateway no query.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import TypeVar

from agentfactory.settings import Settings

T = TypeVar("T")

REMEMBER_SECONDS = 600.0


@dataclass(frozen=True)
class GatewayLimits:
    """The gateway's bounds; `Settings` documents each one (the `gateway_*` fields)."""

    max_body_bytes: int = 4 * 1024 * 1024
    inline_json_bytes: int = 64 * 1024
    json_workers: int = 2
    max_connections: int = 512
    max_connections_per_agent: int = 16
    max_concurrent_calls_per_agent: int = 4
    calls_per_second_per_agent: float = 10.0
    call_burst_per_agent: int = 20
    header_timeout_seconds: float = 10.0
    body_timeout_seconds: float = 30.0
    default_max_tokens: int = 4096
    prompt_bytes_per_token: float = 1.0

    @classmethod
    def from_settings(cls, settings: Settings) -> GatewayLimits:
        return cls(
            max_body_bytes=settings.gateway_max_body_bytes,
            inline_json_bytes=settings.gateway_inline_json_bytes,
            json_workers=settings.gateway_json_workers,
            max_connections=settings.gateway_max_connections,
            max_connections_per_agent=settings.gateway_max_connections_per_agent,
            max_concurrent_calls_per_agent=settings.gateway_max_concurrent_calls_per_agent,
            calls_per_second_per_agent=settings.gateway_calls_per_second_per_agent,
            call_burst_per_agent=settings.gateway_call_burst_per_agent,
            header_timeout_seconds=settings.gateway_header_timeout_seconds,
            body_timeout_seconds=settings.gateway_body_timeout_seconds,
            default_max_tokens=settings.gateway_default_max_tokens,
            prompt_bytes_per_token=settings.gateway_prompt_bytes_per_token,
        )

    def prompt_tokens_bound(self, body_bytes: int) -> int:
        """Tokens reserved for a prompt sent as `body_bytes` bytes of JSON.

        A byte-level BPE tokenizer never makes more tokens than the UTF-8 bytes of its text, every
        text byte (and every message's few tokens of framing) is at least one byte of the JSON body,
        so with 1 byte per token this bounds the prompt's real count. (Images are not text: a model
        that takes them is not bounded this way.)
        """
        return math.ceil(body_bytes / self.prompt_bytes_per_token)


class TokenState:
    """One token's open connections, calls in flight and request allowance (a token bucket)."""

    __slots__ = (
        "allowance",
        "budget_left",
        "connections",
        "db_gate",
        "ended",
        "in_flight",
        "key_id",
        "quiet_until",
        "stamp",
        "suppressed",
    )

    def __init__(self, burst: int, now: float) -> None:
        self.connections = 0
        self.in_flight = 0
        self.allowance = float(burst)
        self.stamp = now
        self.quiet_until = 0.0
        self.suppressed = 0
        # What the last lookup of the token found, for refusals that need no store: a token that names
        # no agent, or a finished one, never becomes valid again; tokens used only grow. (Only ever
        # used to refuse: admitting always asks the store.)
        self.ended: str | None = None
        self.budget_left: int | None = None
        self.key_id: str | None = None  # its agent's key, once looked up (budget refusals count against it)
        self.db_gate: asyncio.Semaphore | None = None  # its store work, one piece at a time (`serially`)

    async def serially(self, work: Awaitable[T]) -> T:
        """Run the store work of this token's calls one at a time: its calls in flight (as many as
        the gateway has store threads) never hold every store thread, so a flooding agent's lookups
        and reservations queue behind each other, not in front of the other agents' (on PostgreSQL
        each is a round trip and a commit)."""
        if self.db_gate is None:
            self.db_gate = asyncio.Semaphore(1)
        async with self.db_gate:
            return await work

    def should_log(self, now: float) -> int | None:
        """At most one refusal logged per second: None to stay quiet, else how many were not logged."""
        if now < self.quiet_until:
            self.suppressed += 1
            return None
        suppressed, self.suppressed, self.quiet_until = self.suppressed, 0, now + 1.0
        return suppressed

    def take(self, limits: GatewayLimits, now: float) -> float:
        """Spend one request from the bucket; 0.0 when allowed, else the seconds until one is."""
        rate, burst = limits.calls_per_second_per_agent, limits.call_burst_per_agent
        self.allowance = min(float(burst), self.allowance + (now - self.stamp) * rate)
        self.stamp = now
        if self.allowance >= 1.0:
            self.allowance -= 1.0
            return 0.0
        return (1.0 - self.allowance) / rate

    def idle(self, limits: GatewayLimits, now: float) -> bool:
        """Nothing open, nothing in flight, the bucket full again: the state can be forgotten."""
        refilled = self.allowance + (now - self.stamp) * limits.calls_per_second_per_agent
        if self.connections or self.in_flight or refilled < limits.call_burst_per_agent:
            return False
        # What a lookup found is kept a while: an agent's next call needs no new lookup, and a
        # refused token stays refused without one.
        return (self.budget_left is None and self.ended is None) or now - self.stamp > REMEMBER_SECONDS

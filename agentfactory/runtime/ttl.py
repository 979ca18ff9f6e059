"""Each running agent's TTL as a timer of the event loop, so that it expires to the millisecond;
the reaper's pass is the safety net for a timer lost with its process."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import structlog

from agentfactory.observability.logging import describe_error

log = structlog.get_logger("agentfactory.launcher")


class TtlTimers:
    """One timer per agent: at its expiry `due(pk)` runs (and re-reads the row: it may have been
    extended, and then arms the timer again)."""

    def __init__(self, due: Callable[[int], Awaitable[None]], clock: Callable[[], float] = time.time):
        self._due = due
        self._clock = clock
        self._timers: dict[int, asyncio.TimerHandle] = {}

    def arm(self, pk: int, expires_at: float) -> None:
        """Fire at `expires_at` (replacing the agent's earlier timer, if any)."""
        loop = asyncio.get_running_loop()
        self.cancel(pk)
        delay = max(0.0, expires_at - self._clock())
        self._timers[pk] = loop.call_later(delay, lambda: loop.create_task(self._fire(pk)))

    def cancel(self, pk: int) -> None:
        timer = self._timers.pop(pk, None)
        if timer is not None:
            timer.cancel()

    def cancel_all(self) -> None:
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()

    async def _fire(self, pk: int) -> None:
        self._timers.pop(pk, None)
        try:
            await self._due(pk)
        except Exception as exc:  # the reaper's next pass retries
            log.warning("ttl_expiry_failed", agent_pk=pk, error=describe_error(exc))

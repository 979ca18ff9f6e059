"""Following an agent: the one hub loop that the SSE stream, MCP's wait_agent and the WebSocket share.

The loop subscribes to the agent's hub wake-ups *before* it reads the store, and waits only when
the read found nothing new, so no change can fall between a read and a wait. Lines come from the
store (never from the container): a follower can be slow or start late and still misses nothing.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from agentfactory.errors import NotFoundError
from agentfactory.service import queue
from agentfactory.service.context import Services
from agentfactory.service.memo import FollowedAgent
from agentfactory.store import queries
from agentfactory.store.tables import TERMINAL, AgentRow
from agentfactory.vocabulary import AgentStatus

KEEPALIVE_SECONDS = 10.0
# A wait re-reads the agent at least this often, so a change no local wake-up announced (another
# replica's) is seen too.
WAIT_POLL_SECONDS = 2.0
WAIT_MIN_READ_INTERVAL = 0.1

B = TypeVar("B")
# Reads the lines after a seq and returns (a door-encoded block of them, the last seq in it); the
# hub generation lets a door's cache share one store read among followers woken together.
BlockReader = Callable[[int, int], Awaitable[tuple[B, int]]]


@dataclass(frozen=True)
class Lines(Generic[B]):
    block: B


@dataclass(frozen=True)
class StatusChanged:
    agent: FollowedAgent


@dataclass(frozen=True)
class Ended:
    agent: FollowedAgent


@dataclass(frozen=True)
class Idle:
    """Nothing happened for KEEPALIVE_SECONDS: time for a keep-alive."""


async def follow(svc: Services, row: AgentRow, start: int, read_block: BlockReader[B]) -> AsyncIterator[object]:
    """Every line after seq `start` in order (as `Lines` blocks), each status change, then `Ended`
    once the agent is terminal and every line has been delivered."""
    hub, pk = svc.hub, row.pk

    async def load() -> FollowedAgent | None:
        fresh = await svc.store.agent_by_pk(pk)
        if fresh is not None and fresh.status == AgentStatus.QUEUED:  # with its position, read now
            return FollowedAgent(fresh.status, (await queue.present(svc.queue, svc.store, fresh)).model_dump_json())
        return FollowedAgent.of(fresh)

    cursor = start
    last_status: str | None = None
    last_position: int | None = None
    while True:
        wake = hub.subscribe(pk)
        block, new_cursor = await read_block(cursor, hub.lines_generation(pk))
        if new_cursor > cursor:
            wake.cancel()
            cursor = new_cursor
            yield Lines(block)
            continue
        agent = await svc.followed_agents.get(pk, hub.row_generation(pk), load)
        if agent is None:
            wake.cancel()
            return
        position = agent.queue_position()
        if agent.status != last_status or position != last_position:
            # A queued agent's `status` event is sent again whenever its place in the queue moves.
            last_status, last_position = agent.status, position
            if agent.status not in TERMINAL:
                yield StatusChanged(agent)
        if agent.status in TERMINAL:
            wake.cancel()
            # The terminal row is written after the last line is committed: nothing is left.
            if await svc.store.run(queries.read_log_lines, agent_pk=pk, after=cursor, limit=1, max_bytes=1):
                continue
            yield Ended(agent)
            return
        if not await hub.wait(pk, KEEPALIVE_SECONDS, wake):
            yield Idle()


async def wait_until_done(svc: Services, row: AgentRow, timeout: float) -> AgentRow:
    """Wait on the hub (woken by status changes and new lines), re-reading the row, until the
    agent is terminal or `timeout` seconds pass; returns the latest row."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while row.status not in TERMINAL:
        remaining = deadline - loop.time()
        if remaining <= 0:
            break
        wake = svc.hub.subscribe(row.pk)
        fresh = await svc.store.agent_by_pk(row.pk)
        if fresh is None:
            wake.cancel()
            raise NotFoundError(f"no agent {row.id!r}")
        row = fresh
        if row.status in TERMINAL:
            wake.cancel()
            break
        await svc.hub.wait(row.pk, min(remaining, WAIT_POLL_SECONDS), wake)
        await asyncio.sleep(min(WAIT_MIN_READ_INTERVAL, max(0.0, deadline - loop.time())))
    return row

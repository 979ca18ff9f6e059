"""The event log's use case: follow the caller's lifecycle events (SPEC §11), for `GET /events`.

Like `streams.follow`, the loop subscribes to the hub's event-log wake-up *before* it reads the
store and waits only when the read found nothing, so no event falls between a read and a wait.
The wait is bounded by POLL_SECONDS: events appended by another replica (which bumps its own hub,
not ours) are seen within that. Events come from the store, in id order, so a follower resumed
with the last id it saw misses nothing and repeats nothing, across restarts too.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from agentfactory.errors import SchemaError
from agentfactory.schemas import event_json
from agentfactory.service.agents import load_agent
from agentfactory.service.auth import Caller
from agentfactory.service.context import Services
from agentfactory.store import queries
from agentfactory.vocabulary import EventType

PAGE = 500
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class Event:
    id: int
    type: str
    data: str  # the event's wire JSON


def parse_types(values: Sequence[str]) -> list[str]:
    """`?type=` values, each one type or a comma-separated list; E_SCHEMA on an unknown type."""
    types = [t.strip() for v in values for t in v.split(",") if t.strip()]
    known = {str(t) for t in EventType}
    unknown = [t for t in types if t not in known]
    if unknown:
        raise SchemaError(
            f"unknown event type(s): {', '.join(unknown)}",
            details=[{"loc": ["query", "type"], "allowed": sorted(known)}],
        )
    return types


async def start_position(
    svc: Services, caller: Caller, *, after: int | None, agent_id: str | None, follow: bool
) -> int:
    """Where a stream starts: after `after` (Last-Event-ID or ?after=) when given; else the
    retained history of one agent (a waiter must not miss an end that came before it connected)
    or of a stream that does not follow; else the log's end (only new events)."""
    if agent_id is not None:
        await load_agent(svc, caller, agent_id)  # another key's agent is a 404
    if after is not None:
        return after
    if agent_id is not None or not follow:
        return 0
    return await svc.store.run(queries.last_event_id)


async def follow_events(
    svc: Services,
    caller: Caller,
    *,
    after: int,
    agent_id: str | None = None,
    types: Sequence[str] = (),
    follow: bool = True,
) -> AsyncIterator[Event]:
    """The caller's events (an admin's: everyone's) with id > `after`, in id order; with `follow`,
    then each new one as it is appended, forever; without, until the log's end."""
    key_id = None if caller.admin else caller.key_id
    cursor = after
    while True:
        wake = svc.hub.subscribe_events()
        rows = await svc.store.run(
            queries.list_events, after=cursor, limit=PAGE, key_id=key_id, agent_id=agent_id, types=list(types)
        )
        for row in rows:
            yield Event(
                id=row.id,
                type=row.type,
                data=event_json(event_id=row.id, event_type=row.type, created_at=row.created_at, agent=row.agent),
            )
            cursor = row.id
        if len(rows) == PAGE:
            wake.cancel()
            continue
        if not follow:
            wake.cancel()
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(wake, POLL_SECONDS)

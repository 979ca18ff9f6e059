"""/events: the caller's lifecycle events as a resumable SSE stream (SPEC §11)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated

from fastapi import APIRouter, Header, Query
from sse_starlette.sse import EventSourceResponse

from agentfactory.api.routes.agents import ERRORS, MAX_CURSOR, CallerDep, ServicesDep
from agentfactory.api.sse import LeasedEventSource, sse
from agentfactory.service import events

router = APIRouter(tags=["events"], responses=ERRORS)
EXAMPLE = (
    'id: 42\nevent: agent.finished\ndata: {"type": "agent.finished", "id": 42, "created_at": "...", "agent": {...}}\n\n'
)


@router.get(
    "/events",
    summary="Server-Sent Events: the caller's agent lifecycle events (admin: everyone's)",
    description=(
        "`event:` the type (agent.queued, agent.started, agent.finished, agent.artifacts_ready), `id:` the "
        "event id (monotonically increasing), `data:` `{type, id, created_at, agent}`. Resume with "
        "`Last-Event-ID` or `?after=`. Without either, a stream starts at the log's end (only new "
        "events), except with `?agent_id=` or `follow=false`, which start at the retained history's "
        "beginning. `follow=false` closes the stream once it has sent every event so far."
    ),
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {"example": EXAMPLE}}}},
    operation_id="streamEvents",
)
async def stream_events(
    caller: CallerDep,
    svc: ServicesDep,
    after: Annotated[int | None, Query(ge=0, le=MAX_CURSOR, description="start after this event id")] = None,
    agent_id: Annotated[str | None, Query(max_length=64, description="only this agent's events")] = None,
    type: Annotated[list[str] | None, Query(description="only these types (repeat, or comma-separated)")] = None,
    follow: Annotated[bool, Query(description="false: close once caught up")] = True,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_CURSOR)] = None,
) -> EventSourceResponse:
    types = events.parse_types(type or [])
    start = await events.start_position(
        svc, caller, after=last_event_id if last_event_id is not None else after, agent_id=agent_id, follow=follow
    )

    async def stream() -> AsyncIterator[bytes]:
        async for ev in events.follow_events(svc, caller, after=start, agent_id=agent_id, types=types, follow=follow):
            yield sse(ev.type, ev.data, ev.id).encode()

    lease = svc.streams.acquire(caller)  # 429 past the key's max_streams; revoking the key ends the stream
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return LeasedEventSource(lease, stream(), ping=15, headers=headers)

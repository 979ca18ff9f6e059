"""/agents/{id}/logs (pages) and /agents/{id}/stream (SSE). Both read the store, never the container."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from sse_starlette.sse import EventSourceResponse

from agentfactory.api.routes.agents import ERRORS, MAX_CURSOR, CallerDep, ServicesDep
from agentfactory.api.sse import BlockCache, LeasedEventSource, sse
from agentfactory.errors import SchemaError
from agentfactory.schemas import LogPage
from agentfactory.service import agents, streams
from agentfactory.store import queries

router = APIRouter(tags=["logs"], responses=ERRORS)


async def get_block_cache(request: Request) -> BlockCache:
    cache: BlockCache = request.app.state.sse_cache
    return cache


@router.get(
    "/agents/{agent_id}/logs", response_model=LogPage, summary="A page of captured output", operation_id="getAgentLogs"
)
async def get_logs(
    agent_id: str,
    caller: CallerDep,
    svc: ServicesDep,
    cursor: Annotated[int | None, Query(ge=0, le=MAX_CURSOR, description="a seq; lines after it")] = None,
    limit: Annotated[int, Query(ge=1, le=agents.MAX_LOG_PAGE)] = 1000,
    stream: Literal["stdout", "stderr"] | None = None,
    tail: Annotated[
        int | None,
        Query(
            ge=1,
            le=agents.MAX_LOG_PAGE,
            description="only the last N lines (of `stream`, if given), in one page; not with `cursor`",
        ),
    ] = None,
) -> LogPage:
    if tail is not None:
        if cursor is not None:
            raise SchemaError("give either cursor or tail, not both", details=[{"loc": ["query", "tail"]}])
        return await agents.read_log_tail(svc, caller, agent_id, tail=tail, stream=stream)
    return await agents.read_logs(svc, caller, agent_id, after=cursor or 0, limit=limit, stream=stream)


@router.get(
    "/agents/{agent_id}/stream",
    summary="Server-Sent Events: log lines, status changes, then end",
    operation_id="streamAgent",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {"example": 'event: log\nid: 1\ndata: {"seq": 1, ...}\n\n'}}}},
)
async def stream_agent(
    agent_id: str,
    caller: CallerDep,
    svc: ServicesDep,
    cache: Annotated[BlockCache, Depends(get_block_cache)],
    after: Annotated[int | None, Query(ge=0, le=MAX_CURSOR, description="start after this seq")] = None,
    tail: Annotated[int | None, Query(ge=0, le=100_000, description="only the last N lines, then live")] = None,
    last_event_id: Annotated[int | None, Header(ge=0, le=MAX_CURSOR)] = None,
) -> EventSourceResponse:
    row = await agents.load_agent(svc, caller, agent_id)
    start = last_event_id if last_event_id is not None else (after or 0)
    if tail is not None and last_event_id is None and after is None:
        start = await agents.tail_start(svc, row, tail)
    pk = row.pk

    async def read(after: int, limit: int, max_bytes: int) -> list[tuple[int, float, int, str]]:
        return await svc.store.run(queries.read_log_lines, agent_pk=pk, after=after, limit=limit, max_bytes=max_bytes)

    async def read_block(cursor: int, generation: int) -> tuple[bytes, int]:
        return await cache.events_after(row.id, cursor, generation, read)

    async def events() -> AsyncIterator[bytes]:
        svc.metrics.stream_clients.inc()
        try:
            async for event in streams.follow(svc, row, start, read_block):
                if isinstance(event, streams.Lines):
                    yield event.block
                elif isinstance(event, streams.StatusChanged):
                    yield sse("status", event.agent.json).encode()
                elif isinstance(event, streams.Ended):
                    yield (sse("status", event.agent.json) + sse("end", event.agent.json)).encode()
                else:
                    yield b": keep-alive\n\n"
        finally:
            svc.metrics.stream_clients.dec()

    lease = svc.streams.acquire(caller)  # 429 past the key's max_streams; revoking the key ends the stream
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return LeasedEventSource(lease, events(), ping=15, headers=headers)

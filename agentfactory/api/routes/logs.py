"""/agents/{id}/logs (pages) and /agents/{id}/stream (SSE). Both read the store, never the container."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request
from sse_starlette.sse import EventSourceResponse

from agentfactory.api.deps import AppContext, get_caller, get_ctx, load_agent
from agentfactory.api.routes.agents import ERRORS
from agentfactory.api.sse import STREAM_NAMES, LeasedEventSource, StreamAgent, Timestamps, sse
from agentfactory.errors import SchemaError
from agentfactory.keys import Caller
from agentfactory.schemas import LogPage
from agentfactory.store import queries
from agentfactory.store.tables import STDERR, STDOUT, TERMINAL

router = APIRouter(tags=["logs"], responses=ERRORS)
KEEPALIVE_SECONDS = 10.0
MAX_PAGE_BYTES = 1024 * 1024  # a page stops early past this much text; its next_cursor says where


def _cursor(value: str | None, name: str) -> int:
    if value is None or value == "":
        return 0
    if not value.isdigit() or len(value) > 18:
        raise SchemaError(f"{name} must be a log line seq (a non-negative integer)")
    return int(value)


@router.get("/agents/{agent_id}/logs", response_model=LogPage, summary="A page of captured output")
async def get_logs(
    agent_id: str,
    cursor: Annotated[str | None, Query(max_length=20, description="a seq; lines after it")] = None,
    limit: Annotated[int, Query(ge=1, le=5000)] = 1000,
    stream: Literal["stdout", "stderr"] | None = None,
    caller: Caller = Depends(get_caller),
    ctx: AppContext = Depends(get_ctx),
) -> dict[str, Any]:
    after = _cursor(cursor, "cursor")
    row = await load_agent(ctx, caller, agent_id)
    stream_no = {"stdout": STDOUT, "stderr": STDERR}.get(stream or "")
    rows, more = await ctx.run_db(
        queries.read_log_page, agent_pk=row.pk, after=after, limit=limit, stream=stream_no, max_bytes=MAX_PAGE_BYTES
    )
    ts = Timestamps()
    lines = [{"seq": r[0], "ts": ts(r[1]), "stream": STREAM_NAMES[r[2]], "text": r[3]} for r in rows]
    next_cursor = str(rows[-1][0]) if rows else str(after)
    return {"lines": lines, "next_cursor": next_cursor, "complete": row.status in TERMINAL and not more}


@router.get(
    "/agents/{agent_id}/stream",
    summary="Server-Sent Events: log lines, status changes, then end",
    response_class=EventSourceResponse,
    responses={200: {"content": {"text/event-stream": {"example": 'event: log\nid: 1\ndata: {"seq": 1, ...}\n\n'}}}},
)
async def stream_agent(
    agent_id: str,
    request: Request,
    after: Annotated[str | None, Query(max_length=20, description="start after this seq")] = None,
    tail: Annotated[int | None, Query(ge=0, le=100_000, description="only the last N lines, then live")] = None,
    last_event_id: Annotated[str | None, Header(max_length=20)] = None,
    caller: Caller = Depends(get_caller),
    ctx: AppContext = Depends(get_ctx),
) -> EventSourceResponse:
    row = await load_agent(ctx, caller, agent_id)
    start = _cursor(last_event_id, "Last-Event-ID") if last_event_id else _cursor(after, "after")
    if tail is not None and not last_event_id and after is None:
        last = await ctx.run_db(queries.last_log_seq, agent_pk=row.pk)
        start = max(0, last - tail)
    assert ctx.hub is not None
    hub = ctx.hub
    pk = row.pk

    async def read(after: int, limit: int, max_bytes: int) -> list[tuple[int, float, int, str]]:
        return await ctx.run_db(queries.read_log_lines, agent_pk=pk, after=after, limit=limit, max_bytes=max_bytes)

    async def load_agent_row() -> StreamAgent | None:
        return StreamAgent.of(await ctx.run_db(queries.get_agent_by_pk, pk=pk))

    async def events() -> AsyncIterator[bytes]:
        ctx.metrics.stream_clients.inc()
        try:
            cursor = start
            last_status: str | None = None
            while True:
                wake = hub.subscribe(pk)
                generation = hub.generation
                data, cursor = await ctx.sse_cache.events_after(row.id, cursor, generation, read)
                if data:
                    wake.cancel()
                    yield data
                    continue
                agent = await ctx.stream_agents.get(pk, generation, load_agent_row)
                if agent is None:
                    wake.cancel()
                    return
                if agent.status != last_status:
                    last_status = agent.status
                    if agent.status not in TERMINAL:
                        yield sse("status", agent.json).encode()
                if agent.status in TERMINAL:
                    wake.cancel()
                    # The terminal row is written after the last line is committed: nothing is left.
                    more = await ctx.run_db(queries.read_log_lines, agent_pk=pk, after=cursor, limit=1)
                    if more:
                        continue
                    yield (sse("status", agent.json) + sse("end", agent.json)).encode()
                    return
                if not await hub.wait(pk, KEEPALIVE_SECONDS, wake):
                    yield b": keep-alive\n\n"
        finally:
            ctx.metrics.stream_clients.dec()

    lease = ctx.streams.acquire(caller)  # 429 past the key's max_streams; revoking the key ends the stream
    headers = {"Cache-Control": "no-store", "X-Accel-Buffering": "no"}
    return LeasedEventSource(lease, events(), ping=15, headers=headers)

"""/agents/{id}/ws: the stream's events over a WebSocket (SPEC §3), from the same hub loop as SSE.

Messages are JSON text: {"event": "log" | "status" | "end", "id": <seq or null>, "data": {...}}.
`?after=` and `?tail=` work as on the SSE stream; the socket closes with 1000 after `end`. The key
comes in the `Authorization` header, checked like every HTTP request (the edge middleware only sees
HTTP, so the route authenticates and rate-limits here).
"""

from __future__ import annotations

import contextlib
import json
from typing import Annotated, Any

import anyio
from fastapi import APIRouter, Depends, Query, WebSocket, WebSocketDisconnect

from agentfactory.api.deps import get_services_ws
from agentfactory.api.routes.agents import MAX_CURSOR
from agentfactory.errors import AgentFactoryError, ForbiddenError, RateLimitError, error_body
from agentfactory.service import agents, streams
from agentfactory.service.auth import SESSION_COOKIE, authenticate_request
from agentfactory.service.context import Services
from agentfactory.service.views import log_lines
from agentfactory.store import queries

router = APIRouter(tags=["logs"])
WS_BLOCK_LINES = 500
WS_BLOCK_BYTES = 256 * 1024  # of text: what one follower holds at a time
# Close codes: 1008 policy violation (auth, rate, not found), 1011 server error; the reason carries
# the error envelope's code and message.
POLICY_VIOLATION, SERVER_ERROR = 1008, 1011


@router.websocket("/agents/{agent_id}/ws")
async def agent_ws(
    websocket: WebSocket,
    agent_id: str,
    svc: Annotated[Services, Depends(get_services_ws)],
    after: Annotated[int | None, Query(ge=0, le=MAX_CURSOR)] = None,
    tail: Annotated[int | None, Query(ge=0, le=100_000)] = None,
) -> None:
    await websocket.accept()
    try:
        authorization = websocket.headers.get("authorization")
        caller = svc.auth_cache.get(authorization)
        if caller is None:
            # A browser's dashboard session comes by cookie (a WebSocket cannot send a header): only
            # from a page of this server (`Origin`), as SameSite=Strict already keeps other sites out.
            session_token = websocket.cookies.get(SESSION_COOKIE) if not authorization else None
            origin = websocket.headers.get("origin")
            if session_token and origin and origin.split("://", 1)[-1] != websocket.headers.get("host"):
                raise ForbiddenError("a dashboard session's WebSocket must come from the dashboard's own origin")
            caller = await authenticate_request(
                store=svc.store, authorization=authorization, session_token=session_token, method="GET", csrf=None
            )
            if caller.session is None:
                svc.auth_cache.put(authorization or "", caller)
        wait = await svc.limiter.take(caller.key_id, caller.max_requests_per_minute)
        if wait is not None:
            raise RateLimitError("this key's request rate is exceeded", retry_after=wait)
        row = await agents.load_agent(svc, caller, agent_id)
        lease = svc.streams.acquire(caller)  # past the key's max_streams: E_RATE_LIMIT
    except AgentFactoryError as exc:
        body = error_body(code=exc.code, message=exc.message, request_id="-")
        await websocket.send_text(json.dumps({"event": "error", "id": None, "data": body}))
        await websocket.close(POLICY_VIOLATION, f"{exc.code}: {exc.message}"[:120])
        return
    start = after or 0
    if tail is not None and after is None:
        start = await agents.tail_start(svc, row, tail)

    async def read_block(cursor: int, _generation: int) -> tuple[list[dict[str, Any]], int]:
        rows = await svc.store.run(
            queries.read_log_lines, agent_pk=row.pk, after=cursor, limit=WS_BLOCK_LINES, max_bytes=WS_BLOCK_BYTES
        )
        lines = [line.model_dump() for line in log_lines(rows)]
        return lines, (rows[-1][0] if rows else cursor)

    svc.metrics.stream_clients.inc()
    try:
        with lease.cancel_on_revoke() as revoked:
            async for event in streams.follow(svc, row, start, read_block):
                if isinstance(event, streams.Lines):
                    for line in event.block:
                        await websocket.send_text(json.dumps({"event": "log", "id": line["seq"], "data": line}))
                elif isinstance(event, streams.StatusChanged | streams.Ended):
                    data = event.agent.json
                    await websocket.send_text(f'{{"event": "status", "id": null, "data": {data}}}')
                    if isinstance(event, streams.Ended):
                        await websocket.send_text(f'{{"event": "end", "id": null, "data": {data}}}')
                        await websocket.close(1000)
                        return
        if revoked.cancelled_caught:  # the key was revoked: say so, and close
            body = error_body(code="E_AUTH", message="this API key was revoked", request_id="-")
            with anyio.move_on_after(1), contextlib.suppress(RuntimeError, OSError, WebSocketDisconnect):
                await websocket.send_text(json.dumps({"event": "error", "id": None, "data": body}))
                await websocket.close(POLICY_VIOLATION, "E_AUTH: this API key was revoked")
    except WebSocketDisconnect:
        return
    finally:
        lease.release()
        svc.metrics.stream_clients.dec()

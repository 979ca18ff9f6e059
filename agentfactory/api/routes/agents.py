"""/agents: create, list, read, stop, extend, result."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Response

from agentfactory.api.deps import AppContext, get_caller, get_ctx, load_agent
from agentfactory.api.views import agent_out, agent_result
from agentfactory.errors import SchemaError
from agentfactory.keys import Caller
from agentfactory.schemas import AgentCreate, AgentList, AgentOut, AgentResult, ErrorBody, Status, TtlUpdate
from agentfactory.store import queries

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": desc}
    for code, desc in {
        401: "E_AUTH: no, unknown or revoked key",
        404: "E_NOT_FOUND: no such agent for this key",
        422: "E_SCHEMA / E_CATALOG: the request does not validate",
        429: "E_QUOTA / E_RATE_LIMIT",
        503: "E_RUNTIME: the container engine is unreachable",
    }.items()
}
router = APIRouter(tags=["agents"], responses=ERRORS)


@router.post("/agents", status_code=201, response_model=AgentOut, summary="Launch an agent")
async def create_agent(
    body: AgentCreate,
    response: Response,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    caller: Caller = Depends(get_caller),
    ctx: AppContext = Depends(get_ctx),
) -> AgentOut:
    assert ctx.launcher is not None
    row, replayed = await ctx.launcher.create(caller, body, idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/agents/{row.id}"
    return agent_out(row)


@router.get("/agents", response_model=AgentList, summary="The caller's agents, newest first")
async def list_agents(
    status: Status | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=20)] = None,
    caller: Caller = Depends(get_caller),
    ctx: AppContext = Depends(get_ctx),
) -> AgentList:
    before = None
    if cursor is not None:
        if not cursor.isdigit():
            raise SchemaError("cursor must be a next_cursor from an earlier page")
        before = int(cursor)
    rows = await ctx.run_db(
        queries.list_agents,
        key_id=None if caller.admin else caller.key_id,
        status=status,
        limit=limit,
        before_pk=before,
    )
    next_cursor = str(rows[-1].pk) if len(rows) == limit else None
    return AgentList(items=[agent_out(r) for r in rows], next_cursor=next_cursor)


@router.get("/agents/{agent_id}", response_model=AgentOut, summary="One agent")
async def get_agent(
    agent_id: str, caller: Caller = Depends(get_caller), ctx: AppContext = Depends(get_ctx)
) -> AgentOut:
    return agent_out(await load_agent(ctx, caller, agent_id))


@router.get("/agents/{agent_id}/status", response_model=AgentOut, summary="One agent (alias)")
async def get_agent_status(
    agent_id: str, caller: Caller = Depends(get_caller), ctx: AppContext = Depends(get_ctx)
) -> AgentOut:
    return agent_out(await load_agent(ctx, caller, agent_id))


@router.delete("/agents/{agent_id}", response_model=AgentOut, summary="Stop an agent now (cancelled)")
async def cancel_agent(
    agent_id: str, caller: Caller = Depends(get_caller), ctx: AppContext = Depends(get_ctx)
) -> AgentOut:
    assert ctx.launcher is not None
    row = await load_agent(ctx, caller, agent_id)
    row = await ctx.launcher.stop(row, "cancelled", ctx.settings.stop_grace_seconds)
    return agent_out(row)


@router.post("/agents/{agent_id}/ttl", response_model=AgentOut, summary="Extend a running agent's TTL")
async def extend_ttl(
    agent_id: str, body: TtlUpdate, caller: Caller = Depends(get_caller), ctx: AppContext = Depends(get_ctx)
) -> AgentOut:
    assert ctx.launcher is not None
    row = await load_agent(ctx, caller, agent_id)
    return agent_out(await ctx.launcher.extend_ttl(row, body.ttl_seconds, caller))


@router.get("/agents/{agent_id}/result", response_model=AgentResult, summary="The CI result document")
async def get_result(
    agent_id: str, caller: Caller = Depends(get_caller), ctx: AppContext = Depends(get_ctx)
) -> AgentResult:
    return agent_result(await load_agent(ctx, caller, agent_id))

"""/agents: create, list, read, stop, extend, result."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from agentfactory.api.deps import get_caller, get_services
from agentfactory.schemas import AgentCreate, AgentList, AgentOut, AgentResult, ErrorBody, TtlUpdate
from agentfactory.service import agents
from agentfactory.service.auth import Caller
from agentfactory.service.context import Services
from agentfactory.vocabulary import AgentStatus

ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody, "description": desc}
    for code, desc in {
        401: "E_AUTH: no, unknown or revoked key",
        403: "E_FORBIDDEN: the key may not use this model or tool",
        404: "E_NOT_FOUND: no such agent for this key",
        409: "E_CONFLICT: an Idempotency-Key reused with another body, or a change to a finished agent",
        413: "E_TOO_LARGE: the body is over the size limit",
        422: "E_SCHEMA / E_CATALOG: the request does not validate",
        429: "E_QUOTA / E_CAPACITY / E_RATE_LIMIT (Retry-After set)",
        500: "E_INTERNAL: a bug (never a traceback)",
        503: "E_RUNTIME: the container engine is unreachable",
    }.items()
}
router = APIRouter(tags=["agents"], responses=ERRORS)
METADATA_PREFIX = "metadata."
MAX_CURSOR = 2**62  # cursors and seqs are 64-bit integers in the store
CallerDep = Annotated[Caller, Depends(get_caller)]
ServicesDep = Annotated[Services, Depends(get_services)]


@router.post("/agents", status_code=201, response_model=AgentOut, summary="Launch an agent", operation_id="createAgent")
async def create_agent(
    body: AgentCreate,
    response: Response,
    caller: CallerDep,
    svc: ServicesDep,
    idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
) -> AgentOut:
    agent, replayed = await agents.create_agent(svc, caller, body, idempotency_key=idempotency_key)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/agents/{agent.id}"
    return agent


@router.get(
    "/agents",
    response_model=AgentList,
    summary="The caller's agents, newest first",
    description=(
        "Filter by metadata with `metadata.KEY=VALUE` query parameters (repeatable; all must match), "
        "e.g. `GET /agents?metadata.ci_run=42&metadata.job=lint`. Values compare as text: `42` matches "
        'the string "42" and the number 42, `true` the boolean true.'
    ),
    operation_id="listAgents",
)
async def list_agents(
    request: Request,
    caller: CallerDep,
    svc: ServicesDep,
    status: AgentStatus | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[int | None, Query(ge=0, le=MAX_CURSOR, description="next_cursor of an earlier page")] = None,
) -> AgentList:
    metadata = [
        (name.removeprefix(METADATA_PREFIX), value)
        for name, value in request.query_params.multi_items()
        if name.startswith(METADATA_PREFIX)
    ]
    return await agents.list_agents(svc, caller, status=status, limit=limit, cursor=cursor, metadata=metadata)


@router.get("/agents/{agent_id}", response_model=AgentOut, summary="One agent", operation_id="getAgent")
async def get_agent(agent_id: str, caller: CallerDep, svc: ServicesDep) -> AgentOut:
    return await agents.get_agent(svc, caller, agent_id)


@router.get(
    "/agents/{agent_id}/status", response_model=AgentOut, summary="One agent (alias)", operation_id="getAgentStatus"
)
async def get_agent_status(agent_id: str, caller: CallerDep, svc: ServicesDep) -> AgentOut:
    return await agents.get_agent(svc, caller, agent_id)


@router.delete(
    "/agents/{agent_id}", response_model=AgentOut, summary="Stop an agent now (cancelled)", operation_id="cancelAgent"
)
async def cancel_agent(agent_id: str, caller: CallerDep, svc: ServicesDep) -> AgentOut:
    return await agents.cancel_agent(svc, caller, agent_id)


@router.post(
    "/agents/{agent_id}/ttl",
    response_model=AgentOut,
    summary="Extend a running agent's TTL",
    operation_id="extendAgentTtl",
)
async def extend_ttl(agent_id: str, body: TtlUpdate, caller: CallerDep, svc: ServicesDep) -> AgentOut:
    return await agents.extend_ttl(svc, caller, agent_id, body.ttl_seconds)


@router.get(
    "/agents/{agent_id}/result",
    response_model=AgentResult,
    summary="The CI result document",
    operation_id="getAgentResult",
)
async def get_result(agent_id: str, caller: CallerDep, svc: ServicesDep) -> AgentResult:
    return await agents.get_result(svc, caller, agent_id)

"""/health, /ready, /catalog, /capacity, /replicas, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from agentfactory.api.routes.agents import ERRORS, CallerDep, ServicesDep
from agentfactory.api.routes.keys import AdminDep
from agentfactory.schemas import CapacityOut, ErrorBody, Health, ReplicasOut
from agentfactory.service import system

router = APIRouter(tags=["system"])


@router.get(
    "/capacity",
    response_model=CapacityOut,
    response_model_exclude_none=True,
    summary="The cluster's capacity: slots, agents holding one, agents queued (admin: per key)",
    operation_id="getCapacity",
    responses=ERRORS,
)
async def get_capacity(caller: CallerDep, svc: ServicesDep) -> CapacityOut:
    return await system.capacity(svc, caller)


@router.get(
    "/replicas",
    response_model=ReplicasOut,
    summary="Every live replica of the cluster, the agents each owns, and the cluster's capacity (admin)",
    operation_id="listReplicas",
    responses={**ERRORS, 403: {"model": ErrorBody, "description": "E_FORBIDDEN: not an admin key"}},
)
async def list_replicas(_admin: AdminDep, svc: ServicesDep) -> ReplicasOut:
    return await system.replicas(svc)


@router.get(
    "/health", response_model=Health, response_model_exclude_none=True, summary="Liveness", operation_id="health"
)
async def health() -> Health:
    return Health(status="ok")


@router.get(
    "/ready",
    response_model=Health,
    summary="200 when the database answers and can write, the engine answers and this replica's lease holds",
    operation_id="ready",
    responses={503: {"description": "a dependency is down (or the lease lapsed); `checks` names it"}},
)
async def ready(svc: ServicesDep) -> JSONResponse:
    checks = await system.readiness(svc)
    replica = system.replica(svc)
    down = [k for k, v in checks.items() if v != "ok"]
    if down:
        body = {
            "status": "unavailable",
            "checks": checks,
            "replica": replica,
            "error": {"code": "E_RUNTIME", "message": f"not ready: {', '.join(down)} down", "details": []},
        }
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok", "checks": checks, "replica": replica})


@router.get("/catalog", summary="The catalog of models and tools", operation_id="getCatalog", responses=ERRORS)
async def catalog(_caller: CallerDep, svc: ServicesDep) -> dict[str, Any]:
    return system.catalog(svc)


@router.get("/metrics", summary="Prometheus metrics", response_class=Response, operation_id="metrics")
async def metrics(svc: ServicesDep) -> Response:
    return Response(svc.metrics.render(), media_type=CONTENT_TYPE_LATEST)

"""/health, /ready, /catalog, /metrics."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from agentfactory.api.deps import AppContext, get_caller, get_ctx
from agentfactory.keys import Caller
from agentfactory.schemas import Health

router = APIRouter(tags=["system"])


@router.get("/health", response_model=Health, summary="Liveness")
async def health() -> Health:
    return Health(status="ok")


@router.get("/ready", response_model=Health, summary="200 when the database answers and writes, and the engine answers")
async def ready(ctx: AppContext = Depends(get_ctx)) -> JSONResponse:
    import asyncio

    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(asyncio.to_thread(ctx.store.ping), 5)
        # it answers; can it write? (what the log writer last met, and room to grow)
        cannot_write = (ctx.launcher.pump.store_error if ctx.launcher else None) or ctx.store.space_problem()
        checks["database"] = f"down: cannot write: {cannot_write}" if cannot_write else "ok"
    except Exception as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        await asyncio.wait_for(ctx.backend.ping(), 5)
        checks["engine"] = "ok"
    except Exception as exc:
        checks["engine"] = f"down: {type(exc).__name__}"
    down = [k for k, v in checks.items() if v != "ok"]
    if down:
        body = {
            "status": "unavailable",
            "checks": checks,
            "error": {"code": "E_RUNTIME", "message": f"not ready: {', '.join(down)} down", "details": []},
        }
        return JSONResponse(body, status_code=503)
    return JSONResponse({"status": "ok", "checks": checks})


@router.get("/catalog", summary="The catalog of models and tools")
async def catalog(_caller: Caller = Depends(get_caller), ctx: AppContext = Depends(get_ctx)) -> dict[str, Any]:
    return ctx.catalog.model_dump(mode="json")


@router.get("/metrics", summary="Prometheus metrics", response_class=Response)
async def metrics(ctx: AppContext = Depends(get_ctx)) -> Response:
    return Response(ctx.metrics.render(), media_type=CONTENT_TYPE_LATEST)

"""Every error, from every route, as the SPEC §3 envelope (unknown routes and bad JSON included)."""

from __future__ import annotations

from typing import Any

import structlog
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from agentfactory.errors import AgentFactoryError, error_body

log = structlog.get_logger("agentfactory.api")
HTTP_CODES = {
    400: "E_SCHEMA",
    401: "E_AUTH",
    403: "E_FORBIDDEN",
    404: "E_NOT_FOUND",
    405: "E_NOT_FOUND",
    409: "E_CONFLICT",
    413: "E_TOO_LARGE",
    415: "E_SCHEMA",
    422: "E_SCHEMA",
    429: "E_RATE_LIMIT",
    503: "E_RUNTIME",
}


def request_id_of(request: Request) -> str:
    return getattr(request.state, "request_id", None) or request.scope.get("state", {}).get("request_id", "-")


def envelope(
    *, status: int, code: str, message: str, request_id: str, details: list[Any] | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:  # fmt: skip
    body = error_body(code=code, message=message, request_id=request_id, details=details)
    return JSONResponse(body, status_code=status, headers=headers)


def _clean(errors: list[Any]) -> list[dict[str, Any]]:
    out = []
    for e in errors:
        item = {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
        out.append(item)
    return out


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AgentFactoryError)
    async def _product_error(request: Request, exc: AgentFactoryError) -> JSONResponse:
        headers = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
        return envelope(
            status=exc.status, code=exc.code, message=exc.message, details=exc.details,
            request_id=request_id_of(request), headers=headers,
        )  # fmt: skip

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> JSONResponse:
        errors = _clean(list(exc.errors()))
        first = errors[0] if errors else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "body"
        message = f"{where}: {first['msg']}"
        if first.get("type") == "json_invalid":
            message = "the request body is not valid JSON"
        return envelope(status=422, code="E_SCHEMA", message=message, details=errors, request_id=request_id_of(request))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = HTTP_CODES.get(exc.status_code, "E_INTERNAL")
        message = str(exc.detail) if exc.detail else "error"
        if exc.status_code == 404:
            message = f"no route {request.method} {request.url.path}"
        if exc.status_code == 405:
            message = f"method {request.method} is not allowed on {request.url.path}"
        if exc.status_code == 400:
            # FastAPI's 400 for a body it cannot decode (not UTF-8): bad JSON, E_SCHEMA/422 (SPEC §3).
            return envelope(
                status=422, code="E_SCHEMA", message="the request body is not valid JSON",
                request_id=request_id_of(request),
            )  # fmt: skip
        return envelope(status=exc.status_code, code=code, message=message, request_id=request_id_of(request))

    @app.exception_handler(Exception)
    async def _bug(request: Request, exc: Exception) -> JSONResponse:
        # Named here: this handler runs outside the middleware that binds request_id to the log.
        log.error("unhandled_error", request_id=request_id_of(request), error_type=type(exc).__name__,
                  path=request.url.path, exc_info=exc)  # fmt: skip
        return envelope(
            status=500, code="E_INTERNAL", message="internal error; see the server log for this request_id",
            request_id=request_id_of(request),
        )  # fmt: skip

"""The edge of every request, in order: request id → body size → route match → auth → rate limit
→ the route → metrics and one access-log line. Pure ASGI, so streams are not buffered."""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

import structlog
from starlette.exceptions import HTTPException
from starlette.routing import compile_path
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentfactory.api.errors import envelope
from agentfactory.errors import AgentFactoryError, RateLimitError, TooLargeError
from agentfactory.service.auth import CSRF_HEADER, SESSION_COOKIE, authenticate_request

log = structlog.get_logger("agentfactory.http")
ARTIFACT_PATH = re.compile(r"^/agents/[^/]+/artifacts/.+")
UPLOAD_ROUTE = "/uploads"  # its body is an archive, capped by AGENTFACTORY_MAX_UPLOAD_MB instead
PUBLIC = {"/health", "/ready", "/metrics", "/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc", "/ui"}


def cookie_value(header: str | None, name: str) -> str | None:
    """One cookie's value from a Cookie header, or None."""
    if not header:
        return None
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


class EdgeMiddleware:
    def __init__(self, app: ASGIApp):
        self.app = app
        self._templates: list[tuple[re.Pattern[str], str]] | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ctx = scope["app"].state.services
        # The API speaks JSON only: a body is read as JSON whatever Content-Type it claims, so that
        # `curl -d '{...}'` (which says x-www-form-urlencoded) just works. Every route needs a Bearer
        # header, which a cross-site form cannot send, or the dashboard's session cookie, whose state
        # changes need the session's CSRF header (service.auth), so this opens no CSRF path.
        scope["headers"] = [(k, v) for k, v in scope["headers"] if k != b"content-type"] + [
            (b"content-type", b"application/json")
        ]
        request_id = "req_" + uuid.uuid4().hex[:16]
        scope.setdefault("state", {})["request_id"] = request_id
        structlog.contextvars.bind_contextvars(request_id=request_id)
        started = time.perf_counter()
        method = scope["method"]
        route_template = self._route_template(scope)
        status_holder = {"code": 500}

        async def send_wrapper(message: Message) -> None:
            if message["type"] == "http.response.start":
                status_holder["code"] = message["status"]
                headers = list(message.get("headers", []))
                headers.append((b"x-request-id", request_id.encode()))
                message = {**message, "headers": headers}
            await send(message)

        try:
            await self._guarded(scope, receive, send_wrapper, ctx, route_template)
        finally:
            elapsed = time.perf_counter() - started
            code = status_holder["code"]
            ctx.metrics.http_requests.labels(method=method, route=route_template, code=str(code)).inc()
            ctx.metrics.http_request_duration.labels(method=method, route=route_template).observe(elapsed)
            if route_template not in ("/metrics", "/health"):
                log.info("http_request", method=method, route=route_template, status=code,
                         duration_ms=round(elapsed * 1000, 1))  # fmt: skip
            structlog.contextvars.unbind_contextvars("request_id", "agent_id")

    def _route_template(self, scope: Scope) -> str:
        """The route's path template (metrics are labelled by template, never by raw path)."""
        if self._templates is None:
            app = scope["app"]
            paths = [*list(app.openapi().get("paths", {})), "/openapi.json", "/docs", "/redoc"]
            self._templates = [(compile_path(p)[0], p) for p in paths]
        path = scope["path"]
        if path.startswith("/mcp"):
            return "/mcp"
        if path.startswith("/agents/") and ARTIFACT_PATH.match(path):
            return "/agents/{agent_id}/artifacts/{path}"  # an artifact's path may hold slashes
        if path == "/ui" or path.startswith("/ui/"):
            return "/ui"  # the dashboard's pages authenticate by their session themselves
        for regex, template in self._templates:
            if regex.match(path):
                return template
        return "unmatched"

    async def _guarded(self, scope: Scope, receive: Receive, send: Send, ctx: Any, route: str) -> None:
        request_id = scope["state"]["request_id"]
        try:
            limit = ctx.settings.max_upload_mb * 1024 * 1024 if route == UPLOAD_ROUTE else ctx.settings.max_body_bytes
            receive = self._limit_body(scope, receive, limit, ctx)
            if route != "unmatched" and route not in PUBLIC:
                headers = {k.decode().lower(): v.decode("latin-1") for k, v in scope["headers"]}
                authorization = headers.get("authorization")
                caller = ctx.auth_cache.get(authorization)
                if caller is None:
                    # A browser signed in to the dashboard comes with its session cookie instead
                    # (EventSource cannot send a header); its state changes need the CSRF header.
                    caller = await authenticate_request(
                        store=ctx.store,
                        authorization=authorization,
                        session_token=cookie_value(headers.get("cookie"), SESSION_COOKIE),
                        method=scope["method"],
                        csrf=headers.get(CSRF_HEADER),
                    )
                    if caller.session is None:
                        ctx.auth_cache.put(authorization or "", caller)
                scope["state"]["caller"] = caller
                wait = await ctx.limiter.take(caller.key_id, caller.max_requests_per_minute)
                if wait is not None:
                    ctx.metrics.quota_rejected("rate", caller.key_id)
                    log.info("quota_rejected", reason="rate", key_id=caller.key_id)
                    raise RateLimitError(
                        f"this key's rate of {caller.max_requests_per_minute} requests per minute is exceeded",
                        retry_after=wait,
                    )
        except AgentFactoryError as exc:
            retry = {"Retry-After": str(exc.retry_after)} if exc.retry_after is not None else None
            response = envelope(status=exc.status, code=exc.code, message=exc.message,
                                details=exc.details, request_id=request_id, headers=retry)  # fmt: skip
            await response(scope, receive, send)
            return
        try:
            await self.app(scope, receive, send)
        except TooLargeError as exc:
            response = envelope(status=413, code=exc.code, message=exc.message, request_id=request_id)
            await response(scope, receive, send)

    @staticmethod
    def _limit_body(scope: Scope, receive: Receive, limit: int, ctx: Any) -> Receive:
        for k, v in scope["headers"]:
            if k == b"content-length" and v.isdigit() and int(v) > limit:
                ctx.metrics.quota_rejected("body_size", None)  # before authentication: no key yet
                raise TooLargeError(f"the request body is over {limit} bytes")
        seen = 0

        async def limited() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    caller = scope["state"].get("caller")
                    ctx.metrics.quota_rejected("body_size", caller.key_id if caller is not None else None)
                    # An HTTPException, not TooLargeError: FastAPI turns anything else raised while it
                    # reads a body into "400 error parsing the body" (a chunked body has no length
                    # to refuse it by up front).
                    raise HTTPException(413, f"the request body is over {limit} bytes")
            return message

        return limited

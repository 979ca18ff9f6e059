"""The model gateway (SPEC §6): an HTTP server on a Unix socket, the only way an agent reaches a model.

Each agent container gets the socket's directory mounted read-only and a per-agent token in its
environment. The gateway turns the token into the agent (valid only while it is starting or
running), pins the request to the agent's own catalog model, refuses once the agent's token budget
is spent, adds the provider key from the control plane's environment (it never enters a container),
and counts the tokens of every call on the agent's row.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import stat
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from structlog.typing import FilteringBoundLogger

from agentfactory.catalog import Catalog, CatalogModel
from agentfactory.gateway.providers import (
    GatewayError,
    OpenAIUpstream,
    StreamUsage,
    Usage,
    echo_answer,
    echo_stream,
)
from agentfactory.observability.metrics import Metrics
from agentfactory.store import queries
from agentfactory.store.engine import Store

LIVE_STATUSES = ("starting", "running")
OUTCOMES = (
    "ok",
    "auth",
    "forbidden",
    "budget",
    "bad_request",
    "upstream_error",
    "upstream_timeout",
    "upstream_rejected",
    "upstream_rate_limited",
)
# Requests whose token names no agent have no model to label them with.
UNKNOWN_MODEL = "unknown"
# A long agent conversation (many tool outputs) is sent whole on every turn.
MAX_BODY_BYTES = 32 * 1024 * 1024
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")


@dataclass(frozen=True)
class AgentGrant:
    """What the gateway needs to know about the agent a token belongs to."""

    pk: int
    id: str
    model: str
    status: str
    token_budget: int
    tokens_used: int


class ModelGateway:
    """Serves `POST /v1/chat/completions` and `GET /health` on a Unix socket.

    Built by the app, started and stopped by its lifespan; `stop()` is idempotent.
    """

    def __init__(
        self,
        *,
        catalog: Catalog,
        store: Store,
        socket_path: Path,
        environ: Mapping[str, str],
        metrics: Metrics,
        logger: FilteringBoundLogger,
    ) -> None:
        self._catalog = catalog
        self._store = store
        self.socket_path = Path(socket_path)
        self._environ = environ
        self._metrics = metrics
        self._log = logger
        self._runner: web.AppRunner | None = None
        self._upstream: OpenAIUpstream | None = None
        for m in catalog.models:
            metrics.gateway_request_duration.labels(m.id)
            for outcome in OUTCOMES:
                metrics.gateway_requests.labels(m.id, outcome)
            for kind in ("prompt", "completion"):
                metrics.gateway_tokens.labels(m.id, kind)
        metrics.gateway_requests.labels(UNKNOWN_MODEL, "auth")

    async def start(self) -> None:
        """Bind the socket (removing a stale one) and serve; agents (uid 10001) may connect."""
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        self._make_traversable(path.parent)
        await asyncio.to_thread(_remove_stale_socket, path)
        app = web.Application(client_max_size=MAX_BODY_BYTES, middlewares=[_json_errors])
        app.router.add_get("/health", self._health)
        for route in CHAT_PATHS:
            app.router.add_post(route, self._chat)
        self._upstream = OpenAIUpstream(self._environ)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5)
        try:
            await self._runner.setup()
            await web.UnixSite(self._runner, str(path)).start()
            os.chmod(path, 0o666)
        except BaseException:
            await self.stop()
            raise
        self._log.info("gateway_started", socket=str(path))

    async def stop(self) -> None:
        """Stop serving, close the upstream client, remove the socket. Safe to call twice."""
        runner, self._runner = self._runner, None
        upstream, self._upstream = self._upstream, None
        if runner is not None:
            await runner.cleanup()
        if upstream is not None:
            await upstream.aclose()
        if runner is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            self._log.info("gateway_stopped", socket=str(self.socket_path))

    def _make_traversable(self, directory: Path) -> None:
        """Agents run as a non-root user: they must be able to traverse the mounted directory."""
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o005 == 0o005:
            return
        try:
            os.chmod(directory, mode | 0o755)
        except PermissionError:
            self._log.warning("gateway_dir_not_traversable", directory=str(directory), mode=oct(mode))

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        label, agent = UNKNOWN_MODEL, None
        try:
            agent = await self._authenticate(request)
            label = agent.model
            model, body = await self._admit(request, agent)
            if body.get("stream"):
                response: web.StreamResponse
                response, usage = await self._stream(request, model, body)
            else:
                answer, usage = await self._complete(model, body)
                response = web.json_response(answer)
        except GatewayError as err:
            elapsed = time.perf_counter() - started
            self._metrics.gateway_requests.labels(label, err.outcome).inc()
            if agent is not None:
                self._metrics.gateway_request_duration.labels(label).observe(elapsed)
            log = self._log.warning if err.outcome.startswith("upstream") else self._log.info
            log(
                "gateway_refused",
                agent_id=agent.id if agent else None,
                model=label,
                outcome=err.outcome,
                status=err.status,
                duration_ms=round(elapsed * 1000, 1),
            )
            return _error_response(err)
        await asyncio.to_thread(self._add_usage, agent.pk, usage)
        elapsed = time.perf_counter() - started
        self._metrics.gateway_requests.labels(label, "ok").inc()
        self._metrics.gateway_request_duration.labels(label).observe(elapsed)
        self._metrics.gateway_tokens.labels(label, "prompt").inc(usage.prompt_tokens)
        self._metrics.gateway_tokens.labels(label, "completion").inc(usage.completion_tokens)
        self._log.info(
            "gateway_call",
            agent_id=agent.id,
            model=label,
            prompt_tokens=usage.prompt_tokens,
            completion_tokens=usage.completion_tokens,
            duration_ms=round(elapsed * 1000, 1),
        )
        return response

    async def _authenticate(self, request: web.Request) -> AgentGrant:
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise GatewayError(401, "E_AUTH", "missing bearer token", outcome="auth")
        agent = await asyncio.to_thread(self._find_agent, token)
        if agent is None:
            raise GatewayError(401, "E_AUTH", "unknown gateway token", outcome="auth")
        if agent.status not in LIVE_STATUSES:
            raise GatewayError(
                401,
                "E_AUTH",
                f"the gateway token of agent {agent.id} is no longer valid ({agent.status})",
                outcome="auth",
            )
        return agent

    async def _admit(self, request: web.Request, agent: AgentGrant) -> tuple[CatalogModel, dict[str, Any]]:
        """The agent's catalog model and the body to send it; refuses what the agent may not do."""
        try:
            body = await request.json(loads=json.loads)
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(
                413, "E_TOO_LARGE", f"request body over {MAX_BODY_BYTES} bytes", outcome="bad_request"
            ) from None
        except ValueError:
            raise GatewayError(422, "E_SCHEMA", "the body is not valid JSON", outcome="bad_request") from None
        if not isinstance(body, dict) or not isinstance(body.get("messages"), list):
            raise GatewayError(
                422,
                "E_SCHEMA",
                "the body must be a JSON object with a `messages` list",
                outcome="bad_request",
            )
        model = self._catalog.model(agent.model)
        if model is None:
            raise GatewayError(
                403, "E_FORBIDDEN", f"model {agent.model!r} is no longer in the catalog", outcome="forbidden"
            )
        named = body.get("model")
        if named not in (None, "", model.id, model.upstream_model):
            raise GatewayError(
                403,
                "E_FORBIDDEN",
                f"this agent may only use model {model.id!r}, not {named!r}",
                outcome="forbidden",
            )
        if agent.tokens_used >= agent.token_budget:
            raise GatewayError(
                429,
                "E_BUDGET",
                f"token budget spent: agent {agent.id} used {agent.tokens_used} of {agent.token_budget} tokens",
                outcome="budget",
            )
        body["model"] = model.upstream_model or model.id
        return model, body

    async def _complete(self, model: CatalogModel, body: dict[str, Any]) -> tuple[dict[str, Any], Usage]:
        if model.provider == "echo":
            return echo_answer(model.id, body)
        assert self._upstream is not None, "the gateway is not started"
        body.pop("stream_options", None)
        return await self._upstream.complete(model, body)

    async def _stream(
        self, request: web.Request, model: CatalogModel, body: dict[str, Any]
    ) -> tuple[web.StreamResponse, Usage]:
        """Relay a streamed completion chunk by chunk, reading its usage on the way.

        The response is left open: aiohttp ends it once `_chat` has stored the usage, so a client
        that saw the end of the stream also sees its tokens counted.
        """
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if model.provider == "echo":
            answer, usage = echo_answer(model.id, body)
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            await response.write(echo_stream(answer))
            return response, usage
        assert self._upstream is not None, "the gateway is not started"
        # Ask the upstream for the usage chunk so the agent's tokens are counted, not guessed.
        body["stream_options"] = {**(body.get("stream_options") or {}), "include_usage": True}
        counter = StreamUsage()
        response = web.StreamResponse(headers=headers)
        try:
            async with asyncio.timeout(model.timeout_seconds), self._upstream.stream(model, body) as chunks:
                await response.prepare(request)
                async for data in chunks:
                    counter.feed(data)
                    await response.write(data)
        except ConnectionResetError:
            # The agent hung up mid-stream: what the upstream sent so far still counts.
            return response, counter.usage(body)
        except (TimeoutError, httpx.HTTPError) as exc:
            timed_out = isinstance(exc, TimeoutError | httpx.TimeoutException)
            message = f"model {model.id!r}: " + (
                f"the upstream did not answer within {model.timeout_seconds:g} s"
                if timed_out
                else f"the upstream stream broke ({type(exc).__name__})"
            )
            code = "E_UPSTREAM_TIMEOUT" if timed_out else "E_UPSTREAM"
            if not response.prepared:
                outcome = "upstream_timeout" if timed_out else "upstream_error"
                raise GatewayError(504 if timed_out else 502, code, message, outcome=outcome) from None
            with contextlib.suppress(ConnectionResetError):
                error = {"error": {"code": code, "message": message}}
                await response.write(b"data: " + json.dumps(error).encode() + b"\n\n")
        return response, counter.usage(body)

    def _find_agent(self, token: str) -> AgentGrant | None:
        with self._store.session() as s:
            row = queries.get_agent_by_gateway_token(session=s, token=token)
            if row is None:
                return None
            return AgentGrant(
                pk=row.pk,
                id=row.id,
                model=row.model,
                status=row.status,
                token_budget=row.token_budget,
                tokens_used=(row.tokens_prompt or 0) + (row.tokens_completion or 0),
            )

    def _add_usage(self, pk: int, usage: Usage) -> None:
        with self._store.session() as s:
            queries.add_token_usage(
                session=s, pk=pk, prompt_tokens=usage.prompt_tokens, completion_tokens=usage.completion_tokens
            )


def _error_response(err: GatewayError) -> web.Response:
    headers = {"Retry-After": err.retry_after} if err.retry_after else None
    return web.json_response({"error": {"code": err.code, "message": err.message}}, status=err.status, headers=headers)


_HTTP_CODES = {404: "E_NOT_FOUND", 405: "E_NOT_FOUND", 413: "E_TOO_LARGE"}


@web.middleware
async def _json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """aiohttp's own refusals (unknown route, wrong method) in the same JSON envelope."""
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "E_SCHEMA" if exc.status < 500 else "E_INTERNAL")
        return web.json_response({"error": {"code": code, "message": exc.reason}}, status=exc.status)


def _remove_stale_socket(path: Path) -> None:
    """Remove a socket left by a previous run; refuse to take over a live one or a non-socket."""
    try:
        mode = path.lstat().st_mode
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(mode):
        raise RuntimeError(f"{path} exists and is not a socket; refusing to replace it")
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink(missing_ok=True)
        return
    finally:
        probe.close()
    raise RuntimeError(f"another model gateway is serving on {path}")

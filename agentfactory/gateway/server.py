"""The model gateway (SPEC §6, §14): an HTTP server on a Unix socket, the only way an agent reaches a model.

Each agent container gets the socket's directory mounted read-only and a per-agent token in its
environment. The gateway serves the agent its runtime spec (`GET /v1/agent/spec`), turns the token
into the agent (valid only while it is starting or running), pins the request to the agent's own
catalog model, adds the provider key from the control plane's environment (it never enters a
container), and bounds what one agent can do to everyone else:
- connections, concurrent calls and calls per second per agent (`guard.py`, `limits.py`), checked
  before the store is asked anything and before a body is read;
- a body cap, refused unread when the Content-Length says so; large bodies parsed and re-encoded in
  worker processes (`bodies.py`), never on the event loop the API shares;
- a hard token budget kept by the ledger (`ledger.py`): reserved before the upstream is called,
  settled to the real usage after, so concurrent calls never overshoot; `n` is forced to 1.
The call itself is relayed by `relay.py`; refusals take the contract's envelope (`replies.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path
from typing import Any

from aiohttp import web
from structlog.typing import FilteringBoundLogger

from agentfactory.catalog import Catalog, CatalogModel
from agentfactory.gateway import relay
from agentfactory.gateway.bodies import BodyRefusal, JsonWorkers, PreparedBody, prepare_body
from agentfactory.gateway.connection import MAX_TOKEN_CHARS
from agentfactory.gateway.files import ARTIFACTS_PATH, WORKSPACE_PATH, GatewayFiles
from agentfactory.gateway.guard import UNKNOWN_MODEL, ConnectionGuard
from agentfactory.gateway.ledger import LIVE_STATUSES, AgentGrant, Reservation, TokenLedger
from agentfactory.gateway.limits import GatewayLimits, TokenState
from agentfactory.gateway.providers import GatewayError, OpenAIUpstream, Usage
from agentfactory.gateway.replies import (
    budget_spent,
    error_response,
    json_errors,
    make_traversable,
    remove_stale_socket,
)
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.spec import runtime_spec
from agentfactory.store.blobs import BlobStore
from agentfactory.store.engine import Store
from agentfactory.store.tables import TERMINAL

OUTCOMES = (
    "ok",
    "auth",
    "forbidden",
    "budget",
    "rate_limited",
    "bad_request",
    "upstream_error",
    "upstream_timeout",
    "upstream_rejected",
    "upstream_rate_limited",
)
CHAT_PATHS = ("/v1/chat/completions", "/chat/completions")
SPEC_PATH = "/v1/agent/spec"
# Store work of the gateway runs on threads of its own: a flood of calls cannot take the API's.
DB_THREADS = 4
Served = tuple[web.StreamResponse, Usage]  # a model call's response and what it used


class ModelGateway:
    """Serves `POST /v1/chat/completions`, `GET /v1/agent/spec` and `GET /health` on a Unix socket.

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
        limits: GatewayLimits | None = None,
        blobs: BlobStore | None = None,
    ) -> None:
        self._files = (
            GatewayFiles(store=store, blobs=blobs, catalog=catalog, metrics=metrics, logger=logger)
            if blobs is not None
            else None
        )
        self._catalog = catalog
        self._ledger = TokenLedger(store, logger)
        self.socket_path = Path(socket_path)
        self._environ = environ
        self._metrics = metrics
        self._log = logger
        self.limits = limits or GatewayLimits()
        self._runner: web.AppRunner | None = None
        self._guard: ConnectionGuard | None = None
        self._upstream: OpenAIUpstream | None = None
        self._db_pool: ThreadPoolExecutor | None = None
        self._workers = JsonWorkers(workers=self.limits.json_workers, inline_bytes=self.limits.inline_json_bytes)
        # Refusals before a token is known (no token, body too large) are logged through this one.
        self._anonymous = TokenState(self.limits.call_burst_per_agent, 0.0)
        for m in catalog.models:
            metrics.gateway_request_duration.labels(m.id)
            for outcome in OUTCOMES:
                metrics.gateway_requests.labels(m.id, outcome)
            for kind in ("prompt", "completion"):
                metrics.gateway_tokens.labels(m.id, kind)
        for outcome in ("auth", "budget", "rate_limited", "bad_request"):
            metrics.gateway_requests.labels(UNKNOWN_MODEL, outcome)

    async def start(self) -> None:
        """Bind the socket (removing a stale one) and serve; agents (uid 10001) may connect."""
        path = self.socket_path
        path.parent.mkdir(parents=True, exist_ok=True)
        make_traversable(path.parent, self._log)
        await asyncio.to_thread(remove_stale_socket, path)
        self._db_pool = ThreadPoolExecutor(max_workers=DB_THREADS, thread_name_prefix="gateway-db")
        cleared = await self._db(self._ledger.clear_reservations)
        if cleared:
            self._log.info("gateway_reservations_cleared", agents=cleared)
        app = web.Application(client_max_size=self.limits.max_body_bytes, middlewares=[json_errors])
        app.router.add_get("/health", self._health)
        app.router.add_get(SPEC_PATH, self._spec)
        app.router.add_get(WORKSPACE_PATH, self._workspace)
        app.router.add_put(ARTIFACTS_PATH, self._artifacts)
        for route in CHAT_PATHS:
            app.router.add_post(route, self._chat)
        self._upstream = OpenAIUpstream(self._environ)
        self._workers.start()
        # No lingering: the unread rest of a refused body is not drained, the connection is closed.
        self._runner = web.AppRunner(
            app,
            access_log=None,
            handle_signals=False,
            shutdown_timeout=5,
            lingering_time=0,
            keepalive_timeout=self.limits.header_timeout_seconds,
        )
        try:
            await self._runner.setup()
            assert self._runner.server is not None
            self._guard = ConnectionGuard(
                limits=self.limits, protocol_factory=self._runner.server, metrics=self._metrics, logger=self._log
            )
            self._guard.listen(path)
        except BaseException:
            await self.stop()
            raise
        self._log.info("gateway_started", socket=str(path), max_connections=self._guard.max_connections)

    @property
    def open_connections(self) -> int:
        return self._guard.open_connections if self._guard is not None else 0

    async def stop(self) -> None:
        """Stop serving, close the upstream client, remove the socket. Safe to call twice."""
        guard, self._guard = self._guard, None
        runner, self._runner = self._runner, None
        upstream, self._upstream = self._upstream, None
        if guard is not None:
            guard.close()
        if runner is not None:
            await runner.cleanup()
        if upstream is not None:
            await upstream.aclose()
        self._workers.stop()
        pool, self._db_pool = self._db_pool, None
        if pool is not None:
            pool.shutdown(wait=False)
        if runner is not None:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
            self._log.info("gateway_stopped", socket=str(self.socket_path))

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    # -- the runtime's spec ------------------------------------------------------------------------

    async def _spec(self, request: web.Request) -> web.Response:
        try:
            digest, state, _slotted = self._admit(request, call=False)
            agent = await self._authenticate(digest, state)
            fields = await self._db(self._ledger.spec_fields, agent.pk)
        except GatewayError as err:
            self._metrics.gateway_requests.labels(UNKNOWN_MODEL, err.outcome).inc()
            if self._anonymous.should_log(asyncio.get_running_loop().time()) is not None:
                self._log.info("gateway_spec_refused", outcome=err.outcome, status=err.status)
            return error_response(err)
        if fields is None:
            return error_response(GatewayError(401, "E_AUTH", "unknown gateway token", outcome="auth"))
        files = await self._db(self._files.agent_files, agent.pk) if self._files is not None else None
        spec = runtime_spec(fields, self._catalog, files)
        return web.Response(body=json.dumps(spec, ensure_ascii=False).encode(), content_type="application/json")

    # -- files in and out (SPEC §9, gateway/files.py) ----------------------------------------------

    async def _workspace(self, request: web.Request) -> web.StreamResponse:
        return await self._with_files(request, "workspace")

    async def _artifacts(self, request: web.Request) -> web.StreamResponse:
        return await self._with_files(request, "artifacts")

    async def _with_files(self, request: web.Request, what: str) -> web.StreamResponse:
        try:
            digest, state, _slotted = self._admit(request, call=False)
            agent = await self._authenticate(digest, state)
            if self._files is None:
                raise GatewayError(404, "E_NOT_FOUND", "this gateway keeps no files", outcome="bad_request")
            handler = self._files.workspace if what == "workspace" else self._files.artifacts
            return await handler(request, agent, self._db)
        except GatewayError as err:
            self._log.info("gateway_files_refused", what=what, outcome=err.outcome, status=err.status)
            return error_response(err)

    # -- model calls -------------------------------------------------------------------------------

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        started = time.perf_counter()
        label, agent = UNKNOWN_MODEL, None
        state = self._anonymous
        try:
            digest, state, slotted = self._admit(request, call=True)
            if not slotted:
                state.in_flight += 1
            try:
                agent = await self._authenticate(digest, state)
                label = agent.model
                response, usage = await self._call(request, agent, state)
            finally:
                state.in_flight -= 1
        except GatewayError as err:
            elapsed = time.perf_counter() - started
            self._metrics.gateway_refused(label, err.outcome, agent.key_id if agent is not None else None)
            if agent is not None:
                self._metrics.gateway_request_duration.labels(label).observe(elapsed)
            # A flood is thousands of refusals a second: one line a second per token says it.
            suppressed = state.should_log(asyncio.get_running_loop().time())
            if suppressed is not None:
                log = self._log.warning if err.outcome.startswith("upstream") else self._log.info
                log(
                    "gateway_refused",
                    agent_id=agent.id if agent else None,
                    model=label,
                    outcome=err.outcome,
                    status=err.status,
                    duration_ms=round(elapsed * 1000, 1),
                    **({"not_logged_since": suppressed} if suppressed else {}),
                )
            return error_response(err)
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

    def _admit(self, request: web.Request, *, call: bool) -> tuple[str, TokenState, bool]:
        """The per-agent bounds, from the request's head alone (no store, no body): (token digest,
        its state, whether the request already holds one of the token's calls in flight)."""
        limits = self.limits
        length = request.content_length
        if length is not None and length > limits.max_body_bytes:
            raise GatewayError(
                413,
                "E_TOO_LARGE",
                f"request body of {length} bytes is over the gateway's limit of {limits.max_body_bytes} bytes",
                outcome="bad_request",
            )
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token or len(token) > MAX_TOKEN_CHARS:
            raise GatewayError(401, "E_AUTH", "missing bearer token", outcome="auth")
        digest = hashlib.sha256(token.encode()).hexdigest()
        assert self._guard is not None, "the gateway is not started"
        state, slotted, refusal = self._guard.admit(request.transport, digest, call=call)
        if refusal is not None:
            raise GatewayError(
                refusal.status, refusal.code, refusal.message, outcome="rate_limited", retry_after=refusal.retry_after
            )
        return digest, state, slotted

    async def _authenticate(self, digest: str, state: TokenState) -> AgentGrant:
        agent: AgentGrant | None = await state.serially(self._db(self._ledger.find_agent, digest))
        if agent is None:
            state.ended = "unknown gateway token"
            raise GatewayError(401, "E_AUTH", state.ended, outcome="auth")
        if agent.status not in LIVE_STATUSES:
            message = f"the gateway token of agent {agent.id} is no longer valid ({agent.status})"
            if agent.status in TERMINAL:
                state.ended = message
            raise GatewayError(401, "E_AUTH", message, outcome="auth")
        state.budget_left, state.key_id = agent.token_budget - agent.tokens_used, agent.key_id
        return agent

    async def _call(self, request: web.Request, agent: AgentGrant, state: TokenState) -> Served:
        model = self._catalog.model(agent.model)
        if model is None:
            raise GatewayError(
                403, "E_FORBIDDEN", f"model {agent.model!r} is no longer in the catalog", outcome="forbidden"
            )
        raw = await self._read_body(request, agent)
        prepared = await self._prepare(model, raw)
        held = await self._reserve(agent, len(raw), prepared, state)
        usage: Usage | None = None
        try:
            if prepared.stream:
                response, usage = await relay.stream(request, self._upstream, model, prepared, held)
            else:
                response, usage = await relay.complete(self._upstream, self._workers, model, prepared, held)
        finally:
            if usage is None:
                # Failed (or cancelled): release the reservation even if this task is going away.
                release = asyncio.ensure_future(state.serially(self._db(self._ledger.settle, agent, held, None)))
                with contextlib.suppress(Exception):
                    await asyncio.shield(release)
        await state.serially(self._db(self._ledger.settle, agent, held, usage))
        return response, usage

    async def _read_body(self, request: web.Request, agent: AgentGrant) -> bytes:
        length = request.content_length
        left = agent.token_budget - agent.tokens_used
        if length is not None and self.limits.prompt_tokens_bound(length) >= left:
            raise budget_spent(agent, f"this call's {length}-byte body alone needs more than the {left} left")
        try:
            async with asyncio.timeout(self.limits.body_timeout_seconds):
                return await request.read()
        except web.HTTPRequestEntityTooLarge:
            raise GatewayError(
                413,
                "E_TOO_LARGE",
                f"request body over the gateway's limit of {self.limits.max_body_bytes} bytes",
                outcome="bad_request",
            ) from None
        except TimeoutError:
            raise GatewayError(
                408,
                "E_SCHEMA",
                f"the request body did not arrive within {self.limits.body_timeout_seconds:g} s",
                outcome="bad_request",
            ) from None

    async def _prepare(self, model: CatalogModel, raw: bytes) -> PreparedBody:
        names = tuple(n for n in (model.id, model.upstream_model) if n)
        try:
            result = await self._workers.run(
                len(raw),
                prepare_body,
                raw,
                allowed_names=names,
                upstream_model=model.upstream_model or model.id,
                echo=model.provider == "echo",
            )
        except BrokenProcessPool:
            raise GatewayError(
                503, "E_INTERNAL", "the gateway's body parser restarted; retry", outcome="bad_request"
            ) from None
        if isinstance(result, BodyRefusal):
            outcome = "forbidden" if result.status == 403 else "bad_request"
            raise GatewayError(result.status, result.code, result.message, outcome=outcome)
        assert isinstance(result, PreparedBody)
        return result

    async def _reserve(self, agent: AgentGrant, size: int, prepared: PreparedBody, state: TokenState) -> Reservation:
        prompt = self.limits.prompt_tokens_bound(size)  # `size`: the body's bytes
        want = prepared.max_tokens or self.limits.default_max_tokens
        verdict, detail = await state.serially(self._db(self._ledger.try_reserve, agent, prompt, want))
        if verdict == "ok":
            return Reservation(tokens=prompt + detail, max_tokens=detail)
        if verdict == "spent":
            raise budget_spent(agent, f"this call's prompt alone may need {prompt} of the {detail} left")
        if verdict == "busy":
            raise GatewayError(
                429,
                "E_RATE_LIMIT",
                f"the rest of agent {agent.id}'s token budget is reserved by its calls in flight; retry",
                outcome="rate_limited",
                retry_after="1",
            )
        raise GatewayError(401, "E_AUTH", f"the gateway token of agent {agent.id} is no longer valid", outcome="auth")

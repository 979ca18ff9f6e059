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
- a hard token budget: every call reserves its prompt (bounded by its size) plus its completion
  (`max_tokens`, clamped to what is left) in one conditional UPDATE before the upstream is called,
  and settles to the real usage after, so concurrent calls never overshoot; `n` is forced to 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import socket
import stat
import tarfile
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
from aiohttp import web
from structlog.typing import FilteringBoundLogger

from agentfactory.catalog import Catalog, CatalogModel
from agentfactory.gateway.bodies import BodyRefusal, JsonWorkers, PreparedBody, check_answer, encode, prepare_body
from agentfactory.gateway.guard import MAX_TOKEN_CHARS, UNKNOWN_MODEL, ConnectionGuard
from agentfactory.gateway.limits import GatewayLimits, TokenState
from agentfactory.gateway.providers import GatewayError, OpenAIUpstream, StreamUsage, Usage, echo_answer, echo_stream
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.archives import Collected, read_artifacts
from agentfactory.runtime.spec import runtime_spec
from agentfactory.store import queries
from agentfactory.store.blobs import CHUNK, BlobStore
from agentfactory.store.engine import Store
from agentfactory.store.tables import TERMINAL, AgentFilesRow, AgentRow

LIVE_STATUSES = ("starting", "running")
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
WORKSPACE_PATH = "/v1/agent/workspace"
ARTIFACTS_PATH = "/v1/agent/artifacts"
# The artifact stream is spooled to disk before it is read: its bound, past max_artifact_bytes, is
# the tar framing and the header-only entries of dropped files.
ARTIFACT_SPOOL_SLACK = 64 * 1024 * 1024
# Store work of the gateway runs on threads of its own: a flood of calls cannot take the API's.
DB_THREADS = 4
RESERVE_ATTEMPTS = 8


@dataclass(frozen=True)
class AgentGrant:
    """What the gateway needs to know about the agent a token belongs to."""

    pk: int
    id: str
    model: str
    status: str
    token_budget: int
    tokens_used: int
    tokens_reserved: int


@dataclass(frozen=True)
class Reservation:
    tokens: int  # held on the agent's row until the call settles
    max_tokens: int  # the completion bound sent upstream


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
        self._blobs = blobs
        self._collecting: set[int] = set()
        self._catalog = catalog
        self._store = store
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
        self._make_traversable(path.parent)
        await asyncio.to_thread(_remove_stale_socket, path)
        self._db_pool = ThreadPoolExecutor(max_workers=DB_THREADS, thread_name_prefix="gateway-db")
        cleared = await self._db(self._clear_reservations)
        if cleared:
            self._log.info("gateway_reservations_cleared", agents=cleared)
        app = web.Application(client_max_size=self.limits.max_body_bytes, middlewares=[_json_errors])
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

    def _make_traversable(self, directory: Path) -> None:
        """Agents run as a non-root user: they must be able to traverse the mounted directory."""
        mode = stat.S_IMODE(directory.stat().st_mode)
        if mode & 0o005 == 0o005:
            return
        try:
            directory.chmod(mode | 0o755)
        except PermissionError:
            self._log.warning("gateway_dir_not_traversable", directory=str(directory), mode=oct(mode))

    async def _db(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._db_pool, fn, *args)

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"status": "ok"})

    # -- the runtime's spec ------------------------------------------------------------------------

    async def _spec(self, request: web.Request) -> web.Response:
        try:
            digest, state, _slotted = self._admit(request, call=False)
            agent = await self._authenticate(digest, state)
            fields = await self._db(self._spec_fields, agent.pk)
        except GatewayError as err:
            self._metrics.gateway_requests.labels(UNKNOWN_MODEL, err.outcome).inc()
            if self._anonymous.should_log(asyncio.get_running_loop().time()) is not None:
                self._log.info("gateway_spec_refused", outcome=err.outcome, status=err.status)
            return _error_response(err)
        if fields is None:
            return _error_response(GatewayError(401, "E_AUTH", "unknown gateway token", outcome="auth"))
        spec = runtime_spec(fields[0], self._catalog, fields[1])
        return web.Response(body=json.dumps(spec, ensure_ascii=False).encode(), content_type="application/json")

    # -- files in and out (SPEC §9) ---------------------------------------------------------------

    async def _files_of(self, request: web.Request) -> tuple[AgentGrant, AgentFilesRow]:
        digest, state, _slotted = self._admit(request, call=False)
        agent = await self._authenticate(digest, state)
        files = await self._db(self._agent_files, agent.pk)
        if files is None or self._blobs is None:
            raise GatewayError(
                404, "E_NOT_FOUND", "this agent has no workspace and no artifacts", outcome="bad_request"
            )
        return agent, files

    def _agent_files(self, pk: int) -> AgentFilesRow | None:
        with self._store.session() as s:
            return queries.get_agent_files(session=s, agent_pk=pk)

    async def _workspace(self, request: web.Request) -> web.StreamResponse:
        """The agent's workspace archive, streamed from the blob store (its runtime unpacks it)."""
        try:
            agent, files = await self._files_of(request)
            if files.workspace is None:
                raise GatewayError(404, "E_NOT_FOUND", "this agent has no workspace", outcome="bad_request")
            assert self._blobs is not None
            blob = await asyncio.to_thread(self._blobs.open, f"uploads/{files.workspace}")
        except GatewayError as err:
            return _error_response(err)
        except FileNotFoundError:
            return _error_response(GatewayError(404, "E_NOT_FOUND", "the workspace is gone", outcome="bad_request"))
        response = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
        try:
            size = os.fstat(blob.fileno()).st_size
            response.content_length = size
            await response.prepare(request)
            while data := await asyncio.to_thread(blob.read, CHUNK):
                await response.write(data)
        finally:
            blob.close()
        await response.write_eof()
        self._log.info("gateway_workspace_sent", agent_id=agent.id, bytes=size)
        return response

    async def _artifacts(self, request: web.Request) -> web.StreamResponse:
        """The agent's artifacts as a tar stream (its runtime sends them when the agent ends): spooled
        to disk within a bound, then read into the blob store (past max_artifact_bytes: dropped)."""
        try:
            agent, files = await self._files_of(request)
            if files.collected or agent.pk in self._collecting:
                raise GatewayError(409, "E_CONFLICT", "the artifacts were already handed back", outcome="bad_request")
        except GatewayError as err:
            return _error_response(err)
        blobs = self._blobs
        assert blobs is not None
        bound = self._catalog.limits.max_artifact_bytes
        self._collecting.add(agent.pk)
        spool = await asyncio.to_thread(blobs.writer, f"spool/{agent.id}")
        try:
            seen = 0
            async for data in request.content.iter_chunked(CHUNK):
                seen += len(data)
                if seen > bound + ARTIFACT_SPOOL_SLACK:
                    raise GatewayError(
                        413, "E_TOO_LARGE", "the artifact stream is over its bound", outcome="bad_request"
                    )
                await asyncio.to_thread(spool.write, data)

            def read() -> Collected:
                with spool.reader() as f:
                    return read_artifacts(f, blobs=blobs, key_of=lambda n: f"artifacts/{agent.pk}/{n}", max_bytes=bound)

            try:
                collected = await asyncio.to_thread(read)
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise GatewayError(400, "E_SCHEMA", f"not a tar stream: {exc}", outcome="bad_request") from None
            kept = [(p, n, sha) for p, n, sha, _key in collected.kept]
            stored = await self._db(self._store_artifacts, agent.pk, kept, collected.dropped)
            if not stored:
                await asyncio.to_thread(blobs.delete, f"artifacts/{agent.pk}")
                raise GatewayError(409, "E_CONFLICT", "the artifacts were already handed back", outcome="bad_request")
        except GatewayError as err:
            return _error_response(err)
        finally:
            self._collecting.discard(agent.pk)
            await asyncio.to_thread(spool.abort)
        self._metrics.artifact_bytes.inc(collected.kept_bytes)
        self._metrics.artifacts_dropped.inc(len(collected.dropped))
        self._log.info(
            "artifacts_collected",
            agent_id=agent.id,
            files=len(kept),
            bytes=collected.kept_bytes,
            dropped=len(collected.dropped),
        )
        return web.json_response({"kept": len(kept), "dropped": len(collected.dropped)})

    def _store_artifacts(self, pk: int, kept: list[tuple[str, int, str]], dropped: list[tuple[str, int]]) -> bool:
        with self._store.session() as s:
            return queries.store_artifacts(session=s, agent_pk=pk, kept=kept, dropped=dropped)

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
                response, usage = await self._call(request, agent)
            finally:
                state.in_flight -= 1
        except GatewayError as err:
            elapsed = time.perf_counter() - started
            self._metrics.gateway_requests.labels(label, err.outcome).inc()
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
            return _error_response(err)
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
        agent: AgentGrant | None = await self._db(self._find_agent, digest)
        if agent is None:
            state.ended = "unknown gateway token"
            raise GatewayError(401, "E_AUTH", state.ended, outcome="auth")
        if agent.status not in LIVE_STATUSES:
            message = f"the gateway token of agent {agent.id} is no longer valid ({agent.status})"
            if agent.status in TERMINAL:
                state.ended = message
            raise GatewayError(401, "E_AUTH", message, outcome="auth")
        state.budget_left = agent.token_budget - agent.tokens_used
        return agent

    async def _call(self, request: web.Request, agent: AgentGrant) -> tuple[web.StreamResponse, Usage]:
        model = self._catalog.model(agent.model)
        if model is None:
            raise GatewayError(
                403, "E_FORBIDDEN", f"model {agent.model!r} is no longer in the catalog", outcome="forbidden"
            )
        raw = await self._read_body(request, agent)
        prepared = await self._prepare(model, raw)
        held = await self._reserve(agent, len(raw), prepared)
        usage: Usage | None = None
        try:
            if prepared.stream:
                response, usage = await self._stream(request, model, prepared, held)
            else:
                response, usage = await self._complete(model, prepared, held)
        finally:
            if usage is None:
                # Failed (or cancelled): release the reservation even if this task is going away.
                release = asyncio.get_running_loop().create_task(self._db(self._settle, agent, held, None))
                with contextlib.suppress(Exception):
                    await asyncio.shield(release)
        await self._db(self._settle, agent, held, usage)
        return response, usage

    async def _read_body(self, request: web.Request, agent: AgentGrant) -> bytes:
        length = request.content_length
        left = agent.token_budget - agent.tokens_used
        if length is not None and self.limits.prompt_tokens_bound(length) >= left:
            raise _budget_spent(agent, f"this call's {length}-byte body alone needs more than the {left} left")
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

    async def _reserve(self, agent: AgentGrant, body_bytes: int, prepared: PreparedBody) -> Reservation:
        prompt = self.limits.prompt_tokens_bound(body_bytes)
        want = prepared.max_tokens or self.limits.default_max_tokens
        verdict, detail = await self._db(self._try_reserve, agent, prompt, want)
        if verdict == "ok":
            return Reservation(tokens=prompt + detail, max_tokens=detail)
        if verdict == "spent":
            raise _budget_spent(agent, f"this call's prompt alone may need {prompt} of the {detail} left")
        if verdict == "busy":
            raise GatewayError(
                429,
                "E_RATE_LIMIT",
                f"the rest of agent {agent.id}'s token budget is reserved by its calls in flight; retry",
                outcome="rate_limited",
                retry_after="1",
            )
        raise GatewayError(401, "E_AUTH", f"the gateway token of agent {agent.id} is no longer valid", outcome="auth")

    async def _complete(
        self, model: CatalogModel, prepared: PreparedBody, held: Reservation
    ) -> tuple[web.Response, Usage]:
        if model.provider == "echo":
            answer, usage = echo_answer(model.id, prepared.last_user, prepared.prompt_chars, held.max_tokens)
            body = await self._workers.run(len(prepared.last_user), encode, answer)
            return web.Response(body=body, content_type="application/json"), usage
        assert self._upstream is not None, "the gateway is not started"
        raw = await self._upstream.complete(model, prepared.with_max_tokens(held.max_tokens))
        checked = await self._workers.run(len(raw), check_answer, raw, prepared.prompt_chars)
        if not checked.ok:
            raise GatewayError(
                502,
                "E_UPSTREAM",
                f"model {model.id!r}: the upstream answered something that is not a chat completion",
                outcome="upstream_error",
            )
        usage = Usage(checked.prompt_tokens, checked.completion_tokens)
        return web.Response(body=raw, content_type="application/json"), usage

    async def _stream(
        self, request: web.Request, model: CatalogModel, prepared: PreparedBody, held: Reservation
    ) -> tuple[web.StreamResponse, Usage]:
        """Relay a streamed completion chunk by chunk, reading its usage on the way.

        The response is left open: aiohttp ends it once `_chat` has stored the usage, so a client
        that saw the end of the stream also sees its tokens counted.
        """
        headers = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
        if model.provider == "echo":
            answer, usage = echo_answer(model.id, prepared.last_user, prepared.prompt_chars, held.max_tokens)
            response = web.StreamResponse(headers=headers)
            await response.prepare(request)
            await response.write(echo_stream(answer))
            return response, usage
        assert self._upstream is not None, "the gateway is not started"
        counter = StreamUsage()
        response = web.StreamResponse(headers=headers)
        payload = prepared.with_max_tokens(held.max_tokens)
        try:
            async with asyncio.timeout(model.timeout_seconds), self._upstream.stream(model, payload) as chunks:
                await response.prepare(request)
                async for data in chunks:
                    counter.feed(data)
                    await response.write(data)
        except ConnectionResetError:
            # The agent hung up mid-stream: what the upstream sent so far still counts.
            return response, counter.usage(prepared.prompt_chars)
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
        return response, counter.usage(prepared.prompt_chars)

    # -- store work, on the gateway's own threads --------------------------------------------------

    def _clear_reservations(self) -> int:
        with self._store.session() as s:
            return queries.clear_token_reservations(session=s)

    def _find_agent(self, digest: str) -> AgentGrant | None:
        with self._store.session() as s:
            row = queries.get_gateway_grant(session=s, token_hash=digest)
        return None if row is None else AgentGrant(*row)

    def _spec_fields(self, pk: int) -> tuple[AgentRow, AgentFilesRow | None] | None:
        with self._store.session() as s:
            row = queries.get_agent_by_pk(session=s, pk=pk)
            return None if row is None else (row, queries.get_agent_files(session=s, agent_pk=pk))

    def _try_reserve(self, agent: AgentGrant, prompt: int, want: int) -> tuple[str, int]:
        """("ok", completion tokens granted) | ("spent", tokens left) | ("busy", 0) | ("gone", 0).

        Optimistic: from what is left (first as the token's lookup just read it), reserve with an
        UPDATE that only applies while it still fits; if another call reserved in between, read again."""
        account: tuple[str, int, int, int] | None = (
            agent.status,
            agent.token_budget,
            agent.tokens_used,
            agent.tokens_reserved,
        )
        for _ in range(RESERVE_ATTEMPTS):
            if account is None or account[0] not in LIVE_STATUSES:
                return "gone", 0
            _status, budget, used, reserved = account
            if prompt >= budget - used:
                return "spent", budget - used
            grant = min(want, budget - used - reserved - prompt)
            if grant >= 1:
                with self._store.session() as s:
                    if queries.reserve_tokens(session=s, pk=agent.pk, tokens=prompt + grant):
                        return "ok", grant
            elif reserved == 0:
                return "busy", 0
            with self._store.session() as s:
                fresh = queries.get_token_account(session=s, pk=agent.pk)
            if fresh == account:
                return "busy", 0
            account = fresh
        return "busy", 0

    def _settle(self, agent: AgentGrant, held: Reservation, usage: Usage | None) -> None:
        used = usage or Usage(0, 0)
        if used.prompt_tokens + used.completion_tokens > held.tokens:
            self._log.warning(
                "gateway_usage_over_reservation",
                agent_id=agent.id,
                reserved=held.tokens,
                prompt_tokens=used.prompt_tokens,
                completion_tokens=used.completion_tokens,
            )
        with self._store.session() as s:
            queries.settle_tokens(
                session=s,
                pk=agent.pk,
                reserved=held.tokens,
                prompt_tokens=used.prompt_tokens,
                completion_tokens=used.completion_tokens,
                calls=0 if usage is None else 1,
            )


def _budget_spent(agent: AgentGrant, why: str) -> GatewayError:
    return GatewayError(
        429,
        "E_BUDGET",
        f"token budget spent: agent {agent.id} used {agent.tokens_used} of {agent.token_budget} tokens; {why}",
        outcome="budget",
    )


def _error_response(err: GatewayError) -> web.Response:
    headers = {"Retry-After": err.retry_after} if err.retry_after else None
    response = web.json_response(
        {"error": {"code": err.code, "message": err.message}}, status=err.status, headers=headers
    )
    # A refused request's connection is closed: a flood gets no keep-alive, an unread body no drain.
    response.force_close()
    return response


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
        response = web.json_response({"error": {"code": code, "message": exc.reason}}, status=exc.status)
        response.force_close()
        return response


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

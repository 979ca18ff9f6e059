"""The agent state machine: admit, launch, watch, stop, finalize (SPEC §3 statuses and reasons).

    pending → starting → running → succeeded | failed | cancelled | expired

Every transition is a compare-and-set on the row (the truth); a terminal status never changes. The
seal and the exit code are written in the same transaction as the terminal status, after the log
pump has committed the agent's last line, so whoever sees a terminal agent sees its final seal.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import secrets
import time
from collections.abc import Callable
from typing import Any

import structlog

from agentfactory.backends.base import AgentSpec, Backend, ContainerState, ContainerStatus, OutputSource
from agentfactory.backends.docker_spec import container_name
from agentfactory.catalog import Catalog
from agentfactory.errors import (
    AgentFactoryError,
    ConflictError,
    ForbiddenError,
    QuotaError,
    RuntimeUnavailableError,
    SchemaError,
)
from agentfactory.keys import Caller, new_id
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.logpump import CaptureIncomplete, LogPump, Resume, Seal
from agentfactory.schemas import AgentCreate
from agentfactory.settings import Settings
from agentfactory.store import Store, queries
from agentfactory.store.tables import ACTIVE, TERMINAL, AgentRow

log = structlog.get_logger("agentfactory.launcher")
GATEWAY_SOCKET_IN_CONTAINER = "/run/agentfactory/gateway.sock"
TOOL_OUTPUT_LIMIT = 16_384


def request_hash(req: AgentCreate) -> str:
    return hashlib.sha256(json.dumps(req.model_dump(), sort_keys=True).encode()).hexdigest()


def compute_seal(*, store: Store, agent_pk: int) -> tuple[int, int, str]:
    """(lines, bytes, sha256) over every stored line: its UTF-8 text followed by one b"\\n"."""
    digest = hashlib.sha256()
    lines = nbytes = 0
    with store.session() as s:
        for text in queries.iter_log_chunks(session=s, agent_pk=agent_pk):
            data = text.encode("utf-8") + b"\n"
            digest.update(data)
            lines += data.count(b"\n")
            nbytes += len(data)
    return lines, nbytes, digest.hexdigest()


def classify_exit(row: AgentRow, st: ContainerStatus) -> tuple[str, str, str | None]:
    """(status, reason, error) of an agent whose container ended as `st`.

    OOM: Docker sets OOMKilled when any process of the container was killed for memory, also
    when only a child was and the main process then exited 0. So the flag alone is not trusted as
    "the agent died of OOM", and neither is it ignored: such an agent is `failed`/`oom_killed`
    with its real exit code (0) and an error that says a child was killed.

    gVisor: when the sandbox's own kernel (the Go "sentry") dies, runsc ends the container with the
    Go runtime's exit code 2 and no OOM flag. In this profile that is a resource death: a fork bomb
    hits the PIDs limit, the sentry cannot create the host stub process of the next address space
    ("panic: unable to activate mm: creating stub process: resource temporarily unavailable") and the
    whole sandbox goes. Such an agent is `failed`/`sandbox_died`, not an ordinary non-zero exit. The
    runtime's own "bad spec" exit is also 2; its reason is on stderr, which the log keeps.
    """
    if row.stop_reason == "cancelled":
        return "cancelled", "cancelled", None
    if row.stop_reason == "ttl_expired":
        return "expired", "ttl_expired", f"TTL of {row.ttl_seconds}s ran out"
    if st.state is ContainerState.MISSING:
        return "failed", "lost", "the agent's container disappeared"
    if st.oom_killed:
        if st.exit_code == 0:
            return "failed", "oom_killed", "a process inside the agent was killed for memory (main process exited 0)"
        return "failed", "oom_killed", f"killed for memory (limit reached), exit code {st.exit_code}"
    if st.exit_code == 2 and st.runtime is not None and st.runtime.startswith("runsc"):
        return (
            "failed",
            "sandbox_died",
            "the gVisor sandbox died (runsc exit code 2): a resource limit was hit, most often the PIDs "
            "limit (too many processes); see the last lines of stderr",
        )
    if st.exit_code == 0:
        return "succeeded", "exit", None
    return "failed", "exit", f"exited with code {st.exit_code}"


class Launcher:
    """Owns the life of every agent this control plane runs."""

    def __init__(
        self,
        *,
        settings: Settings,
        catalog: Catalog,
        store: Store,
        backend: Backend,
        pump: LogPump,
        hub: Hub,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.backend = backend
        self.pump = pump
        self.hub = hub
        self.metrics = metrics
        self.clock = clock
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._ttl_timers: dict[int, asyncio.TimerHandle] = {}

    # -- blocking store helpers, run off the loop --------------------------------------------------

    async def _db(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Any:
        return await asyncio.to_thread(fn, *args, **kwargs)

    def _load(self, pk: int) -> AgentRow | None:
        with self.store.session() as s:
            return queries.get_agent_by_pk(session=s, pk=pk)

    def _last_stderr(self, pk: int) -> str | None:
        with self.store.session() as s:
            return queries.last_stderr_line(session=s, agent_pk=pk)

    def _cas(self, pk: int, only_if: tuple[str, ...] | None, **values: Any) -> bool:
        with self.store.session() as s:
            return queries.update_agent(session=s, pk=pk, only_if_status=only_if, **values)

    # -- admission ---------------------------------------------------------------------------------

    def check_request(self, caller: Caller, req: AgentCreate) -> int:
        """Validate against catalog and key; returns the effective TTL."""
        self.catalog.check_request(model=req.model, tools=req.tools, ttl_seconds=req.ttl_seconds)
        if len(req.prompt) > self.settings.max_prompt_chars:
            raise SchemaError(
                f"prompt is {len(req.prompt)} characters; at most {self.settings.max_prompt_chars}",
                details=[{"loc": ["body", "prompt"], "max_length": self.settings.max_prompt_chars}],
            )
        if caller.models and req.model not in caller.models:
            raise ForbiddenError(f"this key may not use model {req.model!r}")
        refused = [t for t in req.tools if caller.tools and t not in caller.tools]
        if refused:
            raise ForbiddenError(f"this key may not use tool(s): {', '.join(refused)}")
        ttl = req.ttl_seconds or self.catalog.limits.default_ttl_seconds
        if ttl > caller.max_ttl_seconds:
            raise SchemaError(
                f"ttl_seconds {ttl} is above this key's max_ttl_seconds {caller.max_ttl_seconds}",
                details=[{"loc": ["body", "ttl_seconds"], "max": caller.max_ttl_seconds}],
            )
        limits = self.catalog.limits
        if req.token_budget is not None and req.token_budget > limits.max_token_budget:
            raise SchemaError(
                f"token_budget {req.token_budget} is above the catalog's max_token_budget {limits.max_token_budget}",
                details=[{"loc": ["body", "token_budget"], "max": limits.max_token_budget}],
            )
        return ttl

    def _admit(
        self, caller: Caller, req: AgentCreate, ttl: int, idempotency_key: str | None, token: str
    ) -> tuple[AgentRow, bool]:
        """Insert the pending row, atomically with the idempotency and concurrency checks."""
        rhash = request_hash(req)
        with self.store.session() as s:
            queries.lock_api_key(session=s, key_id=caller.key_id)
            if idempotency_key:
                existing = queries.find_idempotent_agent(
                    session=s, key_id=caller.key_id, idempotency_key=idempotency_key
                )
                if existing is not None and existing.created_at > self.clock() - 86_400:
                    if existing.request_hash != rhash:
                        raise ConflictError("this Idempotency-Key was used with another request body")
                    return existing, True
                if existing is not None:  # older than 24 h: the key may be reused
                    existing.idempotency_key = None
                    s.flush()
            active = queries.count_active_agents(session=s, key_id=caller.key_id)
            if active >= caller.max_concurrent_agents:
                self.metrics.quota_rejections.labels(reason="concurrency").inc()
                raise QuotaError(
                    f"this key already runs {active} agents (max_concurrent_agents {caller.max_concurrent_agents})",
                    retry_after=2,
                )
            now = self.clock()
            row = AgentRow(
                id=new_id("ag_"),
                key_id=caller.key_id,
                status="pending",
                model=req.model,
                tools=list(req.tools),
                prompt=req.prompt,
                env=dict(req.env),
                secrets=dict(req.secrets),
                meta=dict(req.metadata),
                ttl_seconds=ttl,
                token_budget=req.token_budget or self.catalog.limits.default_token_budget,
                created_at=now,
                expires_at=now + ttl,
                gateway_token_hash=hashlib.sha256(token.encode()).hexdigest(),
                tokens_prompt=0,
                tokens_completion=0,
                model_calls=0,
                log_lines=0,
                log_bytes=0,
                log_dropped_lines=0,
                log_dropped_bytes=0,
                stdout_consumed=0,
                stderr_consumed=0,
                idempotency_key=idempotency_key,
                request_hash=rhash,
            )
            s.add(row)
            s.flush()
        return row, False

    async def create(self, caller: Caller, req: AgentCreate, idempotency_key: str | None) -> tuple[AgentRow, bool]:
        """Admit and launch an agent. Returns (agent, replayed). RuntimeUnavailableError leaves nothing."""
        ttl = self.check_request(caller, req)
        token = secrets.token_urlsafe(32)
        row, replayed = await self._db(self._admit, caller, req, ttl, idempotency_key, token)
        if replayed:
            return row, True
        self.metrics.agents_created.labels(model=row.model).inc()
        log.info("agent_created", agent_id=row.id, model=row.model, tools=row.tools, ttl_seconds=ttl)
        await self._launch(row, token)
        return await self._db(self._load, row.pk), False

    def _spec(self, row: AgentRow, token: str) -> AgentSpec:
        limits = self.catalog.limits
        runtime_spec = {
            "agent_id": row.id,
            "model": row.model,
            "prompt": row.prompt,
            "tools": [t.model_dump() for tid in row.tools if (t := self.catalog.tool(tid)) is not None],
            "max_steps": limits.max_steps,
            "tool_timeout_seconds": limits.tool_timeout_seconds,
            "tool_output_limit": TOOL_OUTPUT_LIMIT,
            "model_timeout_seconds": (model.timeout_seconds + 15) if (model := self.catalog.model(row.model)) else 300,
        }
        env = {
            **row.env,
            **row.secrets,
            "AGENTFACTORY_SPEC": json.dumps(runtime_spec),
            "AGENTFACTORY_GATEWAY_SOCKET": GATEWAY_SOCKET_IN_CONTAINER,
            "AGENTFACTORY_GATEWAY_TOKEN": token,
        }
        return AgentSpec(
            agent_id=row.id,
            key_id=row.key_id,
            image=self.settings.runtime_image,
            env=env,
            memory_mb=limits.memory_mb,
            cpus=limits.cpus,
            pids=limits.pids,
            scratch_mb=limits.scratch_mb,
            max_log_bytes=limits.max_log_bytes,
            network=self.settings.agent_network if self.catalog.needs_network(row.tools) else None,
            runtime=self.catalog.runtime or self.settings.container_runtime,
            gateway_socket_dir=self.settings.gateway_socket_dir,
            instance=self.settings.instance_id,
        )

    async def _launch(self, row: AgentRow, token: str) -> None:
        await self._db(self._cas, row.pk, ("pending",), status="starting")
        try:
            launched = await self.backend.launch(self._spec(row, token))
        except RuntimeUnavailableError:
            await self._db(self._forget, row.pk)
            log.warning("agent_launch_engine_down", agent_id=row.id)
            raise
        except AgentFactoryError as exc:
            await self._finalize_launch_failure(row.pk, row.id, exc.message)
            return
        started = self.clock()
        moved = await self._db(
            self._cas,
            row.pk,
            ("starting",),
            status="running",
            container_id=launched.container_id,
            started_at=started,
            expires_at=started + row.ttl_seconds,
        )
        self.metrics.launch_duration.observe(max(0.0, started - row.created_at))
        self.metrics.agents_running.inc()
        log.info("agent_started", agent_id=row.id, launch_seconds=round(started - row.created_at, 3))
        # The gateway token is in the container's environment: mask it like a secret if printed.
        masked = [*row.secrets.values(), token]
        self._watch(row.pk, row.id, launched.container_id, launched.output, masked, Resume())
        self.arm_ttl(row.pk, started + row.ttl_seconds)
        if not moved:  # cancelled while it was starting: the watcher finalizes it
            await self.backend.stop(launched.container_id, 0)
        self.hub.bump(row.pk)

    def _forget(self, pk: int) -> None:
        """Delete a row that never had a container (the engine was unreachable): nothing is left."""
        from sqlalchemy import delete

        with self.store.session() as s:
            s.execute(delete(AgentRow).where(AgentRow.pk == pk))

    async def _finalize_launch_failure(self, pk: int, agent_id: str, message: str) -> None:
        now = self.clock()
        changed = await self._db(
            self._cas,
            pk,
            ACTIVE,
            status="failed",
            reason="launch_failed",
            error=message,
            finished_at=now,
            log_lines=0,
            log_bytes=0,
            log_sha256=hashlib.sha256(b"").hexdigest(),
            secrets={},
            gateway_token_hash=None,
        )
        if changed:
            self.metrics.agents_finished.labels(status="failed").inc()
            self.metrics.agents_finished_reason.labels(reason="launch_failed").inc()
            log.info("agent_finished", agent_id=agent_id, status="failed", reason="launch_failed", error=message)
        self.hub.bump(pk)

    # -- TTL ---------------------------------------------------------------------------------------

    def arm_ttl(self, pk: int, expires_at: float) -> None:
        """Expire the agent at `expires_at` to the millisecond (the reaper's pass is the safety net)."""
        loop = asyncio.get_running_loop()
        old = self._ttl_timers.pop(pk, None)
        if old is not None:
            old.cancel()
        delay = max(0.0, expires_at - self.clock())
        self._ttl_timers[pk] = loop.call_later(delay, lambda: loop.create_task(self._ttl_due(pk)))

    async def _ttl_due(self, pk: int) -> None:
        self._ttl_timers.pop(pk, None)
        try:
            row = await self._db(self._load, pk)
            if row is None or row.status != "running":
                return
            if row.expires_at > self.clock():  # extended meanwhile
                self.arm_ttl(pk, row.expires_at)
                return
            await self.stop(row, "ttl_expired", 0)
        except Exception as exc:  # the reaper's next pass retries
            log.warning("ttl_expiry_failed", agent_pk=pk, error=repr(exc))

    # -- watching ----------------------------------------------------------------------------------

    def watching(self, pk: int) -> bool:
        return pk in self._watchers

    def _watch(
        self, pk: int, agent_id: str, container_id: str, source: OutputSource, secrets: list[str], resume: Resume
    ) -> None:
        done = self.pump.capture(
            agent_pk=pk,
            source=source,
            secrets=secrets,
            max_log_bytes=self.catalog.limits.max_log_bytes,
            resume=resume,
        )
        task = asyncio.get_running_loop().create_task(self._finish_when_captured(pk, agent_id, container_id, done))
        self._watchers[pk] = task
        task.add_done_callback(lambda _t: self._watchers.pop(pk, None))

    async def _finish_when_captured(
        self, pk: int, agent_id: str, container_id: str, captured: asyncio.Future[Seal | None]
    ) -> None:
        seal: Seal | None = None
        capture_error: str | None = None
        try:
            seal = await captured
        except CaptureIncomplete as exc:
            capture_error = str(exc)
            log.error("agent_capture_incomplete", agent_id=agent_id, error=capture_error)
        except Exception as exc:
            capture_error = f"reading the agent's output broke off ({type(exc).__name__}); what was read is kept"
            log.warning("agent_capture_ended_with_error", agent_id=agent_id, error=type(exc).__name__)
        if self.pump.stopping:
            return  # shutting down while the container runs on: the next start resumes it
        try:
            st = await self.backend.wait(container_id, timeout=30)
            await self.finalize(pk, st, seal, capture_error=capture_error)
            await self.backend.remove(container_id)
        except RuntimeUnavailableError:
            log.warning("agent_finish_engine_down", agent_id=agent_id)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("agent_finish_failed", agent_id=agent_id)

    async def finalize(
        self, pk: int, st: ContainerStatus, seal: Seal | None = None, *, capture_error: str | None = None
    ) -> AgentRow | None:
        """Move the agent to its terminal status with exit code and seal (once). `seal` is the
        capture's running one, given only when every line it covers is stored; without it (after a
        restart, or when capture could not be completed: `capture_error`) the stored lines are
        read back, so the seal always agrees with the store."""
        row = await self._db(self._load, pk)
        if row is None or row.status in TERMINAL:
            return row
        status, reason, error = classify_exit(row, st)
        if reason == "exit" and status == "failed":
            # The runtime says why it stopped on its last stderr line: worth a CI log's first glance.
            why = await self._db(self._last_stderr, pk)
            if why:
                error = f"{error}: {why[:500]}"
        lines, nbytes, sha = seal or await self._db(compute_seal, store=self.store, agent_pk=pk)
        was_running = row.status == "running"
        changed = await self._db(
            self._cas,
            pk,
            ACTIVE,
            status=status,
            reason=reason,
            error=error,
            exit_code=st.exit_code if st.state is not ContainerState.MISSING else None,
            finished_at=self.clock(),
            log_lines=lines,
            log_bytes=nbytes,
            log_sha256=sha,
            capture_error=capture_error,
            secrets={},
            gateway_token_hash=None,
        )
        if changed:
            if was_running:
                self.metrics.agents_running.dec()
            self.metrics.agents_finished.labels(status=status).inc()
            self.metrics.agents_finished_reason.labels(reason=reason).inc()
            if reason == "oom_killed":
                self.metrics.agents_oom_killed.inc()
            if status == "expired":  # counted at the one transition, whoever asked for it
                self.metrics.reaper_expired.inc()
            if row.log_dropped_bytes:
                self.metrics.log_bytes_dropped.inc(row.log_dropped_bytes)
            log.info(
                "agent_finished",
                agent_id=row.id,
                status=status,
                reason=reason,
                exit_code=st.exit_code,
                duration_seconds=round(self.clock() - row.created_at, 3),
            )
        self.hub.bump(pk)
        return await self._db(self._load, pk)

    # -- stopping ----------------------------------------------------------------------------------

    async def stop(self, row: AgentRow, stop_reason: str, grace: float) -> AgentRow:
        """Stop an agent for `stop_reason` (cancelled | ttl_expired) and wait until it is final."""
        if row.status in TERMINAL:
            return row
        await self._db(self._set_stop_reason, row.pk, stop_reason)
        if row.status == "running" and row.container_id:
            await self.backend.stop(row.container_id, grace)
            watcher = self._watchers.get(row.pk)
            if watcher is not None:
                await asyncio.wait({watcher}, timeout=grace + 10)
            else:
                st = await self.backend.wait(row.container_id, timeout=5)
                await self.finalize(row.pk, st)
                await self.backend.remove(row.container_id)
        elif row.status in ("pending", "starting"):
            watcher = self._watchers.get(row.pk)
            if watcher is None:
                await self.backend.remove(container_name(row.id))
                await self.finalize(row.pk, ContainerStatus(ContainerState.EXITED, exit_code=None))
        fresh = await self._db(self._load, row.pk)
        return fresh or row

    def _set_stop_reason(self, pk: int, stop_reason: str) -> None:
        with self.store.session() as s:
            row = queries.get_agent_by_pk(session=s, pk=pk)
            if row is not None and row.status in ACTIVE and row.stop_reason is None:
                row.stop_reason = stop_reason

    async def extend_ttl(self, row: AgentRow, ttl_seconds: int, caller: Caller) -> AgentRow:
        limit = min(self.catalog.limits.max_ttl_seconds, caller.max_ttl_seconds)
        if ttl_seconds > limit:
            raise SchemaError(
                f"ttl_seconds {ttl_seconds} is above max_ttl_seconds {limit}",
                details=[{"loc": ["body", "ttl_seconds"], "max": limit}],
            )
        if row.status not in ACTIVE:
            raise ConflictError(f"agent {row.id} is {row.status}; only a running agent's TTL can change")
        expires_at = self.clock() + ttl_seconds
        await self._db(self._cas, row.pk, ACTIVE, expires_at=expires_at)
        if row.status == "running":
            self.arm_ttl(row.pk, expires_at)
        self.hub.bump(row.pk)
        fresh: AgentRow = await self._db(self._load, row.pk)
        return fresh

    # -- recovery ----------------------------------------------------------------------------------

    async def resume(self, row: AgentRow) -> None:
        """Capture a running agent again after a restart, from its stored position."""
        assert row.container_id
        source = await self.backend.logs(row.container_id)
        with self.store.session() as s:
            last = queries.last_log_seq(session=s, agent_pk=row.pk)
        resume = Resume(
            last_seq=last,
            stdout_consumed=row.stdout_consumed,
            stderr_consumed=row.stderr_consumed,
            dropped_lines=row.log_dropped_lines,
            dropped_bytes=row.log_dropped_bytes,
        )
        self.metrics.agents_running.inc()
        self._watch(row.pk, row.id, row.container_id, source, list(row.secrets.values()), resume)
        self.arm_ttl(row.pk, row.expires_at)
        log.info("agent_resumed", agent_id=row.id, from_seq=last)

    async def shutdown(self) -> None:
        """Stop watching (containers run on; the next start resumes them)."""
        for timer in self._ttl_timers.values():
            timer.cancel()
        tasks = list(self._watchers.values())
        await asyncio.to_thread(self.pump.stop)
        if tasks:
            await asyncio.wait(tasks, timeout=10)

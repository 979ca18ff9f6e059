"""The agent state machine: launch, watch, stop, finalize (SPEC §3 statuses and reasons).

    pending → starting → running → succeeded | failed | cancelled | expired

Admission (catalog, key policy, quotas, idempotency) happens before, in the service layer; the
launcher takes an admitted `pending` row. Every transition is a compare-and-set on the row (the
truth); a terminal status never changes. The seal and the exit code are written in the same
transaction as the terminal status, after the log pump has committed the agent's last line, so
whoever sees a terminal agent sees its final seal. The reaper drives the same public operations.

The transitions that start and end an agent append `agent.started` / `agent.finished` to the
event log in their own transaction (the outbox, `queries.transition_agent`), with the agent's
wire document built by `agent_document` (given by the service layer, which owns the wire views).
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable
from typing import Any

import structlog

from agentfactory.backends.base import Backend, ContainerState, ContainerStatus, OutputSource
from agentfactory.catalog import Catalog
from agentfactory.errors import AgentFactoryError, NetworkPolicyError, RuntimeUnavailableError
from agentfactory.observability.logging import describe_error
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.logpump import CaptureIncomplete, LogPump, Resume, Seal
from agentfactory.runtime.masking import mask_text
from agentfactory.runtime.outcome import classify_exit
from agentfactory.runtime.spec import agent_spec
from agentfactory.settings import Settings
from agentfactory.store import Store, queries
from agentfactory.store.server_key import ServerKey
from agentfactory.store.tables import ACTIVE, TERMINAL, AgentRow
from agentfactory.vocabulary import AgentStatus, EventType, Reason

log = structlog.get_logger("agentfactory.launcher")
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


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
        server_key: ServerKey,
        agent_document: Callable[[AgentRow], str],
        clock: Callable[[], float] = time.time,
    ):
        self.settings = settings
        self.catalog = catalog
        self.store = store
        self.backend = backend
        self.pump = pump
        self.hub = hub
        self.metrics = metrics
        self.server_key = server_key
        self.agent_document = agent_document
        self.clock = clock
        self._watchers: dict[int, asyncio.Task[None]] = {}
        self._ttl_timers: dict[int, asyncio.TimerHandle] = {}

    # -- reading and compare-and-set -------------------------------------------------------------

    async def load(self, pk: int) -> AgentRow | None:
        return await self.store.run(queries.get_agent_by_pk, pk=pk)

    async def _cas(self, pk: int, only_if: tuple[str, ...] | None, **values: Any) -> bool:
        return await self.store.run(queries.update_agent, pk=pk, only_if_status=only_if, **values)

    async def _transition(self, pk: int, only_if: tuple[str, ...], event: EventType, **values: Any) -> bool:
        """The compare-and-set, with `event` appended to the event log in its transaction."""
        changed = await self.store.run(
            queries.transition_agent,
            pk=pk,
            only_if_status=only_if,
            event=event,
            document=self.agent_document,
            at=self.clock(),
            **values,
        )
        if changed:
            self.hub.bump_events()
        return changed

    async def active_agents(self) -> list[AgentRow]:
        return await self.store.run(queries.list_agents_in, statuses=ACTIVE)

    def watching(self, pk: int) -> bool:
        return pk in self._watchers

    # -- launching -------------------------------------------------------------------------------

    async def network_ready(self, tools: list[str]) -> None:
        """Raise NetworkPolicyError (E_CATALOG) naming the network tools among `tools` when their egress
        policy (SPEC §14) cannot be enforced; the caller refuses the request before storing anything."""
        network_tools = [t for t in tools if (tool := self.catalog.tool(t)) is not None and tool.network]
        if not network_tools:
            return
        try:
            await self.backend.prepare_network(self.settings.agent_network)
        except NetworkPolicyError as exc:
            raise NetworkPolicyError(
                f"tool(s) {', '.join(network_tools)} need a network, and this server cannot hold agents with a "
                f"network to the public internet: {exc.message}",
                details=[{"field": "tools", "refused": network_tools, "reason": exc.message}],
            ) from exc

    async def recheck_egress(self) -> None:
        """Read the egress rules back (as often as the backend's check allows) and put them back if
        something flushed them (a firewall reload); the reaper calls it while network agents run."""
        network = self.settings.agent_network
        try:
            await self.backend.prepare_network(network)
        except NetworkPolicyError as exc:
            log.error("agent_egress_not_enforced", network=network, reason=exc.message)

    async def launch(self, row: AgentRow, token: str, *, keep_on_engine_down: bool = False) -> AgentRow:
        """Start an admitted agent's container. RuntimeUnavailableError deletes the row (nothing is
        left behind; with `keep_on_engine_down`, for an agent that left the queue, the caller ends
        it) and is raised; any other launch error ends the agent `failed`/`launch_failed`."""
        await self._cas(row.pk, (AgentStatus.PENDING,), status=AgentStatus.STARTING)
        try:
            launched = await self.backend.launch(
                agent_spec(row=row, token=token, catalog=self.catalog, settings=self.settings)
            )
        except RuntimeUnavailableError:
            if keep_on_engine_down:
                raise
            await self.store.run(queries.delete_agent, pk=row.pk)
            log.warning("agent_launch_engine_down", agent_id=row.id)
            raise
        except AgentFactoryError as exc:
            # The engine's words may quote the container's environment.
            await self.fail_launch(row.pk, row.id, mask_text(exc.message, [*row.secrets.values(), token]))
            return await self.load(row.pk) or row
        started = self.clock()
        moved = await self._transition(
            row.pk,
            (AgentStatus.STARTING,),
            EventType.STARTED,
            status=AgentStatus.RUNNING,
            container_id=launched.container_id,
            started_at=started,
            expires_at=started + row.ttl_seconds,
        )
        admitted = row.dequeued_at or row.created_at  # a queued agent's launch begins when it leaves the queue
        self.metrics.launch_duration.observe(max(0.0, started - admitted))
        self.metrics.agents_running.inc()
        log.info("agent_started", agent_id=row.id, launch_seconds=round(started - admitted, 3))
        # The gateway token is in the container's environment: mask it like a secret if printed.
        self._watch(row.pk, row.id, launched.output, [*row.secrets.values(), token], Resume())
        self.arm_ttl(row.pk, started + row.ttl_seconds)
        if not moved:  # cancelled while it was starting: the watcher finalizes it
            await self.backend.stop(row.id, 0)
        self.hub.bump(row.pk)
        return await self.load(row.pk) or row

    async def fail_launch(self, pk: int, agent_id: str, message: str) -> None:
        """End an agent that never ran: `failed`/`launch_failed`, an empty seal, no container."""
        await self.backend.remove(agent_id)
        changed = await self._transition(
            pk,
            ACTIVE,
            EventType.FINISHED,
            status=AgentStatus.FAILED,
            reason=Reason.LAUNCH_FAILED,
            error=message,
            finished_at=self.clock(),
            log_lines=0,
            log_bytes=0,
            log_sha256=EMPTY_SHA256,
            secrets={},
            gateway_token_hash=None,
        )
        if changed:
            self.metrics.agents_finished.labels(status=AgentStatus.FAILED).inc()
            self.metrics.agents_finished_reason.labels(reason=Reason.LAUNCH_FAILED).inc()
            log.info("agent_finished", agent_id=agent_id, status="failed", reason="launch_failed", error=message)
        self.hub.bump(pk)

    # -- TTL -------------------------------------------------------------------------------------

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
            await self.expire_if_due(pk)
        except Exception as exc:  # the reaper's next pass retries
            log.warning("ttl_expiry_failed", agent_pk=pk, error=describe_error(exc))

    async def expire_if_due(self, pk: int) -> None:
        """Kill a running agent whose TTL has run out (re-read first: it may have been extended)."""
        row = await self.load(pk)
        if row is None or row.status != AgentStatus.RUNNING:
            return
        if row.expires_at > self.clock():  # extended meanwhile
            self.arm_ttl(pk, row.expires_at)
            return
        log.info("agent_expiring", agent_id=row.id)
        # Past its TTL an agent is killed at once: the TTL was its grace.
        await self.stop(row, Reason.TTL_EXPIRED, 0)

    async def set_expiry(self, row: AgentRow, expires_at: float) -> AgentRow:
        """Move an active agent's `expires_at` (the caller checked the bounds)."""
        await self._cas(row.pk, ACTIVE, expires_at=expires_at)
        if row.status == AgentStatus.RUNNING:
            self.arm_ttl(row.pk, expires_at)
        self.hub.bump(row.pk)
        return await self.load(row.pk) or row

    # -- watching --------------------------------------------------------------------------------

    def _watch(self, pk: int, agent_id: str, source: OutputSource, secrets: list[str], resume: Resume) -> None:
        done = self.pump.capture(
            agent_pk=pk,
            source=source,
            secrets=secrets,
            max_log_bytes=self.catalog.limits.max_log_bytes,
            resume=resume,
        )
        task = asyncio.get_running_loop().create_task(self._finish_when_captured(pk, agent_id, done))
        self._watchers[pk] = task
        task.add_done_callback(lambda _t: self._watchers.pop(pk, None))

    async def _finish_when_captured(self, pk: int, agent_id: str, captured: asyncio.Future[Seal | None]) -> None:
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
            st = await self.backend.wait(agent_id, timeout=30)
            await self.finalize(pk, st, seal, capture_error=capture_error)
            await self.backend.remove(agent_id)
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
        row = await self.load(pk)
        if row is None or row.status in TERMINAL:
            return row
        status, reason, error = classify_exit(row, st)
        if reason == Reason.EXIT and status == AgentStatus.FAILED:
            # The runtime says why it stopped on its last stderr line: worth a CI log's first glance.
            why = await self.store.run(queries.last_stderr_line, agent_pk=pk)
            if why:
                error = f"{error}: {why[:500]}"
        if seal is None:
            seal = await self.store.run(queries.seal_stored_lines, agent_pk=pk)
        lines, nbytes, sha = seal
        was_running = row.status == AgentStatus.RUNNING
        changed = await self._transition(
            pk,
            ACTIVE,
            EventType.FINISHED,
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
            if reason == Reason.OOM_KILLED:
                self.metrics.agents_oom_killed.inc()
            if status == AgentStatus.EXPIRED:  # counted at the one transition, whoever asked for it
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
        return await self.load(pk)

    # -- stopping --------------------------------------------------------------------------------

    async def stop(self, row: AgentRow, stop_reason: str, grace: float) -> AgentRow:
        """Stop an agent for `stop_reason` (cancelled | ttl_expired) and wait until it is final."""
        if row.status in TERMINAL:
            return row
        await self.store.run(queries.set_stop_reason, pk=row.pk, stop_reason=stop_reason)
        files = await self.store.run(queries.get_agent_files, agent_pk=row.pk)
        if files is not None and files.artifacts:
            # Collect, then kill (SPEC §9): SIGTERM lets the runtime hand its artifacts back first.
            grace = max(grace, self.settings.artifact_grace_seconds)
        watcher = self._watchers.get(row.pk)
        if row.status == AgentStatus.RUNNING:
            await self.backend.stop(row.id, grace)
            if watcher is not None:
                await asyncio.wait({watcher}, timeout=grace + 10)
            else:
                st = await self.backend.wait(row.id, timeout=5)
                await self.finalize(row.pk, st)
                await self.backend.remove(row.id)
        elif watcher is None:  # pending or starting, and no launch in flight here
            await self.backend.remove(row.id)
            await self.finalize(row.pk, ContainerStatus(ContainerState.EXITED, exit_code=None))
        return await self.load(row.pk) or row

    # -- reconciling -----------------------------------------------------------------------------

    async def finalize_if_lost(self, row: AgentRow) -> None:
        """A running agent nobody here watches whose container is gone ends `failed`/`lost`."""
        st = await self.backend.status(row.id)
        if st.state is not ContainerState.MISSING:
            return
        fresh = await self.load(row.pk)
        if fresh is not None and fresh.status == AgentStatus.RUNNING and not self.watching(row.pk):
            await self.finalize(row.pk, st)

    async def recover(self, row: AgentRow) -> None:
        """After a restart: an interrupted launch fails, a vanished container is `lost`, a running
        one is captured again from its stored position (and expires at once if overdue). An agent
        that had left the queue but whose launch had not begun (`pending`: no container yet) goes
        back to the queue, keeping its place."""
        requeue = row.status == AgentStatus.PENDING and row.queue_round is not None
        if requeue and await self._cas(row.pk, (AgentStatus.PENDING,), status=AgentStatus.QUEUED, dequeued_at=None):
            log.info("agent_requeued", agent_id=row.id)
            return
        if row.status in (AgentStatus.PENDING, AgentStatus.STARTING):
            await self.fail_launch(row.pk, row.id, "the control plane restarted during the launch")
            return
        st = await self.backend.status(row.id)
        if st.state is ContainerState.MISSING:
            await self.finalize(row.pk, ContainerStatus(ContainerState.MISSING))
            return
        await self.resume(row)

    async def resume(self, row: AgentRow) -> None:
        """Capture a running agent again after a restart, from its stored position."""
        source = await self.backend.logs(row.id)
        last = await self.store.run(queries.last_log_seq, agent_pk=row.pk)
        resume = Resume(
            last_seq=last,
            stdout_consumed=row.stdout_consumed,
            stderr_consumed=row.stderr_consumed,
            dropped_lines=row.log_dropped_lines,
            dropped_bytes=row.log_dropped_bytes,
        )
        self.metrics.agents_running.inc()
        # The gateway token is derived again: only its hash is stored.
        masked = [*row.secrets.values(), self.server_key.gateway_token(row.id)]
        self._watch(row.pk, row.id, source, masked, resume)
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

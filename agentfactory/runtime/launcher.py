"""The agent state machine: launch, watch, stop, finalize (SPEC §3 statuses and reasons).

    pending → starting → running → succeeded | failed | cancelled | expired

Admission (catalog, key policy, quotas, idempotency) happens before, in the service layer; the
launcher takes an admitted `pending` row. Every transition is a compare-and-set on the row (the
truth); a terminal status never changes. The seal and the exit code are written in the same
transaction as the terminal status, after the log pump has committed the agent's last line, so
whoever sees a terminal agent sees its final seal. The reaper drives the same public operations.

Its writes on the row (the compare-and-sets, the outbox events of the transitions that start and
end an agent, the terminal `finalize`) are `transitions.Transitions`; its TTL timers `ttl.TtlTimers`;
the egress check of agents with network tools `network_gate`.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import structlog

from agentfactory.backends.base import Backend, ContainerState, ContainerStatus, OutputSource
from agentfactory.catalog import Catalog
from agentfactory.errors import AgentFactoryError, RuntimeUnavailableError
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.capture_queue import Seal
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.logpump import CaptureIncomplete, CaptureInterrupted, LogPump, Resume
from agentfactory.runtime.outcome import never_ran
from agentfactory.runtime.placement import launch_refused
from agentfactory.runtime.spec import agent_spec
from agentfactory.runtime.transitions import Transitions
from agentfactory.runtime.ttl import TtlTimers
from agentfactory.runtime.warm import SandboxPool
from agentfactory.settings import Settings
from agentfactory.store import Store, queries
from agentfactory.store.server_key import ServerKey
from agentfactory.store.tables import ACTIVE, TERMINAL, AgentRow
from agentfactory.vocabulary import AgentStatus, EventType, Reason

log = structlog.get_logger("agentfactory.launcher")


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
        replica_id: str = "local",
        clock: Callable[[], float] = time.time,
    ):
        self.replica_id = replica_id  # the owner this process writes on the agents it runs
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
        self._launching: set[int] = set()  # launches in flight here: the controller keeps off
        # One clock for all the launcher's parts, read through `self.clock` (a test may set it).
        self.ttl = TtlTimers(self.expire_if_due, lambda: self.clock())  # each running agent's expiry
        self.stop_wait_seconds = 10.0  # past the grace, how long a stop waits for its watcher
        self._stopping: set[int] = set()  # stops in progress here
        self._abandoned: set[int] = set()  # adopted by another replica while watched here
        self.pool: SandboxPool | None = None  # warm sandboxes (runtime/warm.py), asked first at each launch
        self.rows = Transitions(
            store=store,
            hub=hub,
            metrics=metrics,
            owner=replica_id,
            agent_document=agent_document,
            clock=lambda: self.clock(),
        )

    async def load(self, pk: int) -> AgentRow | None:
        return await self.rows.load(pk)

    async def active_agents(self) -> list[AgentRow]:
        """The active agents this replica owns."""
        return await self.store.run(queries.list_agents_in, statuses=ACTIVE, owner=self.replica_id)

    def owns(self, row: AgentRow) -> bool:
        return row.owner == self.replica_id

    def watched(self) -> list[int]:
        return list(self._watchers)

    def stopping(self, pk: int) -> bool:
        return pk in self._stopping

    def launches_in_flight(self) -> int:
        return len(self._launching)

    def watching(self, pk: int) -> bool:
        """Whether this process is launching or capturing the agent (the controller keeps off)."""
        return pk in self._watchers or pk in self._launching

    # -- launching -------------------------------------------------------------------------------

    async def launch(self, row: AgentRow, token: str, *, keep_on_engine_down: bool = False) -> AgentRow:
        """Start an admitted agent's container. RuntimeUnavailableError deletes the row (nothing is
        left behind; with `keep_on_engine_down`, for an agent that left the queue, the caller ends
        it) and is raised; any other launch error ends the agent `failed`/`launch_failed`."""
        self._launching.add(row.pk)
        try:
            return await self._launch(row, token, keep_on_engine_down)
        finally:
            self._launching.discard(row.pk)

    async def _launch(self, row: AgentRow, token: str, keep_on_engine_down: bool) -> AgentRow:
        self.hub.track(row.pk)
        try:
            # The engine it runs on, so that only replicas reaching that engine adopt it.
            engine_id = await self.backend.engine_id()
            await self.rows.cas(row.pk, (AgentStatus.PENDING,), status=AgentStatus.STARTING, engine_id=engine_id)
            spec = agent_spec(row=row, token=token, catalog=self.catalog, settings=self.settings)
            claimed = await self.pool.claim(spec) if self.pool is not None else None  # warm, or cold:
            warm, launched = claimed is not None, claimed or await self.backend.launch(spec)
        except RuntimeUnavailableError:
            if keep_on_engine_down:
                raise
            await self.store.run(queries.delete_agent, pk=row.pk)
            log.warning("agent_launch_engine_down", agent_id=row.id)
            raise
        except AgentFactoryError as exc:  # failed, or back to the queue when the cluster is full (placement.py)
            await launch_refused(self, row, exc, [*row.secrets.values(), token])
            return await self.load(row.pk) or row
        started = self.clock()
        moved = await self.rows.transition(
            row.pk,
            (AgentStatus.STARTING,),
            EventType.STARTED,
            status=AgentStatus.RUNNING,
            container_id=launched.container_id,
            warm=warm,
            started_at=started,
            expires_at=started + row.ttl_seconds,
        )
        admitted = row.dequeued_at or row.created_at  # a queued agent's launch begins when it leaves the queue
        self.metrics.launch_duration.observe(max(0.0, started - admitted))
        self.metrics.agents_running.inc()
        log.info("agent_started", agent_id=row.id, launch_seconds=round(started - admitted, 3), warm=warm)
        # The gateway token is in the container's environment: mask it like a secret if printed.
        self._watch(row.pk, row.id, launched.output, [*row.secrets.values(), token], Resume())
        self.ttl.arm(row.pk, started + row.ttl_seconds)
        if moved is None:  # cancelled while it was starting: the watcher finalizes it
            await self.backend.stop(row.id, 0)
        self.hub.bump(row.pk, lines=False)
        return moved or await self.load(row.pk) or row

    async def fail_launch(self, pk: int, agent_id: str, message: str) -> None:
        """End an agent that never ran: `failed`/`launch_failed`, an empty seal, no container."""
        await self.backend.remove(agent_id)
        ended = never_ran(AgentStatus.FAILED, Reason.LAUNCH_FAILED, message, self.clock())
        changed = await self.rows.transition(pk, ACTIVE, EventType.FINISHED, **ended)
        if changed is not None:
            self.metrics.agents_finished.labels(status=AgentStatus.FAILED).inc()
            self.metrics.agents_finished_reason.labels(reason=Reason.LAUNCH_FAILED).inc()
            log.info("agent_finished", agent_id=agent_id, status="failed", reason="launch_failed", error=message)
        self.hub.bump(pk, lines=False)

    # -- TTL -------------------------------------------------------------------------------------

    async def expire_if_due(self, pk: int) -> None:
        """Kill a running agent whose TTL has run out (re-read first: it may have been extended)."""
        row = await self.load(pk)
        if row is None or row.status != AgentStatus.RUNNING:
            return
        if row.expires_at > self.clock():  # extended meanwhile
            self.ttl.arm(pk, row.expires_at)
            return
        log.info("agent_expiring", agent_id=row.id)
        # Past its TTL an agent is killed at once: the TTL was its grace.
        await self.stop(row, Reason.TTL_EXPIRED, 0)

    async def set_expiry(self, row: AgentRow, expires_at: float) -> AgentRow:
        """Move an active agent's `expires_at` (the caller checked the bounds). Any replica may;
        the owner's timer re-reads the row when it fires, and its controller catches an earlier one."""
        await self.store.run(queries.update_agent, pk=row.pk, only_if_status=ACTIVE, expires_at=expires_at)
        if row.status == AgentStatus.RUNNING and self.owns(row):
            self.ttl.arm(row.pk, expires_at)
        self.hub.bump(row.pk, lines=False)
        return await self.load(row.pk) or row

    # -- watching --------------------------------------------------------------------------------

    def _watch(self, pk: int, agent_id: str, source: OutputSource, secrets: list[str], resume: Resume) -> None:
        self._abandoned.discard(pk)
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

    def abandon(self, pk: int) -> None:
        """Another replica adopted this agent (our lease lapsed): stop capturing and timing it
        here, finalize nothing. The log writer already refuses our lines for it."""
        self.ttl.cancel(pk)
        if pk in self._watchers:
            self._abandoned.add(pk)
            self.metrics.agents_running.dec()
            self.pump.close_reader(pk)
        log.warning("agent_adopted_elsewhere", agent_pk=pk)

    async def _finish_when_captured(self, pk: int, agent_id: str, captured: asyncio.Future[Seal | None]) -> None:
        seal: Seal | None = None
        capture_error: str | None = None
        try:
            seal = await captured
        except CaptureInterrupted as exc:
            if not self.pump.stopping and pk not in self._abandoned:
                await self._hand_over(pk, agent_id, str(exc))
            return
        except CaptureIncomplete as exc:
            capture_error = str(exc)
            log.error("agent_capture_incomplete", agent_id=agent_id, error=capture_error)
        except Exception as exc:
            capture_error = f"reading the agent's output broke off ({type(exc).__name__}); what was read is kept"
            log.warning("agent_capture_ended_with_error", agent_id=agent_id, error=type(exc).__name__)
        if self.pump.stopping or pk in self._abandoned:
            return  # shutting down while the container runs on (the next start resumes it), or adopted
        try:
            st = await self.backend.wait(agent_id, timeout=30)
            if st.state is ContainerState.RUNNING:  # its output ended but it runs on
                await self._hand_over(pk, agent_id, "the output ended while the container runs")
                return
            row = await self.rows.finalize(pk, st, seal, capture_error=capture_error)
            if row is not None and row.status in TERMINAL:
                await self.backend.remove(agent_id)
        except RuntimeUnavailableError:
            await self._hand_over(pk, agent_id, "the engine went away before the agent's end was read")
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("agent_finish_failed", agent_id=agent_id)

    async def _hand_over(self, pk: int, agent_id: str, why: str) -> None:
        """This watcher cannot finish the agent: the engine cut its output stream, or stopped
        answering, while the container may run on (it stops, restarts, or restarts with
        live-restore). Stop watching, note the outage on the row (an end it caused is then
        reported as such), and leave the agent to the controller, which resumes or finalizes it
        once the engine answers."""
        self.metrics.agents_running.dec()
        await self.store.run(queries.mark_engine_lost, pks=[pk], at=self.clock())
        log.warning("agent_capture_handed_over", agent_id=agent_id, why=why)

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
        if not self.owns(row):
            return await self._stop_elsewhere(row, grace)
        self._stopping.add(row.pk)
        try:
            return await self._stop(row, grace)
        finally:
            self._stopping.discard(row.pk)

    async def _stop(self, row: AgentRow, grace: float) -> AgentRow:
        watcher = self._watchers.get(row.pk)
        if row.status == AgentStatus.RUNNING:
            await self.backend.stop(row.id, grace)
            if watcher is not None:
                await asyncio.wait({watcher}, timeout=grace + self.stop_wait_seconds)
                if not watcher.done():
                    await self._give_up(row, watcher)
            else:
                st = await self.backend.wait(row.id, timeout=5)
                fresh = await self.rows.finalize(row.pk, st)
                if fresh is not None and fresh.status in TERMINAL:
                    await self.backend.remove(row.id)
        elif watcher is None:  # pending or starting, and no launch in flight here
            await self.backend.remove(row.id)
            await self.rows.finalize(row.pk, ContainerStatus(ContainerState.EXITED, exit_code=None))
        return await self.load(row.pk) or row

    async def _stop_elsewhere(self, row: AgentRow, grace: float) -> AgentRow:
        """Another replica owns the agent: it finalizes it (the seal needs its capture). Stop the
        container here when it is on our engine (the owner's controller stops it otherwise, as it
        sees the stop reason), then wait for the owner's terminal write."""
        if row.status == AgentStatus.RUNNING and row.engine_id is not None:
            try:
                if row.engine_id == await self.backend.engine_id():
                    await self.backend.stop(row.id, grace)
            except RuntimeUnavailableError:
                pass
        loop = asyncio.get_running_loop()
        deadline = loop.time() + grace + self.stop_wait_seconds + 5
        fresh: AgentRow | None = row
        while (remaining := deadline - loop.time()) > 0:
            wake = self.hub.subscribe(row.pk)
            fresh = await self.load(row.pk)
            if fresh is None or fresh.status in TERMINAL:
                wake.cancel()
                break
            await self.hub.wait(row.pk, min(remaining, 0.25), wake)
        return fresh or row

    async def _give_up(self, row: AgentRow, watcher: asyncio.Task[None]) -> None:
        """A watcher that did not finish after its container was stopped: close its reader (its
        capture then ends and it finalizes), or else cancel it and finalize from the engine's
        status and the stored lines' seal."""
        log.warning("agent_watcher_stuck", agent_id=row.id)
        self.pump.close_reader(row.pk)
        await asyncio.wait({watcher}, timeout=5)
        if not watcher.done():
            watcher.cancel()
            await asyncio.wait({watcher}, timeout=1)
        fresh = await self.load(row.pk)
        if fresh is None or fresh.status in TERMINAL:
            return
        st = await self.backend.status(row.id)
        done = await self.rows.finalize(row.pk, st)
        if done is not None and done.status in TERMINAL:
            await self.backend.remove(row.id)

    # -- reconciling -----------------------------------------------------------------------------

    async def reconcile(self, row: AgentRow) -> None:
        """A running agent nobody here watches (after a restart, an adoption, an engine restart):
        its container runs or has exited → capture it again from its stored position (the
        watcher then finalizes an exited one with its real exit code, after its last lines);
        gone → `failed`/`lost`."""
        fresh = await self.load(row.pk)
        if fresh is None or fresh.status != AgentStatus.RUNNING or self.watching(row.pk):
            return
        st = await self.backend.status(row.id)
        if st.state is ContainerState.MISSING:
            await self.rows.finalize(row.pk, st)
            return
        await self.resume(fresh, st)
        if fresh.stop_reason is not None and st.state is ContainerState.RUNNING:
            # A stop asked for while the engine was away never reached the container.
            await self.backend.stop(row.id, self.settings.stop_grace_seconds)

    async def resume(self, row: AgentRow, st: ContainerStatus | None = None) -> None:
        """Capture a running agent again, from its stored position."""
        source = await self.backend.logs(row.id)
        if self.watching(row.pk):  # resumed meanwhile by another path
            source.close()
            return
        last = await self.store.run(queries.last_log_seq, agent_pk=row.pk)
        resume = Resume(
            last_seq=last,
            stdout_consumed=row.stdout_consumed,
            stderr_consumed=row.stderr_consumed,
            dropped_lines=row.log_dropped_lines,
            dropped_bytes=row.log_dropped_bytes,
        )
        if self.watching(row.pk):
            source.close()
            return
        self.metrics.agents_running.inc()
        # The gateway token is derived again: only its hash is stored.
        masked = [*row.secrets.values(), self.server_key.gateway_token(row.id)]
        self._watch(row.pk, row.id, source, masked, resume)
        self.ttl.arm(row.pk, row.expires_at)
        if st is not None and st.state is ContainerState.RUNNING and row.engine_lost_at is not None:
            # It outlived the engine's outage (live-restore): the outage is no longer its story.
            await self.store.run(queries.clear_engine_lost, pk=row.pk)
        log.info("agent_resumed", agent_id=row.id, from_seq=last)

    async def shutdown(self) -> None:
        """Stop watching (containers run on; the next start resumes them)."""
        self.ttl.cancel_all()
        tasks = list(self._watchers.values())
        await asyncio.to_thread(self.pump.stop)
        if tasks:
            await asyncio.wait(tasks, timeout=10)

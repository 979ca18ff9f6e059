"""The launcher's writes on an agent's row. Every one is a compare-and-set on the status and on the
owner (this replica: none lands on an agent another replica adopted); the ones that start and end
an agent append `agent.started` / `agent.finished` to the event log in their own transaction (the
outbox, `queries.transition_agent`). `finalize` is the one terminal write, with its accounting."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import structlog

from agentfactory.backends.base import ContainerState, ContainerStatus
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.capture_queue import Seal
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.outcome import classify_exit
from agentfactory.store import Store, queries
from agentfactory.store.tables import ACTIVE, TERMINAL, AgentRow
from agentfactory.vocabulary import AgentStatus, EventType, Reason

log = structlog.get_logger("agentfactory.launcher")


class Transitions:
    """An agent's row as the replica that runs it moves it (`owner`: this replica's id)."""

    def __init__(
        self,
        *,
        store: Store,
        hub: Hub,
        metrics: Metrics,
        owner: str,
        agent_document: Callable[[AgentRow], str],
        clock: Callable[[], float] = time.time,
    ):
        self.store = store
        self.hub = hub
        self.metrics = metrics
        self.owner = owner
        self.agent_document = agent_document
        self.clock = clock

    async def load(self, pk: int) -> AgentRow | None:
        return await self.store.agent_by_pk(pk)

    async def cas(self, pk: int, only_if: tuple[str, ...] | None, **values: Any) -> bool:
        """A transition of an agent this replica owns (none of one another replica adopted)."""
        return await self.store.run(
            queries.update_agent, pk=pk, only_if_status=only_if, only_if_owner=self.owner, **values
        )

    async def transition(self, pk: int, only_if: tuple[str, ...], event: EventType, **values: Any) -> AgentRow | None:
        """The compare-and-set (on status and owner), with `event` appended to the event log in its
        transaction; the row as it left it (None: it changed nothing)."""
        changed = await self.store.run(
            queries.transition_agent,
            pk=pk,
            only_if_status=only_if,
            only_if_owner=self.owner,
            event=event,
            document=self.agent_document,
            at=self.clock(),
            **values,
        )
        if changed is not None:
            self.hub.bump_events()
        return changed

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
        if st.state is ContainerState.RUNNING:
            # With live-restore an engine reports a container it lost track of as exit code 0; a
            # running container is never an end. The controller resumes it.
            log.warning("finalize_refused_container_running", agent_id=row.id)
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
        changed = await self.transition(
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
        if changed is not None:
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
        self.hub.bump(pk, lines=False)
        return changed if changed is not None else await self.load(pk)

    async def requeue(self, row: AgentRow) -> bool:
        """An agent that had left the queue but whose launch had not begun (`pending`: no container
        yet) when its launcher stopped goes back to the queue, keeping its place (SPEC §10)."""
        if row.status != AgentStatus.PENDING or row.queue_round is None:
            return False
        if await self.cas(row.pk, (AgentStatus.PENDING,), status=AgentStatus.QUEUED, dequeued_at=None):
            log.info("agent_requeued", agent_id=row.id)
            return True
        return False

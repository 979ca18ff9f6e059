"""The controller: every pass brings each agent this replica owns back to the truth, and adopts
the agents of replicas that died.

A pass: adopt the active agents nobody live owns on this engine (a replica whose lease lapsed, one
that stopped, one on this machine whose process is gone), and let go of those another replica
adopted from us; then, for each agent this replica owns: TTL expiry, stuck or interrupted
launches, a stop asked for on another replica, and agents nobody here watches (after a restart,
an adoption, or an engine that went away and came back): their container runs or has exited →
capture resumes from the stored position (an exited one is then finalized with its real exit
code); gone → `lost`. While the engine does not answer, the pass only notes the outage on the
running agents (so an end caused by it is reported truthfully) and waits: when the engine is back,
the next pass catches up, with no restart of ours. Then orphans and retention (agents, and the
event log with its webhook deliveries).

Each decision re-reads the row before acting (a status may have changed since the listing), and
each item is handled in its own try/except so one bad agent never stops a pass. Every action is
one of the launcher's public operations; the controller only decides which, and when.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import structlog

from agentfactory.errors import RuntimeUnavailableError
from agentfactory.observability.logging import describe_error
from agentfactory.runtime.launcher import Launcher
from agentfactory.runtime.loops import Loop
from agentfactory.runtime.network_gate import recheck_egress
from agentfactory.runtime.replicas import Replica
from agentfactory.store import queries
from agentfactory.store.blobs import BlobStore
from agentfactory.store.tables import TERMINAL, AgentRow
from agentfactory.vocabulary import AgentStatus

log = structlog.get_logger("agentfactory.reaper")
LAUNCHING = (AgentStatus.PENDING, AgentStatus.STARTING)
INTERRUPTED = "the control plane that launched it stopped during the launch"


class Reaper(Loop):
    name = "reaper"

    def __init__(
        self,
        *,
        launcher: Launcher,
        replica: Replica,
        interval: float,
        retention_days: float,
        start_deadline: float,
        event_retention_days: float = 7,
        blobs: BlobStore | None = None,
    ):
        self.blobs = blobs
        super().__init__(interval=interval)
        self.launcher = launcher
        self.replica = replica
        self.retention_seconds = retention_days * 86_400
        self.event_retention_seconds = event_retention_days * 86_400
        self.start_deadline = start_deadline
        self.engine_up: bool | None = None  # as the last pass found it

    async def _each(self, items: Sequence[Awaitable[object]]) -> None:
        results = await asyncio.gather(*items, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.error("reaper_item_failed", error=repr(r))

    async def _engine_answers(self) -> bool:
        try:
            await self.launcher.backend.ping()
            if self.replica.engine_id is None:
                self.replica.engine_id = await self.launcher.backend.engine_id()
            up = True
        except RuntimeUnavailableError:
            up = False
        if up != self.engine_up:
            log.info("engine_up" if up else "engine_down")
        self.engine_up = up
        return up

    async def run_once(self) -> None:
        await self._pass(recovering=False)

    async def recover(self) -> None:
        """At start-up: a pass that also fails the launches a previous process left unfinished.
        Lines printed while nobody watched are read back from the engine's copy of the output;
        none is stored twice. The overdue agents go first, so that they expire at once."""
        await self._pass(recovering=True)

    async def _pass(self, *, recovering: bool) -> None:
        lch = self.launcher
        now = lch.clock()
        engine_up = await self._engine_answers()
        adopted: set[int] = set()
        if engine_up:
            await self._let_go()
            adopted = await self._adopt()
        rows = await lch.active_agents()
        running = [r for r in rows if r.status == AgentStatus.RUNNING]
        if not engine_up:
            # Nothing can be decided about containers now; note the outage on the agents it hits.
            await lch.store.run(queries.mark_engine_lost, pks=[r.pk for r in running], at=now)
        else:
            running.sort(key=lambda r: r.expires_at)
            grace = lch.settings.stop_grace_seconds
            await self._each(
                [lch.reconcile(r) for r in running if not lch.watching(r.pk)]
                + [lch.expire_if_due(r.pk) for r in running if r.expires_at <= now and lch.watching(r.pk)]
                + [
                    lch.stop(r, r.stop_reason, grace)
                    for r in running
                    if r.stop_reason and r.expires_at > now and lch.watching(r.pk) and not lch.stopping(r.pk)
                ]
                + [
                    self._fail_stuck(r, self._why_stuck(r, now, recovering or r.pk in adopted))
                    for r in rows
                    if r.status in LAUNCHING and not lch.watching(r.pk)
                ]
                # While agents with a network run, their egress rules are read back and put back if flushed.
                + (
                    [recheck_egress(lch.backend, lch.settings.agent_network)]
                    if any(lch.catalog.needs_network(r.tools) for r in running)
                    else []
                )
            )
            await self._stop_overdue_elsewhere(now)
            await self.remove_orphans()
        purged_pks = await lch.store.run(
            queries.purge_agents_finished_before_with_pks, cutoff=now - self.retention_seconds
        )
        purged = len(purged_pks)
        await self.purge_files(now, purged_pks)
        if purged:
            lch.metrics.agents_purged.inc(purged)
            log.info("agents_purged", count=purged)
        events = await lch.store.run(queries.purge_events_before, cutoff=now - self.event_retention_seconds)
        if events:
            log.info("events_purged", count=events)
        lch.metrics.reaper_passes.inc()
        lch.metrics.reaper_last_pass.set(lch.clock())

    def _why_stuck(self, row: AgentRow, now: float, interrupted: bool) -> str | None:
        if interrupted:
            return INTERRUPTED
        if (row.dequeued_at or row.created_at) < now - self.start_deadline:  # a queued agent's from its dequeue
            return "the agent did not start within the start deadline"
        return None

    async def purge_files(self, now: float, agent_pks: Sequence[int]) -> None:
        """Retention of files (SPEC §9): the artifacts of purged agents, the uploads no agent used
        within their time, and the used ones once their agents are purged."""
        if self.blobs is None:
            return
        blobs, store = self.blobs, self.launcher.store
        gone = await store.run(queries.purge_unused_uploads, now=now)
        gone += await store.run(queries.purge_used_uploads_of_gone_agents)
        for upload_id in gone:
            await asyncio.to_thread(blobs.delete, f"uploads/{upload_id}")
        for pk in agent_pks:
            await asyncio.to_thread(blobs.delete, f"artifacts/{pk}")
        if gone:
            log.info("uploads_purged", count=len(gone))

    async def _adopt(self) -> set[int]:
        """Claim the active agents nobody live owns on this engine; they are then this replica's."""
        lch, rep = self.launcher, self.replica
        if rep.engine_id is None:
            return set()
        pks = await lch.store.run(
            queries.claim_agents,
            owner=lch.replica_id,
            engine_id=rep.engine_id,
            lease_seconds=rep.lease_seconds,
            dead=rep.dead_here(),
        )
        if pks:
            lch.metrics.agents_adopted.inc(len(pks))
            log.info("agents_adopted", count=len(pks), agent_pks=pks[:50])
        return set(pks)

    async def _stop_overdue_elsewhere(self, now: float) -> None:
        """TTLs hold while an agent's owner is dead and not yet replaced: a container on this
        engine past its TTL by a second, with no stop under way (a live owner's timer sets the stop
        reason at the TTL itself), is stopped from here; its stop reason says ttl_expired, and
        whoever captures it finalizes it `expired`."""
        lch, rep = self.launcher, self.replica
        if rep.engine_id is None:
            return
        ids = await lch.store.run(
            queries.claim_overdue_elsewhere,
            owner=lch.replica_id,
            engine_id=rep.engine_id,
            before=now - 1.0,
        )
        for agent_id in ids:
            log.info("agent_expiring_for_its_owner", agent_id=agent_id)
        await self._each([lch.backend.stop(agent_id, 0) for agent_id in ids])

    async def _let_go(self) -> None:
        """Agents watched here that another replica adopted (our lease lapsed): stop watching them."""
        lch = self.launcher
        watched = lch.watched()
        if not watched:
            return
        mine = await lch.store.run(queries.owned_among, owner=lch.replica_id, pks=watched)
        for pk in watched:
            if pk not in mine:
                lch.abandon(pk)

    async def _fail_stuck(self, row: AgentRow, why: str | None) -> None:
        if why is None:
            return
        fresh = await self.launcher.load(row.pk)
        if fresh is None or fresh.status not in LAUNCHING or self.launcher.watching(row.pk):
            return
        if why == INTERRUPTED and await self.launcher.rows.requeue(fresh):
            return  # it had left the queue but its launch had not begun: back in the queue, in its place
        await self.launcher.fail_launch(fresh.pk, fresh.id, why)

    async def remove_orphans(self) -> None:
        """Remove labelled containers whose agent has no row, or is finished and being finalized
        by nobody: never one another live replica owns (it may be finalizing it right now)."""
        lch = self.launcher
        managed = await lch.backend.list_managed()
        if not managed:
            return
        known = await lch.store.run(queries.get_agent_owners, agent_ids=[m.agent_id for m in managed])
        live = {r.id for r in self.replica.live(lch.clock())}
        for m in managed:
            state = known.get(m.agent_id)
            if state is not None:
                pk, status, owner = state
                if status not in TERMINAL or lch.watching(pk):
                    continue
                if owner is not None and owner != lch.replica_id and owner in live:
                    continue
            try:
                await lch.backend.remove(m.agent_id)
                lch.metrics.orphans_reaped.inc()
                log.info("orphan_removed", agent_id=m.agent_id, container_id=m.container_id[:12])
            except Exception as exc:
                log.error("orphan_remove_failed", agent_id=m.agent_id, error=describe_error(exc))

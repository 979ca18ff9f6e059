"""The reaper: TTL expiry, stuck launches, lost containers, orphans, retention (agents, and the event
log with its webhook deliveries); and start-up recovery.

Each decision re-reads the row before acting (a status may have changed since the listing), and
each item is handled in its own try/except so one bad agent never stops a pass. Every action is
one of the launcher's public operations; the reaper only decides which, and when.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import structlog

from agentfactory.observability.logging import describe_error
from agentfactory.runtime.launcher import Launcher
from agentfactory.runtime.loops import Loop
from agentfactory.store import queries
from agentfactory.store.blobs import BlobStore
from agentfactory.store.tables import TERMINAL, AgentRow
from agentfactory.vocabulary import AgentStatus

log = structlog.get_logger("agentfactory.reaper")
LAUNCHING = (AgentStatus.PENDING, AgentStatus.STARTING)


class Reaper(Loop):
    name = "reaper"

    def __init__(
        self,
        *,
        launcher: Launcher,
        interval: float,
        retention_days: float,
        start_deadline: float,
        event_retention_days: float = 7,
        blobs: BlobStore | None = None,
    ):
        self.blobs = blobs
        super().__init__(interval=interval)
        self.launcher = launcher
        self.retention_seconds = retention_days * 86_400
        self.event_retention_seconds = event_retention_days * 86_400
        self.start_deadline = start_deadline

    async def _each(self, items: Sequence[Awaitable[None]]) -> None:
        results = await asyncio.gather(*items, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.error("reaper_item_failed", error=repr(r))

    async def run_once(self) -> None:
        lch = self.launcher
        now = lch.clock()
        rows = await lch.active_agents()
        running = [r for r in rows if r.status == AgentStatus.RUNNING]
        await self._each(
            [lch.expire_if_due(r.pk) for r in running if r.expires_at <= now]
            + [
                self._fail_stuck(r)
                for r in rows
                if r.status in LAUNCHING
                and (r.dequeued_at or r.created_at) < now - self.start_deadline
                and not lch.watching(r.pk)
            ]
            + [lch.finalize_if_lost(r) for r in running if not lch.watching(r.pk)]
            # While agents with a network run, their egress rules are read back and put back if flushed.
            + ([lch.recheck_egress()] if any(lch.catalog.needs_network(r.tools) for r in running) else [])
        )
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

    async def _fail_stuck(self, row: AgentRow) -> None:
        fresh = await self.launcher.load(row.pk)
        if fresh is None or fresh.status not in LAUNCHING:
            return
        await self.launcher.fail_launch(fresh.pk, fresh.id, "the agent did not start within the start deadline")

    async def remove_orphans(self) -> None:
        """Remove labelled containers whose agent has no row (or is finished and not being finalized)."""
        lch = self.launcher
        managed = await lch.backend.list_managed()
        if not managed:
            return
        known = await lch.store.run(queries.get_agent_states, agent_ids=[m.agent_id for m in managed])
        for m in managed:
            state = known.get(m.agent_id)
            orphan = state is None or (state[1] in TERMINAL and not lch.watching(state[0]))
            if orphan:
                try:
                    await lch.backend.remove(m.agent_id)
                    lch.metrics.orphans_reaped.inc()
                    log.info("orphan_removed", agent_id=m.agent_id, container_id=m.container_id[:12])
                except Exception as exc:
                    log.error("orphan_remove_failed", agent_id=m.agent_id, error=describe_error(exc))

    async def recover(self) -> None:
        """At start-up: resume running agents, expire overdue ones, fail interrupted launches,
        remove orphans. Lines printed while the control plane was down are read back from the
        engine's copy of the output; none is stored twice. Agents are handled concurrently, the
        overdue ones first, so that they expire within moments of the restart."""
        lch = self.launcher
        rows = await lch.active_agents()
        now = lch.clock()
        rows.sort(key=lambda r: (r.status != AgentStatus.RUNNING or r.expires_at > now, r.expires_at))
        results = await asyncio.gather(*(lch.recover(r) for r in rows), return_exceptions=True)
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, Exception):
                log.error("recover_failed", agent_id=row.id, error=repr(result))
        await self.remove_orphans()

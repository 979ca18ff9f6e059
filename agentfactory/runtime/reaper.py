"""The reaper: TTL expiry, stuck launches, lost containers, orphans, retention; and start-up recovery.

Each decision re-reads the row before acting (a status may have changed since the listing), and
each item is handled in its own try/except so one bad agent never stops a pass.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Sequence

import structlog

from agentfactory.backends.base import ContainerState, ContainerStatus
from agentfactory.backends.docker_spec import container_name
from agentfactory.observability.logging import describe_error
from agentfactory.runtime.launcher import Launcher
from agentfactory.runtime.loops import Loop
from agentfactory.store import queries
from agentfactory.store.tables import ACTIVE, TERMINAL, AgentRow

log = structlog.get_logger("agentfactory.reaper")
TTL_KILL_GRACE = 0.0  # past its TTL an agent is killed at once: the TTL was its grace


class Reaper(Loop):
    name = "reaper"

    def __init__(self, *, launcher: Launcher, interval: float, retention_days: float, start_deadline: float):
        super().__init__(interval=interval)
        self.launcher = launcher
        self.retention_seconds = retention_days * 86_400
        self.start_deadline = start_deadline

    def _active_rows(self) -> list[AgentRow]:
        with self.launcher.store.session() as s:
            return queries.list_agents_in(session=s, statuses=ACTIVE)

    async def _each(self, items: Sequence[Awaitable[None]]) -> None:
        results = await asyncio.gather(*items, return_exceptions=True)
        for r in results:
            if isinstance(r, BaseException):
                log.error("reaper_item_failed", error=repr(r))

    async def run_once(self) -> None:
        lch = self.launcher
        now = lch.clock()
        rows = await asyncio.to_thread(self._active_rows)
        await self._each(
            [self._expire(r) for r in rows if r.status == "running" and r.expires_at <= now]
            + [
                self._fail_stuck(r)
                for r in rows
                if r.status in ("pending", "starting")
                and r.created_at < now - self.start_deadline
                and not lch.watching(r.pk)
            ]
            + [self._check_lost(r) for r in rows if r.status == "running" and not lch.watching(r.pk)]
        )
        await self.remove_orphans()
        purged = await asyncio.to_thread(self._purge, now - self.retention_seconds)
        if purged:
            lch.metrics.agents_purged.inc(purged)
            log.info("agents_purged", count=purged)
        lch.metrics.reaper_passes.inc()
        lch.metrics.reaper_last_pass.set(lch.clock())

    def _purge(self, cutoff: float) -> int:
        with self.launcher.store.session() as s:
            return queries.purge_agents_finished_before(session=s, cutoff=cutoff)

    async def _expire(self, row: AgentRow) -> None:
        fresh = await asyncio.to_thread(self.launcher._load, row.pk)
        if fresh is None or fresh.status != "running" or fresh.expires_at > self.launcher.clock():
            return  # finished, or its TTL was extended, since the listing
        log.info("agent_expiring", agent_id=fresh.id)
        await self.launcher.stop(fresh, "ttl_expired", TTL_KILL_GRACE)

    async def _fail_stuck(self, row: AgentRow) -> None:
        fresh = await asyncio.to_thread(self.launcher._load, row.pk)
        if fresh is None or fresh.status not in ("pending", "starting"):
            return
        await self.launcher.backend.remove(container_name(fresh.id))
        await self.launcher._finalize_launch_failure(
            fresh.pk, fresh.id, "the agent did not start within the start deadline"
        )

    async def _check_lost(self, row: AgentRow) -> None:
        if not row.container_id:
            return
        st = await self.launcher.backend.status(row.container_id)
        if st.state is ContainerState.MISSING:
            fresh = await asyncio.to_thread(self.launcher._load, row.pk)
            if fresh is not None and fresh.status == "running" and not self.launcher.watching(row.pk):
                await self.launcher.finalize(row.pk, st)

    async def remove_orphans(self) -> None:
        """Remove labelled containers whose agent has no row (or is finished and not being finalized)."""
        lch = self.launcher
        managed = await lch.backend.list_managed()
        if not managed:
            return
        ids = [m.agent_id for m in managed]

        def states() -> dict[str, tuple[int, str]]:
            with lch.store.session() as s:
                return queries.get_agent_states(session=s, agent_ids=ids)

        known = await asyncio.to_thread(states)
        for m in managed:
            state = known.get(m.agent_id)
            orphan = state is None or (state[1] in TERMINAL and not lch.watching(state[0]))
            if orphan:
                try:
                    await lch.backend.remove(m.container_id)
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
        rows = await asyncio.to_thread(self._active_rows)
        now = lch.clock()
        rows.sort(key=lambda r: (r.status != "running" or r.expires_at > now, r.expires_at))

        async def recover_one(row: AgentRow) -> None:
            if row.status in ("pending", "starting"):
                await lch.backend.remove(container_name(row.id))
                await lch._finalize_launch_failure(row.pk, row.id, "the control plane restarted during the launch")
                return
            st = await lch.backend.status(row.container_id or container_name(row.id))
            if st.state is ContainerState.MISSING:
                await lch.finalize(row.pk, ContainerStatus(ContainerState.MISSING))
                return
            await lch.resume(row)  # arms its TTL timer: an overdue agent expires at once

        results = await asyncio.gather(*(recover_one(r) for r in rows), return_exceptions=True)
        for row, result in zip(rows, results, strict=True):
            if isinstance(result, Exception):
                log.error("recover_failed", agent_id=row.id, error=repr(result))
        await self.remove_orphans()

"""Peak memory and CPU seconds of running agents, sampled from the engine on a loop.

The engine's figures vanish with the container, so they are sampled while it runs and the
largest memory / latest CPU figure is kept on the row ("where the engine reports them").
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import update

from agentfactory.backends.base import Backend
from agentfactory.runtime.loops import Loop
from agentfactory.store import Store, queries
from agentfactory.store.tables import AgentRow

log = structlog.get_logger("agentfactory.usage")


class UsageSampler(Loop):
    name = "usage-sampler"

    def __init__(self, *, store: Store, backend: Backend, interval: float):
        super().__init__(interval=interval)
        self.store = store
        self.backend = backend

    def _running(self) -> list[tuple[int, str]]:
        with self.store.session() as s:
            rows = queries.list_agents_in(session=s, statuses=("running",))
            return [(r.pk, r.container_id) for r in rows if r.container_id]

    def _save(self, pk: int, peak: int | None, cpu: float | None) -> None:
        with self.store.session() as s:
            row = queries.get_agent_by_pk(session=s, pk=pk)
            if row is None or row.status != "running":
                return
            values: dict[str, object] = {}
            if peak is not None and (row.peak_memory_bytes or 0) < peak:
                values["peak_memory_bytes"] = peak
            if cpu is not None:
                values["cpu_seconds"] = cpu
            if values:
                s.execute(update(AgentRow).where(AgentRow.pk == pk).values(**values))

    async def run_once(self) -> None:
        running = await asyncio.to_thread(self._running)

        async def sample(pk: int, container_id: str) -> None:
            usage = await self.backend.usage(container_id)
            await asyncio.to_thread(self._save, pk, usage.peak_memory_bytes, usage.cpu_seconds)

        results = await asyncio.gather(*(sample(pk, cid) for pk, cid in running), return_exceptions=True)
        for r in results:  # one container that vanished mid-sample does not fail the pass
            if isinstance(r, Exception):
                log.debug("usage_sample_failed", error=repr(r))

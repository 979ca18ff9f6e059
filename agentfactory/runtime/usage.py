"""Peak memory and CPU seconds of running agents, sampled from the engine on a loop.

The engine's figures vanish with the container, so they are sampled while it runs and the
largest memory / latest CPU figure is kept on the row ("where the engine reports them"). A pass
samples at most `per_pass` agents, round-robin, so the cost stays flat however many run.
"""

from __future__ import annotations

import asyncio

import structlog
from sqlalchemy import update

from agentfactory.backends.base import Backend, Usage
from agentfactory.runtime.loops import Loop
from agentfactory.store import Store, queries
from agentfactory.store.tables import AgentRow

log = structlog.get_logger("agentfactory.usage")


class UsageSampler(Loop):
    name = "usage-sampler"

    def __init__(self, *, store: Store, backend: Backend, interval: float, per_pass: int = 20):
        super().__init__(interval=interval)
        self.store = store
        self.backend = backend
        self.per_pass = per_pass
        self._next = 0

    def _running(self) -> list[tuple[int, str, int | None]]:
        with self.store.session() as s:
            rows = queries.list_agents_in(session=s, statuses=("running",))
            return [(r.pk, r.container_id, r.peak_memory_bytes) for r in rows if r.container_id]

    def _save(self, samples: list[tuple[int, int | None, Usage]]) -> None:
        with self.store.session() as s:
            for pk, known_peak, usage in samples:
                values: dict[str, object] = {}
                if usage.peak_memory_bytes is not None and (known_peak or 0) < usage.peak_memory_bytes:
                    values["peak_memory_bytes"] = usage.peak_memory_bytes
                if usage.cpu_seconds is not None:
                    values["cpu_seconds"] = usage.cpu_seconds
                if values:
                    s.execute(update(AgentRow).where(AgentRow.pk == pk, AgentRow.status == "running").values(**values))

    async def run_once(self) -> None:
        running = await asyncio.to_thread(self._running)
        if not running:
            return
        start = self._next % len(running)
        chosen = (running[start:] + running[:start])[: self.per_pass]
        self._next = start + len(chosen)
        # Two samples at a time: each is engine I/O plus a little Python in a thread, and twenty at
        # once contend with the event loop for the GIL (stalls of tens of ms were seen in the API).
        gate = asyncio.Semaphore(2)

        async def sample(container_id: str) -> Usage:
            async with gate:
                return await self.backend.usage(container_id)

        results = await asyncio.gather(*(sample(cid) for _pk, cid, _peak in chosen), return_exceptions=True)
        samples = []
        for (pk, _cid, peak), result in zip(chosen, results, strict=True):
            if isinstance(result, Usage):
                samples.append((pk, peak, result))
            else:  # a container that ended mid-sample does not fail the pass
                log.debug("usage_sample_failed", error=repr(result))
        await asyncio.to_thread(self._save, samples)

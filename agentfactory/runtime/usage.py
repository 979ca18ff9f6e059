"""Peak memory and CPU seconds of running agents, sampled from the engine on a loop.

The engine's figures vanish with the container, so they are sampled while it runs and the
largest memory / latest CPU figure is kept on the row ("where the engine reports them"). A pass
samples at most `per_pass` agents, round-robin, so the cost stays flat however many run.
"""

from __future__ import annotations

import asyncio

import structlog

from agentfactory.backends.base import Backend, ResourceUsage
from agentfactory.runtime.loops import Loop
from agentfactory.store import Store, queries
from agentfactory.vocabulary import AgentStatus

log = structlog.get_logger("agentfactory.usage")


class UsageSampler(Loop):
    name = "usage-sampler"

    def __init__(self, *, store: Store, backend: Backend, interval: float, per_pass: int = 20):
        super().__init__(interval=interval)
        self.store = store
        self.backend = backend
        self.per_pass = per_pass
        self._next = 0

    async def run_once(self) -> None:
        running = await self.store.run(queries.list_agents_in, statuses=(AgentStatus.RUNNING,))
        if not running:
            return
        start = self._next % len(running)
        chosen = (running[start:] + running[:start])[: self.per_pass]
        self._next = start + len(chosen)
        # Two samples at a time: each is engine I/O plus a little Python in a thread, and twenty at
        # once contend with the event loop for the GIL (stalls of tens of ms were seen in the API).
        gate = asyncio.Semaphore(2)

        async def sample(agent_id: str) -> ResourceUsage:
            async with gate:
                return await self.backend.usage(agent_id)

        results = await asyncio.gather(*(sample(r.id) for r in chosen), return_exceptions=True)
        samples = []
        for row, result in zip(chosen, results, strict=True):
            if isinstance(result, ResourceUsage):
                samples.append((row.pk, result.peak_memory_bytes, result.cpu_seconds))
            else:  # a container that ended mid-sample does not fail the pass
                log.debug("usage_sample_failed", error=repr(result))
        await self.store.run(queries.save_resource_usage, samples=samples)

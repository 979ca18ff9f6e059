"""The loop that adds this replica's tally of quota refusals per key (`observability/rejections.py`)
to the database: one upsert every few seconds whatever the number of refusals, so every replica's
refusals reach the dashboard's usage charts and a flood of refused requests costs no write each."""

from __future__ import annotations

import time

import structlog

from agentfactory.observability.rejections import RejectionTally
from agentfactory.runtime.loops import Loop
from agentfactory.store import Store, queries

log = structlog.get_logger("agentfactory.rejections")
FLUSH_SECONDS = 5.0
KEEP_SECONDS = 100 * 86_400  # the usage page shows up to 90 days
PURGE_EVERY_SECONDS = 3600.0


class RejectionFlusher(Loop):
    name = "rejections"

    def __init__(self, *, store: Store, tally: RejectionTally, interval: float = FLUSH_SECONDS):
        super().__init__(interval=interval, max_backoff=60.0)
        self.store = store
        self.tally = tally
        self._purged_at = 0.0

    async def run_once(self) -> None:
        counts = self.tally.take()
        if counts:
            try:
                await self.store.run(queries.add_quota_rejections, counts=counts)
            except Exception:
                self.tally.give_back(counts)  # the next pass tries again (the tally stays bounded)
                raise
        if self.tally.lost:
            log.warning("quota_rejections_not_recorded", refusals=self.tally.lost, detail="the tally was full")
            self.tally.lost = 0
        now = time.time()
        if now - self._purged_at > PURGE_EVERY_SECONDS:
            self._purged_at = now
            await self.store.run(queries.purge_quota_rejections_before, cutoff=now - KEEP_SECONDS)

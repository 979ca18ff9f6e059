"""The one loop primitive: `run_once()` does a pass; `run(stop)` repeats it with jitter and backoff.

After Prefect's service loop and arq's burst mode: every periodic job can be driven one pass at a
time (tests, `agentfactory reap --once`), and a failing pass never kills the loop. A loop that has
work sooner than its interval is `poke()`d (the next pass starts at once) or sets `wake_in` during
a pass (the next pass starts within that many seconds). A loop with `settle` lets the pokes of a
burst gather for that long after a pass, so that they make one pass, not one each.
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import random

import structlog

log = structlog.get_logger("agentfactory.loops")


class Loop(abc.ABC):
    name = "loop"

    def __init__(self, *, interval: float, max_backoff: float = 60.0, settle: float = 0.0):
        self.interval = interval
        self.settle = settle
        self.max_backoff = max_backoff
        self.failures = 0
        self.wake_in: float | None = None
        self._poked = asyncio.Event()

    def poke(self) -> None:
        """Start the next pass now rather than at the interval (call on the loop's thread)."""
        self._poked.set()

    @abc.abstractmethod
    async def run_once(self) -> None:
        """One pass. Isolate items from each other inside it; raise only when the pass itself failed."""

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            self._poked.clear()
            self.wake_in = None
            try:
                await self.run_once()
                self.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception:
                self.failures += 1
                log.exception("loop_pass_failed", loop=self.name, failures=self.failures)
            delay = self.interval * (1 + random.uniform(-0.1, 0.1))
            if self.failures:  # backing off: pokes wait too
                delay = min(self.max_backoff, self.interval * 2**self.failures)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=delay)
                continue
            if self.wake_in is not None:
                delay = min(delay, max(0.005, self.wake_in))
            if self.settle:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), timeout=min(self.settle, delay))
            waits = {asyncio.ensure_future(stop.wait()), asyncio.ensure_future(self._poked.wait())}
            _done, pending = await asyncio.wait(waits, timeout=delay, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()

"""This process as one replica of the control plane (SPEC §13): its id, its lease, the database's clock.

Every replica renews a lease row (`replicas`) on a loop; time is the database's, so replicas whose
own clocks disagree still judge a lease (and a TTL) alike. A replica whose lease was not renewed
within `lease_seconds` is dead to the others: the controller of any replica on the same engine
adopts its agents. One on this machine whose process is gone is dead at once (no wait for the
lease), so a restarted replica picks up its predecessor's agents in its first pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import Callable

import structlog

from agentfactory.backends.base import Backend
from agentfactory.errors import RuntimeUnavailableError
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.loops import Loop
from agentfactory.store import Store, queries
from agentfactory.store.tables import ReplicaRow

log = structlog.get_logger("agentfactory.replicas")


def new_replica_id() -> str:
    """A fresh id per process: replicas on one machine need no setting of their own."""
    return f"{socket.gethostname()[:40]}-{os.getpid()}-{secrets.token_hex(3)}"


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


class Replica(Loop):
    """The lease loop. `clock()` is the database's time (this machine's, corrected by the offset
    measured at each heartbeat): the launcher's TTLs and the controller's decisions use it."""

    name = "lease"

    def __init__(
        self,
        *,
        store: Store,
        backend: Backend,
        metrics: Metrics,
        replica_id: str,
        adopt_after: float,
        url: str | None = None,
        host: str | None = None,
    ):
        # Lapsed after 60 % of adopt_after, renewed 4 times within that, so that a dead replica's
        # agents are adopted (a controller pass later) within adopt_after of its death.
        self.lease_seconds = max(1.0, adopt_after * 0.6)
        super().__init__(interval=self.lease_seconds / 4, max_backoff=self.lease_seconds / 4)
        self.store = store
        self.backend = backend
        self.metrics = metrics
        self.id = replica_id
        self.url = url
        self.host = host or socket.gethostname()
        self.pid = os.getpid()
        self.engine_id: str | None = None
        self.offset = 0.0  # database clock minus this machine's
        self.renewed_at: float | None = None  # time.monotonic() of the last renewal
        self.leases: list[ReplicaRow] = []
        self.db_error: str | None = None
        self.first_renewal: float | None = None  # the database's time of our first renewal
        self.leasing = False  # whether this process runs the lease loop (not in one-shot commands)
        self.warm: Callable[[], tuple[int, int]] | None = None  # its warm pool now: (idle, target)

    def clock(self) -> float:
        return time.time() + self.offset

    async def run_once(self) -> None:
        self.leasing = True
        # The engine's id (Docker's `info`, a slow call) is asked while the lease is renewed.
        ask = asyncio.ensure_future(self._ask_engine_id()) if self.engine_id is None else None
        try:
            await self._renew()
        finally:
            if ask is not None:
                await ask

    async def _ask_engine_id(self) -> None:
        with contextlib.suppress(RuntimeUnavailableError):
            self.engine_id = await self.backend.engine_id()

    async def _renew(self) -> None:
        t0 = time.time()
        try:
            now, leases = await self.store.run(
                queries.heartbeat_replica,
                replica_id=self.id,
                host=self.host,
                pid=self.pid,
                url=self.url,
                engine_id=self.engine_id,
                warm=self.warm() if self.warm is not None else None,
            )
        except Exception as exc:
            self.db_error = type(exc).__name__
            raise
        t1 = time.time()
        self.db_error = None
        self.offset = now - (t0 + t1) / 2
        self.renewed_at = time.monotonic()
        if self.first_renewal is None:
            self.first_renewal = now
        self.leases = leases
        self.metrics.replicas_live.set(len(self.live(now)))
        # Long-dead leases are forgotten; their agents, if any are left, stay adoptable.
        await self.store.run(queries.delete_replicas_lapsed_before, cutoff=now - 3600)

    def live(self, now: float) -> list[ReplicaRow]:
        dead = set(self.dead_here())
        fresh = now - self.lease_seconds
        return [r for r in self.leases if r.id == self.id or (r.heartbeat_at >= fresh and r.id not in dead)]

    def dead_here(self) -> list[str]:
        """Leases of replicas on this machine whose process is gone, or that had this very pid
        and had missed a renewal already when we started (a predecessor, as in a restarted
        container, where every incarnation has the same pid)."""
        first = self.first_renewal
        return [
            r.id
            for r in self.leases
            if r.id != self.id
            and r.host == self.host
            and (
                (r.pid == self.pid and first is not None and r.heartbeat_at < first - 1.5 * self.interval)
                or (r.pid != self.pid and _process_gone(r.pid))
            )
        ]

    def lease_state(self) -> str:
        """ "ok" while the lease is renewed in time; else why not."""
        if self.renewed_at is None:
            return f"not held yet: {self.db_error or 'no heartbeat yet'}"
        age = time.monotonic() - self.renewed_at
        if age > self.lease_seconds:
            return f"lapsed: last renewed {age:.1f}s ago ({self.db_error or 'heartbeat late'})"
        return "ok"

    async def release(self) -> None:
        """At shutdown, after capture stopped: leave this replica's agents to be adopted at once."""
        try:
            n = await self.store.run(queries.release_replica, replica_id=self.id)
            log.info("replica_released", replica_id=self.id, agents=n)
        except Exception as exc:
            log.warning("replica_release_failed", error=repr(exc))

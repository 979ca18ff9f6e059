"""The warm pool (SPEC §10): sandboxes started ahead of demand, each handed to one agent.

`AGENTFACTORY_WARM_POOL_SIZE=N` keeps N sandboxes of the default profile (`spec.warm_spec`: the runtime
image, the catalog's limits, no network) started, their runtime waiting on its stdin. The launcher
asks `claim(spec)` first for every launch: an agent whose spec has the same profile (`spec.profile`:
everything but who it is for and its environment) gets an idle sandbox, which the backend renames
after the agent and writes the agent's environment to (its env, secrets and gateway token, as one
JSON line; the runtime then fetches its spec from the gateway as a cold one does). Anything else, or
an empty pool, is a miss: the agent starts cold, with no error. A sandbox is never reused: a claimed
one is the agent's container from then on, and the launcher watches, stops and removes it as any.

The pool refills in the background, one sandbox at a time, and only while no launch is in flight
here (real launches come first) and the capacity has room: running agents plus idle and starting
sandboxes never exceed `max_running`, and surplus idle sandboxes are removed when agents need the
room. Sandboxes that no live process holds (a crash, a previous run) are removed by the sweep; on
shutdown the pool is drained.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, replace

import structlog

from agentfactory.backends.base import AgentSpec, Launched, Sandboxes
from agentfactory.catalog import Catalog
from agentfactory.errors import RuntimeUnavailableError
from agentfactory.observability.logging import describe_error
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.loops import Loop
from agentfactory.runtime.spec import profile, warm_spec
from agentfactory.settings import Settings
from agentfactory.store import Store, queries

log = structlog.get_logger("agentfactory.warm")
SANDBOX_PREFIX = "warm-"
REFILL_INTERVAL = 5.0  # seconds between passes when nothing pokes the pool
YIELD_SECONDS = 0.1  # a refill waiting for the launches in flight looks again this soon
SWEEP_SECONDS = 10.0  # the engine is searched for sandboxes nobody holds at most this often


@dataclass
class Sandbox:
    id: str
    launched: Launched


def assignment(spec: AgentSpec) -> bytes:
    """What a claimed sandbox reads on its stdin: the agent's environment, one line of JSON."""
    return json.dumps({"env": dict(spec.env)}, separators=(",", ":")).encode() + b"\n"


class SandboxPool(Loop):
    name = "warm_pool"

    def __init__(
        self,
        *,
        size: int,
        sandboxes: Sandboxes,
        settings: Settings,
        catalog: Catalog,
        store: Store,
        metrics: Metrics,
        owner: str,
        max_running: Callable[[], int],
        busy: Callable[[], bool],
        live_owners: Callable[[], set[str]],
    ):
        super().__init__(interval=REFILL_INTERVAL)
        self.size = size
        self.sandboxes = sandboxes
        self.store = store
        self.metrics = metrics
        self.owner = owner
        self.max_running = max_running
        self.busy = busy
        self.live_owners = live_owners
        self.template = warm_spec(sandbox_id="", owner=owner, catalog=catalog, settings=settings)
        self.profile = profile(self.template)
        self._idle: deque[Sandbox] = deque()
        self._starting = 0
        self._claiming: set[str] = set()  # being renamed for their agent right now
        self._closing = False
        self._swept_at = -1e9

    # -- what the others see ---------------------------------------------------------------------

    @property
    def idle(self) -> int:
        return len(self._idle)

    @property
    def starting(self) -> int:
        return self._starting

    def _gauges(self) -> None:
        self.metrics.pool_sandboxes.labels(state="idle").set(len(self._idle))
        self.metrics.pool_sandboxes.labels(state="starting").set(self._starting)

    # -- claiming --------------------------------------------------------------------------------

    def fits(self, spec: AgentSpec) -> bool:
        return profile(spec) == self.profile

    async def claim(self, spec: AgentSpec) -> Launched | None:
        """An idle sandbox given to the agent of `spec` (renamed after it, its environment written),
        or None (a miss): start it cold. RuntimeUnavailableError when the engine does not answer."""
        if self.size <= 0:
            return None
        try:
            launched = await self._claim(spec) if self.fits(spec) and not self._closing else None
        finally:
            self.poke()  # refill (or make room for the cold start)
        self.metrics.pool_claims.labels(outcome="hit" if launched is not None else "miss").inc()
        return launched

    async def _claim(self, spec: AgentSpec) -> Launched | None:
        while self._idle:
            sandbox = self._idle.popleft()
            self._claiming.add(sandbox.id)
            self._gauges()
            try:
                await self.sandboxes.assign(sandbox.id, spec.agent_id, sandbox.launched, assignment(spec))
            except RuntimeUnavailableError:
                sandbox.launched.output.close()
                raise
            except Exception as exc:
                log.warning("warm_claim_failed", sandbox=sandbox.id, agent_id=spec.agent_id, error=describe_error(exc))
                await self._discard(sandbox)
                continue
            finally:
                self._claiming.discard(sandbox.id)
            log.info("warm_sandbox_claimed", sandbox=sandbox.id, agent_id=spec.agent_id)
            return sandbox.launched
        return None

    # -- refilling -------------------------------------------------------------------------------

    async def run_once(self) -> None:
        if self._closing:
            return
        if self.size <= 0:  # no pool: one sweep, for what an earlier run with a pool left
            if self._swept_at < 0:
                await self.sweep()
            return
        if time.monotonic() - self._swept_at >= SWEEP_SECONDS:
            await self.sweep()
        room = await self._room()
        while room < 0 and self._idle:  # agents need the room: they come first
            await self._discard(self._idle.pop())
            room += 1
        if self._closing or len(self._idle) + self._starting >= self.size or room <= 0:
            return
        if self.busy():  # real launches in flight here come first
            self.wake_in = YIELD_SECONDS
            return
        await self._start_one()
        if len(self._idle) + self._starting < self.size:
            self.wake_in = 0.0

    async def _room(self) -> int:
        """Slots of the capacity that neither agents nor this pool's sandboxes hold."""
        held = sum(active for active, _queued in (await self.store.run(queries.count_agents_by_key)).values())
        return self.max_running() - held - len(self._idle) - self._starting

    async def _start_one(self) -> None:
        spec = replace(self.template, agent_id=SANDBOX_PREFIX + secrets.token_hex(8))
        self._starting += 1
        self._gauges()
        t0 = time.monotonic()
        try:
            launched = await self.sandboxes.start(spec)
        finally:
            self._starting -= 1
            self._gauges()
        sandbox = Sandbox(id=spec.agent_id, launched=launched)
        if self._closing:
            await self._discard(sandbox)
            return
        self._idle.append(sandbox)
        self._gauges()
        log.info("warm_sandbox_started", sandbox=sandbox.id, seconds=round(time.monotonic() - t0, 3))

    async def _discard(self, sandbox: Sandbox) -> None:
        sandbox.launched.output.close()
        try:
            await self.sandboxes.remove(sandbox.id)
        except Exception as exc:  # the sweep removes it later
            log.warning("warm_sandbox_remove_failed", sandbox=sandbox.id, error=describe_error(exc))
        self._gauges()

    async def sweep(self) -> None:
        """Remove the sandboxes nobody holds: a previous run's (this replica's id, not in memory), a
        dead replica's, and our own whose runtime is no longer running (it would fail its agent)."""
        self._swept_at = time.monotonic()
        held = {s.id: s for s in self._idle}
        live = self.live_owners()  # empty while the leases are unknown: then only ours are removed
        for found in await self.sandboxes.idle():
            mine = found.owner == self.owner
            if found.sandbox_id in self._claiming:
                continue
            if found.sandbox_id in held:
                if found.running or held[found.sandbox_id] not in self._idle:
                    continue  # alive, or claimed meanwhile
                self._idle.remove(held[found.sandbox_id])
                held[found.sandbox_id].launched.output.close()
            elif not mine and (not live or found.owner in live):
                continue  # another live replica's
            elif self._starting and mine:
                continue  # perhaps the one being started now
            with contextlib.suppress(Exception):
                await self.sandboxes.remove(found.sandbox_id)
                log.info("warm_sandbox_removed", sandbox=found.sandbox_id, owner=found.owner, running=found.running)
        self._gauges()

    async def drain(self) -> None:
        """Shutdown: remove every idle sandbox (and any of ours a start left on the engine)."""
        self._closing = True
        idle = list(self._idle)
        self._idle.clear()
        for sandbox in idle:
            sandbox.launched.output.close()
        await asyncio.gather(*(self.sandboxes.remove(s.id) for s in idle), return_exceptions=True)
        with contextlib.suppress(Exception):
            leftovers = [s.sandbox_id for s in await self.sandboxes.idle() if s.owner == self.owner]
            await asyncio.gather(*(self.sandboxes.remove(sid) for sid in leftovers), return_exceptions=True)
        self._gauges()
        log.info("warm_pool_drained", removed=len(idle))

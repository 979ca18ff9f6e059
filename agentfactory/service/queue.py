"""The cluster's capacity and the queue (SPEC §10): who gets the next slot, and when.

The truth is in the database, never in memory: a queued agent is a row in status `queued` with its
round (`queue_round`) and deadline (`queue_deadline`). The order slots go in is (round, arrival):
a key's agents are first in, first out, and a new agent joins the round after its key's last queued
one (never before the round being served), so keys take turns. Admission (`service/admission.py`)
and the dispatcher take the same capacity lock before they count, and the dispatcher moves each
agent `queued → pending` by compare-and-set: no slot is given twice, no agent started twice, also
with several replicas. After a restart the dispatcher simply reads the queue again.

Nothing here knows what runs agents: a slot is a row in `pending`/`starting`/`running`, whatever
the backend, and the launch is the launcher's.
"""

from __future__ import annotations

import asyncio
import bisect
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import structlog

from agentfactory.backends.base import Backend
from agentfactory.catalog import Catalog
from agentfactory.errors import RuntimeUnavailableError
from agentfactory.observability.logging import describe_error
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.launcher import Launcher
from agentfactory.runtime.loops import Loop
from agentfactory.runtime.outcome import never_ran
from agentfactory.runtime.warm import SandboxPool
from agentfactory.schemas import AgentOut, CapacityOut, KeyCapacity, WarmPool
from agentfactory.service.views import agent_out
from agentfactory.settings import Settings
from agentfactory.store import Store, queries
from agentfactory.store.queries import QueueSnapshot
from agentfactory.store.server_key import ServerKey
from agentfactory.store.tables import AgentRow
from agentfactory.vocabulary import AgentStatus, EventType, Reason

log = structlog.get_logger("agentfactory.queue")
MIB, GIB = 1024 * 1024, 1024 * 1024 * 1024
FALLBACK_MAX_RUNNING = 8  # the engine could not say how much memory it has
PACE_SAMPLE = 20  # recent ends the pace is measured over: few, so it follows a change of pace quickly
PACE_MAX_AGE = 600.0  # ends older than this say nothing about the pace now
PACE_CACHE_SECONDS = 1.0


def derived_max_running(memory_bytes: int, memory_mb: int) -> int:
    """The default capacity: the engine's memory less a reserve (1 GiB and 10 %, for the engine,
    the control plane and the page cache) divided by one agent's memory limit, at least 1. Memory,
    not CPU: agents mostly wait on their model, and memory is what the kernel kills for."""
    reserve = GIB + memory_bytes // 10
    return max(1, (memory_bytes - reserve) // (memory_mb * MIB))


@dataclass
class Capacity:
    max_running: int = FALLBACK_MAX_RUNNING
    source: str = "default"

    async def determine(self, settings: Settings, backend: Backend, catalog: Catalog) -> None:
        if settings.max_running_agents is not None:
            self.max_running, self.source = settings.max_running_agents, "setting"
            return
        try:
            resources = await backend.resources()
        except Exception as exc:  # the engine may be down at start
            log.warning("capacity_not_derived", error=describe_error(exc))
            resources = None
        if resources is None:
            self.max_running, self.source = FALLBACK_MAX_RUNNING, "fallback"
        else:
            self.max_running = derived_max_running(resources.memory_bytes, catalog.limits.memory_mb)
            self.source = "engine"
        log.info("capacity", max_running=self.max_running, source=self.source)


def queue_positions(snapshot: QueueSnapshot) -> dict[int, int]:
    """pk → queue position (1 = next) of every queued agent in `snapshot` (`queries.queue_order`).

    The position is the agents ahead in the order, plus the places the round-robin holds ahead of it
    for the other keys that have not filled those rounds yet: a key whose last queued agent is in
    round 3 holds one place in each of rounds 4 .. r-1 ahead of an agent in round r, and a key that
    holds a slot but has nothing queued holds one in each round from the head's on (its next agent
    joins the round being served). So when such a key queues another agent, which goes ahead of this
    one, it takes a held place and the position does not grow: it only falls as the queue moves (or
    as a key's queue empties and its agents end, and its held places go). It grows only when a key
    with nothing queued and nothing running joins. It is an upper bound of the slots handed out
    before this agent's: exact when every such key keeps queueing at least as fast."""
    return _places(snapshot, holding=snapshot.active_keys)


def expected_places(snapshot: QueueSnapshot) -> dict[int, int]:
    """pk → the slots expected to be handed out up to this agent's, for its ETA: its position, but
    with places held only for the keys with agents queued (a key that merely runs agents may never
    queue again, and counting it would make every estimate late)."""
    return _places(snapshot, holding=frozenset())


def _places(snapshot: QueueSnapshot, *, holding: frozenset[str]) -> dict[int, int]:
    order = snapshot.order
    if not order:
        return {}
    head = order[0][2]
    last: dict[str, int] = {key: head - 1 for key in holding}
    for _pk, key, rnd in order:
        last[key] = rnd  # rounds rise along the order
    lasts = sorted(last.values())
    prefix = [0]
    for value in lasts:
        prefix.append(prefix[-1] + value)
    positions = {}
    for index, (pk, _key, rnd) in enumerate(order):
        # Σ over keys with last < rnd - 1 of (rnd - 1 - last): the places they hold ahead.
        bound = rnd - 1
        n = bisect.bisect_left(lasts, bound)
        held = n * bound - prefix[n]
        positions[pk] = index + 1 + held
    return positions


class Pace:
    """How fast the queue moves, from the last PACE_SAMPLE agents that ended (every key's, every
    replica's: read from the store at most once a second): ends per second over the time from the
    oldest of them to now, and the median launch of an agent given a slot.

    Measured up to now rather than between the first and last end: agents launched together end
    together, and two such cohorts in the sample would make the queue look twice as fast; the time
    an agent holds its slot misleads too, when the pace changed (a burst of requests slows every
    launch, and the agents that ended during it held their slots longer than the next ones will)."""

    def __init__(self, store: Store, clock: Callable[[], float] = time.time):
        self.store = store
        self.clock = clock
        self._at = -1e9
        self._ends: list[tuple[float, float, float]] = []

    async def estimate(self, position: int) -> float | None:
        """When the agent at `position` should be running: the ends it waits for, then a launch."""
        if time.monotonic() - self._at >= PACE_CACHE_SECONDS:
            self._at = time.monotonic()
            self._ends = await self.store.run(queries.recent_ends, limit=PACE_SAMPLE)
        now = self.clock()
        ends = [e for e in self._ends if now - PACE_MAX_AGE < e[0] <= now]
        if len(ends) < 2:
            return None
        rate = len(ends) / (now - ends[-1][0])
        launch = statistics.median(launch for _end, launch, _slot in ends)
        return now + position / rate + launch


class QueueDispatcher(Loop):
    """Hands free slots to queued agents and ends those past their deadline. Woken by every start
    and end (the hub's event wake-up) and by a queued admission; a pass every `interval` otherwise
    (it sees other replicas' changes, and the nearest deadline sets `wake_in`)."""

    name = "queue"

    def __init__(
        self,
        *,
        settings: Settings,
        store: Store,
        launcher: Launcher,
        hub: Hub,
        metrics: Metrics,
        server_key: ServerKey,
        capacity: Capacity,
        agent_document: Callable[[AgentRow], str],
    ):
        super().__init__(interval=settings.queue_interval_seconds)
        self.store = store
        self.launcher = launcher
        self.hub = hub
        self.metrics = metrics
        self.server_key = server_key
        self.capacity = capacity
        self.agent_document = agent_document
        self.clock = launcher.clock
        self._launches: set[asyncio.Task[None]] = set()
        self._last_order: list[tuple[int, str, int]] = []

    async def run_once(self) -> None:
        if not self._last_order and not await self.store.queued_count():
            # Nothing queued, nothing to tell: one read, not the claim's write lock, on every start
            # and end that wakes the dispatcher.
            self.metrics.agents_queued.set(0)
            return
        now = self.clock()
        moved = await self.expire_overdue(now)
        claimed = await self.store.run(
            queries.claim_queued_agents,
            max_running=self.capacity.max_running,
            now=now,
            owner=self.launcher.replica_id,  # the launch's compare-and-sets are this replica's
        )
        for row in claimed:
            self.metrics.queue_wait.observe(max(0.0, now - row.created_at))
            task = asyncio.get_running_loop().create_task(self._launch(row))
            self._launches.add(task)
            task.add_done_callback(self._launches.discard)
        order = (await self.store.run(queries.queue_order)).order
        self.metrics.agents_queued.set(len(order))
        if moved or claimed or order != self._last_order:
            # The queue moved (here, or on another replica, or an agent was cancelled or queued):
            # every queued agent's followers are sent its new position.
            for pk, _key, _round in order:
                self.hub.bump(pk)
        self._last_order = order
        deadline = await self.store.run(queries.next_queue_deadline)  # or an unplaced agent's retry
        if deadline is not None:
            self.wake_in = max(0.0, deadline - self.clock())

    async def _launch(self, row: AgentRow) -> None:
        log.info("agent_dequeued", agent_id=row.id, waited_seconds=round(self.clock() - row.created_at, 3))
        try:
            await self.launcher.launch(row, self.server_key.gateway_token(row.id), keep_on_engine_down=True)
        except RuntimeUnavailableError as exc:
            # Accepted long ago with a 201: it ends failed rather than vanishing.
            await self.launcher.fail_launch(row.pk, row.id, f"the container engine was unreachable: {exc.message}")
        except Exception as exc:
            log.error("dequeued_launch_failed", agent_id=row.id, error=describe_error(exc))

    async def expire_overdue(self, now: float) -> bool:
        """End queued agents past their deadline `expired`/`queue_timeout`; whether any ended."""
        pks = await self.store.run(queries.overdue_queued_agents, now=now)
        for pk in pks:
            why = "it did not get a slot in time"
            row = await self.store.agent_by_pk(pk)
            if row is not None and row.error:  # the cluster could not place it (runtime/placement.py)
                why = f"{why} ({row.error})"
            await end_queued(self, pk, AgentStatus.EXPIRED, Reason.QUEUE_TIMEOUT, why)
        return bool(pks)

    async def drain(self) -> None:
        """Wait for launches in flight (shutdown)."""
        if self._launches:
            await asyncio.wait(set(self._launches), timeout=30)


async def end_queued(d: QueueDispatcher, pk: int, status: AgentStatus, reason: Reason, error: str | None) -> bool:
    """A queued agent ends without ever running: an empty seal, no container. Compare-and-set on
    `queued`, with `agent.finished` in its transaction."""
    changed = await d.store.run(
        queries.transition_agent,
        pk=pk,
        only_if_status=(AgentStatus.QUEUED,),
        event=EventType.FINISHED,
        document=d.agent_document,
        at=d.clock(),
        **never_ran(status, reason, error, d.clock()),
    )
    if changed is not None:
        d.metrics.agents_finished.labels(status=status).inc()
        d.metrics.agents_finished_reason.labels(reason=reason).inc()
        log.info("agent_finished", agent_id=None, agent_pk=pk, status=status, reason=reason)
        d.hub.bump_events()
        d.hub.bump(pk)
        d.poke()
    return changed is not None


@dataclass
class Queue:
    """What the doors use of the queue: the capacity, the pace, the dispatcher."""

    capacity: Capacity
    pace: Pace
    dispatcher: QueueDispatcher
    pool: SandboxPool | None = None  # warm sandboxes: they hold slots while idle (runtime/warm.py)


async def present(queue: Queue, store: Store, row: AgentRow) -> AgentOut:
    """The agent document; while queued, with its position and estimated start, read now."""
    return (await present_many(queue, store, [row]))[0]


async def present_many(queue: Queue, store: Store, rows: list[AgentRow]) -> list[AgentOut]:
    """Agent documents; when any is queued, the queue is read once (one consistent snapshot)."""
    if not any(r.status == AgentStatus.QUEUED for r in rows):
        return [agent_out(r) for r in rows]
    snapshot = await store.run(queries.queue_order)
    positions, expected = queue_positions(snapshot), expected_places(snapshot)
    out = []
    for r in rows:
        position = positions.get(r.pk) if r.status == AgentStatus.QUEUED else None
        if r.status == AgentStatus.QUEUED and position is None:  # it left the queue after the row was read
            fresh = await store.agent_by_pk(r.pk)
            out.append(agent_out(fresh or r))
            continue
        eta = await queue.pace.estimate(expected.get(r.pk, position)) if position is not None else None
        out.append(agent_out(r, queue_position=position, estimated_start_at=eta))
    return out


async def capacity_view(queue: Queue, store: Store, *, admin: bool) -> CapacityOut:
    by_key = await store.run(queries.count_agents_by_key)
    keys = None
    if admin:
        rows = {k.id: k for k in await store.run(queries.list_api_keys)}
        keys = [
            KeyCapacity(
                key_id=key,
                running=running,
                queued=queued,
                max_concurrent_agents=rows[key].max_concurrent_agents if key in rows else None,
            )
            for key, (running, queued) in sorted(by_key.items())
        ]
    return CapacityOut(
        max_running=queue.capacity.max_running,
        running=sum(r for r, _q in by_key.values()),
        queued=sum(q for _r, q in by_key.values()),
        warm=WarmPool(idle=queue.pool.idle, target=queue.pool.size) if queue.pool else WarmPool(idle=0, target=0),
        keys=keys,
    )

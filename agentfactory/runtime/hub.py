"""Wake-ups for stream readers: the log writer and the launcher bump an agent; readers wait on it.
The launcher also bumps the event log when it appends to it: `/events` followers and the webhook
dispatcher wait on that."""

from __future__ import annotations

import asyncio
from collections import OrderedDict, defaultdict
from collections.abc import Callable

EVENTS = "e"  # the bus item that says the event log grew
MAX_TRACKED_AGENTS = 65536  # agents whose last bumps are remembered; a forgotten one reads as "just now"


class Hub:
    """Per-agent change notification, owned by the event loop it is bound to at start-up (bump
    from threads via `bump_threadsafe`)."""

    def __init__(self) -> None:
        self._bound: asyncio.AbstractEventLoop | None = None
        self._waiters: dict[int, set[asyncio.Future[None]]] = defaultdict(set)
        self.generation = 0  # counts bumps of any agent: a read begun at generation g saw every change before it
        # The generation of each agent's last bump of its lines and of its row: a follower re-reads
        # only what moved (a batch of lines does not make a hundred followers re-read the row).
        self._lines_at: OrderedDict[int, int] = OrderedDict()
        self._row_at: OrderedDict[int, int] = OrderedDict()
        # Set on PostgreSQL: tells the other replicas which agents changed here, and when the event
        # log grew (EVENTS), over LISTEN/NOTIFY.
        self.publish: Callable[[list[object]], None] | None = None
        self._event_waiters: set[asyncio.Future[None]] = set()
        self._event_listeners: list[Callable[[], None]] = []

    def bind(self, loop: asyncio.AbstractEventLoop) -> None:
        self._bound = loop

    @property
    def _loop(self) -> asyncio.AbstractEventLoop:
        if self._bound is None:
            raise RuntimeError("Hub.bind(loop) was not called")
        return self._bound

    def bump(self, agent_pk: int, *, lines: bool = True, row: bool = True) -> None:
        """The agent changed: new lines were stored (`lines`), its row changed (`row`: status,
        timings), or both."""
        self._wake(agent_pk, lines=lines, row=row)
        if self.publish is not None:
            self.publish([agent_pk])

    def track(self, agent_pk: int) -> None:
        """Remember the agent from now on (before it can print): until its first bump, its
        generations stay the current one instead of following every other agent's bumps, so its
        followers do not re-read an unchanged log each time another agent moves. Safe at any time:
        every later change bumps it."""
        for seen in (self._lines_at, self._row_at):
            if agent_pk not in seen:
                self._mark(seen, agent_pk)

    def lines_generation(self, agent_pk: int) -> int:
        """A generation no older than the agent's last new lines: a read of its lines begun at it
        (or later) saw every line stored before it."""
        return self._lines_at.get(agent_pk, self.generation)

    def row_generation(self, agent_pk: int) -> int:
        """The same for the agent's row."""
        return self._row_at.get(agent_pk, self.generation)

    def _mark(self, seen: OrderedDict[int, int], agent_pk: int) -> None:
        seen[agent_pk] = self.generation
        seen.move_to_end(agent_pk)
        if len(seen) > MAX_TRACKED_AGENTS:  # forgotten agents read as bumped now: a read too many, never one too few
            seen.popitem(last=False)

    def _wake(self, agent_pk: int, *, lines: bool = True, row: bool = True) -> None:
        self.generation += 1
        if lines:
            self._mark(self._lines_at, agent_pk)
        if row:
            self._mark(self._row_at, agent_pk)
        waiters = self._waiters.pop(agent_pk, None)
        for fut in waiters or ():
            if not fut.done():
                fut.set_result(None)

    def wake_threadsafe(self, agent_pks: list[int] | None) -> None:
        """Wake-ups announced by another replica (None: every waiter, after a reconnection)."""

        def wake() -> None:
            for pk in list(self._waiters) if agent_pks is None else agent_pks:
                self._wake(pk)

        self._loop.call_soon_threadsafe(wake)

    def bump_threadsafe(self, agent_pks: list[int], *, lines: bool = True, row: bool = True) -> None:
        def bump_all() -> None:
            for pk in agent_pks:
                self.bump(pk, lines=lines, row=row)

        self._loop.call_soon_threadsafe(bump_all)

    def subscribe(self, agent_pk: int) -> asyncio.Future[None]:
        """A future that completes at the agent's next bump. Subscribe *before* reading the store,
        then await it only if the read found nothing new: no bump can fall between the two."""
        fut: asyncio.Future[None] = self._loop.create_future()
        self._waiters[agent_pk].add(fut)
        fut.add_done_callback(lambda f: self._discard(agent_pk, f))
        return fut

    def _discard(self, agent_pk: int, fut: asyncio.Future[None]) -> None:
        waiters = self._waiters.get(agent_pk)
        if waiters is not None:
            waiters.discard(fut)
            if not waiters:
                self._waiters.pop(agent_pk, None)

    async def wait(self, agent_pk: int, timeout: float, fut: asyncio.Future[None] | None = None) -> bool:
        """Wait for the next bump of this agent (or for `fut` from `subscribe`); False on timeout."""
        if fut is None:
            fut = self.subscribe(agent_pk)
        try:
            await asyncio.wait_for(fut, timeout)
            return True
        except TimeoutError:
            return False

    # -- the event log ---------------------------------------------------------------------------

    def bump_events(self) -> None:
        """The event log grew (here): wake its followers and listeners, here and on other replicas."""
        self._wake_events()
        if self.publish is not None:
            self.publish([EVENTS])

    def wake_events_threadsafe(self) -> None:
        """The event log grew on another replica."""
        self._loop.call_soon_threadsafe(self._wake_events)

    def _wake_events(self) -> None:
        waiters, self._event_waiters = self._event_waiters, set()
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)
        for listener in self._event_listeners:
            listener()

    def subscribe_events(self) -> asyncio.Future[None]:
        """A future that completes at the event log's next bump (subscribe before reading)."""
        fut: asyncio.Future[None] = self._loop.create_future()
        self._event_waiters.add(fut)
        fut.add_done_callback(self._event_waiters.discard)
        return fut

    def on_events(self, listener: Callable[[], None]) -> None:
        """Call `listener()` (on the loop) at every bump of the event log."""
        self._event_listeners.append(listener)

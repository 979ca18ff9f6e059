"""Cross-replica wake-ups on PostgreSQL: LISTEN/NOTIFY on one channel (SPEC §13).

Each replica publishes which agents changed (new lines, a new status) and listens for the others'
announcements; the hub turns them into local wake-ups, so a follower on replica B of an agent
captured by replica A is woken as soon as A commits. Publishing coalesces: whatever is queued when
the publisher thread wakes goes out as one NOTIFY (split below PostgreSQL's 8000-byte payload cap).
A notification lost to a dropped connection costs a follower at most its poll interval.
"""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

import structlog
from sqlalchemy.engine import make_url

log = structlog.get_logger("agentfactory.bus")
CHANNEL = "agentfactory"
MAX_PAYLOAD = 7900


def conninfo(database_url: str) -> str:
    """A libpq URI from the SQLAlchemy URL (postgresql+psycopg://... → postgresql://...)."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(hide_password=False)


class PgBus:
    """`publish(origin, items)` sends "origin:item,item,..."; `start(on_message)` delivers every
    other origin's items (strings) to `on_message(items)`, from the listener thread."""

    def __init__(self, database_url: str):
        import psycopg  # the `postgres` extra: only a PostgreSQL control plane builds a bus

        self._psycopg = psycopg
        self._conninfo = conninfo(database_url)
        self._out: queue.SimpleQueue[tuple[str, str] | None] = queue.SimpleQueue()
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        self.origin = ""
        self.received = 0

    def start(self, origin: str, on_message: Callable[[list[str]], None]) -> None:
        self.origin = origin
        for target, name in ((self._listen, "bus-listen"), (self._publish_loop, "bus-publish")):
            t = threading.Thread(target=target, args=(on_message,), name=name, daemon=True)
            t.start()
            self._threads.append(t)

    def stop(self) -> None:
        self._stopping.set()
        self._out.put(None)
        for t in self._threads:
            t.join(3)

    def publish(self, items: Iterable[object]) -> None:
        for item in items:
            self._out.put((self.origin, str(item)))

    # -- threads ---------------------------------------------------------------------------------

    def _publish_loop(self, _on_message: Callable[[list[str]], None]) -> None:
        conn: Any = None
        while not self._stopping.is_set():
            first = self._out.get()
            if first is None:
                break
            pending = {first[1]}
            with contextlib.suppress(queue.Empty):
                while True:
                    nxt = self._out.get_nowait()
                    if nxt is None:
                        self._stopping.set()
                        break
                    pending.add(nxt[1])
            try:
                if conn is None or conn.closed:
                    conn = self._psycopg.connect(self._conninfo, autocommit=True)
                for payload in self._payloads(sorted(pending)):
                    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, payload))
            except Exception as exc:
                log.warning("bus_publish_failed", error=repr(exc))
                conn = None
                time.sleep(0.2)
        if conn is not None:
            conn.close()

    def _payloads(self, items: list[str]) -> Iterable[str]:
        head = self.origin + ":"
        batch: list[str] = []
        size = len(head)
        for item in items:
            if batch and size + len(item) + 1 > MAX_PAYLOAD:
                yield head + ",".join(batch)
                batch, size = [], len(head)
            batch.append(item)
            size += len(item) + 1
        if batch:
            yield head + ",".join(batch)

    def _listen(self, on_message: Callable[[list[str]], None]) -> None:
        backoff = 0.2
        while not self._stopping.is_set():
            try:
                with self._psycopg.connect(self._conninfo, autocommit=True) as conn:
                    conn.execute(f"LISTEN {CHANNEL}")
                    backoff = 0.2
                    on_message(["*"])  # (re)connected: anything may have changed meanwhile
                    while not self._stopping.is_set():
                        for note in conn.notifies(timeout=1.0):
                            origin, _, body = note.payload.partition(":")
                            if origin != self.origin and body:
                                self.received += 1
                                on_message(body.split(","))
            except Exception as exc:
                if self._stopping.is_set():
                    break
                log.warning("bus_listen_failed", error=repr(exc))
                time.sleep(backoff)
                backoff = min(5.0, backoff * 2)

"""The log pump against a real SQLite store: bounded queue, retries while the store cannot write,
and a seal that never disagrees with what is stored (issue 19, items 4 and 5)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event, text

from agentfactory.backends.base import STDOUT
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime import capture_queue
from agentfactory.runtime.capture_queue import Seal
from agentfactory.runtime.hub import Hub
from agentfactory.runtime.logpump import CaptureIncomplete, LogPump, Resume
from agentfactory.store import Store, queries
from tests.support.server import database_url


class Source:
    """An agent's output: `n` reads of numbered lines; records the queue's size at each read."""

    def __init__(self, pump: LogPump, name: str, reads: int, lines_per_read: int, width: int = 10):
        self.pump, self.name, self.reads, self.per_read, self.width = pump, name, reads, lines_per_read, width
        self.queued_at_read: list[int] = []
        self.taken = 0
        self.closed = False

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        for r in range(self.reads):
            self.queued_at_read.append(self.pump._queue._bytes)
            self.taken = r + 1
            first = r * self.per_read
            yield (
                STDOUT,
                b"".join(
                    f"{self.name}-{i}".ljust(self.width).encode() + b"\n" for i in range(first, first + self.per_read)
                ),
            )

    def close(self) -> None:
        self.closed = True

    def expected(self) -> list[str]:
        return [f"{self.name}-{i}".ljust(self.width) for i in range(self.reads * self.per_read)]


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(database_url(tmp_path / "pump.db"))
    s.migrate()
    yield s
    s.dispose()


@pytest.fixture
def sqlite_store(tmp_path: Path) -> Iterator[Store]:
    """Always SQLite, whatever the run's database: the test makes the database full with SQLite's own knob."""
    s = Store(f"sqlite:///{tmp_path / 'pump.db'}")
    s.migrate()
    yield s
    s.dispose()


def seal_of(store: Store, pk: int) -> Seal:
    return store.call(queries.seal_stored_lines, agent_pk=pk)


def stored(store: Store, pk: int) -> list[str]:
    with store.session() as s:
        return [t for *_, t in queries.read_log_lines(session=s, agent_pk=pk, after=0, limit=10**9)]


async def capture(pump: LogPump, pk: int, source: Source) -> asyncio.Future[Seal | None]:
    return pump.capture(agent_pk=pk, source=source, secrets=[], max_log_bytes=10**9, resume=Resume())


def test_a_flooding_agent_waits_on_its_share_of_the_queue_and_a_neighbour_loses_nothing(store: Store) -> None:
    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        hub = Hub()
        hub.bind(loop)
        pump = LogPump(store=store, hub=hub, metrics=Metrics())
        pump.start(loop)
        flood = Source(pump, "flood", reads=400, lines_per_read=2000, width=100)  # 80 MB in 200 KB reads
        quiet = Source(pump, "quiet", reads=50, lines_per_read=10)
        done = [await capture(pump, 1, flood), await capture(pump, 2, quiet)]
        seals = await asyncio.gather(*done)
        pump.stop()
        assert max(flood.queued_at_read) <= capture_queue.QUEUE_BYTES
        for pk, source, seal in ((1, flood, seals[0]), (2, quiet, seals[1])):
            assert stored(store, pk) == source.expected()
            assert seal == seal_of(store, pk)

    asyncio.run(scenario())


def test_a_full_store_is_retried_while_capture_waits_then_catches_up(sqlite_store: Store) -> None:
    """SQLite's max_page_count makes the database full; raising it is the disk freeing up."""
    store = sqlite_store
    pages = {"max": 0}

    def limit(dbapi_conn: Any, _record: Any) -> None:
        if pages["max"]:
            dbapi_conn.execute(f"PRAGMA max_page_count={pages['max']}")

    event.listen(store.engine, "connect", limit)
    with store.engine.connect() as conn:
        pages["max"] = int(conn.exec_driver_sql("PRAGMA page_count").scalar() or 0) + 2
    store.engine.dispose()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        hub = Hub()
        hub.bind(loop)
        pump = LogPump(store=store, hub=hub, metrics=Metrics())
        pump.start(loop)
        source = Source(pump, "a", reads=300, lines_per_read=1000, width=60)  # 18 MB
        done = await capture(pump, 1, source)
        deadline = loop.time() + 30
        while pump.store_error is None and loop.time() < deadline:
            await asyncio.sleep(0.02)
        assert pump.store_error is not None and "full" in pump.store_error
        await asyncio.sleep(0.5)
        # held back: read no further than its share of the queue and the group being retried
        read_bytes = 1000 * 61
        assert source.taken <= (capture_queue.AGENT_QUEUE_BYTES + capture_queue.BATCH_BYTES) // read_bytes + 2
        assert not done.done()
        pages["max"] = 10**7
        store.engine.dispose()  # the writer's next attempt gets a connection that may grow the file
        seal = await asyncio.wait_for(done, 60)
        pump.stop()
        assert pump.store_error is None
        assert stored(store, 1) == source.expected()
        assert seal == seal_of(store, 1)

    asyncio.run(scenario())


def test_lines_the_store_refuses_cost_only_their_agent_and_its_seal_is_of_the_store(store: Store) -> None:
    with store.engine.begin() as conn:
        if store.is_sqlite:
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON log_chunks WHEN NEW.text LIKE '%poison-7%' "
                    "BEGIN SELECT RAISE(ABORT, 'refused'); END"
                )
            )
        else:  # PostgreSQL: a failed statement aborts its whole transaction, which the pump must survive
            conn.execute(
                text(
                    "CREATE FUNCTION refuse_poison() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    "IF NEW.text LIKE '%poison-7%' THEN RAISE EXCEPTION 'refused' USING ERRCODE = 'check_violation'; "
                    "END IF; RETURN NEW; END $$"
                )
            )
            conn.execute(
                text(
                    "CREATE TRIGGER refuse_poison BEFORE INSERT ON log_chunks "
                    "FOR EACH ROW EXECUTE FUNCTION refuse_poison()"
                )
            )
    release = threading.Event()

    class Gated(Source):
        def chunks(self) -> Iterator[tuple[int, bytes]]:
            release.wait(10)  # both agents' reads reach the writer together
            yield from super().chunks()

    async def scenario() -> None:
        loop = asyncio.get_running_loop()
        hub = Hub()
        hub.bind(loop)
        pump = LogPump(store=store, hub=hub, metrics=Metrics())
        pump.start(loop)
        poison, good = (
            Gated(pump, "poison", reads=20, lines_per_read=1),
            Gated(pump, "good", reads=20, lines_per_read=1),
        )
        futures = [await capture(pump, 1, poison), await capture(pump, 2, good)]
        release.set()
        results = await asyncio.gather(*futures, return_exceptions=True)
        pump.stop()
        assert isinstance(results[0], CaptureIncomplete)
        assert stored(store, 1) == poison.expected()[:7]  # a prefix: no gap in its seqs
        assert stored(store, 2) == good.expected()
        assert results[1] == seal_of(store, 2)

    asyncio.run(scenario())

"""Two replicas on one database, driven a pass at a time (issue 17, SPEC §13): ownership, leases,
adoption with fencing, separate engines, orphans, and a stop asked for on the other replica.

Both apps run in this process over FakeBackends: one engine shared (adoption) or one each
(separate engines). A replica "dies" by its lease lapsing in the database, exactly what the
others see of a replica that was killed; its capture is still running, so the fencing of its
writes is tested too.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from agentfactory.app import create_app
from agentfactory.backends.fake import FakeBackend
from agentfactory.settings import Settings
from agentfactory.store.tables import AgentRow, ReplicaRow
from tests.api.conftest import ADMIN
from tests.support.server import database_url, wait_until

AUTH = {"Authorization": f"Bearer {ADMIN}"}


@dataclass
class Rep:
    name: str
    client: TestClient
    backend: FakeBackend

    @property
    def svc(self) -> Any:
        return self.client.app.state.services  # type: ignore[attr-defined]

    def call(self, fn: Any, *args: Any) -> Any:
        return self.client.portal.call(fn, *args)  # type: ignore[union-attr]

    def heartbeat(self) -> None:
        self.call(self.svc.replica.run_once)

    def run_pass(self, now: float | None = None) -> None:
        if now is not None:
            self.svc.launcher.clock = lambda: now
        self.call(self.client.app.state.reaper.run_once)  # type: ignore[attr-defined]

    def create(self, **env: str) -> str:
        body = {"model": "echo", "prompt": "hi", "env": {"FAKE_RUN_UNTIL_STOPPED": "1", **env}}
        r = self.client.post("/agents", json=body, headers=AUTH)
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    def get(self, agent_id: str) -> dict[str, Any]:
        return self.client.get(f"/agents/{agent_id}", headers=AUTH).json()  # type: ignore[no-any-return]

    def texts(self, agent_id: str) -> list[str]:
        page = self.client.get(f"/agents/{agent_id}/logs", params={"limit": 1000}, headers=AUTH).json()
        return [x["text"] for x in page["lines"]]

    def row(self, agent_id: str) -> AgentRow:
        with self.svc.store.session() as s:
            return s.query(AgentRow).filter(AgentRow.id == agent_id).one()  # type: ignore[no-any-return]

    def watching(self, agent_id: str) -> bool:
        return bool(self.svc.launcher.watching(self.row(agent_id).pk))

    def die(self) -> None:
        """What the others see of a replica killed: its lease stops being renewed."""
        with self.svc.store.session() as s:
            s.execute(update(ReplicaRow).where(ReplicaRow.id == self.name).values(heartbeat_at=0.0))


def make(tmp_path: Path, name: str, backend: FakeBackend) -> Iterator[Rep]:
    """A replica on the test's one database (tmp_path/db_url names it)."""
    url_file = tmp_path / "db_url"
    if not url_file.exists():
        url_file.write_text(database_url(tmp_path / "af.db"))
    settings = Settings(
        database_url=url_file.read_text(),
        admin_key=ADMIN,
        files_dir=tmp_path / "files",
        gateway_socket_dir=tmp_path / f"gw-{name}",
        reaper_interval_seconds=3600,
        replica_id=name,
    )
    with TestClient(create_app(settings, backend=backend, run_loops=False), raise_server_exceptions=False) as c:
        rep = Rep(name, c, backend)
        rep.heartbeat()
        yield rep


@pytest.fixture
def engine() -> FakeBackend:
    return FakeBackend(engine_id="ENGINE:ONE")


@pytest.fixture
def a(tmp_path: Path, engine: FakeBackend) -> Iterator[Rep]:
    yield from make(tmp_path, "A", engine)


@pytest.fixture
def b(tmp_path: Path, engine: FakeBackend, a: Rep) -> Iterator[Rep]:
    yield from make(tmp_path, "B", engine)


@pytest.fixture
def far(tmp_path: Path, a: Rep) -> Iterator[Rep]:
    """A replica on another engine."""
    yield from make(tmp_path, "FAR", FakeBackend(engine_id="ENGINE:TWO"))


def sealed(body: dict[str, Any], lines: list[str]) -> bool:
    data = "".join(t + "\n" for t in lines).encode()
    return (body["log_lines"], body["log_sha256"]) == (len(lines), hashlib.sha256(data).hexdigest())


def test_an_agent_is_owned_by_the_replica_that_launched_it_on_its_engine(a: Rep, b: Rep) -> None:
    agent = a.create()
    row = a.row(agent)
    assert (row.owner, row.engine_id) == ("A", "ENGINE:ONE")
    b.run_pass()  # A is alive: B takes nothing
    assert a.row(agent).owner == "A" and not b.watching(agent)
    assert b.client.get("/ready").json()["replica"]["live_replicas"] == 2


def test_a_dead_replicas_agent_is_adopted_once_with_nothing_lost_or_stored_twice(a: Rep, b: Rep) -> None:
    agent = a.create()
    for i in (1, 2, 3):
        a.backend.print(agent, f"n{i}\n")
    wait_until(lambda: len(a.texts(agent)) == 3, timeout=10, what="3 lines")
    a.die()  # A's capture still runs: a replica that is only slow looks the same to B
    b.run_pass()
    assert b.row(agent).owner == "B" and b.watching(agent)
    assert b.svc.metrics.agents_adopted._value.get() == 1
    for i in (4, 5):
        a.backend.print(agent, f"n{i}\n")  # both captures read these; only B may store them
    wait_until(lambda: len(b.texts(agent)) == 5, timeout=10, what="5 lines")
    a.heartbeat()
    a.run_pass()  # A sees the agent is no longer its own and lets go
    assert not a.watching(agent)
    a.backend.print(agent, "n6\n")
    a.backend.exit(agent, 0)
    wait_until(lambda: b.get(agent)["status"] == "succeeded", timeout=10, what="succeeded")
    lines = [f"n{i}" for i in range(1, 7)]
    assert b.texts(agent) == lines
    assert sealed(b.get(agent), lines)


def test_an_adopted_agent_keeps_its_ttl(a: Rep, b: Rep) -> None:
    r = a.client.post(
        "/agents", json={"model": "echo", "prompt": "hi", "ttl_seconds": 60, "env": {"FAKE_RUN_UNTIL_STOPPED": "1"}},
        headers=AUTH,
    )  # fmt: skip
    agent = r.json()["id"]
    a.die()
    b.run_pass(now=time.time() + 61)  # adopted past its TTL: expired at once
    wait_until(lambda: b.get(agent)["status"] == "expired", timeout=10, what="expired")
    # removed once its terminal row is written (the finalizer writes, then removes)
    wait_until(lambda: agent not in b.backend.containers, timeout=10, what="its container removed")


def test_a_stopped_replica_leaves_its_agents_to_be_adopted_at_once(tmp_path: Path, engine: FakeBackend) -> None:
    first = make(tmp_path, "A", engine)
    a = next(first)
    agent = a.create()
    with pytest.raises(StopIteration):
        next(first)  # A shuts down (its container runs on) and releases its agents
    with a.svc.store.session() as s:
        assert s.query(AgentRow).filter(AgentRow.id == agent).one().owner is None
    for b in make(tmp_path, "B", engine):
        b.run_pass()
        assert b.row(agent).owner == "B" and b.watching(agent)
        b.backend.exit(agent, 0)
        wait_until(lambda: b.get(agent)["status"] == "succeeded", timeout=10, what="succeeded")  # noqa: B023


def test_replicas_on_separate_engines_never_adopt_or_lose_each_others_agents(a: Rep, far: Rep) -> None:
    agent = a.create()
    mine = far.create()
    a.die()
    far.run_pass()
    far.run_pass()
    assert a.row(agent).owner == "A" and far.get(agent)["status"] == "running"
    assert far.get(mine)["status"] == "running"
    a.heartbeat()
    a.run_pass()  # and A does not mark FAR's agent lost either (it is not on A's engine)
    assert far.get(mine)["status"] == "running" and a.get(agent)["status"] == "running"


def test_orphan_removal_spares_a_container_another_live_replica_owns(a: Rep, b: Rep) -> None:
    agent = a.create()
    with a.svc.store.session() as s:  # finished, its container not yet removed by its owner
        s.execute(update(AgentRow).where(AgentRow.id == agent).values(status="succeeded"))
    b.run_pass()
    assert agent in b.backend.containers
    a.die()
    b.heartbeat()
    b.run_pass()
    assert agent not in b.backend.containers


def test_a_cancel_on_another_replica_is_finalized_by_the_owner(a: Rep, b: Rep) -> None:
    agent = a.create()
    a.backend.print(agent, "n1\n")
    wait_until(lambda: len(a.texts(agent)) == 1, timeout=10, what="1 line")
    r = b.client.delete(f"/agents/{agent}", headers=AUTH)
    assert r.status_code == 200, r.text
    assert r.json()["status"] == "cancelled" and sealed(r.json(), ["n1"])
    assert not b.watching(agent)

"""The cluster's capacity and the queue (SPEC §10), in-process over a FakeBackend with the loops on:
429 E_CAPACITY without a queue timeout, `queued` with positions, round-robin between keys, expiry
within a second of the deadline, DELETE of a queued agent, GET /capacity.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from agentfactory.app import create_app
from agentfactory.backends.fake import FakeBackend
from agentfactory.settings import Settings
from agentfactory.store import queries
from tests.api.conftest import ADMIN, Api
from tests.support.server import database_url, wait_until

BLOCK = {"FAKE_RUN_UNTIL_STOPPED": "1"}


@pytest.fixture
def qapi(tmp_path: Path) -> Iterator[Api]:
    settings = Settings(
        database_url=database_url(tmp_path / "af.db"),
        admin_key=ADMIN,
        files_dir=tmp_path / "af.db.files",
        gateway_socket_dir=tmp_path / "gw",
        reaper_interval_seconds=3600,
        max_running_agents=2,
        queue_interval_seconds=0.2,
    )
    backend = FakeBackend()
    app = create_app(settings, backend=backend, run_loops=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client=client, backend=backend, admin={"Authorization": f"Bearer {ADMIN}"})


def post(api: Api, key: dict[str, str], *, env: dict[str, str] | None = None, **body: Any) -> Any:
    return api.client.post("/agents", json={"model": "echo", "prompt": "hi", "env": env or {}, **body}, headers=key)


def get(api: Api, agent_id: str) -> dict[str, Any]:
    body: dict[str, Any] = api.client.get(f"/agents/{agent_id}", headers=api.admin).json()
    return body


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def fill(api: Api, key: dict[str, str], n: int = 2) -> list[str]:
    ids = []
    for _ in range(n):
        r = post(api, key, env=BLOCK)
        assert r.status_code == 201 and r.json()["status"] == "running", r.text
        ids.append(r.json()["id"])
    return ids


def test_a_full_cluster_refuses_with_e_capacity_unless_asked_to_queue(qapi: Api) -> None:
    key = qapi.key(max_concurrent_agents=10)
    fill(qapi, key)
    r = post(qapi, key)
    assert r.status_code == 429 and r.json()["error"]["code"] == "E_CAPACITY"
    assert int(r.headers["Retry-After"]) >= 1
    cap = qapi.client.get("/capacity", headers=key).json()
    assert cap == {"max_running": 2, "running": 2, "queued": 0, "warm": {"idle": 0, "target": 0}}
    queued = post(qapi, key, queue_timeout_seconds=60)
    assert queued.status_code == 201 and queued.json()["status"] == "queued"
    assert queued.json()["queue_position"] == 1
    admin_view = qapi.client.get("/capacity", headers=qapi.admin).json()
    assert admin_view["queued"] == 1
    assert [(k["key_id"], k["running"], k["queued"]) for k in admin_view["keys"]] == [(key["X-Key-Id"], 2, 1)]
    metrics = qapi.client.get("/metrics").text
    assert 'agentfactory_quota_rejections_total{reason="capacity"} 1.0' in metrics
    assert "agentfactory_max_running_agents 2.0" in metrics


def test_the_key_quota_is_still_e_quota_and_queues_when_asked(qapi: Api) -> None:
    key = qapi.key(max_concurrent_agents=1)
    fill(qapi, key, 1)
    r = post(qapi, key)
    assert r.status_code == 429 and r.json()["error"]["code"] == "E_QUOTA"
    q = post(qapi, key, queue_timeout_seconds=60)
    assert q.json()["status"] == "queued"
    # The cluster has a free slot, but the key has none: the agent waits for its own key's slot.
    other = qapi.key(max_concurrent_agents=5)
    # (Admitted into the queue, it may already be leaving it when its document is read: pending, starting.)
    assert post(qapi, other, env=BLOCK, queue_timeout_seconds=60).json()["status"] in (
        "queued", "pending", "starting", "running"
    )  # fmt: skip
    assert get(qapi, q.json()["id"])["status"] == "queued"


def test_a_queued_agent_starts_when_a_slot_frees_and_its_ttl_counts_from_its_start(qapi: Api) -> None:
    key = qapi.key(max_concurrent_agents=10)
    running = fill(qapi, key)
    a = post(qapi, key, env=BLOCK, queue_timeout_seconds=60, ttl_seconds=100).json()
    b = post(qapi, key, env=BLOCK, queue_timeout_seconds=60).json()
    assert (a["queue_position"], b["queue_position"]) == (1, 2)
    assert a["started_at"] is None and a["expires_at"] is None  # no expiry until it starts
    time.sleep(0.3)  # the queued agent's TTL must count from its start, not its admission
    assert qapi.client.delete(f"/agents/{running[0]}", headers=key).json()["status"] == "cancelled"
    started = wait_until(lambda: (g := get(qapi, a["id"]))["status"] == "running" and g, timeout=5, what="a runs")
    assert started["queue_position"] is None
    assert abs(ts(started["expires_at"]) - ts(started["started_at"]) - 100) < 0.01
    assert wait_until(lambda: get(qapi, b["id"])["queue_position"] == 1, timeout=5, what="b moves up")
    # The outbox: `agent.queued` (with the position then) and `agent.started`, in that order.
    store = qapi.client.app.state.services.store  # type: ignore[attr-defined]
    events = [e for e in store.call(queries.list_events, after=0, limit=100) if e.agent_id == a["id"]]
    assert [e.type for e in events] == ["agent.queued", "agent.started"]
    assert json.loads(events[0].agent)["queue_position"] == 1


def test_slots_go_round_robin_between_keys_fifo_within_a_key(qapi: Api) -> None:
    blocker = qapi.key(max_concurrent_agents=10)
    fill(qapi, blocker)
    a, b, c = (qapi.key(max_concurrent_agents=10) for _ in range(3))
    posted = [(name, post(qapi, k, queue_timeout_seconds=60).json()["id"]) for name, k in
              [("a", a)] * 4 + [("b", b)] * 2 + [("c", c)]]  # fmt: skip
    order = sorted(posted, key=lambda p: get(qapi, p[1])["queue_position"])
    assert [name for name, _ in order] == ["a", "b", "c", "a", "b", "a", "a"]
    # The positions hold the places of the keys that have not filled their rounds yet: c holds one
    # in each of rounds 1 and 2, b one in round 2, and the blocker, which holds slots but has nothing
    # queued, one in each round from the first: so a's last agent (round 3) is 13th or later.
    assert [get(qapi, i)["queue_position"] for _, i in order] == [1, 2, 3, 5, 6, 9, 13]
    # When b queues again, its agent takes b's held place: nobody's position grows.
    before = {i: get(qapi, i)["queue_position"] for _, i in order}
    b3 = post(qapi, b, queue_timeout_seconds=60).json()
    assert b3["queue_position"] == 10  # after a round-2 agent, c's held place in round 1, the blocker's two
    assert all(get(qapi, i)["queue_position"] == before[i] for _, i in order if i != order[-1][1])
    # So does the blocker's, whose key held a place in every round: it joins the round being served.
    queued = [i for _, i in order] + [b3["id"]]
    before = {i: get(qapi, i)["queue_position"] for i in queued}
    again = post(qapi, blocker, queue_timeout_seconds=60).json()
    assert again["queue_position"] == 4
    assert all(get(qapi, i)["queue_position"] == before[i] for i in queued)
    # A key that arrives late, with nothing running, joins the round being served, not the end of the
    # queue: the one case where the positions behind it grow.
    d = qapi.key(max_concurrent_agents=10)
    late = post(qapi, d, queue_timeout_seconds=60).json()
    assert late["queue_position"] == 5


def test_a_queued_agent_expires_within_a_second_of_its_deadline(qapi: Api) -> None:
    key = qapi.key(max_concurrent_agents=10)
    fill(qapi, key)
    q = post(qapi, key, queue_timeout_seconds=1).json()
    deadline = ts(q["created_at"]) + 1
    done = wait_until(lambda: (g := get(qapi, q["id"]))["status"] == "expired" and g, timeout=5, what="expired")
    assert done["reason"] == "queue_timeout"
    assert deadline <= ts(done["finished_at"]) < deadline + 1
    assert done["log_lines"] == 0 and done["started_at"] is None
    assert q["id"] not in qapi.backend.containers


def test_delete_of_a_queued_agent_cancels_it_and_it_never_starts(qapi: Api) -> None:
    key = qapi.key(max_concurrent_agents=10)
    running = fill(qapi, key)
    q = post(qapi, key, queue_timeout_seconds=60).json()
    launches = qapi.backend.launches
    out = qapi.client.delete(f"/agents/{q['id']}", headers=key).json()
    assert (out["status"], out["reason"]) == ("cancelled", "cancelled")
    for agent_id in running:
        qapi.client.delete(f"/agents/{agent_id}", headers=key)
    assert wait_until(lambda: qapi.client.get("/capacity", headers=key).json()["running"] == 0, timeout=5)
    assert qapi.backend.launches == launches and q["id"] not in qapi.backend.containers
    assert get(qapi, q["id"])["status"] == "cancelled"


def test_an_agent_the_cluster_cannot_place_waits_queued_without_holding_a_slot(qapi: Api) -> None:
    """SPEC §10/§13 (a swarm with no node that has room): an agent that may wait goes back to the
    queue with the cluster's reason, frees its slot meanwhile, and is tried again; one that may not
    fails its launch with that reason."""
    key = qapi.key(max_concurrent_agents=10)
    waiting = post(qapi, key, env={**BLOCK, "FAKE_NOT_PLACED": "2"}, queue_timeout_seconds=60).json()
    assert waiting["status"] == "queued" and waiting["queue_position"] == 1, waiting
    assert waiting["error"] == "waiting for a node: fake: no suitable node (insufficient resources on 1 node)"
    # Its slot is free meanwhile: of the cluster's 2, both go to agents the cluster can place.
    running = fill(qapi, key)
    assert qapi.client.get("/capacity", headers=key).json()["queued"] == 1
    for agent_id in running:
        qapi.client.delete(f"/agents/{agent_id}", headers=key)
    started = wait_until(
        lambda: (g := get(qapi, waiting["id"]))["status"] == "running" and g, timeout=10, what="placed at last"
    )
    assert started["error"] is None and qapi.backend.unplaced[waiting["id"]] == 2
    store = qapi.client.app.state.services.store  # type: ignore[attr-defined]
    events = [e.type for e in store.call(queries.list_events, after=0, limit=100) if e.agent_id == waiting["id"]]
    assert events == ["agent.queued", "agent.queued", "agent.started"]
    qapi.client.delete(f"/agents/{waiting['id']}", headers=key)
    failed = post(qapi, key, env={"FAKE_NOT_PLACED": "1"}).json()
    assert (failed["status"], failed["reason"]) == ("failed", "launch_failed"), failed
    assert failed["error"].startswith("fake: no suitable node (insufficient resources on 1 node)"), failed


def test_queue_timeout_seconds_is_bounded(qapi: Api) -> None:
    key = qapi.key()
    for bad in (-1, 3601, "soon"):
        r = post(qapi, key, queue_timeout_seconds=bad)
        assert r.status_code == 422 and r.json()["error"]["code"] == "E_SCHEMA"

"""What the dashboard's admin pages show of a cluster (issue 23, SPEC §12, §13): every replica's quota
refusals per key in the usage charts, and every live replica on `GET /replicas` and the system page.

Two replicas on one database, in this process over FakeBackends (the harness of test_replicas.py):
each refuses requests on its own, tallies them in memory, and adds its tally to the database in one
write (`runtime/rejections.py`); the page reads every replica's.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentfactory.backends.fake import FakeBackend
from agentfactory.observability.rejections import RejectionTally
from agentfactory.runtime.rejections import RejectionFlusher
from agentfactory.store import Store, queries
from tests.api.test_replicas import AUTH, Rep, make
from tests.support.server import database_url


@pytest.fixture
def a(tmp_path: Path) -> Iterator[Rep]:
    yield from make(tmp_path, "A", FakeBackend(engine_id="ENGINE:ONE"))


@pytest.fixture
def b(tmp_path: Path, a: Rep) -> Iterator[Rep]:
    yield from make(tmp_path, "B", FakeBackend(engine_id="ENGINE:ONE"))


def new_key(rep: Rep, **limits: int) -> tuple[str, dict[str, str]]:
    made = rep.client.post("/keys", json={"name": f"k{len(limits)}", **limits}, headers=AUTH)
    assert made.status_code == 201, made.text
    return made.json()["id"], {"Authorization": f"Bearer {made.json()['key']}"}


def stored_refusals(rep: Rep) -> list[tuple[str, int, str, int]]:
    with rep.svc.store.session() as s:
        return queries.quota_rejections_by_key(session=s, since=0, bucket_seconds=3600)


def sign_in(rep: Rep) -> None:
    """The admin's dashboard session in the replica's TestClient (its cookie jar keeps it)."""
    key = AUTH["Authorization"].split()[1]
    done = rep.client.post("/ui/login", data={"key": key, "next": "/ui/agents"}, follow_redirects=False)
    assert done.status_code == 303, done.text


def chart_values(page: str, key_id: str, series: str) -> list[int]:
    """The bars of one key's chart, as the SVG's accessible label says them."""
    section = page.split(f'<span class="mono help">{key_id}</span>')[1].split("</section>")[0]
    label = re.search(rf'class="chart chart-{series}"[^>]*aria-label="[^:]*: ([^"]*)"', section)
    assert label, section
    return [int(v) for v in label.group(1).split(", ")]


def test_every_replicas_quota_refusals_count_per_key_in_the_usage_chart(a: Rep, b: Rep) -> None:
    limited, limited_auth = new_key(a, max_requests_per_minute=2)
    refused = 0
    for rep in (a, b, a, b, a, b, a):  # on SQLite each replica keeps its own bucket; on PostgreSQL they share one
        answer = rep.client.get("/agents", headers=limited_auth)
        if answer.status_code == 429:
            assert answer.json()["error"]["code"] == "E_RATE_LIMIT"
            refused += 1
    assert refused >= 3
    busy, busy_auth = new_key(a, max_concurrent_agents=1)
    body = {"model": "echo", "prompt": "hi", "env": {"FAKE_RUN_UNTIL_STOPPED": "1"}}
    assert b.client.post("/agents", json=body, headers=busy_auth).status_code == 201
    over = b.client.post("/agents", json=body, headers=busy_auth)
    assert over.status_code == 429 and over.json()["error"]["code"] == "E_QUOTA"
    assert stored_refusals(a) == []  # refusals cost no write of their own: they wait in each replica's tally
    b.call(b.svc.rejections.run_once)  # B's loop adds its tally (every 5 s when its loops run)
    sign_in(a)
    page = a.client.get("/ui/admin/usage", params={"days": 1})  # A adds its own first
    assert page.status_code == 200
    assert sum(chart_values(page.text, limited, "rejections")) == refused
    assert f"{refused} quota rejections (rate {refused})" in page.text
    assert sum(chart_values(page.text, busy, "rejections")) == 1
    assert sum(chart_values(page.text, busy, "agents")) == 1
    assert "1 quota rejections (concurrency 1)" in page.text
    by_key = {(k, r): n for k, _b, r, n in stored_refusals(a)}
    assert by_key == {(limited, "rate"): refused, (busy, "concurrency"): 1}
    # A second flush adds nothing twice; later refusals add to the same hour's row.
    a.call(a.svc.rejections.run_once)
    assert b.client.post("/agents", json=body, headers=busy_auth).status_code == 429
    b.call(b.svc.rejections.run_once)
    assert {(k, r): n for k, _b, r, n in stored_refusals(a)}[(busy, "concurrency")] == 2


def test_a_flood_of_refusals_is_one_bounded_write(tmp_path: Path) -> None:
    store = Store(database_url(tmp_path / "af.db"))
    store.migrate()
    tally = RejectionTally(max_entries=3)
    for i in range(20_000):
        tally.note("key_a", "rate")
        tally.note(f"key_{i % 5}", "streams")  # 5 keys, room for 2 more entries
    assert len(tally) == 3 and tally.lost == 3 * 4000
    flusher = RejectionFlusher(store=store, tally=tally)
    writes: list[str] = []
    run = store.run

    def counted(fn: Any, **kwargs: Any) -> Any:
        writes.append(fn.__name__)
        return run(fn, **kwargs)

    store.run = counted  # type: ignore[method-assign]
    asyncio.run(flusher.run_once())
    assert writes == ["add_quota_rejections", "purge_quota_rejections_before"]  # the purge: once an hour
    assert len(tally) == 0 and tally.lost == 0
    asyncio.run(flusher.run_once())
    assert writes == ["add_quota_rejections", "purge_quota_rejections_before"]  # nothing tallied: no write
    with store.session() as s:
        rows = queries.quota_rejections_by_key(session=s, since=0, bucket_seconds=86_400)
    assert sorted((k, r, n) for k, _b, r, n in rows) == [
        ("key_0", "streams", 4000),
        ("key_1", "streams", 4000),
        ("key_a", "rate", 20_000),
    ]
    store.dispose()


def test_replicas_lists_every_live_replica_its_agents_and_the_clusters_capacity(a: Rep, b: Rep) -> None:
    a.svc.replica.warm = lambda: (2, 3)  # as a replica with a warm pool reports it at its heartbeat
    a.heartbeat()
    b.heartbeat()
    for rep in (a, a, b):
        rep.create()
    seen = b.client.get("/replicas", headers=AUTH)
    assert seen.status_code == 200, seen.text
    doc = seen.json()
    replicas = {r["id"]: r for r in doc["replicas"]}
    assert set(replicas) == {"A", "B"}
    assert (replicas["A"]["agents"], replicas["B"]["agents"]) == (2, 1)
    assert (replicas["A"]["current"], replicas["B"]["current"]) == (False, True)
    assert replicas["A"]["engine_id"] == "ENGINE:ONE" and replicas["A"]["heartbeat_at"].endswith("Z")
    assert replicas["A"]["warm"] == {"idle": 2, "target": 3} and replicas["B"]["warm"] is None
    assert doc["capacity"]["running"] == 3 and doc["capacity"]["warm"] == {"idle": 2, "target": 3}
    assert doc["unowned_agents"] == 0
    _user, user_auth = new_key(a)
    refused = b.client.get("/replicas", headers=user_auth)
    assert refused.status_code == 403 and refused.json()["error"]["code"] == "E_FORBIDDEN"
    sign_in(b)
    page = b.client.get("/ui/admin/system").text
    assert 'data-replica="A"' in page and 'data-replica="B"' in page
    assert "2 idle of 3 on 1 replica(s)" in page and "3 of" in page
    a.die()  # its lease lapses: it leaves the list, its agents wait for adoption
    doc = b.client.get("/replicas", headers=AUTH).json()
    assert [r["id"] for r in doc["replicas"]] == ["B"] and doc["unowned_agents"] == 2
    assert doc["capacity"]["warm"] == {"idle": 0, "target": 0}
    assert 'data-replica="A"' not in b.client.get("/ui/admin/system").text

"""The reaper's decisions, driven one pass at a time with an injected clock (no test waits a TTL)."""

from __future__ import annotations

import time
from typing import Any

from sqlalchemy import update

from agentfactory.store.tables import AgentRow
from tests.api.conftest import Api


def state(api: Api) -> Any:
    return api.client.app.state  # type: ignore[attr-defined]


def run_pass(api: Api, *, now: float) -> None:
    st = state(api)
    st.services.launcher.clock = lambda: now
    api.client.portal.call(st.reaper.run_once)  # type: ignore[union-attr]


def create(api: Api, **body: Any) -> dict[str, Any]:
    r = api.client.post("/agents", json={"model": "echo", "prompt": "hi", **body}, headers=api.admin)
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def get(api: Api, agent_id: str) -> Any:
    return api.client.get(f"/agents/{agent_id}", headers=api.admin)


def test_a_pass_expires_agents_past_their_ttl_only(api: Api) -> None:
    old = create(api, ttl_seconds=60, env={"FAKE_RUN_UNTIL_STOPPED": "1"})
    young = create(api, ttl_seconds=600, env={"FAKE_RUN_UNTIL_STOPPED": "1"})
    run_pass(api, now=time.time() + 61)
    assert (get(api, old["id"]).json()["status"], get(api, old["id"]).json()["reason"]) == ("expired", "ttl_expired")
    assert get(api, young["id"]).json()["status"] == "running"
    # The expired agent's container is gone, not only its row marked: nothing is left behind.
    assert old["id"] not in api.backend.containers
    assert young["id"] in api.backend.containers


def test_an_extended_ttl_is_re_read_before_acting(api: Api) -> None:
    a = create(api, ttl_seconds=60, env={"FAKE_RUN_UNTIL_STOPPED": "1"})
    api.client.post(f"/agents/{a['id']}/ttl", json={"ttl_seconds": 600}, headers=api.admin)
    run_pass(api, now=time.time() + 61)
    assert get(api, a["id"]).json()["status"] == "running"


def test_stuck_starting_is_failed_and_a_vanished_container_is_lost(api: Api) -> None:
    a = create(api, env={"FAKE_RUN_UNTIL_STOPPED": "1"})
    store = state(api).services.store
    with store.session() as s:  # a row left in `starting` by a launch that never finished
        s.execute(update(AgentRow).where(AgentRow.id == a["id"]).values(status="starting"))
    st = state(api)
    # Nobody is watching it any more: its watcher is gone (cancelled, not just forgotten: a forgotten
    # one would still finalize the agent when the pass removes its container, and race the pass).
    watchers = st.services.launcher._watchers
    api.client.portal.call(lambda: [t.cancel() for t in list(watchers.values())] and None)  # type: ignore[union-attr]
    deadline = time.monotonic() + 10
    while watchers and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not watchers
    run_pass(api, now=time.time() + 3600)
    body = get(api, a["id"]).json()
    assert (body["status"], body["reason"]) == ("failed", "launch_failed")
    assert a["id"] not in api.backend.containers

    b = create(api, env={"FAKE_RUN_UNTIL_STOPPED": "1"})
    api.backend.vanish(b["id"])
    deadline = time.monotonic() + 30
    while get(api, b["id"]).json()["status"] == "running" and time.monotonic() < deadline:
        time.sleep(0.02)
    assert (get(api, b["id"]).json()["status"], get(api, b["id"]).json()["reason"]) == ("failed", "lost")


def test_orphan_containers_are_removed(api: Api) -> None:
    a = create(api, env={"FAKE_RUN_UNTIL_STOPPED": "1"})
    store = state(api).services.store
    with store.session() as s:  # the row is gone (e.g. purged by hand): the container is an orphan
        s.query(AgentRow).filter(AgentRow.id == a["id"]).delete()
    run_pass(api, now=time.time())
    assert api.backend.containers == {}


def test_retention_purges_finished_agents_and_their_lines(api: Api) -> None:
    a = create(api, env={"FAKE_LINES": "3"})
    deadline = time.monotonic() + 10
    while get(api, a["id"]).json()["status"] != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.02)
    run_pass(api, now=time.time() + 29 * 86_400)
    assert get(api, a["id"]).status_code == 200
    run_pass(api, now=time.time() + 31 * 86_400)
    assert get(api, a["id"]).status_code == 404

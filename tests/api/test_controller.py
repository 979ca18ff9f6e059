"""The controller over a FakeBackend: an engine that goes away and comes back (issue 17, SPEC §13).

The fake engine can cut every output stream while its containers run on (a restart with
live-restore), refuse every call (down), stop a container as an engine without live-restore does,
and keep an output open after its container exited (a stuck stream).
"""

from __future__ import annotations

import hashlib
import time
from typing import Any

from agentfactory.backends.base import ContainerState, ContainerStatus
from agentfactory.store.tables import AgentRow
from tests.api.conftest import Api
from tests.api.test_reaper import create, get, run_pass, state
from tests.support.server import wait_until


def row(api: Api, agent_id: str) -> AgentRow:
    with state(api).services.store.session() as s:
        return s.query(AgentRow).filter(AgentRow.id == agent_id).one()


def texts(api: Api, agent_id: str) -> list[str]:
    body = api.client.get(f"/agents/{agent_id}/logs", params={"limit": 1000}, headers=api.admin).json()
    return [x["text"] for x in body["lines"]]


def watched(api: Api, agent_id: str) -> bool:
    return bool(state(api).services.launcher.watching(row(api, agent_id).pk))


def printed(api: Api, agent_id: str, n: int) -> None:
    wait_until(lambda: len(texts(api, agent_id)) == n, timeout=10, what=f"{n} lines stored")


def sealed(body: dict[str, Any], lines: list[str]) -> bool:
    data = "".join(t + "\n" for t in lines).encode()
    return (body["log_lines"], body["log_sha256"]) == (len(lines), hashlib.sha256(data).hexdigest())


def running_agent(api: Api) -> str:
    a = create(api, env={"FAKE_RUN_UNTIL_STOPPED": "1"})
    for i in (1, 2, 3):
        api.backend.print(a["id"], f"n{i}\n")
    printed(api, a["id"], 3)
    return str(a["id"])


def test_a_cut_stream_hands_the_agent_to_the_controller_which_resumes_it(api: Api) -> None:
    agent = running_agent(api)
    api.backend.print(agent, "n4 half")  # a partial line when the stream is cut: not stored as a line
    api.backend.cut_output()
    wait_until(lambda: not watched(api, agent), timeout=10, what="watcher handed over")
    assert get(api, agent).json()["status"] == "running"
    assert texts(api, agent) == ["n1", "n2", "n3"]
    api.backend.print(agent, " done\nn5\n")  # printed while nobody watched
    run_pass(api, now=time.time())
    assert watched(api, agent)
    api.backend.print(agent, "n6\n")
    api.backend.exit(agent, 0)
    wait_until(lambda: get(api, agent).json()["status"] == "succeeded", timeout=10, what="succeeded")
    lines = ["n1", "n2", "n3", "n4 half done", "n5", "n6"]
    assert texts(api, agent) == lines
    assert sealed(get(api, agent).json(), lines)


def test_an_engine_that_stopped_its_containers_ends_them_lost_and_says_so(api: Api) -> None:
    agent = running_agent(api)
    api.backend.engine_down = True
    api.backend.cut_output()
    wait_until(lambda: not watched(api, agent), timeout=10, what="watcher handed over")
    assert row(api, agent).engine_lost_at is not None
    run_pass(api, now=time.time())  # the engine is down: nothing is decided
    assert get(api, agent).json()["status"] == "running"
    api.backend.exit(agent, 143)  # it stopped its containers on the way down (no live-restore)
    api.backend.engine_down = False
    run_pass(api, now=time.time())
    wait_until(lambda: get(api, agent).json()["status"] != "running", timeout=10, what="finalized")
    body = get(api, agent).json()
    assert (body["status"], body["reason"], body["exit_code"]) == ("failed", "lost", 143)
    assert "engine stopped or restarted" in body["error"]
    assert sealed(body, ["n1", "n2", "n3"])


def test_an_agent_that_outlived_the_outage_resumes_and_its_own_exit_counts(api: Api) -> None:
    agent = running_agent(api)
    api.backend.engine_down = True
    run_pass(api, now=time.time())  # a pass finds the engine down: the outage is noted
    assert row(api, agent).engine_lost_at is not None
    api.backend.cut_output()
    wait_until(lambda: not watched(api, agent), timeout=10, what="watcher handed over")
    api.backend.engine_down = False
    run_pass(api, now=time.time())
    assert watched(api, agent) and row(api, agent).engine_lost_at is None
    api.backend.exit(agent, 143)  # its own exit, after the outage: an ordinary failure
    wait_until(lambda: get(api, agent).json()["status"] == "failed", timeout=10, what="failed")
    assert get(api, agent).json()["reason"] == "exit"


def test_a_gone_container_after_an_outage_is_lost_with_the_engine_named(api: Api) -> None:
    agent = running_agent(api)
    api.backend.engine_down = True
    api.backend.cut_output()
    wait_until(lambda: not watched(api, agent), timeout=10, what="watcher handed over")
    api.backend.vanish(agent)
    api.backend.engine_down = False
    run_pass(api, now=time.time())
    body = get(api, agent).json()
    assert (body["status"], body["reason"]) == ("failed", "lost")
    assert "engine stopped or restarted" in body["error"] and "gone" in body["error"]


def test_finalize_never_ends_a_running_container(api: Api) -> None:
    agent = running_agent(api)
    lch = state(api).services.launcher
    # What an engine with live-restore reports for a container it lost track of: exit code 0.
    api.client.portal.call(lch.rows.finalize, row(api, agent).pk, ContainerStatus(ContainerState.RUNNING, exit_code=0))  # type: ignore[union-attr]
    assert get(api, agent).json()["status"] == "running"


def test_a_stop_whose_watcher_is_stuck_still_finalizes_the_agent(api: Api) -> None:
    a = create(api, env={"FAKE_RUN_UNTIL_STOPPED": "1", "FAKE_HOLD_OUTPUT": "1"})
    api.backend.print(a["id"], "n1\n")
    printed(api, a["id"], 1)
    state(api).services.launcher.stop_wait_seconds = 0.2
    r = api.client.delete(f"/agents/{a['id']}", headers=api.admin)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["exit_code"]) == ("cancelled", 137)
    assert sealed(r.json(), ["n1"])
    assert a["id"] not in api.backend.containers

"""The Docker Engine restarts under a running control plane, or is down when it starts (issue 17,
SPEC §13 "The engine misbehaves"). Each test stops and starts an engine of its own (PrivateEngine:
own socket, data root, exec root, bridge), never the machine's shared one, and destroys it whatever
happens; its teardown checks that the machine's docker0 is still there.
"""

from __future__ import annotations

import hashlib
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, write_catalog
from tests.support.engine import PrivateEngine
from tests.support.postgres import LocalPostgres
from tests.support.server import ServerProcess, all_log_lines, wait_terminal, wait_until

pytestmark = pytest.mark.docker
REAPER_INTERVAL = 1.0  # tests/support/server.py's AGENTFACTORY_REAPER_INTERVAL_SECONDS
AGENTS = 5  # the figure
LINES = 250  # one each 0.1 s: 25 s or more, longer than the engine's outages below on a loaded machine


@pytest.fixture(scope="module")
def engine(docker_engine: None) -> Iterator[PrivateEngine]:
    eng = PrivateEngine()
    try:
        eng.start()
        eng.load_image()
        yield eng
    finally:
        eng.destroy()
    # The machine's shared engine, which other tests run on at the same time, keeps its bridge.
    eng.assert_host_bridge_intact()


@pytest.fixture
def srv(make_server: type[ServerProcess], upstream: FakeOpenAI, engine: PrivateEngine, tmp_path: Path) -> ServerProcess:
    catalog = write_catalog(tmp_path / "catalog.json", upstream)
    return make_server(catalog=catalog, env={UPSTREAM_KEY_ENV: UPSTREAM_KEY, "DOCKER_HOST": engine.host})


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def printer(c: httpx.Client, lines: int) -> str:
    command = f"for i in $(seq 1 {lines}); do echo n$i; sleep 0.1; done"
    r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": command, "ttl_seconds": 300})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def numbered(lines: list[dict[str, Any]]) -> list[str]:
    return [x["text"] for x in lines if x["text"].startswith("n") and x["text"][1:].isdigit()]


def assert_whole(c: httpx.Client, agent_id: str, final: dict[str, Any], n: int) -> None:
    lines = all_log_lines(c, agent_id)
    assert numbered(lines) == [f"n{i}" for i in range(1, n + 1)]
    data = "".join(x["text"] + "\n" for x in lines).encode()
    assert (final["log_lines"], final["log_sha256"]) == (len(lines), hashlib.sha256(data).hexdigest())


def assert_still_running(engine: PrivateEngine, n: int) -> None:
    """The tests' premise: the agents outlive the engine's outage. What a container prints while the
    engine is down and then exits before it is back, the engine itself never delivers (measured:
    `docker logs` lacks it), so an outage longer than an agent would fail its line count."""
    running = engine.cli("ps", "-q", "--filter", "status=running").split()
    assert len(running) == n, f"{len(running)} of {n} agents outlived the engine's outage (machine too loaded?)"


def restart(engine: PrivateEngine, *, live_restore: bool) -> None:
    if engine.live_restore != live_restore:
        engine.stop()
        engine.start(live_restore=live_restore)


def test_live_restore_agents_resume_and_finish_with_every_line(engine: PrivateEngine, srv: ServerProcess) -> None:
    restart(engine, live_restore=True)
    srv.start()
    with srv.client() as c:
        ids = [printer(c, LINES) for _ in range(AGENTS)]
        wait_until(lambda: all(len(numbered(all_log_lines(c, a))) >= 10 for a in ids), timeout=60, what="lines")
        engine.stop()
        engine.start(live_restore=True)
        assert_still_running(engine, AGENTS)
        for a in ids:
            final = wait_terminal(c, a, timeout=90)
            assert (final["status"], final["exit_code"]) == ("succeeded", 0), final
            assert_whole(c, a, final, LINES)


def test_without_live_restore_agents_end_lost_naming_the_engine_within_a_pass(
    engine: PrivateEngine, srv: ServerProcess
) -> None:
    restart(engine, live_restore=False)
    srv.start()
    with srv.client() as c:
        ids = [printer(c, 600) for _ in range(AGENTS)]
        wait_until(lambda: all(len(numbered(all_log_lines(c, a))) >= 5 for a in ids), timeout=60, what="lines")
        engine.stop()  # it stops its containers (the runtime exits 143 on SIGTERM)
        back = engine.start(live_restore=False)
        lags = []
        for a in ids:
            final = wait_terminal(c, a, timeout=30)
            assert (final["status"], final["reason"]) == ("failed", "lost"), final
            assert "engine stopped or restarted" in final["error"]
            lags.append(ts(final["finished_at"]) - back)
            texts = numbered(all_log_lines(c, a))
            assert texts == [f"n{i}" for i in range(1, len(texts) + 1)]
        print(f"lost after the engine's return: {', '.join(f'{x:.2f}s' for x in lags)}")
        # One pass interval (jitter 10 %), plus the pass itself on a loaded 2-core machine.
        assert max(lags) <= REAPER_INTERVAL * 1.1 + 1.5


def test_a_control_plane_started_while_the_engine_is_down_adopts_what_runs(
    engine: PrivateEngine, srv: ServerProcess
) -> None:
    restart(engine, live_restore=True)
    srv.start()
    with srv.client() as c:
        ids = [printer(c, LINES) for _ in range(AGENTS)]
        wait_until(lambda: all(len(numbered(all_log_lines(c, a))) >= 5 for a in ids), timeout=60, what="lines")
    srv.stop()  # its containers run on
    engine.stop()
    srv.start()
    with srv.client() as c:
        ready = c.get("/ready")
        assert ready.status_code == 503 and ready.json()["checks"]["engine"].startswith("down")
        engine.start(live_restore=True)
        assert_still_running(engine, AGENTS)
        wait_until(lambda: c.get("/ready").status_code == 200, timeout=30, what="ready")
        for a in ids:
            final = wait_terminal(c, a, timeout=90)
            assert final["status"] == "succeeded", final
            assert_whole(c, a, final, LINES)


def passes(srv: ServerProcess) -> float:
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    line = next(x for x in text.splitlines() if x.startswith("agentfactory_reaper_passes_total "))
    return float(line.split()[1])


def test_replicas_on_separate_engines_never_mark_each_others_agents_lost(
    engine: PrivateEngine,
    postgres: LocalPostgres,
    make_server: type[ServerProcess],
    upstream: FakeOpenAI,
    tmp_path: Path,
) -> None:
    """One database, two replicas, each on its own engine (the machine's and a private one)."""
    if not engine.answers():
        engine.start(live_restore=engine.live_restore)
    catalog = write_catalog(tmp_path / "catalog.json", upstream)
    env = {
        UPSTREAM_KEY_ENV: UPSTREAM_KEY,
        "AGENTFACTORY_DATABASE_URL": postgres.new_database("engines"),
        "AGENTFACTORY_INSTANCE_ID": "engines-" + uuid.uuid4().hex[:8],
        # Replicas on one machine share its gateway socket (one serves it, another takes over when
        # it dies): the far agent's model calls go on while `far` is down.
        "AGENTFACTORY_GATEWAY_SOCKET_DIR": str(tmp_path / "gw"),
        "AGENTFACTORY_FILES_DIR": str(tmp_path / "files"),
    }
    near = make_server(catalog=catalog, env=env)
    far = make_server(catalog=catalog, env={**env, "DOCKER_HOST": engine.host})
    far.admin_key = near.admin_key
    far.env["AGENTFACTORY_ADMIN_KEY"] = near.admin_key
    near.start()
    far.start()
    with near.client() as c, far.client() as f:
        mine, theirs = printer(c, 100), printer(f, 100)
        wait_until(
            lambda: all(len(numbered(all_log_lines(c, a))) >= 5 for a in (mine, theirs)), timeout=60, what="lines"
        )
    far.kill()  # dead at once to `near` (same machine, its process is gone), but its agent is on another engine
    with near.client() as c:
        seen = passes(near)
        wait_until(lambda: passes(near) >= seen + 3, timeout=30, what="three controller passes")
        assert c.get(f"/agents/{theirs}").json()["status"] == "running"
        final = wait_terminal(c, mine, timeout=60)
        assert final["status"] == "succeeded", final
        assert c.get(f"/agents/{theirs}").json()["status"] == "running"
    far.start()  # a new replica on that engine adopts it
    with near.client() as c:
        final = wait_terminal(c, theirs, timeout=60)
        assert final["status"] == "succeeded", (final["reason"], final["exit_code"], final["error"])
        assert_whole(c, theirs, final, 100)

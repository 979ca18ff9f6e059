"""Warm sandboxes on the real engine and a real server (issue 21, SPEC §10): an agent that fits the
default profile starts in a pre-started sandbox (`"warm": true`) and everything that holds for a cold
agent holds for it (output, seal, exit, masking, TTL from the claim, the hardening probe); `docker
inspect` of its container shows neither its prompt nor its secrets; a burst larger than the pool
starts the rest cold with no error; the pool refills; metrics; a crash's sandboxes are removed at the
next start and a shutdown leaves none.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.test_hardening import PROBE, probe_results
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, write_catalog
from tests.support.server import ServerProcess, all_log_lines, wait_terminal, wait_until

pytestmark = pytest.mark.docker

POOL = 2
SECRET = "s3cr3t-warm-value-7f1c"
PROMPT_MARK = "prompt-mark-5be2"
LIMITS = {"scratch_mb": 16, "memory_mb": 512, "pids": 128}  # the probe fills scratch: keep it small


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def docker(*args: str) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=60)
    assert done.returncode == 0, f"docker {' '.join(args)}: {done.stderr.strip()}"
    return done.stdout.strip()


def sandboxes(srv: ServerProcess) -> list[str]:
    """Names of this server's warm containers (idle or claimed) on the engine."""
    out = docker(
        "ps", "-a", "--format", "{{.Names}}",
        "--filter", "label=io.agentfactory.warm", "--filter", f"label=io.agentfactory.instance={srv.instance}",
    )  # fmt: skip
    return out.split()


def idle(srv: ServerProcess) -> int:
    with srv.client() as c:
        return int(c.get("/capacity").json()["warm"]["idle"])


def wait_full(srv: ServerProcess, what: str = "the pool full") -> None:
    wait_until(lambda: idle(srv) == POOL, timeout=60, what=what)


def metric(srv: ServerProcess, line_start: str) -> float:
    with srv.client() as c:
        text = c.get("/metrics").text
    found = [line for line in text.splitlines() if line.startswith(line_start + " ")]
    assert found, f"{line_start} not in /metrics"
    return float(found[0].split()[-1])


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI, docker_engine: None
) -> Iterator[dict[str, ServerProcess]]:
    """The same catalog twice: one server with a pool of POOL, one without (cold)."""
    made: dict[str, ServerProcess] = {}
    for name, size in (("warm", POOL), ("cold", 0)):
        work = tmp_path_factory.mktemp(f"pool-{name}")
        catalog = write_catalog(work / "catalog.json", upstream, limits=LIMITS)
        env = {
            UPSTREAM_KEY_ENV: UPSTREAM_KEY,
            "AGENTFACTORY_WARM_POOL_SIZE": str(size),
            "AGENTFACTORY_MAX_RUNNING_AGENTS": "20",
        }
        made[name] = ServerProcess(work, catalog=catalog, env=env)
    try:
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(ServerProcess.start, made.values()))
        yield made
    finally:
        for srv in made.values():
            srv.stop()
            srv.cleanup_containers()


def post(c: httpx.Client, prompt: str, **extra: Any) -> dict[str, Any]:
    r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": prompt, **extra})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def test_a_warm_agent_runs_as_a_cold_one_and_its_container_config_holds_nothing_of_it(
    servers: dict[str, ServerProcess],
) -> None:
    srv = servers["warm"]
    wait_full(srv)
    prompt = f"echo {PROMPT_MARK}-$GREETING; echo leak=$API_TOKEN; sleep 2; echo done"
    with srv.client() as c:
        agent = post(c, prompt, env={"GREETING": "hello"}, secrets={"API_TOKEN": SECRET}, ttl_seconds=120)
        assert agent["warm"] is True, agent
        assert agent["status"] == "running"
        # The claimed sandbox is found by the agent's id, as any agent's container.
        inspected = docker("inspect", f"agentfactory-{agent['id']}")
        for needle in (SECRET, PROMPT_MARK, "GREETING", "hello", "AGENTFACTORY_GATEWAY_TOKEN", agent["id"] + '"'):
            assert needle not in inspected.replace(f'"/agentfactory-{agent["id"]}"', ""), needle
        config = json.loads(inspected)[0]
        assert config["Config"]["Labels"]["io.agentfactory.warm"], config["Config"]["Labels"]
        assert "io.agentfactory.agent_id" not in config["Config"]["Labels"]
        done = wait_terminal(c, agent["id"], timeout=60)
        lines = all_log_lines(c, agent["id"])
    texts = [line["text"] for line in lines]
    assert (done["status"], done["exit_code"], done["warm"]) == ("succeeded", 0, True), done
    assert texts[0].startswith('{"event": "start"'), texts[:3]  # captured from the agent's first line
    assert f"{PROMPT_MARK}-hello" in texts and "done" in texts, texts
    assert not any(SECRET in t for t in texts) and any(t.startswith("leak=") for t in texts), texts  # masked
    assert done["log_lines"] == len(lines)
    # The TTL counts from the claim.
    assert ts(done["expires_at"]) - ts(done["started_at"]) == pytest.approx(120, abs=0.01)
    assert ts(done["started_at"]) - ts(done["created_at"]) < 2
    assert docker("ps", "-aq", "--filter", f"name=agentfactory-{agent['id']}") == ""  # removed at its end


def test_a_burst_larger_than_the_pool_starts_the_rest_cold_and_the_pool_refills(
    servers: dict[str, ServerProcess],
) -> None:
    srv = servers["warm"]
    wait_full(srv)
    hits, misses = (
        metric(srv, 'agentfactory_pool_claims_total{outcome="hit"}'),
        metric(srv, 'agentfactory_pool_claims_total{outcome="miss"}'),
    )
    with srv.client() as c, ThreadPoolExecutor(5) as pool:
        agents = list(pool.map(lambda i: post(c, f"echo burst-{i}"), range(5)))
        ends = [wait_terminal(c, a["id"], timeout=90) for a in agents]
        outputs = [[line["text"] for line in all_log_lines(c, a["id"])] for a in agents]
    assert all(e["status"] == "succeeded" for e in ends), ends
    assert all(f"burst-{i}" in out for i, out in enumerate(outputs)), outputs
    warm = [e["warm"] for e in ends]
    assert 1 <= warm.count(True) <= POOL and warm.count(False) >= 5 - POOL, warm
    wait_full(srv, "the pool refilled")
    assert metric(srv, 'agentfactory_pool_claims_total{outcome="hit"}') - hits == warm.count(True)
    assert metric(srv, 'agentfactory_pool_claims_total{outcome="miss"}') - misses == warm.count(False)
    assert metric(srv, 'agentfactory_pool_sandboxes{state="idle"}') == POOL
    assert metric(srv, 'agentfactory_pool_sandboxes{state="starting"}') == 0
    with srv.client() as c:
        assert c.get("/capacity").json()["warm"] == {"idle": POOL, "target": POOL}


def test_the_replica_list_shows_each_replicas_pool_and_the_clusters_sum(servers: dict[str, ServerProcess]) -> None:
    srv = servers["warm"]
    wait_full(srv)
    with srv.client() as c:
        doc = c.get("/replicas").json()
    [this] = doc["replicas"]
    assert this["current"] and this["warm"] == {"idle": POOL, "target": POOL}
    assert doc["capacity"]["warm"] == {"idle": POOL, "target": POOL} and doc["capacity"]["max_running"] == 20


def test_an_agent_with_a_network_tool_starts_cold(servers: dict[str, ServerProcess]) -> None:
    """Not the default profile: a network tool (refused here or started cold, never warm)."""
    srv = servers["warm"]
    with srv.client() as c:
        tools = [t["id"] for t in c.get("/catalog").json()["tools"] if t.get("network")]
        if not tools:
            pytest.skip("the catalog has no network tool")
        r = c.post("/agents", json={"model": "echo", "tools": tools, "prompt": "hi"})
        if r.status_code == 201:
            assert r.json()["warm"] is False
            wait_terminal(c, r.json()["id"], timeout=60)
        else:
            assert r.json()["error"]["code"] == "E_CATALOG", r.text  # egress cannot be enforced here


def test_the_hardening_probe_of_a_warm_agent_matches_a_cold_ones(servers: dict[str, ServerProcess]) -> None:
    wait_full(servers["warm"])

    def run(srv: ServerProcess) -> tuple[dict[str, Any], dict[str, str]]:
        with srv.client() as c:
            agent = wait_terminal(c, post(c, PROBE)["id"], timeout=90)
            return agent, probe_results([line["text"] for line in all_log_lines(c, agent["id"])])

    with ThreadPoolExecutor(2) as pool:
        (warm, warm_probe), (cold, cold_probe) = pool.map(run, (servers["warm"], servers["cold"]))
    assert (warm["status"], warm["warm"]) == ("succeeded", True), warm
    assert (cold["status"], cold["warm"]) == ("succeeded", False), cold
    assert len(warm_probe) >= 15, warm_probe
    assert warm_probe == cold_probe


def test_a_sandbox_that_died_while_idle_is_never_given_to_an_agent(servers: dict[str, ServerProcess]) -> None:
    srv = servers["warm"]
    wait_full(srv)
    for name in sandboxes(srv):
        docker("kill", name)  # its runtime gone: its stream ends
    with srv.client() as c:
        agents = [post(c, f"echo after-kill-{i}") for i in range(2)]
        ends = [wait_terminal(c, a["id"], timeout=60) for a in agents]
        outputs = [[line["text"] for line in all_log_lines(c, a["id"])] for a in agents]
    assert [e["status"] for e in ends] == ["succeeded", "succeeded"], ends
    assert all(f"after-kill-{i}" in out for i, out in enumerate(outputs)), outputs
    wait_full(srv, "the pool refilled after its sandboxes died")


def test_a_crash_leaves_sandboxes_the_next_start_removes_and_a_shutdown_leaves_none(
    servers: dict[str, ServerProcess],
) -> None:
    srv = servers["warm"]
    wait_full(srv)
    before = set(sandboxes(srv))
    assert len(before) == POOL, before
    srv.kill()
    srv.start()
    wait_full(srv, "the pool full again after the restart")
    wait_until(lambda: not before & set(sandboxes(srv)), timeout=30, what="the crashed run's sandboxes removed")
    assert len(sandboxes(srv)) == POOL
    # A start without a pool removes them too: turning the pool off leaks nothing.
    srv.kill()
    srv.env["AGENTFACTORY_WARM_POOL_SIZE"] = "0"
    try:
        srv.start()
        wait_until(lambda: sandboxes(srv) == [], timeout=30, what="a start without a pool removed them")
        srv.stop()
        srv.env["AGENTFACTORY_WARM_POOL_SIZE"] = str(POOL)
        srv.start()
        wait_full(srv, "the pool full again")
    finally:
        srv.env["AGENTFACTORY_WARM_POOL_SIZE"] = str(POOL)
    srv.stop()
    assert sandboxes(srv) == []

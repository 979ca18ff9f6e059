"""Issue 18: the swarm backend on a real single-node Docker Swarm (a private dockerd of the test's own,
tests/support/swarm_engine.py): echo, tools, the sandbox seen from inside, no network but `lo` and the
model still reached through the gateway, TTL, cancel, restart recovery, orphans, the seal, OOM,
placement, and the start-up refusal of a swarm without no-new-privileges."""

from __future__ import annotations

import asyncio
import hashlib
import json
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentfactory.backends.swarm import SwarmBackend
from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.test_hardening import ALLOWED_MOUNT_POINTS, EXPECTED, PROBE
from tests.support.agents import UPSTREAM_KEY, prompt_as_shell, write_catalog
from tests.support.server import ROOT, ServerProcess, all_log_lines, wait_terminal, wait_until
from tests.support.sse import iter_events
from tests.support.swarm_engine import PrivateSwarm, swarm_env

pytestmark = pytest.mark.docker

SCRATCH_MB, MEMORY_MB, PIDS = 16, 512, 128
# On this machine's cgroup v1 a service's task cannot ask for a private cgroup namespace (the service
# API has no such setting), so it sees its cgroup's path: the one line of the profile that differs.
SWARM_EXPECTED = {k: v for k, v in EXPECTED.items() if k != "cgroup path"}


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def seal_of(lines: list[dict[str, Any]]) -> tuple[int, int, str]:
    h, n = hashlib.sha256(), 0
    for line in lines:
        data = line["text"].encode() + b"\n"
        h.update(data)
        n += len(data)
    return len(lines), n, h.hexdigest()


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(prompt_as_shell()) as fake:
        yield fake


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, swarm: PrivateSwarm, upstream: FakeOpenAI) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("swarm-server")
    placed = {"id": "gpu-only", "provider": "echo", "constraints": ["node.labels.gpu==true"]}
    limits = {"scratch_mb": SCRATCH_MB, "memory_mb": MEMORY_MB, "pids": PIDS}
    catalog = write_catalog(work / "catalog.json", upstream, limits=limits, extra_models=[placed])
    server = ServerProcess(work, catalog=catalog, env=swarm_env(swarm)).start()
    try:
        yield server
    finally:
        server.stop()


def start(c: httpx.Client, command: str, **extra: Any) -> str:
    r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": command, **extra})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def texts(c: httpx.Client, agent_id: str) -> list[str]:
    return [line["text"] for line in all_log_lines(c, agent_id)]


def test_echo_and_shell_agents_run_as_one_task_services(srv: ServerProcess, swarm: PrivateSwarm) -> None:
    with srv.client() as c:
        r = c.post("/agents", json={"model": "echo", "prompt": "hello from the swarm"})
        assert r.status_code == 201, r.text
        echo = wait_terminal(c, r.json()["id"], timeout=60)
        assert (echo["status"], echo["exit_code"]) == ("succeeded", 0), echo
        assert json.loads(texts(c, echo["id"])[-2]) == {"event": "final", "content": "hello from the swarm"}
        failing = wait_terminal(c, start(c, "echo out; echo err >&2; exit 3"), timeout=60)
        lines = all_log_lines(c, failing["id"])
        assert {"out", "err"} <= {x["text"] for x in lines}
        # The shell tool's exit is the tool's; the agent itself ends with the model's final answer.
        assert failing["status"] == "succeeded", failing
        assert (failing["log_lines"], failing["log_bytes"], failing["log_sha256"]) == seal_of(lines)
    wait_until(lambda: not swarm.services(srv.instance), timeout=20, what="finished agents' services removed")


def test_the_sandbox_seen_from_inside_a_task_and_the_model_through_the_gateway(
    srv: ServerProcess, swarm: PrivateSwarm
) -> None:
    with srv.client() as c:
        agent_id = start(c, PROBE + "\nenv | grep -c sk- || true")
        running = wait_until(lambda: swarm.services(srv.instance), timeout=30, what="the agent's service")
        spec = json.loads(swarm.cli("service", "inspect", running[0]))[0]["Spec"]
        assert spec["TaskTemplate"]["RestartPolicy"]["Condition"] == "none"
        assert spec["Mode"] == {"Replicated": {"Replicas": 1}}
        assert spec["Labels"]["io.agentfactory.agent_id"] == agent_id
        agent = wait_terminal(c, agent_id, timeout=90)
        lines = texts(c, agent_id)
    assert agent["status"] == "succeeded", agent
    seen = {k: v for k, v in (x.removeprefix("PROBE ").split("=", 1) for x in lines if x.startswith("PROBE "))}
    print("swarm probe:", json.dumps(seen, indent=1))
    for key, want in SWARM_EXPECTED.items():
        assert seen.get(key) in (want if isinstance(want, set) else {want}), (key, seen.get(key))
    assert set(seen["mount points"].split(",")) <= ALLOWED_MOUNT_POINTS, seen["mount points"]
    # No interface but lo, yet its model answered: the `sh` model is an OpenAI-compatible upstream the
    # agent reached only through the gateway's socket; no provider key is in its environment.
    assert seen["interfaces"] == "lo"
    assert "0" in lines and UPSTREAM_KEY not in "\n".join(lines)


def test_ttl_expiry_within_two_seconds_and_cancel(srv: ServerProcess, swarm: PrivateSwarm) -> None:
    with srv.client() as c:
        # 6 s: the runtime's start and its first model call before `started` take seconds on a loaded machine.
        expiring = [start(c, "echo started; sleep 300", ttl_seconds=6) for _ in range(5)]
        stubborn = start(c, "trap '' TERM; echo ready; while true; do sleep 1; done")
        wait_until(lambda: "ready" in texts(c, stubborn), timeout=30, what="ready")
        t0 = time.monotonic()
        cancelled = c.delete(f"/agents/{stubborn}")
        elapsed = time.monotonic() - t0
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled", cancelled.text
        assert elapsed <= 3 + 2.5, f"cancel took {elapsed:.1f}s"
        lags = []
        for agent_id in expiring:
            final = wait_terminal(c, agent_id, timeout=30)
            assert (final["status"], final["reason"]) == ("expired", "ttl_expired"), final
            lags.append(ts(final["finished_at"]) - (ts(final["started_at"]) + 6))
            assert "started" in texts(c, agent_id)
    print(f"swarm TTL expiry lag over 5 agents: max {max(lags):.2f}s")
    assert max(lags) <= 2.0
    wait_until(lambda: not swarm.services(srv.instance), timeout=20, what="services removed")


def test_oom_and_a_flood_keep_every_line_and_the_seal(srv: ServerProcess) -> None:
    with srv.client(timeout=60) as c:
        oom = start(c, "python3 -c 'x = bytearray(900 << 20)'")
        flood = start(c, "seq 1 50000; echo tail >&2")
        ended = wait_terminal(c, oom, timeout=60)
        assert (ended["status"], ended["reason"]) == ("failed", "oom_killed"), ended
        final = wait_terminal(c, flood, timeout=120)
        lines = all_log_lines(c, flood, limit=5000)
    numbered = [int(x["text"]) for x in lines if x["text"].isdigit()]
    assert numbered == list(range(1, 50_001))
    assert "tail" in {x["text"] for x in lines}
    assert (final["log_lines"], final["log_bytes"], final["log_sha256"]) == seal_of(lines)


# Prints n1..n20 (through the outage), waits for the gateway to answer again (the agent's model call
# after its tool needs it: a start-up on a loaded machine can take longer than any fixed sleep), then
# prints n21..n40.
PRINTER = """for i in $(seq 1 20); do echo n$i; sleep 0.2; done
python3 -c '
import socket, time
while True:
    try:
        socket.socket(socket.AF_UNIX).connect("/run/agentfactory/gateway.sock")
        break
    except OSError:
        time.sleep(0.2)
'
for i in $(seq 21 40); do echo n$i; done"""


def test_restart_resumes_capture_with_every_line_once(srv: ServerProcess) -> None:
    with srv.client() as c:
        printers = [start(c, PRINTER) for _ in range(3)]
        overdue = start(c, "sleep 300", ttl_seconds=3)
        # Each printer's first model call (before its tool runs) must be done before the gateway goes away.
        wait_until(lambda: all(len(texts(c, p)) > 5 for p in printers), timeout=60, what="first lines")
    srv.kill()
    time.sleep(3.5)  # the outage: `overdue` passes its TTL, the printers print on
    srv.start()
    with srv.client() as c:
        final = wait_terminal(c, overdue, timeout=30)
        assert (final["status"], final["reason"]) == ("expired", "ttl_expired"), final
        for agent_id in printers:
            agent = wait_terminal(c, agent_id, timeout=90)
            lines = all_log_lines(c, agent_id)
            assert agent["status"] == "succeeded", (agent["error"], agent["exit_code"], [x["text"] for x in lines][-8:])
            numbered = [x["text"] for x in lines if x["text"].startswith("n") and x["text"][1:].isdigit()]
            assert numbered == [f"n{i}" for i in range(1, 41)], numbered
            assert (agent["log_lines"], agent["log_bytes"], agent["log_sha256"]) == seal_of(lines)


def test_an_orphan_service_is_removed(srv: ServerProcess, swarm: PrivateSwarm) -> None:
    orphan = "ag_" + uuid.uuid4().hex[:24]
    image = swarm.cli("image", "inspect", "--format", "{{.Id}}", "agentfactory-runtime:latest").strip()
    swarm.cli(
        "service", "create", "-d", "--no-resolve-image", "--restart-condition", "none",
        "--name", f"agentfactory-{orphan}",
        "--label", "io.agentfactory.managed=true", "--label", f"io.agentfactory.agent_id={orphan}",
        "--label", f"io.agentfactory.instance={srv.instance}", "--entrypoint", "sleep", image, "300",
    )  # fmt: skip
    name = f"agentfactory-{orphan}"
    gone = lambda: name not in swarm.cli("service", "ls", "--format", "{{.Name}}")  # noqa: E731
    wait_until(gone, timeout=20, what="the orphan service removed")


def test_an_agent_swarm_cannot_place_fails_with_swarms_reason(srv: ServerProcess, swarm: PrivateSwarm) -> None:
    with srv.client() as c:
        r = c.post("/agents", json={"model": "gpu-only", "prompt": "hi"})
        assert r.status_code == 201, r.text
        agent = wait_terminal(c, r.json()["id"], timeout=30)
    assert (agent["status"], agent["reason"]) == ("failed", "launch_failed"), agent
    assert "no suitable node" in agent["error"], agent["error"]
    assert f"agentfactory-{agent['id']}" not in swarm.cli("service", "ls", "--format", "{{.Name}}")


def test_an_agent_no_node_has_room_for_waits_in_the_queue_until_one_has(
    srv: ServerProcess, swarm: PrivateSwarm
) -> None:
    """SPEC §10/§13: a task Swarm cannot place (no node has the memory it reserves) is the cluster
    being full: an agent that may wait goes back to the queue with Swarm's reason and starts once a
    node has room; one whose queue timeout comes first ends expired/queue_timeout with that reason."""
    wait_until(lambda: not swarm.services(srv.instance), timeout=30, what="no agent holds a reservation")
    node_memory = int(swarm.cli("node", "inspect", "self", "--format", "{{.Description.Resources.MemoryBytes}}"))
    image = swarm.cli("image", "inspect", "--format", "{{.Id}}", "agentfactory-runtime:latest").strip()
    filler = f"filler-{srv.instance}"
    swarm.cli(
        "service", "create", "-d", "--no-resolve-image", "--restart-condition", "none", "--name", filler,
        "--reserve-memory", str(node_memory - (256 << 20)), "--entrypoint", "sleep", image, "600",
    )  # fmt: skip
    try:
        state = lambda: swarm.cli("service", "ps", filler, "--format", "{{.CurrentState}}")  # noqa: E731
        wait_until(lambda: state().startswith("Running"), timeout=30, what="the filler holds the node's memory")
        with srv.client() as c:
            r = c.post(
                "/agents",
                json={"model": "sh", "tools": ["shell"], "prompt": "echo placed", "queue_timeout_seconds": 120},
            )
            assert r.status_code == 201, r.text
            waiting = r.json()
            assert waiting["status"] == "queued" and waiting["queue_position"] >= 1, waiting
            assert "insufficient resources" in waiting["error"], waiting["error"]
            r = c.post("/agents", json={"model": "echo", "prompt": "hi", "queue_timeout_seconds": 5})
            assert r.status_code == 201, r.text
            gave_up = wait_terminal(c, r.json()["id"], timeout=30)
            assert (gave_up["status"], gave_up["reason"]) == ("expired", "queue_timeout"), gave_up
            assert "insufficient resources" in gave_up["error"] and gave_up["started_at"] is None, gave_up
            still = c.get(f"/agents/{waiting['id']}").json()
            assert still["status"] in ("queued", "pending", "starting"), still
            swarm.cli("service", "rm", filler)
            placed = wait_terminal(c, waiting["id"], timeout=60)
            assert (placed["status"], placed["error"]) == ("succeeded", None), placed
            assert "placed" in texts(c, waiting["id"])
            params = {"agent_id": waiting["id"], "after": 0, "follow": "false"}
            with c.stream("GET", "/events", params=params) as events:
                types = [ev.event for ev in iter_events(events)]
    finally:
        swarm.cli("service", "rm", filler, check=False)
    assert types[0] == "agent.queued" and types[-2:] == ["agent.started", "agent.finished"], types


def test_up_swarm_inits_a_swarm_and_the_server_refuses_one_without_no_new_privileges(
    tmp_path: Path, docker_engine: None
) -> None:
    """`make up-swarm`'s script on a fresh engine (no swarm yet, no-new-privileges off): it makes the
    single-node swarm, and the server it starts refuses it, saying what to set."""
    engine = PrivateSwarm(no_new_privileges=False, init_swarm=False).start()
    try:
        env = {**ServerProcess(tmp_path, env=swarm_env(engine)).env, "AGENTFACTORY_SKIP_SETUP": "1"}
        env.pop("AGENTFACTORY_BACKEND")  # the script sets it
        done = subprocess.run(
            ["bash", "scripts/up-swarm.sh"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=180
        )
        swarm_state = engine.cli("info", "--format", "{{.Swarm.LocalNodeState}}").strip()
    finally:
        engine.destroy()
    assert swarm_state == "active"
    assert done.returncode == 2, done.stderr[-2000:]
    assert "refusing to start" in done.stderr and '"no-new-privileges": true' in done.stderr, done.stderr[-2000:]


def test_the_swarm_counts_every_ready_node_for_capacity(swarm: PrivateSwarm, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DOCKER_HOST", swarm.host)
    backend = SwarmBackend(instance="capacity")
    try:
        found = asyncio.run(backend.resources())
    finally:
        asyncio.run(backend.close())
    info = json.loads(swarm.cli("info", "--format", "{{json .}}"))
    assert found is not None and (found.cpus, found.memory_bytes) == (info["NCPU"], info["MemTotal"])

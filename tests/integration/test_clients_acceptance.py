"""SPEC §15 acceptance against the real server and engine: the metadata selector end to end, and
`logs --tail 5` of a 1M-line agent in one request."""

from __future__ import annotations

import os
import re
import subprocess
import time

import httpx
import pytest

from tests.cli.conftest import AGENTFACTORY
from tests.support.server import ServerProcess, wait_terminal

pytestmark = pytest.mark.docker
LOGS_ROUTE = 'agentfactory_http_requests_total{code="200",method="GET",route="/agents/{agent_id}/logs"}'


def cli(server: ServerProcess, *args: str, key: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFACTORY_")}
    env |= {"AGENTFACTORY_URL": server.url, "AGENTFACTORY_API_KEY": key or server.admin_key, "COLUMNS": "200",
            "AGENTFACTORY_CONFIG": "/nonexistent/agentfactory.toml"}  # fmt: skip
    return subprocess.run([AGENTFACTORY, *args], env=env, capture_output=True, text=True, timeout=120, check=False)


def logs_requests(server: ServerProcess) -> float:
    text = httpx.get(server.url + "/metrics", timeout=10).text
    match = re.search(re.escape(LOGS_ROUTE) + r" (\S+)", text)
    return float(match.group(1)) if match else 0.0


def test_ls_selector_prints_exactly_the_ids_of_those_agents(server: ServerProcess) -> None:
    with server.client() as client:
        key = client.post("/keys", json={"name": "ci"}).json()["key"]
    with server.client(key) as client:

        def launch(**metadata: object) -> str:
            r = client.post("/agents", json={"model": "echo", "prompt": "hi", "metadata": metadata})
            assert r.status_code == 201, r.text
            return str(r.json()["id"])

        run_42 = [launch(ci_run="42", job="lint"), launch(ci_run=42, job="test")]  # a number matches too
        others = [launch(ci_run="420"), launch(ci_run="43"), launch(job="lint"), launch()]
        for agent_id in run_42 + others:
            wait_terminal(client, agent_id, timeout=60)
    proc = cli(server, "ls", "-l", "ci_run=42", "-o", "name", key=key)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == "".join(f"{i}\n" for i in reversed(run_42))
    assert cli(server, "ls", "-l", "ci_run=42,job=test", "-o", "name", key=key).stdout == f"{run_42[1]}\n"
    assert cli(server, "ls", "-l", "ci_run=42", "-o", "name", key="af_someone_else").returncode == 77


def test_logs_tail_of_a_million_lines_is_one_request(shell_server: ServerProcess) -> None:
    with shell_server.client() as client:
        r = client.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": "seq 1 1000000"})
        assert r.status_code == 201, r.text
        agent = wait_terminal(client, r.json()["id"], timeout=240)
    # the runtime prints its own JSON events around the tool's output
    assert agent["status"] == "succeeded" and agent["log_lines"] > 1_000_000, agent
    before = logs_requests(shell_server)
    started = time.monotonic()
    proc = cli(shell_server, "logs", "--tail", "5", agent["id"])
    elapsed = time.monotonic() - started
    assert proc.returncode == 0, proc.stderr
    assert logs_requests(shell_server) - before == 1
    lines = proc.stdout.splitlines()
    assert len(lines) == 5 and lines[-1].startswith('{"event": "usage"')
    assert elapsed < 10, f"logs --tail 5 took {elapsed:.1f}s"
    print(f"logs --tail 5 of {agent['log_lines']} lines: {elapsed:.2f}s, 1 request")

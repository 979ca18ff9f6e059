"""Issue 2 on the real engine: an echo agent runs as a hardened container and succeeds."""

from __future__ import annotations

import json
import subprocess
import time

import httpx
import pytest

from tests.support.server import ServerProcess, wait_terminal, wait_until

pytestmark = pytest.mark.docker


def inspect(container: str) -> dict:  # type: ignore[type-arg]
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True, check=True).stdout
    return json.loads(out)[0]  # type: ignore[no-any-return]


def test_echo_agent_succeeds_within_10s(server: ServerProcess) -> None:
    with server.client() as c:
        r = c.post("/agents", content=b'{"model":"echo","prompt":"hi"}')
        assert r.status_code == 201, r.text
        agent = wait_terminal(c, r.json()["id"], timeout=10)
        assert (agent["status"], agent["exit_code"], agent["reason"]) == ("succeeded", 0, "exit")
        lines = c.get(f"/agents/{agent['id']}/logs").json()["lines"]
        assert any('"hi"' in line["text"] for line in lines)
    wait_until(lambda: not server.containers(), timeout=10, what="the container to be removed")


def test_running_agent_container_is_hardened(shell_server: ServerProcess) -> None:
    with shell_server.client() as c:
        agent = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": "sleep 30"}).json()
        try:
            info = wait_until(lambda: shell_server.containers() and inspect(shell_server.containers()[0]), timeout=10)
            hc, cfg = info["HostConfig"], info["Config"]
            assert hc["CapDrop"] == ["ALL"]
            assert "no-new-privileges:true" in hc["SecurityOpt"]
            assert cfg["User"] == "10001:10001"
            assert hc["ReadonlyRootfs"] is True
            assert hc["NetworkMode"] == "none" and cfg.get("NetworkDisabled") is True
            assert hc["Memory"] > 0 and hc["NanoCpus"] > 0 and hc["PidsLimit"] > 0
            assert hc["Init"] is True and not hc["Privileged"]
            assert cfg["Labels"]["io.agentfactory.agent_id"] == agent["id"]
            assert [m["Destination"] for m in info["Mounts"]] == ["/run/agentfactory"]
        finally:
            c.delete(f"/agents/{agent['id']}")


def test_bad_input_creates_no_container(server: ServerProcess) -> None:
    with server.client() as c:
        before = set(server.containers())
        cases = [
            (b'{"model":"nope","prompt":"x"}', 422, "E_CATALOG"),
            (b'{"model":"echo","prompt":"x","ttl_seconds":999999}', 422, "E_SCHEMA"),
            (b"this is not json", 422, "E_SCHEMA"),
        ]
        for body, status, code in cases:
            r = c.post("/agents", content=body)
            assert (r.status_code, r.json()["error"]["code"]) == (status, code)
        r = c.get("/no/such/route")
        assert r.status_code == 404 and r.json()["error"]["code"] == "E_NOT_FOUND" and r.json()["request_id"]
        # A container an earlier test removed may still be going away (a swarm task ends
        # asynchronously), so the check is that no new one appeared.
        assert set(server.containers()) <= before


def test_engine_unreachable_gives_503_fast(make_server: type[ServerProcess]) -> None:
    srv = make_server(env={"DOCKER_HOST": "unix:///nonexistent/docker.sock"}).start()
    with srv.client() as c:
        t0 = time.monotonic()
        r = c.post("/agents", json={"model": "echo", "prompt": "hi"})
        assert time.monotonic() - t0 < 10
        assert r.status_code == 503 and r.json()["error"]["code"] == "E_RUNTIME"
        assert c.get("/agents").json()["items"] == []
        ready = httpx.get(srv.url + "/ready", timeout=10)
        assert ready.status_code == 503 and "engine" in ready.json()["error"]["message"]

"""The gateway's node relay on a swarm (AGENTFACTORY_SWARM_RELAY=1, docs/swarm.md): agents with no
network reach their model through a relay task on their node, which reaches the control plane's TLS
door over the node's network, with the relay secret.

On the private single-node swarm (tests/support/swarm_engine.py), whose node is a network namespace
of its own: the control plane (a host process) and the node are joined by a veth pair (`wire`), as a
manager and a worker are by their network, so the relay reaches the door over a real interface; the
door listens on the host side of that wire only."""

from __future__ import annotations

import json
import re
import socket
import ssl
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.support.agents import UPSTREAM_KEY, write_catalog
from tests.support.server import ServerProcess, all_log_lines, free_port, wait_terminal, wait_until
from tests.support.swarm_engine import PrivateSwarm, swarm_env

pytestmark = pytest.mark.docker

RELAY_LABEL = "label=io.agentfactory.relay=true"


@pytest.fixture(scope="module")
def door(swarm: PrivateSwarm) -> tuple[str, int]:
    """The host side of the wire to the node, and a port for the door there."""
    return swarm.wire(), free_port()


@pytest.fixture(scope="module")
def srv(
    tmp_path_factory: pytest.TempPathFactory, swarm: PrivateSwarm, upstream: FakeOpenAI, door: tuple[str, int]
) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("swarm-relay")
    catalog = write_catalog(work / "catalog.json", upstream)
    address = f"{door[0]}:{door[1]}"
    env = swarm_env(
        swarm,
        AGENTFACTORY_SWARM_RELAY="1",
        AGENTFACTORY_SWARM_RELAY_LISTEN=address,
        AGENTFACTORY_SWARM_RELAY_ADDRESS=address,
    )
    server = ServerProcess(work, catalog=catalog, env=env).start()
    try:
        yield server
    finally:
        server.stop()


def relayed(srv: ServerProcess) -> dict[str, float]:
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    found = re.findall(r'^agentfactory_gateway_relay_connections_total\{outcome="(\w+)"\} (\S+)$', text, re.M)
    return {outcome: float(value) for outcome, value in found}


def gateway_ok(srv: ServerProcess, model: str) -> float:
    text = httpx.get(srv.url + "/metrics", timeout=10).text
    pattern = rf'^agentfactory_gateway_requests_total\{{model="{model}",outcome="ok"\}} (\S+)$'
    match = re.search(pattern, text, re.M)
    return float(match.group(1)) if match else 0.0


def inspect(swarm: PrivateSwarm, name: str) -> dict[str, Any]:
    return dict(json.loads(swarm.cli("service", "inspect", name))[0])


def relay_tasks(swarm: PrivateSwarm, name: str) -> list[dict[str, Any]]:
    lines = swarm.cli("service", "ps", name, "--filter", "desired-state=running", "--format", "{{json .}}")
    return [json.loads(line) for line in lines.splitlines() if line.strip()]


def test_network_less_agents_reach_their_model_through_their_nodes_relay(
    srv: ServerProcess, swarm: PrivateSwarm
) -> None:
    relay = f"agentfactory-relay-{srv.instance}"
    spec = inspect(swarm, relay)["Spec"]
    assert spec["Mode"] == {"Global": {}}
    nodes = swarm.cli("node", "ls", "-q").split()
    tasks = relay_tasks(swarm, relay)
    assert len(tasks) == len(nodes) == 1 and tasks[0]["CurrentState"].startswith("Running"), tasks
    assert UPSTREAM_KEY not in json.dumps(spec)  # the relay never holds a provider key either
    before, ok_before = relayed(srv), gateway_ok(srv, "sh")
    with srv.client() as c:
        r = c.post("/agents", json={"model": "echo", "prompt": "hello through the relay"})
        assert r.status_code == 201, r.text
        echo = wait_terminal(c, r.json()["id"], timeout=60)
        assert (echo["status"], echo["exit_code"]) == ("succeeded", 0), echo
        command = "ls /sys/class/net | tr '\\n' ' '; echo; env | grep -c sk- || true; ls /run/agentfactory"
        r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": command})
        assert r.status_code == 201, r.text
        agent_id = r.json()["id"]
        agent_spec = inspect(swarm, f"agentfactory-{agent_id}")["Spec"]
        agent = wait_terminal(c, agent_id, timeout=90)
        lines = [x["text"] for x in all_log_lines(c, agent_id)]
    assert agent["status"] == "succeeded", (agent, lines[-5:])
    # No interface but lo, no provider key in its environment or its service, and yet its model
    # (an OpenAI-compatible upstream only the control plane reaches) answered: through the relay.
    assert "lo " in lines and "0" in lines and "gateway.sock" in lines, lines
    assert UPSTREAM_KEY not in "\n".join(lines) and UPSTREAM_KEY not in json.dumps(agent_spec)
    (gateway,) = [
        m for m in agent_spec["TaskTemplate"]["ContainerSpec"]["Mounts"] if m["Target"] == "/run/agentfactory"
    ]
    assert (gateway["Type"], gateway["Source"], gateway["ReadOnly"]) == ("volume", relay, True)
    assert str(srv.workdir) not in json.dumps(agent_spec)  # the control plane's own socket is not mounted
    after = relayed(srv)
    # The runtime's spec and at least one model call each, for both agents, came through the door.
    assert after["accepted"] - before["accepted"] >= 4 and after["refused"] == before["refused"], (before, after)
    assert gateway_ok(srv, "sh") > ok_before


def _ask(host: str, port: int, first: bytes, *, tls: bool) -> bytes:
    """What the door answers to `first` then a /health request; b"" when it closes unserved."""
    raw = socket.create_connection((host, port), timeout=10)
    try:
        sock: socket.socket = raw
        if tls:
            ctx = ssl.create_default_context()
            ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE  # anyone may try: the secret decides
            sock = ctx.wrap_socket(raw, server_hostname=host)
        sock.sendall(first + b"GET /health HTTP/1.1\r\nHost: gateway\r\nConnection: close\r\n\r\n")
        answer = b""
        while chunk := sock.recv(65536):
            answer += chunk
        return answer
    except (ConnectionError, ssl.SSLError):
        return b""
    finally:
        raw.close()


def test_the_door_serves_nothing_without_the_relay_secret(
    srv: ServerProcess, swarm: PrivateSwarm, door: tuple[str, int]
) -> None:
    host, port = door
    before = relayed(srv)
    assert _ask(host, port, b"", tls=False) == b""  # no TLS
    assert _ask(host, port, b"", tls=True) == b""  # TLS, no secret
    assert _ask(host, port, b"AFRELAY1 not-the-secret\n", tls=True) == b""
    # The relay's own secret (read in its task) opens the same door onto the gateway.
    (container,) = swarm.cli("ps", "-q", "--filter", RELAY_LABEL).split()
    secret = swarm.cli("exec", container, "cat", "/run/secrets/relay-secret").strip().encode()
    assert _ask(host, port, b"AFRELAY1 " + secret + b"\n", tls=True).startswith(b"HTTP/1.1 200")
    after = relayed(srv)
    assert after["refused"] - before["refused"] == 2 and after["accepted"] - before["accepted"] == 1, (before, after)
    # The door listens on the wire to the nodes only, not on this host's loopback.
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


# In the agent's shell tool: waits until the gateway stops answering through the node's relay (the
# control plane is killed), then until it answers again (through the new relay), so the agent's next
# model call comes after the restart, however long that takes on a loaded machine.
ACROSS_THE_RESTART = """python3 -c '
import socket, time
def answers():
    s = socket.socket(socket.AF_UNIX)
    try:
        s.connect("/run/agentfactory/gateway.sock")
        s.sendall(b"GET /health HTTP/1.1\\r\\nHost: g\\r\\nConnection: close\\r\\n\\r\\n")
        return s.recv(64).startswith(b"HTTP/1.1 200")
    except OSError:
        return False
    finally:
        s.close()
while answers():
    time.sleep(0.2)
print("gateway gone", flush=True)
while not answers():
    time.sleep(0.2)
'
"""


def start_shell(c: httpx.Client, command: str) -> str:
    r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": command})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def texts(c: httpx.Client, agent_id: str) -> list[str]:
    return [x["text"] for x in all_log_lines(c, agent_id)]


def relay_things(swarm: PrivateSwarm) -> dict[str, list[str]]:
    return {
        kind: swarm.cli(kind, "ls", "-q", "--filter", RELAY_LABEL).split() for kind in ("service", "secret", "config")
    }


def test_a_start_sweeps_a_killed_servers_relay_and_a_stop_leaves_none(
    srv: ServerProcess, swarm: PrivateSwarm, door: tuple[str, int]
) -> None:
    killed = relay_things(swarm)
    assert [len(killed[k]) for k in ("service", "secret", "config")] == [1, 2, 1], killed
    with srv.client() as c:
        across = start_shell(c, "echo before\n" + ACROSS_THE_RESTART + "echo after")
        wait_until(lambda: "before" in texts(c, across), timeout=60, what="the agent's first model call done")
    srv.kill()  # no shutdown: its relay service and secrets stay behind
    assert relay_things(swarm) == killed
    srv.start()
    again = relay_things(swarm)
    assert [len(again[k]) for k in ("service", "secret", "config")] == [1, 2, 1], again
    assert not set(again["secret"]) & set(killed["secret"]), "the stale secrets were swept, new ones made"
    with srv.client() as c:
        r = c.post("/agents", json={"model": "echo", "prompt": "after the restart"})
        assert r.status_code == 201, r.text
        assert wait_terminal(c, r.json()["id"], timeout=60)["status"] == "succeeded"
        # The agent that ran through the restart reached its model again through the new relay.
        agent = wait_terminal(c, across, timeout=90)
        lines = texts(c, across)
        assert agent["status"] == "succeeded" and {"gateway gone", "after"} <= set(lines), (agent, lines[-5:])
    srv.stop()
    assert relay_things(swarm) == {"service": [], "secret": [], "config": []}
    with pytest.raises(OSError):
        socket.create_connection(door, timeout=5).close()
    # Killed with the relay on, started again with it off: the relay it left goes too.
    srv.start()
    srv.kill()
    assert [len(v) for v in relay_things(swarm).values()] == [1, 2, 1]
    srv.env["AGENTFACTORY_SWARM_RELAY"] = "0"
    srv.start()
    assert relay_things(swarm) == {"service": [], "secret": [], "config": []}
    srv.stop()
    wait_until(lambda: not swarm.cli("ps", "-q", "--filter", RELAY_LABEL).split(), timeout=30, what="relay gone")

"""The control-plane image end to end (issue 11): built by scripts/build_image.sh with no registry, run
with testcontainers the way docker-compose.yml runs it (Docker socket and --group-add, the gateway
directory at the same host path, hardened, API on loopback only), it launches an echo agent as a
sibling container, streams it to `end`, answers /metrics, reports healthy, runs as non-root, stops
cleanly and leaves nothing behind."""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentfactory.settings import Settings
from tests.support.server import ROOT, free_port, wait_until
from tests.support.sse import Event, iter_events

IMAGE = os.environ.get("AGENTFACTORY_IMAGE", "agentfactory:latest")
DOCKER_SOCKET = "/var/run/docker.sock"
CONTROL_PLANE_UID = 10000


def read_stream(client: httpx.Client, agent_id: str, *, timeout: float) -> list[Event]:
    """The agent's SSE events until `end`; fails past `timeout` seconds."""
    deadline = time.monotonic() + timeout
    events: list[Event] = []
    with client.stream("GET", f"/agents/{agent_id}/stream") as response:
        assert response.status_code == 200, response.read()
        for event in iter_events(response):
            events.append(event)
            if event.event == "end":
                return events
            # A silent stream is bounded too: the agent's TTL ends it with `end`.
            assert time.monotonic() < deadline, f"no `end` event within {timeout}s; got {events}"
    raise AssertionError(f"the stream closed without an `end` event; got {events}")


@dataclass
class RunningControlPlane:
    container: Any  # testcontainers' DockerContainer
    url: str
    admin_key: str
    instance: str


def labelled_containers(instance: str) -> list[str]:
    out = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label=io.agentfactory.instance={instance}"],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    return out.split()


def test_env_example_lists_every_setting_with_its_default() -> None:
    text = (ROOT / ".env.example").read_text()
    listed = dict(re.findall(r"^#? ?(AGENTFACTORY_[A-Z_]+)=(.*)$", text, flags=re.MULTILINE))
    for name, field in Settings.model_fields.items():
        var = f"AGENTFACTORY_{name.upper()}"
        assert var in listed, f"{var} is missing from .env.example"
        if name == "admin_key":
            continue  # shown empty on purpose: the one value an operator must set
        if isinstance(field.default, list | dict):  # pydantic-settings reads complex values as JSON
            assert json.loads(listed[var]) == field.default, f"{var}: .env.example says {listed[var]!r}"
            continue
        default = "" if field.default is None else str(field.default)
        assert listed[var] == default, f"{var}: .env.example says {listed[var]!r}, settings.py says {default!r}"


@pytest.fixture(scope="module")
def control_plane_image(docker_engine: None) -> str:
    """scripts/build_image.sh: builds the image, or does nothing when its inputs are unchanged."""
    proc = subprocess.run(
        ["bash", "scripts/build_image.sh"], cwd=ROOT, capture_output=True, text=True, timeout=1200, check=False
    )
    if proc.returncode != 0:
        pytest.fail(f"scripts/build_image.sh failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return IMAGE


@pytest.fixture
def gateway_dir(tmp_path_factory: pytest.TempPathFactory, control_plane_image: str) -> Path:
    """A host directory for the gateway socket, owned by the control plane's uid, as compose's
    one-shot `gateway-dir` service makes it (a root container, so this works for non-root test runs)."""
    path = tmp_path_factory.mktemp("image-gw")
    subprocess.run(
        ["docker", "run", "--rm", "--user", "0:0", "--network", "none", "-v", f"{path}:{path}",
         "--entrypoint", "install", control_plane_image,
         "-d", "-o", str(CONTROL_PLANE_UID), "-g", str(CONTROL_PLANE_UID), "-m", "0755", str(path)],
        check=True, capture_output=True, timeout=120,
    )  # fmt: skip
    return path


@pytest.fixture
def control_plane(
    control_plane_image: str, gateway_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[RunningControlPlane]:
    from testcontainers.core.config import testcontainers_config
    from testcontainers.core.container import DockerContainer

    # Ryuk (testcontainers' own reaper) is an image pulled from a registry; this test cleans up itself.
    monkeypatch.setattr(testcontainers_config, "ryuk_disabled", True)
    port = free_port()
    instance = "imgtest-" + uuid.uuid4().hex[:8]
    admin_key = "af_admin_" + uuid.uuid4().hex
    data_volume = f"agentfactory-{instance}-data"
    container = (
        DockerContainer(control_plane_image)
        .with_envs(
            AGENTFACTORY_ADMIN_KEY=admin_key,
            AGENTFACTORY_GATEWAY_SOCKET_DIR=str(gateway_dir),
            AGENTFACTORY_INSTANCE_ID=instance,
            AGENTFACTORY_REAPER_INTERVAL_SECONDS="1",
            AGENTFACTORY_RUNTIME_IMAGE=os.environ.get("AGENTFACTORY_RUNTIME_IMAGE", "agentfactory-runtime:latest"),
        )
        .with_volume_mapping(DOCKER_SOCKET, DOCKER_SOCKET, "rw")
        # Agents are the host engine's containers: the socket directory has one path for both.
        .with_volume_mapping(str(gateway_dir), str(gateway_dir), "rw")
        # A named volume for the SQLite file, as in docker-compose.yml (the root filesystem is read-only).
        .with_volume_mapping(data_volume, "/var/lib/agentfactory", "rw")
        .with_tmpfs_mount("/tmp")
        .with_name(f"agentfactory-{instance}")
        .with_kwargs(
            group_add=[str(os.stat(DOCKER_SOCKET).st_gid)],
            read_only=True,
            cap_drop=["ALL"],
            security_opt=["no-new-privileges:true"],
            labels={"io.agentfactory.test": "test_image"},
        )
    )
    # with_bind_ports() takes no host address; docker-py accepts (address, port): loopback only.
    container.ports["8000/tcp"] = ("127.0.0.1", port)  # type: ignore[assignment]
    try:
        container.start()
        yield RunningControlPlane(container, f"http://127.0.0.1:{port}", admin_key, instance)
    finally:
        container.stop()
        leftovers = labelled_containers(instance)
        if leftovers:
            subprocess.run(["docker", "rm", "-f", *leftovers], capture_output=True, check=False)
        subprocess.run(["docker", "volume", "rm", "-f", data_volume], capture_output=True, check=False)


@pytest.mark.docker
@pytest.mark.timeout(1500)
def test_control_plane_image_launches_an_agent_and_stops_clean(control_plane: RunningControlPlane) -> None:
    wrapped = control_plane.container.get_wrapped_container()

    def health() -> str:
        wrapped.reload()
        state = wrapped.attrs["State"]
        if state["Status"] == "exited":
            raise AssertionError(f"the control plane exited: {wrapped.logs().decode()[-3000:]}")
        status: str = (state.get("Health") or {}).get("Status", "none")
        return status if status == "healthy" else ""

    # The first check runs one --interval (10 s) after the start; start-up itself takes seconds.
    wait_until(health, timeout=180, interval=0.5, what="docker inspect: healthcheck healthy")

    # Not root: the image says so, and so does the kernel about the container's main process.
    assert wrapped.attrs["Config"]["User"] == f"{CONTROL_PLANE_UID}:{CONTROL_PLANE_UID}"
    status = control_plane.container.exec(["cat", "/proc/1/status"]).output.decode()
    uids = re.search(r"^Uid:\s+(.*)$", status, flags=re.MULTILINE)
    assert uids is not None and {int(u) for u in uids.group(1).split()} == {CONTROL_PLANE_UID}, status
    groups = re.search(r"^Groups:\s*(.*)$", status, flags=re.MULTILINE)
    assert groups is not None and str(os.stat(DOCKER_SOCKET).st_gid) in groups.group(1).split(), status

    headers = {"Authorization": f"Bearer {control_plane.admin_key}"}
    with httpx.Client(base_url=control_plane.url, headers=headers, timeout=30) as client:
        assert client.get("/ready").json()["checks"] == {"database": "ok", "engine": "ok"}
        prompt = "hello from the image test " + uuid.uuid4().hex[:8]
        created = client.post("/agents", json={"model": "echo", "prompt": prompt, "ttl_seconds": 60})
        assert created.status_code == 201, created.text
        agent_id = created.json()["id"]

        events = read_stream(client, agent_id, timeout=90)
        logs = [e.json()["text"] for e in events if e.event == "log"]
        assert any(prompt in text for text in logs), logs
        end = events[-1].json()
        assert end["status"] == "succeeded", end
        assert end["log_lines"] == len(logs)

        metrics = client.get("/metrics")
        assert metrics.status_code == 200
        assert 'agentfactory_agents_finished_total{status="succeeded"} 1.0' in metrics.text

    # Its agent is gone once it finished; stopping the control plane is graceful (SIGTERM to PID 1).
    wait_until(lambda: not labelled_containers(control_plane.instance), timeout=30, what="agent container removed")
    wrapped.stop(timeout=30)
    wrapped.reload()
    output = wrapped.logs().decode()
    assert wrapped.attrs["State"]["ExitCode"] == 0, output[-3000:]
    lines = output.splitlines()
    assert lines and all(json.loads(line) for line in lines), output[-3000:]
    assert any(json.loads(line).get("event") == "control_plane_stopped" for line in lines)
    assert prompt not in output
    assert labelled_containers(control_plane.instance) == []

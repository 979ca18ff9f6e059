"""Swarm plumbing shared by the swarm backend: tasks and their states, service create/remove, the
image reference, and the start-up check (a probe task that reads the sandbox from inside)."""

from __future__ import annotations

import time
from typing import Any

import docker
import docker.errors
import requests

from agentfactory.backends.base import LABEL_PREFIX
from agentfactory.backends.swarm_logs import frames

LABEL_PROBE = LABEL_PREFIX + "probe"
POLL_SECONDS = 0.05  # how often a task's state is read while waiting for it
PLACING = {"new", "allocated", "pending"}
ENDED = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}
PROBE_SCRIPT = "grep NoNewPrivs /proc/self/status; for i in $(ls /sys/class/net); do echo if:$i; done"


class SwarmRefused(ValueError):
    """The engine is not a swarm this backend may run agents on (the server refuses to start)."""


def task_of(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The service's task: one, since it has one replica and no restart (the newest, to be sure)."""
    return max(tasks, key=lambda t: t.get("CreatedAt", ""), default=None)


def task_state(task: dict[str, Any] | None) -> str:
    return str((task or {}).get("Status", {}).get("State", "new"))


def image_ref(api: docker.APIClient, image: str) -> str:
    """The image by its local ID, so that no node tries a registry first (Swarm pulls any tag before
    it runs it; an ID it never pulls): workers hold the image as `docker load` put it there (the same
    ID). A digest reference (repo@sha256:...) is left for nodes to pull."""
    if "@" in image:
        return image
    try:
        return str(api.inspect_image(image)["Id"])
    except docker.errors.NotFound:
        return image  # let the task say the image is missing


def create_service(api: docker.APIClient, body: dict[str, Any]) -> str:
    response = api._post_json(api._url("/services/create"), data=body)  # type: ignore[attr-defined]
    api._raise_for_status(response)  # type: ignore[attr-defined]
    return str(response.json()["ID"])


def remove_service(api: docker.APIClient, name: str) -> bool:
    try:
        api.remove_service(name)
        return True
    except docker.errors.NotFound:
        return False


def verify_swarm(api: docker.APIClient, *, image: str, instance: str, timeout: float = 60.0) -> str:
    """This engine's node id, or SwarmRefused: an engine that is no swarm manager, or whose tasks would
    run without no-new-privileges or with a network when they asked for none (the service API, 1.41,
    has no per-service setting for either, so the daemon-wide ones are required: docs/swarm.md).
    Checked by running a probe task of the runtime image and reading what it sees from inside."""
    try:
        info = api.info()
    except (requests.RequestException, docker.errors.DockerException, ConnectionError) as exc:
        raise SwarmRefused(
            f"AGENTFACTORY_BACKEND=swarm: cannot check the swarm, the engine does not answer ({type(exc).__name__})"
        ) from exc
    swarm = info.get("Swarm") or {}
    if swarm.get("LocalNodeState") != "active":
        raise SwarmRefused(
            "AGENTFACTORY_BACKEND=swarm needs an engine in swarm mode, and this one is not "
            "(run `docker swarm init`, or `make up-swarm`)"
        )
    if not swarm.get("ControlAvailable"):
        raise SwarmRefused("AGENTFACTORY_BACKEND=swarm needs a swarm manager; this engine is a worker node")
    seen = _probe(api, image, instance, timeout)
    if "NoNewPrivs:\t1" not in seen:
        raise SwarmRefused(
            "the swarm runs tasks without no-new-privileges: Docker's service API (1.41) has no per-service "
            'setting, so it must be daemon-wide: set "no-new-privileges": true in /etc/docker/daemon.json '
            "on every node and restart dockerd (docs/swarm.md)"
        )
    interfaces = sorted(line.split(":", 1)[1] for line in seen.splitlines() if line.startswith("if:"))
    if interfaces != ["lo"]:
        raise SwarmRefused(
            f"a swarm task without a network has interfaces {', '.join(interfaces) or 'none'} on this engine, "
            "not only lo: a service cannot join the `none` network, so agents without a network tool need "
            'the default bridge off daemon-wide: set "bridge": "none" in /etc/docker/daemon.json on every node '
            "and restart dockerd (docs/swarm.md)"
        )
    return str(swarm.get("NodeID") or "")


def _probe(api: docker.APIClient, image: str, instance: str, timeout: float) -> str:
    name = f"agentfactory-probe-{instance}"
    labels = {LABEL_PROBE: instance}
    body = {
        "Name": name,
        "Labels": labels,
        "TaskTemplate": {
            "ContainerSpec": {
                "Image": image_ref(api, image),
                "Labels": labels,
                "Command": ["/bin/sh", "-c", PROBE_SCRIPT],
                "User": "10001:10001",
                "ReadOnly": True,
                "CapabilityDrop": ["ALL"],
            },
            "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
        },
        "Mode": {"Replicated": {"Replicas": 1}},
    }
    remove_service(api, name)  # a probe left by a start-up that was killed
    try:
        sid = create_service(api, body)
        deadline = time.monotonic() + timeout
        while True:
            task = task_of(api.tasks(filters={"service": sid}))
            state = task_state(task)
            if state in ENDED:
                break
            if time.monotonic() > deadline:
                err = (task or {}).get("Status", {}).get("Err") or state
                raise SwarmRefused(f"the swarm's probe task did not finish within {timeout:.0f}s: {err}")
            time.sleep(POLL_SECONDS * 2)
        if state != "complete":
            err = (task or {}).get("Status", {}).get("Err") or state
            raise SwarmRefused(f"the swarm could not run the runtime image {image!r}: {err}")
        response = api._get(api._url("/services/{0}/logs", sid), params={"stdout": 1, "stderr": 1})  # type: ignore[attr-defined]
        api._raise_for_status(response)  # type: ignore[attr-defined]
        return b"".join(frames(response.content)).decode(errors="replace")
    finally:
        remove_service(api, name)

"""The node-local relay of the model gateway as a global swarm service (docs/swarm.md,
`AGENTFACTORY_SWARM_RELAY`): one task per node, each listening on the gateway's socket name in a
node-local volume (`relay_volume`) that the node's agents mount read-only where they expect the
gateway, and piping each connection to the control plane's relay door (`gateway/relay_door.py`).

What the service gets, all of it made at every start and removed at stop (a start first sweeps what
a killed control plane left):
- the relay's code, `agentfactory/relay.py`, as a swarm config, run by the runtime image's python3
  (the image every node already holds for its agents: nothing else to distribute, and the relay is
  always the control plane's own version);
- the door's certificate (to pin) and the relay secret, as swarm secrets;
- the node's host network (it dials the control plane's address), no capability, a read-only root,
  small limits; root in the container only to own the socket it makes in the volume.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from pathlib import Path
from typing import Any

import docker
import docker.errors
from structlog.typing import FilteringBoundLogger

from agentfactory import relay as node_relay
from agentfactory.backends.base import LABEL_INSTANCE
from agentfactory.backends.docker import keep_alive
from agentfactory.backends.swarm_spec import LABEL_RELAY, relay_name, relay_volume
from agentfactory.backends.swarm_tasks import create_service, image_ref, remove_service
from agentfactory.errors import RuntimeUnavailableError

RELAY_DIR = "/relay"  # the volume, in the relay's task
CODE = "/agentfactory-relay.py"
READY_SECONDS = 30.0  # the relay's tasks running on every node; past it the start goes on, with a warning


def sweep_relay(api: docker.APIClient, instance: str) -> int:
    """Remove the instance's relay service, then its secrets and configs (a secret in use by a service
    cannot be removed before it): at every start (with the relay on or off) and stop. The count removed."""
    filters = {"label": [f"{LABEL_RELAY}=true", f"{LABEL_INSTANCE}={instance}"]}
    removed = sum(remove_service(api, s["ID"]) for s in api.services(filters=filters))
    for secret in api.secrets(filters=filters):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_secret(secret["ID"])
            removed += 1
    for config in api.configs(filters=filters):
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_config(config["ID"])
            removed += 1
    return removed


class SwarmRelayService:
    """`RelayNodes` (gateway/relay_door.py) on the swarm the DOCKER_HOST's engine manages."""

    def __init__(self, *, instance: str, image: str, socket_name: str, logger: FilteringBoundLogger) -> None:
        self.instance = instance
        self.image = image
        self.socket_name = socket_name
        self._log = logger
        self._api: docker.APIClient | None = None
        self.labels = {LABEL_RELAY: "true", LABEL_INSTANCE: instance}

    def _client(self) -> docker.APIClient:
        if self._api is None:
            try:
                params = docker.utils.kwargs_from_env()
                self._api = keep_alive(docker.APIClient(version="auto", timeout=20, **params))
            except docker.errors.DockerException as exc:
                raise RuntimeUnavailableError(f"the relay cannot reach the engine: {exc}") from exc
        return self._api

    async def host(self) -> str:
        """The manager's swarm address: what the nodes reach it on."""
        info = await asyncio.to_thread(lambda: self._client().info())
        addr = (info.get("Swarm") or {}).get("NodeAddr") or ""
        if not addr:
            raise ValueError(
                "AGENTFACTORY_SWARM_RELAY: the engine has no swarm address; set AGENTFACTORY_SWARM_RELAY_ADDRESS"
            )
        return str(addr)

    async def start(self, *, connect: str, cert_pem: bytes, secret: bytes) -> None:
        await asyncio.to_thread(self._start, connect, cert_pem, secret)

    async def stop(self) -> None:
        removed = await asyncio.to_thread(self.sweep)
        self._log.info("swarm_relay_removed", service=relay_name(self.instance), removed=removed)
        if self._api is not None:
            self._api.close()
            self._api = None

    def sweep(self) -> int:
        return sweep_relay(self._client(), self.instance)

    def _start(self, connect: str, cert_pem: bytes, secret: bytes) -> None:
        api = self._client()
        stale = self.sweep()
        if stale:
            self._log.info("swarm_relay_swept", removed=stale)
        name = relay_name(self.instance)
        tag = secrets.token_hex(4)
        code = Path(node_relay.__file__).read_bytes()
        cert_id = api.create_secret(f"{name}-cert-{tag}", cert_pem, labels=self.labels)["ID"]
        secret_id = api.create_secret(f"{name}-secret-{tag}", secret, labels=self.labels)["ID"]
        code_id = api.create_config(f"{name}-code-{tag}", code, labels=self.labels)["ID"]
        body = self._body(api, connect, tag, cert_id=cert_id, secret_id=secret_id, code_id=code_id)
        sid = create_service(api, body)
        nodes = self._wait_running(api, sid)
        self._log.info("swarm_relay_started", service=name, connect=connect, nodes=nodes)

    def _body(self, api: docker.APIClient, connect: str, tag: str, **ids: str) -> dict[str, Any]:
        name = relay_name(self.instance)

        def file(target: str, mode: int) -> dict[str, Any]:
            return {"Name": target, "UID": "0", "GID": "0", "Mode": mode}

        container = {
            "Image": image_ref(api, self.image),
            "Labels": self.labels,
            "Command": ["python3", "-I", CODE],
            "Env": [
                f"AF_RELAY_CONNECT={connect}",
                f"AF_RELAY_SOCKET={RELAY_DIR}/{self.socket_name}",
                "AF_RELAY_CERT=/run/secrets/relay-cert.pem",
                "AF_RELAY_SECRET=/run/secrets/relay-secret",
            ],
            "User": "0:0",
            "ReadOnly": True,
            "Init": True,
            "CapabilityDrop": ["ALL"],
            "StopGracePeriod": 2_000_000_000,
            "Mounts": [
                {
                    "Type": "volume",
                    "Source": relay_volume(self.instance),
                    "Target": RELAY_DIR,
                    "VolumeOptions": {"NoCopy": True, "Labels": self.labels},
                }
            ],
            "Secrets": [
                {"SecretID": ids["cert_id"], "SecretName": f"{name}-cert-{tag}", "File": file("relay-cert.pem", 0o444)},
                {
                    "SecretID": ids["secret_id"],
                    "SecretName": f"{name}-secret-{tag}",
                    "File": file("relay-secret", 0o400),
                },
            ],
            "Configs": [{"ConfigID": ids["code_id"], "ConfigName": f"{name}-code-{tag}", "File": file(CODE, 0o444)}],
        }
        return {
            "Name": name,
            "Labels": self.labels,
            "TaskTemplate": {
                "ContainerSpec": container,
                "Networks": [{"Target": "host"}],
                "RestartPolicy": {"Condition": "any", "Delay": 1_000_000_000},
                "Resources": {"Limits": {"MemoryBytes": 128 << 20, "Pids": 64}},
                "LogDriver": {"Name": "json-file", "Options": {"max-size": "1m", "max-file": "1"}},
            },
            "Mode": {"Global": {}},
        }

    def _wait_running(self, api: docker.APIClient, sid: str) -> int:
        """Until every task the service wants (one per node) runs; their count. Past READY_SECONDS the
        start goes on with a warning: agents on a node whose relay is late retry the gateway."""
        deadline = time.monotonic() + READY_SECONDS
        while True:
            tasks = [t for t in api.tasks(filters={"service": sid}) if t.get("DesiredState") == "running"]
            states = [(t.get("Status") or {}).get("State") for t in tasks]
            if tasks and all(s == "running" for s in states):
                return len(tasks)
            if time.monotonic() > deadline:
                errors = sorted({(t.get("Status") or {}).get("Err") or "" for t in tasks} - {""})
                self._log.warning("swarm_relay_not_running", states=states, errors=errors)
                return sum(s == "running" for s in states)
            time.sleep(0.1)

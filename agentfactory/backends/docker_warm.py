"""Warm sandboxes on the Docker Engine (SPEC §10): the `Sandboxes` of base.py.

A sandbox is started by `DockerBackend.launch` itself (the same create arguments, `docker_spec`, so the
same hardening, and the same attach-before-start, here with the container's stdin), named
`agentfactory-warm-<hex>` and labelled `io.agentfactory.warm=<replica>` with no agent id. At claim it is
renamed `agentfactory-<agent id>`, so every by-agent-id verb of the backend finds it, and its
assignment is written to its stdin through that attach stream: nothing of the agent's is ever in the
container's config (`docker inspect`).
"""

from __future__ import annotations

import contextlib
from typing import TYPE_CHECKING, Any, Protocol

import docker
import docker.errors

from agentfactory.backends.base import (
    LABEL_AGENT,
    LABEL_INSTANCE,
    LABEL_WARM,
    AgentSpec,
    IdleSandbox,
    Launched,
    Sandboxes,
)
from agentfactory.backends.docker_spec import container_name

if TYPE_CHECKING:
    from agentfactory.backends.docker import DockerBackend

SANDBOX_PREFIX = "warm-"  # a sandbox's id; agents' ids start with "ag_"
NAME_PREFIX = container_name("")


class Writable(Protocol):
    def send(self, data: bytes) -> None: ...

    def quiet(self) -> bool: ...


class SandboxGone(Exception):
    """The sandbox's container exited, or its stream was cut (an engine restart): it cannot be given."""


def agent_of(container: dict[str, Any]) -> str:
    """The agent a listed container runs: its label, or for a claimed warm sandbox its name; "" for
    an unclaimed sandbox (no agent's)."""
    labels = container.get("Labels") or {}
    if LABEL_WARM not in labels:
        return str(labels.get(LABEL_AGENT, ""))
    agent_id = _name(container).removeprefix(NAME_PREFIX)
    return "" if agent_id.startswith(SANDBOX_PREFIX) else agent_id


def _name(container: dict[str, Any]) -> str:
    names = container.get("Names") or [""]
    return str(names[0]).lstrip("/")


class DockerSandboxes(Sandboxes):
    def __init__(self, backend: DockerBackend):
        self._backend = backend

    async def start(self, spec: AgentSpec) -> Launched:
        return await self._backend.launch(spec)

    async def assign(self, sandbox_id: str, agent_id: str, launched: Launched, assignment: bytes) -> None:
        output: Writable = launched.output  # type: ignore[assignment]  # AttachOutput

        def assign(api: docker.APIClient) -> None:
            if not output.quiet():
                raise SandboxGone(f"sandbox {sandbox_id}: its stream ended or it printed before its assignment")
            target = container_name(agent_id)
            try:
                api.rename(launched.container_id, target)
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
                # A container of this agent survives a crashed launch: it is ours, replace it.
                _remove(api, target)
                api.rename(launched.container_id, target)
            output.send(assignment)

        await self._backend._run(assign)

    async def remove(self, sandbox_id: str) -> None:
        await self._backend.remove(sandbox_id)

    async def idle(self) -> list[IdleSandbox]:
        instance = self._backend.instance

        def idle(api: docker.APIClient) -> list[IdleSandbox]:
            filters = {"label": [LABEL_WARM, f"{LABEL_INSTANCE}={instance}"]}
            found = []
            for c in api.containers(all=True, filters=filters):
                sandbox_id = _name(c).removeprefix(NAME_PREFIX)
                if sandbox_id.startswith(SANDBOX_PREFIX):
                    owner = str((c.get("Labels") or {}).get(LABEL_WARM, ""))
                    found.append(IdleSandbox(sandbox_id=sandbox_id, owner=owner, running=c.get("State") == "running"))
            return found

        return await self._backend._run(idle)


def _remove(api: docker.APIClient, name: str) -> None:
    with contextlib.suppress(docker.errors.NotFound):
        api.remove_container(name, force=True, v=True)

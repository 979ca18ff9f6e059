"""What an agent's container is given: the runtime spec and its environment. Pure (no I/O).

The launcher turns an agent row into an `AgentSpec` here; the backend turns that into engine calls.
The runtime spec is not in the environment (Linux caps one string at 128 KiB, a prompt of
max_prompt_chars is more): the runtime asks the model gateway for it at start, and the gateway
builds it with `runtime_spec`.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from agentfactory.backends.base import AgentSpec
from agentfactory.catalog import Catalog
from agentfactory.settings import Settings
from agentfactory.store.tables import AgentFilesRow, AgentRow

GATEWAY_SOCKET_IN_CONTAINER = "/run/agentfactory/gateway.sock"
TOOL_OUTPUT_LIMIT = 16_384
WARM_ENV = "AGENTFACTORY_WARM"  # set in a warm sandbox: the runtime reads its assignment from stdin


def runtime_spec(row: AgentRow, catalog: Catalog, files: AgentFilesRow | None = None) -> dict[str, Any]:
    """The document the runtime inside the container reads: model, prompt, tools and loop bounds;
    `files` (SPEC §9) when the agent has a workspace to fetch or artifacts to hand back."""
    limits = catalog.limits
    model = catalog.model(row.model)
    extra: dict[str, Any] = {}
    if files is not None:
        extra["files"] = {
            "workspace": files.workspace is not None,
            "artifacts": list(files.artifacts),
            "max_artifact_bytes": limits.max_artifact_bytes,
        }
    return {
        **extra,
        "agent_id": row.id,
        "model": row.model,
        "prompt": row.prompt,
        "tools": [t.model_dump() for tid in row.tools if (t := catalog.tool(tid)) is not None],
        "max_steps": limits.max_steps,
        "tool_timeout_seconds": limits.tool_timeout_seconds,
        "tool_output_limit": TOOL_OUTPUT_LIMIT,
        "model_timeout_seconds": (model.timeout_seconds + 15) if model else 300,
    }


def agent_spec(*, row: AgentRow, token: str, catalog: Catalog, settings: Settings) -> AgentSpec:
    """The backend's input for one agent: image, environment (env, secrets, the gateway's socket and
    token), limits from the catalog, and a network only for a network tool (with public resolvers: the
    egress policy blocks the host's own)."""
    network = settings.agent_network if catalog.needs_network(row.tools) else None
    env = {
        **row.env,
        **row.secrets,
        "AGENTFACTORY_GATEWAY_SOCKET": GATEWAY_SOCKET_IN_CONTAINER,
        "AGENTFACTORY_GATEWAY_TOKEN": token,
    }
    return _spec(
        agent_id=row.id,
        key_id=row.key_id,
        env=env,
        network=network,
        constraints=catalog.constraints(row.model, row.tools),
        catalog=catalog,
        settings=settings,
    )


def warm_spec(*, sandbox_id: str, owner: str, catalog: Catalog, settings: Settings) -> AgentSpec:
    """A warm sandbox of the default profile (SPEC §10): an agent's spec with no network, and nothing
    of any agent's: its environment says only where the gateway is and that it waits for its
    assignment (on its stdin, runtime/warm.py)."""
    env = {"AGENTFACTORY_GATEWAY_SOCKET": GATEWAY_SOCKET_IN_CONTAINER, WARM_ENV: "1"}
    spec = _spec(
        agent_id=sandbox_id, key_id="", env=env, network=None, constraints=(), catalog=catalog, settings=settings
    )
    return replace(spec, warm_owner=owner)


def profile(spec: AgentSpec) -> AgentSpec:
    """What a sandbox must share with an agent to serve it: the spec less who it is for and its
    environment (which the assignment brings). Equal profiles: the same container, bar those."""
    return replace(spec, agent_id="", key_id="", env={}, constraints=(), warm_owner=None)


def _spec(
    *,
    agent_id: str,
    key_id: str,
    env: dict[str, str],
    network: str | None,
    constraints: tuple[str, ...],
    catalog: Catalog,
    settings: Settings,
) -> AgentSpec:
    limits = catalog.limits
    return AgentSpec(
        agent_id=agent_id,
        key_id=key_id,
        image=settings.runtime_image,
        env=env,
        memory_mb=limits.memory_mb,
        cpus=limits.cpus,
        pids=limits.pids,
        scratch_mb=limits.scratch_mb,
        max_log_bytes=limits.max_log_bytes,
        nofile=settings.agent_nofile,
        network=network,
        dns=tuple(settings.agent_dns) if network else (),
        runtime=catalog.runtime or settings.container_runtime,
        gateway_socket_dir=settings.gateway_socket_dir,
        instance=settings.instance_id,
        constraints=constraints,
    )

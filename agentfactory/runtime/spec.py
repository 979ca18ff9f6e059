"""What an agent's container is given: the runtime spec and its environment. Pure (no I/O).

The launcher turns an agent row into an `AgentSpec` here; the backend turns that into engine calls.
The runtime spec is not in the environment (Linux caps one string at 128 KiB, a prompt of
max_prompt_chars is more): the runtime asks the model gateway for it at start, and the gateway
builds it with `runtime_spec`.
"""

from __future__ import annotations

from typing import Any

from agentfactory.backends.base import AgentSpec
from agentfactory.catalog import Catalog
from agentfactory.settings import Settings
from agentfactory.store.tables import AgentFilesRow, AgentRow

GATEWAY_SOCKET_IN_CONTAINER = "/run/agentfactory/gateway.sock"
TOOL_OUTPUT_LIMIT = 16_384


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
    limits = catalog.limits
    network = settings.agent_network if catalog.needs_network(row.tools) else None
    env = {
        **row.env,
        **row.secrets,
        "AGENTFACTORY_GATEWAY_SOCKET": GATEWAY_SOCKET_IN_CONTAINER,
        "AGENTFACTORY_GATEWAY_TOKEN": token,
    }
    return AgentSpec(
        agent_id=row.id,
        key_id=row.key_id,
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
        constraints=catalog.constraints(row.model, row.tools),
    )

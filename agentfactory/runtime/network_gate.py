"""Whether agents with network tools can run here: their egress policy (SPEC §14) in force on the
agents' network, checked before an agent is admitted and again while network agents run."""

from __future__ import annotations

import structlog

from agentfactory.backends.base import Backend
from agentfactory.catalog import Catalog
from agentfactory.errors import NetworkPolicyError

log = structlog.get_logger("agentfactory.launcher")


async def network_ready(backend: Backend, catalog: Catalog, network: str, tools: list[str]) -> None:
    """Raise NetworkPolicyError (E_CATALOG) naming the network tools among `tools` when their egress
    policy (SPEC §14) cannot be enforced; the caller refuses the request before storing anything."""
    network_tools = [t for t in tools if (tool := catalog.tool(t)) is not None and tool.network]
    if not network_tools:
        return
    try:
        await backend.prepare_network(network)
    except NetworkPolicyError as exc:
        raise NetworkPolicyError(
            f"tool(s) {', '.join(network_tools)} need a network, and this server cannot hold agents with a "
            f"network to the public internet: {exc.message}",
            details=[{"field": "tools", "refused": network_tools, "reason": exc.message}],
        ) from exc


async def recheck_egress(backend: Backend, network: str) -> None:
    """Read the egress rules back (as often as the backend's check allows) and put them back if
    something flushed them (a firewall reload); the reaper calls it while network agents run."""
    try:
        await backend.prepare_network(network)
    except NetworkPolicyError as exc:
        log.error("agent_egress_not_enforced", network=network, reason=exc.message)

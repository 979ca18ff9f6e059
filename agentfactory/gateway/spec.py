"""The runtime spec an agent's runtime asks the gateway for at start (`GET /v1/agent/spec`, SPEC §6).

It travels over the gateway socket, not in the container's environment, where Linux caps one string
at 128 KiB: any prompt within `max_prompt_chars` reaches the runtime whole.
"""

from __future__ import annotations

from typing import Any

from agentfactory.catalog import Catalog

TOOL_OUTPUT_LIMIT = 16_384
# The runtime bounds one model call a little above the gateway's own bound on the upstream.
MODEL_TIMEOUT_MARGIN_SECONDS = 15
DEFAULT_MODEL_TIMEOUT_SECONDS = 300


def runtime_spec(*, catalog: Catalog, agent_id: str, model: str, prompt: str, tools: list[str]) -> dict[str, Any]:
    """The JSON object runtime_entry.py runs: agent, prompt, tools and the catalog's bounds."""
    limits = catalog.limits
    entry = catalog.model(model)
    return {
        "agent_id": agent_id,
        "model": model,
        "prompt": prompt,
        "tools": [t.model_dump() for tid in tools if (t := catalog.tool(tid)) is not None],
        "max_steps": limits.max_steps,
        "tool_timeout_seconds": limits.tool_timeout_seconds,
        "tool_output_limit": TOOL_OUTPUT_LIMIT,
        "model_timeout_seconds": (
            entry.timeout_seconds + MODEL_TIMEOUT_MARGIN_SECONDS if entry else DEFAULT_MODEL_TIMEOUT_SECONDS
        ),
    }

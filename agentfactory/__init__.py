"""agentfactory: a self-hosted control plane for short-lived, sandboxed, containerized AI agents.

The SDK is importable from here (`from agentfactory import AgentFactory`); it is loaded on first use,
so that the server and the CLI, which also import this package, do not pay for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from agentfactory.sdk import (
        Agent as Agent,
    )
    from agentfactory.sdk import (
        AgentFactory as AgentFactory,
    )
    from agentfactory.sdk import (
        AgentResult as AgentResult,
    )
    from agentfactory.sdk import (
        ApiError as ApiError,
    )
    from agentfactory.sdk import (
        ArtifactManifest as ArtifactManifest,
    )
    from agentfactory.sdk import (
        ArtifactMismatch as ArtifactMismatch,
    )
    from agentfactory.sdk import (
        AsyncAgentFactory as AsyncAgentFactory,
    )
    from agentfactory.sdk import (
        ClientError as ClientError,
    )
    from agentfactory.sdk import (
        EndEvent as EndEvent,
    )
    from agentfactory.sdk import (
        EventOut as EventOut,
    )
    from agentfactory.sdk import (
        LogEvent as LogEvent,
    )
    from agentfactory.sdk import (
        LogLine as LogLine,
    )
    from agentfactory.sdk import (
        ServerUnreachable as ServerUnreachable,
    )
    from agentfactory.sdk import (
        StatusEvent as StatusEvent,
    )
    from agentfactory.sdk import (
        UploadOut as UploadOut,
    )
    from agentfactory.sdk import (
        WaitTimeout as WaitTimeout,
    )

_SDK_NAMES = frozenset(
    {
        "Agent", "AgentFactory", "AgentResult", "ApiError", "AsyncAgentFactory", "ClientError", "EndEvent",
        "LogEvent", "LogLine", "ServerUnreachable", "StatusEvent", "WaitTimeout", "ArtifactManifest",
        "ArtifactMismatch", "EventOut", "UploadOut",
    }
)  # fmt: skip
__all__ = sorted(_SDK_NAMES | {"__version__"})


def __getattr__(name: str) -> Any:
    if name in _SDK_NAMES:
        from agentfactory import sdk

        return getattr(sdk, name)
    raise AttributeError(f"module 'agentfactory' has no attribute {name!r}")

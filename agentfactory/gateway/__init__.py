"""The model gateway: agents reach their model only through it, over a Unix socket (SPEC §6).

`ModelGateway` is imported on first use: the gateway's JSON worker processes import
`agentfactory.gateway.bodies` and should not pay for the server's dependencies.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentfactory.gateway.server import ModelGateway

__all__ = ["ModelGateway"]


def __getattr__(name: str) -> Any:
    if name == "ModelGateway":
        from agentfactory.gateway.server import ModelGateway

        return ModelGateway
    raise AttributeError(name)

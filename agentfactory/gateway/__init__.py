"""The model gateway: agents reach their model only through it, over a Unix socket (SPEC §6)."""

from agentfactory.gateway.server import ModelGateway

__all__ = ["ModelGateway"]

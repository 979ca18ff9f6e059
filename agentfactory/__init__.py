"""agentfactory: a self-hosted control plane for short-lived, sandboxed, containerized AI agents."""

__version__ = "0.1.0"

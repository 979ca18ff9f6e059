"""The store: the database is the truth about every agent, its log lines and the API keys."""

from agentfactory.store.engine import Store

__all__ = ["Store"]

"""The store: the database is the truth about every agent, its log lines and the API keys."""

from sqlalchemy.orm import Session

from agentfactory.store.engine import Store, describe_store_error, store_cannot_write

__all__ = ["Session", "Store", "describe_store_error", "store_cannot_write"]

"""The dashboard's usage buckets: an agent counts in the bucket it was created in, on SQLite and on
PostgreSQL alike (PostgreSQL's float-to-integer cast rounds where SQLite's truncates)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfactory.store import Store, queries
from agentfactory.vocabulary import AgentStatus
from tests.support.server import database_url

DAY = 86_400


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    s = Store(database_url(tmp_path / "usage.db"))
    s.migrate()
    yield s
    s.dispose()


def add(store: Store, agent_id: str, key_id: str, created_at: float, status: str, tokens: int) -> None:
    store.call(
        queries.insert_agent,
        id=agent_id, key_id=key_id, status=status, model="echo", tools=[], prompt="p", env={}, secrets={},
        meta={}, ttl_seconds=60, token_budget=10, created_at=created_at, expires_at=created_at + 60,
        tokens_prompt=tokens, tokens_completion=1, model_calls=0, log_lines=0, log_bytes=0, log_dropped_lines=0,
        log_dropped_bytes=0, stdout_consumed=0, stderr_consumed=0,
    )  # fmt: skip


def test_an_agent_counts_in_the_bucket_it_was_created_in(store: Store) -> None:
    day = 20_000 * DAY
    add(store, "ag_early", "key_a", day + 0.25, AgentStatus.SUCCEEDED, 3)
    add(store, "ag_late", "key_a", day + DAY - 0.5, AgentStatus.FAILED, 5)  # the day's last second
    add(store, "ag_next", "key_a", day + DAY, AgentStatus.SUCCEEDED, 0)
    add(store, "ag_b", "key_b", day + DAY * 0.75, AgentStatus.SUCCEEDED, 0)
    got = store.call(queries.usage_by_key, since=day, bucket_seconds=DAY)
    assert got == [("key_a", day, 2, 1, 10), ("key_a", day + DAY, 1, 0, 1), ("key_b", day, 1, 0, 1)]

"""The outbox: an event is written in the very transaction of the status change that causes it."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from agentfactory.store import Store, queries
from agentfactory.store.tables import AgentRow
from agentfactory.vocabulary import AgentStatus, EventType
from tests.support.server import database_url


def agent(store: Store) -> AgentRow:
    now = time.time()
    return store.call(
        queries.insert_agent,
        id="ag_outbox", key_id="key_a", status=AgentStatus.STARTING, model="echo", tools=[], prompt="p", env={},
        secrets={}, meta={"ci": "1"}, ttl_seconds=60, token_budget=10, created_at=now, expires_at=now + 60,
        tokens_prompt=0, tokens_completion=0, model_calls=0, log_lines=0, log_bytes=0, log_dropped_lines=0,
        log_dropped_bytes=0, stdout_consumed=0, stderr_consumed=0,
    )  # fmt: skip


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(database_url(tmp_path / "o.db"))
    s.migrate()
    return s


def test_a_transition_and_its_event_commit_together(store: Store) -> None:
    row = agent(store)
    changed = store.call(
        queries.transition_agent, pk=row.pk, only_if_status=(AgentStatus.STARTING,), event=EventType.STARTED,
        document=lambda r: f'{{"status": "{r.status}"}}', at=5.0, status=AgentStatus.RUNNING,
    )  # fmt: skip
    assert changed
    (ev,) = store.call(queries.list_events, after=0, limit=10)
    assert (ev.type, ev.agent_id, ev.key_id, ev.agent, ev.created_at) == (
        "agent.started", "ag_outbox", "key_a", '{"status": "running"}', 5.0
    )  # fmt: skip


def test_a_failed_event_write_undoes_the_status_change(store: Store) -> None:
    row = agent(store)

    def broken(_row: AgentRow) -> str:
        raise RuntimeError("no document")

    with pytest.raises(RuntimeError):
        store.call(queries.transition_agent, pk=row.pk, only_if_status=None, event=EventType.STARTED,
                   document=broken, at=1.0, status=AgentStatus.RUNNING)  # fmt: skip
    assert store.call(queries.get_agent_by_pk, pk=row.pk).status == AgentStatus.STARTING  # type: ignore[union-attr]
    assert store.call(queries.list_events, after=0, limit=10) == []


def test_a_lost_compare_and_set_writes_no_event(store: Store) -> None:
    row = agent(store)
    changed = store.call(
        queries.transition_agent, pk=row.pk, only_if_status=(AgentStatus.RUNNING,), event=EventType.FINISHED,
        document=lambda r: "{}", at=1.0, status=AgentStatus.FAILED,
    )  # fmt: skip
    assert not changed
    assert store.call(queries.list_events, after=0, limit=10) == []


def test_event_ids_are_never_reused_after_a_purge(store: Store) -> None:
    for i in range(3):
        store.call(queries.append_event, type="agent.started", agent_id=f"ag_{i}", key_id="k", agent="{}", at=1.0)
    assert store.call(queries.purge_events_before, cutoff=2.0) == 3
    new = store.call(queries.append_event, type="agent.started", agent_id="ag_x", key_id="k", agent="{}", at=3.0)
    assert new == 4

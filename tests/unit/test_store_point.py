"""The point reader behind GET /agents/{id} answers what the ORM query does, and never a stale row."""

from pathlib import Path

from sqlalchemy import inspect, update

from agentfactory.store import Store, queries
from agentfactory.store.tables import AgentRow


def _agent(agent_id: str, key_id: str) -> AgentRow:
    return AgentRow(
        id=agent_id,
        key_id=key_id,
        status="running",
        model="echo",
        tools=["python", "shell"],
        prompt="hi",
        env={"A": "1"},
        secrets={},
        meta={"ci": {"job": 7}, "ü": "ß"},
        ttl_seconds=60,
        token_budget=1000,
        created_at=1.5,
        started_at=2.25,
        expires_at=62.25,
        container_id="c0ffee",
    )


def _columns(row: AgentRow) -> dict[str, object]:
    return {attr.key: getattr(row, attr.key) for attr in inspect(AgentRow).column_attrs}


def test_point_reads_match_the_orm_and_see_every_commit(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'af.db'}")
    store.migrate()
    reader = store.point_reader
    assert reader is not None
    with store.session() as s:
        s.add_all([_agent("ag_a", "key_a"), _agent("ag_b", "key_b")])

    with store.session() as s:
        expected = queries.get_agent(session=s, agent_id="ag_a")
        assert expected is not None
        assert _columns(reader.get_agent(agent_id="ag_a")) == _columns(expected)  # type: ignore[arg-type]
    assert reader.get_agent(agent_id="ag_a", key_id="key_a") is not None
    assert reader.get_agent(agent_id="ag_a", key_id="key_b") is None  # another key's agent
    assert reader.get_agent(agent_id="ag_nope") is None

    with store.session() as s:
        s.execute(update(AgentRow).where(AgentRow.id == "ag_a").values(status="succeeded", exit_code=0))
    fresh = reader.get_agent(agent_id="ag_a")
    assert fresh is not None and (fresh.status, fresh.exit_code) == ("succeeded", 0)

    # by pk, and the queue's length: the same answers as the ORM queries, as commits land
    by_pk = reader.get_agent_by_pk(pk=fresh.pk)
    with store.session() as s:
        assert _columns(by_pk) == _columns(queries.get_agent_by_pk(session=s, pk=fresh.pk))  # type: ignore[arg-type]
    assert reader.get_agent_by_pk(pk=10_000) is None
    assert reader.count_queued() == 0
    with store.session() as s:
        s.execute(update(AgentRow).where(AgentRow.id == "ag_b").values(status="queued"))
    assert reader.count_queued() == store.call(queries.count_queued) == 1
    store.dispose()

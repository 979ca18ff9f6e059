"""PostgreSQL's one-round-trip reads (store/pgpoint.py) answer what the ORM's queries do: the agent row
as `queries.get_agent` reads it, and a rate bucket that admits exactly its capacity however many
threads take from it at once. Always on PostgreSQL (the run's cluster), whatever the selection."""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Iterator

import pytest
from sqlalchemy import inspect, text, update

from agentfactory.service.auth import SharedRateLimiter
from agentfactory.store import Store, queries
from agentfactory.store.pgpoint import PgPointStore
from agentfactory.store.tables import AgentRow, ApiKeyRow
from tests.support.postgres import LocalPostgres


@pytest.fixture
def store(postgres: LocalPostgres) -> Iterator[Store]:
    s = Store(postgres.new_database("pgpoint"))
    s.migrate()
    yield s
    s.dispose()


def _columns(row: AgentRow) -> dict[str, object]:
    return {attr.key: getattr(row, attr.key) for attr in inspect(AgentRow).column_attrs}


def test_point_reads_match_the_orm_and_see_every_commit(store: Store) -> None:
    store.call(
        queries.insert_agent,
        id="ag_1", key_id="key_a", status="running", model="echo", tools=["python", "shell"], prompt="hi",
        env={"A": "1"}, secrets={}, meta={"ci": {"job": 7}, "ü": "ß"}, ttl_seconds=60, token_budget=1000,
        created_at=1.5, started_at=2.25, expires_at=62.25, container_id="c0ffee",
    )  # fmt: skip
    point = store.pg_point
    assert isinstance(point, PgPointStore)

    async def reads() -> None:
        got = await point.get_agent(agent_id="ag_1")
        assert got is not None
        want = store.call(queries.get_agent, agent_id="ag_1", key_id=None)
        assert want is not None and _columns(got) == _columns(want)
        assert await point.get_agent(agent_id="ag_1", key_id="key_a") is not None
        assert await point.get_agent(agent_id="ag_1", key_id="key_b") is None
        assert await point.get_agent(agent_id="ag_none") is None
        with store.session() as s:
            s.execute(update(AgentRow).where(AgentRow.id == "ag_1").values(status="succeeded"))
        again = await point.get_agent(agent_id="ag_1")
        assert again is not None and again.status == "succeeded"

    asyncio.run(reads())
    asyncio.run(reads())  # another event loop: the first loop's connections are not used on it


def test_a_key_read_matches_the_orm(store: Store) -> None:
    row = store.call(
        queries.insert_api_key, id="key_a", name="k", key_hash="a" * 64, prefix="af_a", admin=False,
        models=["echo"], tools=["shell"], max_concurrent_agents=2, max_requests_per_minute=5,
        max_ttl_seconds=60, max_streams=3, created_at=1.5, revoked_at=None,
    )  # fmt: skip
    point = store.pg_point
    assert point is not None
    got = asyncio.run(point.get_api_key_by_hash(key_hash=row.key_hash))
    want = store.call(queries.get_api_key_by_hash, key_hash=row.key_hash)
    assert got is not None and want is not None
    assert {a.key: getattr(got, a.key) for a in inspect(ApiKeyRow).column_attrs} == {
        a.key: getattr(want, a.key) for a in inspect(ApiKeyRow).column_attrs
    }
    assert asyncio.run(point.get_api_key_by_hash(key_hash="0" * 64)) is None


def test_a_dropped_connection_is_replaced(store: Store) -> None:
    store.call(
        queries.insert_agent,
        id="ag_1", key_id="key_a", status="running", model="echo", tools=[], prompt="hi", env={}, secrets={},
        meta={}, ttl_seconds=60, token_budget=1000, created_at=1.5, expires_at=62.25,
    )  # fmt: skip
    point = store.pg_point
    assert point is not None

    async def read_kill_read() -> None:
        assert await point.get_agent(agent_id="ag_1") is not None
        with store.engine.begin() as conn:  # as a database restart or a failover would
            conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                              "WHERE datname = current_database() AND pid <> pg_backend_pid()"))  # fmt: skip
        assert await point.get_agent(agent_id="ag_1") is not None

    asyncio.run(read_kill_read())


@pytest.mark.parametrize("lease_seconds", [SharedRateLimiter.LEASE_SECONDS, 10.0])
def test_the_shared_bucket_admits_no_more_than_its_capacity_across_replicas(store: Store, lease_seconds: float) -> None:
    per_minute = 30  # refills one token every 2 s: the test takes well under that
    want = max(1, int(per_minute / 60 * lease_seconds))  # 1 (the default lease), or 5

    def take(_: int) -> list[int | None]:  # a replica: a store and an event loop of its own
        replica = Store(store.url)
        limiter = SharedRateLimiter(replica)
        limiter.LEASE_SECONDS = lease_seconds

        async def takes() -> list[int | None]:  # 8 at a time, on connections of their own
            return list(await asyncio.gather(*(limiter.take("key_a", per_minute) for _ in range(8))))

        try:
            return asyncio.run(takes())
        finally:
            replica.dispose()

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        waits = [w for ws in pool.map(take, range(8)) for w in ws]
    admitted = [w for w in waits if w is None]
    assert len(waits) == 64
    assert per_minute - 8 * (want - 1) <= len(admitted) <= per_minute + 1, waits  # +1: a refill meanwhile
    assert all(w is not None and 1 <= w <= 2 for w in waits if w is not None), waits
    with store.session() as s:
        tokens = s.execute(text("SELECT tokens FROM rate_buckets WHERE key_id = 'key_a'")).scalar_one()
    assert 0 <= tokens < 1.5


def test_a_replica_spends_a_high_rate_s_tokens_itself_for_a_moment(store: Store) -> None:
    limiter = SharedRateLimiter(store)
    point = store.pg_point
    assert point is not None
    trips: list[int] = []
    take_rate_tokens = point.take_rate_tokens

    async def counted(**kwargs: int | str) -> tuple[int, float] | None:
        trips.append(int(kwargs["want"]))
        return await take_rate_tokens(**kwargs)  # type: ignore[arg-type]

    point.take_rate_tokens = counted  # type: ignore[method-assign]
    now = [1000.0]
    limiter._clock = lambda: now[0]
    per_minute = 60 * 200  # 200 a second: a lease of 0.05 s is 10 tokens

    async def takes(n: int) -> list[int | None]:
        return [await limiter.take("key_a", per_minute) for _ in range(n)]

    assert asyncio.run(takes(1)) == [None]  # no bucket yet: the key's first request creates it, one token
    assert trips == [10]
    assert asyncio.run(takes(11)) == [None] * 11  # ten of the lease's, then a new lease
    assert trips == [10, 10, 10]
    now[0] += 0.06  # the lease (9 tokens left) expired: they are dropped, not spent
    assert asyncio.run(takes(1)) == [None]
    assert trips == [10, 10, 10, 10]


def test_autocommit_runs_one_statement_on_the_thread_s_own_connection(store: Store) -> None:
    store.call(
        queries.insert_agent,
        id="ag_1", key_id="key_a", status="running", model="echo", tools=[], prompt="hi", env={}, secrets={},
        meta={}, ttl_seconds=60, token_budget=1000, created_at=1.5, expires_at=62.25, gateway_token_hash="h" * 64,
    )  # fmt: skip
    grant = store.autocommit(queries.get_gateway_grant, token_hash="h" * 64)
    assert grant is not None and grant[1] == "ag_1"
    assert store.autocommit(queries.reserve_tokens, pk=grant[0], tokens=900)
    assert not store.autocommit(queries.reserve_tokens, pk=grant[0], tokens=101)  # over the budget
    with store.engine.begin() as conn:  # seen by others at once (committed), and the backend killed
        assert conn.execute(text("SELECT tokens_reserved FROM agents WHERE id = 'ag_1'")).scalar_one() == 900
        conn.execute(text("SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                          "WHERE datname = current_database() AND pid <> pg_backend_pid()"))  # fmt: skip
    store.autocommit(queries.settle_tokens, pk=grant[0], reserved=900, prompt_tokens=5, completion_tokens=7, calls=1)
    assert store.autocommit(queries.get_token_account, pk=grant[0]) == ("running", 1000, 12, 0)

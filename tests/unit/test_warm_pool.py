"""The warm pool's decisions (runtime/warm.py, spec.py's profile, docker_spec's sandbox arguments) over an
in-memory engine of sandboxes and a real SQLite store: which agents fit, what a sandbox's container
holds, hits and misses, the capacity's room, yielding to launches, the sweep and the drain. The real
engine's behaviour is tests/integration/test_warm_pool.py."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agentfactory.backends.base import AgentSpec, IdleSandbox, Launched, Sandboxes
from agentfactory.backends.docker_spec import build_create_args
from agentfactory.backends.docker_warm import agent_of
from agentfactory.catalog import load_catalog
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.spec import agent_spec, warm_spec
from agentfactory.runtime.warm import SandboxPool, assignment
from agentfactory.settings import Settings
from agentfactory.store import Store, queries
from agentfactory.store.tables import AgentRow
from agentfactory.vocabulary import AgentStatus
from tests.support.server import database_url

ROOT = Path(__file__).resolve().parents[2]
CATALOG = load_catalog(ROOT / "catalog.json")
SETTINGS = Settings(_env_file=None)  # type: ignore[call-arg]


class Output:
    def __init__(self) -> None:
        self.closed = False

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        return iter(())

    def close(self) -> None:
        self.closed = True

    def ended(self) -> bool:
        return True


class Engine(Sandboxes):
    """Sandboxes in memory: name → (owner, running)."""

    def __init__(self) -> None:
        self.containers: dict[str, tuple[str, bool]] = {}
        self.assigned: dict[str, tuple[str, bytes]] = {}
        self.fail_assign = False

    async def start(self, spec: AgentSpec) -> Launched:
        assert spec.warm_owner is not None and spec.network is None
        self.containers[spec.agent_id] = (spec.warm_owner, True)
        return Launched(container_id=spec.agent_id, output=Output())

    async def assign(self, sandbox_id: str, agent_id: str, launched: Launched, data: bytes) -> None:
        if self.fail_assign:
            raise RuntimeError("rename refused")
        del self.containers[sandbox_id]
        self.assigned[agent_id] = (sandbox_id, data)

    async def remove(self, sandbox_id: str) -> None:
        self.containers.pop(sandbox_id, None)

    async def idle(self) -> list[IdleSandbox]:
        return [IdleSandbox(sandbox_id=k, owner=o, running=r) for k, (o, r) in self.containers.items()]


def row(agent_id: str = "ag_1", tools: list[str] | None = None) -> AgentRow:
    return AgentRow(
        id=agent_id, key_id="key_a", model="echo", tools=tools or [], prompt="the prompt", env={"A": "1"},
        secrets={"S": "secret-value"},
    )  # fmt: skip


def spec_of(agent_id: str = "ag_1", tools: list[str] | None = None) -> AgentSpec:
    return agent_spec(row=row(agent_id, tools), token="tok-123", catalog=CATALOG, settings=SETTINGS)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    s = Store(database_url(tmp_path / "w.db"))
    s.migrate()
    return s


def pool_of(store: Store, engine: Engine, *, size: int = 2, max_running: int = 10, busy: bool = False) -> SandboxPool:
    return SandboxPool(
        size=size, sandboxes=engine, settings=SETTINGS, catalog=CATALOG, store=store, metrics=Metrics(),
        owner="replica-a", max_running=lambda: max_running, busy=lambda: busy, live_owners=lambda: {"replica-a"},
    )  # fmt: skip


async def fill(pool: SandboxPool) -> None:
    for _ in range(pool.size + 1):
        await pool.run_once()


def insert_running(store: Store, n: int) -> None:
    now = time.time()
    for i in range(n):
        store.call(
            queries.insert_agent,
            id=f"ag_run{i}", key_id="key_a", status=AgentStatus.RUNNING, model="echo", tools=[], prompt="p", env={},
            secrets={}, meta={}, ttl_seconds=60, token_budget=10, created_at=now, expires_at=now + 60,
            tokens_prompt=0, tokens_completion=0, model_calls=0, log_lines=0, log_bytes=0, log_dropped_lines=0,
            log_dropped_bytes=0, stdout_consumed=0, stderr_consumed=0,
        )  # fmt: skip


def test_a_sandboxs_container_holds_nothing_of_an_agent_and_the_same_hardening() -> None:
    sandbox = build_create_args(warm_spec(sandbox_id="warm-ab12", owner="r1", catalog=CATALOG, settings=SETTINGS))
    agent = build_create_args(spec_of())
    assert sandbox["name"] == "agentfactory-warm-ab12"
    env = {"AGENTFACTORY_GATEWAY_SOCKET": "/run/agentfactory/gateway.sock", "AGENTFACTORY_WARM": "1"}
    assert sandbox["environment"] == env
    assert "io.agentfactory.agent_id" not in sandbox["labels"] and sandbox["labels"]["io.agentfactory.warm"] == "r1"
    assert sandbox["stdin_open"] is True and agent["stdin_open"] is False
    assert sandbox["host_config"] == agent["host_config"]
    same = ("image", "user", "working_dir", "network_disabled", "tty")
    assert {k: sandbox[k] for k in same} == {k: agent[k] for k in same}


def test_a_claimed_sandbox_is_listed_as_its_agent_an_idle_one_as_nobodys() -> None:
    labels = {"io.agentfactory.managed": "true", "io.agentfactory.warm": "r1"}
    assert agent_of({"Labels": labels, "Names": ["/agentfactory-ag_x1"]}) == "ag_x1"
    assert agent_of({"Labels": labels, "Names": ["/agentfactory-warm-ab12"]}) == ""
    assert agent_of({"Labels": {"io.agentfactory.agent_id": "ag_y"}, "Names": ["/agentfactory-ag_y"]}) == "ag_y"


def test_only_an_agent_of_the_default_profile_fits(store: Store) -> None:
    pool = pool_of(store, Engine())
    assert pool.fits(spec_of())
    network_tools = [t.id for t in CATALOG.tools if t.network]
    if network_tools:
        assert not pool.fits(spec_of(tools=network_tools))


def test_claims_hit_while_sandboxes_are_idle_then_miss_and_the_pool_refills(store: Store) -> None:
    async def go() -> None:
        engine = Engine()
        pool = pool_of(store, engine)
        await fill(pool)
        assert (pool.idle, len(engine.containers)) == (2, 2)
        first = await pool.claim(spec_of("ag_1"))
        second = await pool.claim(spec_of("ag_2"))
        third = await pool.claim(spec_of("ag_3"))
        assert first is not None and second is not None and third is None
        assert first.container_id != second.container_id  # never the same sandbox twice
        sandbox_id, data = engine.assigned["ag_1"]
        assert sandbox_id == first.container_id
        sent = json.loads(data)
        assert data == assignment(spec_of("ag_1")) and data.endswith(b"\n")
        assert sent["env"]["S"] == "secret-value" and sent["env"]["AGENTFACTORY_GATEWAY_TOKEN"] == "tok-123"
        assert "the prompt" not in data.decode()  # the runtime fetches its spec from the gateway
        hits = pool.metrics.pool_claims.labels(outcome="hit")._value.get()
        misses = pool.metrics.pool_claims.labels(outcome="miss")._value.get()
        assert (hits, misses) == (2, 1)
        await fill(pool)
        assert pool.idle == 2

    asyncio.run(go())


def test_a_failed_claim_removes_the_sandbox_and_the_agent_starts_cold(store: Store) -> None:
    async def go() -> None:
        engine = Engine()
        pool = pool_of(store, engine)
        await fill(pool)
        engine.fail_assign = True
        assert await pool.claim(spec_of()) is None
        assert engine.containers == {} and pool.idle == 0

    asyncio.run(go())


def test_sandboxes_take_only_the_room_agents_leave_and_give_it_back(store: Store) -> None:
    async def go() -> None:
        engine = Engine()
        insert_running(store, 9)
        pool = pool_of(store, engine, size=3, max_running=10)
        await fill(pool)
        assert pool.idle == 1  # 9 agents + 1 sandbox = the capacity
        store.call(queries.update_agent, pk=1, only_if_status=None, status=AgentStatus.SUCCEEDED)
        await fill(pool)
        assert pool.idle == 2
        # A cold start (say a network agent) takes a slot: a sandbox gives it back.
        now = time.time()
        store.call(
            queries.insert_agent,
            id="ag_cold", key_id="key_a", status=AgentStatus.RUNNING, model="echo", tools=[], prompt="p", env={},
            secrets={}, meta={}, ttl_seconds=60, token_budget=10, created_at=now, expires_at=now + 60,
            tokens_prompt=0, tokens_completion=0, model_calls=0, log_lines=0, log_bytes=0, log_dropped_lines=0,
            log_dropped_bytes=0, stdout_consumed=0, stderr_consumed=0,
        )  # fmt: skip
        await pool.run_once()
        assert pool.idle == 1 and len(engine.containers) == 1

    asyncio.run(go())


def test_refills_wait_while_a_launch_is_in_flight(store: Store) -> None:
    async def go() -> None:
        engine = Engine()
        pool = pool_of(store, engine, busy=True)
        await fill(pool)
        assert pool.idle == 0 and pool.wake_in is not None and pool.wake_in > 0

    asyncio.run(go())


def test_the_sweep_removes_sandboxes_nobody_holds_and_the_drain_removes_ours(store: Store) -> None:
    async def go() -> None:
        engine = Engine()
        engine.containers["warm-old-mine"] = ("replica-a", False)  # this replica id's, not in memory
        engine.containers["warm-dead"] = ("replica-gone", True)  # a dead replica's
        engine.containers["warm-theirs"] = ("replica-b", True)  # a live replica's: kept
        pool = pool_of(store, engine)
        pool.live_owners = lambda: {"replica-a", "replica-b"}
        await fill(pool)
        assert set(engine.containers) - {s.id for s in pool._idle} == {"warm-theirs"}
        outputs = [s.launched.output for s in pool._idle]
        await pool.drain()
        assert set(engine.containers) == {"warm-theirs"} and pool.idle == 0
        assert all(o.closed for o in outputs)  # type: ignore[attr-defined]
        assert await pool.claim(spec_of()) is None  # closed: every agent starts cold

    asyncio.run(go())

"""FakeBackend: a behavioural stand-in for the engine (JupyterHub's SlowSpawner/NeverSpawner idea).

Knobs per agent (through env `FAKE_*` of the spec): print N lines, exit with a code, start slowly,
never start, crash at launch, report OOM, run until stopped. Used to test the state machine fast;
the Docker adapter itself is tested against the real engine.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

from agentfactory.backends.base import (
    STDOUT,
    AgentSpec,
    Backend,
    ContainerState,
    ContainerStatus,
    Launched,
    ManagedContainer,
    ResourceUsage,
)
from agentfactory.errors import AgentFactoryError, NetworkPolicyError, RuntimeUnavailableError


class FakeLaunchError(AgentFactoryError):
    code, status = "E_LAUNCH", 500


@dataclass
class _Container:
    spec: AgentSpec
    chunks: queue.SimpleQueue[tuple[int, bytes] | None] = field(default_factory=queue.SimpleQueue)
    state: ContainerState = ContainerState.RUNNING
    exit_code: int | None = None
    oom: bool = False
    exited: threading.Event = field(default_factory=threading.Event)


class _QueueOutput:
    def __init__(self, c: _Container):
        self._c = c

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        while True:
            item = self._c.chunks.get()
            if item is None:
                return
            yield item

    def close(self) -> None:
        self._c.chunks.put(None)


class FakeBackend(Backend):
    """In-memory containers driven by the spec's FAKE_* env knobs, keyed by agent id: a test
    that finds an agent's id in `containers` after its end has found a leftover container."""

    def __init__(self, *, instance: str = "fake"):
        self.instance = instance
        self.containers: dict[str, _Container] = {}
        self.engine_down = False
        self.egress_refused: str | None = None  # set: agents with a network are refused for this reason
        self.network_checks = 0
        self.launches = 0

    def _check(self) -> None:
        if self.engine_down:
            raise RuntimeUnavailableError("the container engine is unreachable: fake engine down")

    async def ping(self) -> None:
        self._check()

    async def prepare_network(self, network: str) -> None:
        self._check()
        self.network_checks += 1
        if self.egress_refused:
            raise NetworkPolicyError(self.egress_refused)

    async def launch(self, spec: AgentSpec) -> Launched:
        self._check()
        if spec.network:
            await self.prepare_network(spec.network)
        env = spec.env
        if env.get("FAKE_CRASH_AT_LAUNCH"):
            raise FakeLaunchError("fake: the engine refused to start the container")
        await asyncio.sleep(float(env.get("FAKE_START_DELAY", "0")))
        if env.get("FAKE_NEVER_STARTS"):
            await asyncio.Event().wait()
        self.launches += 1
        cid = f"fake-{spec.agent_id}"
        c = self.containers[spec.agent_id] = _Container(spec)
        lines = int(env.get("FAKE_LINES", "0"))
        for i in range(1, lines + 1):
            c.chunks.put((STDOUT, f"line {i}\n".encode()))
        if not env.get("FAKE_RUN_UNTIL_STOPPED"):
            self._exit(c, int(env.get("FAKE_EXIT_CODE", "0")), bool(env.get("FAKE_OOM")))
        return Launched(container_id=cid, output=_QueueOutput(c))

    def _exit(self, c: _Container, code: int, oom: bool = False) -> None:
        if c.state is ContainerState.EXITED:
            return
        c.state, c.exit_code, c.oom = ContainerState.EXITED, code, oom
        c.chunks.put(None)
        c.exited.set()

    async def status(self, agent_id: str) -> ContainerStatus:
        self._check()
        c = self.containers.get(agent_id)
        if c is None:
            return ContainerStatus(ContainerState.MISSING)
        return ContainerStatus(c.state, exit_code=c.exit_code, oom_killed=c.oom)

    async def wait(self, agent_id: str, timeout: float) -> ContainerStatus:
        c = self.containers.get(agent_id)
        if c is not None:
            await asyncio.to_thread(c.exited.wait, timeout)
        return await self.status(agent_id)

    async def stop(self, agent_id: str, grace_seconds: float) -> None:
        self._check()
        c = self.containers.get(agent_id)
        if c is not None:
            self._exit(c, 137)

    async def remove(self, agent_id: str) -> None:
        self._check()
        c = self.containers.pop(agent_id, None)
        if c is not None:
            self._exit(c, 137)

    async def logs(self, agent_id: str) -> _QueueOutput:
        c = self.containers[agent_id]
        return _QueueOutput(c)

    async def list_managed(self) -> list[ManagedContainer]:
        self._check()
        return [ManagedContainer(f"fake-{aid}", aid, c.state) for aid, c in self.containers.items()]

    async def usage(self, agent_id: str) -> ResourceUsage:
        return ResourceUsage()

    def vanish(self, agent_id: str) -> None:
        """Someone removed the agent's container behind our back."""
        c = self.containers.pop(agent_id, None)
        if c is not None:
            c.chunks.put(None)
            c.exited.set()

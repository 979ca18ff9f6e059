"""FakeBackend: a behavioural stand-in for the engine (JupyterHub's SlowSpawner/NeverSpawner idea).

Knobs per agent (through env `FAKE_*` of the spec): print N lines, exit with a code, start slowly,
never start, crash at launch, report OOM, run until stopped, keep its output open after its exit.
Engine knobs for tests: `engine_down`, `cut_output()` (a restart with live-restore), `vanish`.
Used to test the state machine fast; the Docker adapter itself is tested against the real engine.
"""

from __future__ import annotations

import asyncio
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
from agentfactory.errors import AgentFactoryError, NetworkPolicyError, NotPlacedError, RuntimeUnavailableError


class FakeLaunchError(AgentFactoryError):
    code, status = "E_LAUNCH", 500


@dataclass
class _Container:
    spec: AgentSpec
    state: ContainerState = ContainerState.RUNNING
    exit_code: int | None = None
    oom: bool = False
    exited: threading.Event = field(default_factory=threading.Event)
    # Everything it printed, in order, as an engine's log keeps it (a re-read replays it).
    history: list[tuple[int, bytes]] = field(default_factory=list)
    changed: threading.Condition = field(default_factory=threading.Condition)
    outputs: list[_Output] = field(default_factory=list)
    hold_output: bool = False  # its output stream stays open after it exits (a stuck engine)

    def print(self, stream: int, data: bytes) -> None:
        with self.changed:
            self.history.append((stream, data))
            self.changed.notify_all()


class _Output:
    """A follower of one container's output from position `start`: ends when the container
    exits, when it is closed, or when the fake engine cuts it (`ended()` is then False)."""

    def __init__(self, c: _Container, start: int):
        self._c = c
        self._pos = start
        self._closed = False
        self.cut = False

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        c = self._c
        while True:
            with c.changed:
                while self._pos >= len(c.history) and not self._over():
                    c.changed.wait()
                if self._pos < len(c.history):
                    item = c.history[self._pos]
                    self._pos += 1
                elif self._over():
                    return
            yield item

    def _over(self) -> bool:
        return self._closed or self.cut or (self._c.exited.is_set() and not self._c.hold_output)

    def close(self) -> None:
        with self._c.changed:
            self._closed = True
            self._c.changed.notify_all()

    def ended(self) -> bool:
        return not self.cut and self._c.exited.is_set()


class FakeBackend(Backend):
    """In-memory containers driven by the spec's FAKE_* env knobs, keyed by agent id: a test
    that finds an agent's id in `containers` after its end has found a leftover container."""

    def __init__(self, *, instance: str = "fake", engine_id: str = "FAKE:ENGINE"):
        self.instance = instance
        self.id = engine_id
        self.containers: dict[str, _Container] = {}
        self.engine_down = False
        self.egress_refused: str | None = None  # set: agents with a network are refused for this reason
        self.network_checks = 0
        self.launches = 0
        self.unplaced: dict[str, int] = {}  # agent id → launches refused for FAKE_NOT_PLACED

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
        unplaced = self.unplaced.get(spec.agent_id, 0)
        if unplaced < int(env.get("FAKE_NOT_PLACED", "0")):  # a full cluster, its first N launches
            self.unplaced[spec.agent_id] = unplaced + 1
            raise NotPlacedError("fake: no suitable node (insufficient resources on 1 node)", retry_after=1)
        await asyncio.sleep(float(env.get("FAKE_START_DELAY", "0")))
        if env.get("FAKE_NEVER_STARTS"):
            await asyncio.Event().wait()
        self.launches += 1
        cid = f"fake-{spec.agent_id}"
        c = self.containers[spec.agent_id] = _Container(spec, hold_output=bool(env.get("FAKE_HOLD_OUTPUT")))
        out = self._follow(c, 0)
        lines = int(env.get("FAKE_LINES", "0"))
        for i in range(1, lines + 1):
            c.print(STDOUT, f"line {i}\n".encode())
        if not env.get("FAKE_RUN_UNTIL_STOPPED"):
            self._exit(c, int(env.get("FAKE_EXIT_CODE", "0")), bool(env.get("FAKE_OOM")))
        return Launched(container_id=cid, output=out)

    @staticmethod
    def _follow(c: _Container, start: int) -> _Output:
        out = _Output(c, start)
        c.outputs.append(out)
        return out

    def _exit(self, c: _Container, code: int, oom: bool = False) -> None:
        with c.changed:
            if c.state is ContainerState.EXITED:
                return
            c.state, c.exit_code, c.oom = ContainerState.EXITED, code, oom
            c.exited.set()
            c.changed.notify_all()

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

    async def logs(self, agent_id: str) -> _Output:
        self._check()
        return self._follow(self.containers[agent_id], 0)

    async def list_managed(self) -> list[ManagedContainer]:
        self._check()
        return [ManagedContainer(f"fake-{aid}", aid, c.state) for aid, c in self.containers.items()]

    async def usage(self, agent_id: str) -> ResourceUsage:
        return ResourceUsage()

    async def engine_id(self) -> str:
        self._check()
        return self.id

    # -- knobs for tests -------------------------------------------------------------------------

    def vanish(self, agent_id: str) -> None:
        """Someone removed the agent's container behind our back."""
        c = self.containers.pop(agent_id, None)
        if c is not None:
            self._exit(c, 137)

    def print(self, agent_id: str, text: str) -> None:
        """The agent prints `text` (raw: include the newline) on stdout."""
        self.containers[agent_id].print(STDOUT, text.encode())

    def exit(self, agent_id: str, code: int) -> None:
        self._exit(self.containers[agent_id], code)

    def cut_output(self) -> None:
        """The engine goes away for a moment (live-restore: containers run on): every output
        stream ends without the container having exited."""
        for c in self.containers.values():
            with c.changed:
                for out in c.outputs:
                    out.cut = True
                c.outputs.clear()
                c.changed.notify_all()

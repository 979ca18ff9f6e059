"""The backend contract: the few verbs the runtime needs from whatever runs containers.

Modelled on JupyterHub's `Spawner` and Dagster's `RunLauncher`: a frozen input (`AgentSpec`), a handful
of async verbs, answers as a small status object. The rest of the system never asks which backend it
talks to, and never names an engine object: every verb takes the agent's id, and the backend finds
the agent's container (or service) from it. Every verb raises `RuntimeUnavailableError` when the
engine cannot be reached; teardown verbs are idempotent.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from agentfactory.errors import NetworkPolicyError
from agentfactory.vocabulary import STDERR, STDOUT

__all__ = ["STDERR", "STDOUT"]

LABEL_PREFIX = "io.agentfactory."
LABEL_AGENT = LABEL_PREFIX + "agent_id"
LABEL_MANAGED = LABEL_PREFIX + "managed"
LABEL_INSTANCE = LABEL_PREFIX + "instance"
# A warm sandbox (SPEC §10): started before its agent exists, so its labels name no agent; the value
# is the replica that started it. Once claimed, its name carries the agent's id (labels cannot change).
LABEL_WARM = LABEL_PREFIX + "warm"


@dataclass(frozen=True)
class AgentSpec:
    """Everything a backend needs to run one agent; built by the launcher from the agent row."""

    agent_id: str
    key_id: str
    image: str
    env: Mapping[str, str]
    memory_mb: int
    cpus: float
    pids: int
    scratch_mb: int
    max_log_bytes: int
    nofile: int = 1024  # open-file limit, soft and hard: bounds the sockets an agent can open
    network: str | None = None  # None: no network at all; else the name of an isolated network
    dns: tuple[str, ...] = ()  # resolvers of an agent with a network (public ones: see egress.py); () engine's
    runtime: str | None = None  # OCI runtime (runsc for gVisor); None: the engine's default
    gateway_socket_dir: Path | None = None
    instance: str = "local"
    constraints: tuple[str, ...] = ()  # placement on a cluster (Swarm syntax); a single engine ignores them
    # A warm sandbox (SPEC §10): `agent_id` is the sandbox's id, `warm_owner` the replica that started
    # it; it waits on its stdin for its assignment (runtime/warm.py).
    warm_owner: str | None = None


class ContainerState(enum.Enum):
    CREATED = "created"
    RUNNING = "running"
    EXITED = "exited"
    MISSING = "missing"


@dataclass(frozen=True)
class ContainerStatus:
    state: ContainerState
    exit_code: int | None = None
    oom_killed: bool = False
    message: str = ""
    runtime: str | None = None  # the OCI runtime it ran under (runsc...), where the engine says
    finished_at: float | None = None  # when it exited (epoch seconds), where the engine says


@dataclass(frozen=True)
class ManagedContainer:
    container_id: str
    agent_id: str
    state: ContainerState


class OutputSource(Protocol):
    """A blocking stream of (stream, bytes) chunks of a container's output, in order per stream.

    Read from a thread; `close()` may be called from another thread to stop it. Once `chunks()`
    has ended, `ended()` (blocking, same thread) says whether the output ended because the
    container exited (True) or was cut while the container may run on: the engine went away or
    restarted (False). Only a real end lets capture flush a last unterminated line and seal.
    """

    def chunks(self) -> Iterator[tuple[int, bytes]]: ...

    def close(self) -> None: ...

    def ended(self) -> bool: ...


@dataclass(frozen=True)
class Launched:
    container_id: str
    output: OutputSource


@dataclass(frozen=True)
class ResourceUsage:
    peak_memory_bytes: int | None = None
    cpu_seconds: float | None = None


@dataclass(frozen=True)
class EngineResources:
    cpus: int
    memory_bytes: int


@dataclass(frozen=True)
class IdleSandbox:
    """An unclaimed warm sandbox found on the engine (SPEC §10)."""

    sandbox_id: str
    owner: str  # the replica that started it
    running: bool


class Sandboxes(abc.ABC):
    """Warm sandboxes (SPEC §10) on an engine that can keep them: containers started ahead of demand
    with a sandbox id for a name, each handed to one agent by `assign`, never reused."""

    @abc.abstractmethod
    async def start(self, spec: AgentSpec) -> Launched:
        """`Backend.launch` of a sandbox's spec (`warm_owner` set): the same create, attach (with
        its stdin) and start as an agent's; its runtime then waits for its assignment."""

    @abc.abstractmethod
    async def assign(self, sandbox_id: str, agent_id: str, launched: Launched, assignment: bytes) -> None:
        """Give the sandbox to the agent: rename its container to the agent's (so every verb of the
        backend finds it by the agent's id), then write `assignment` to its stdin. Raises on failure
        (the caller removes the sandbox and starts the agent cold)."""

    @abc.abstractmethod
    async def remove(self, sandbox_id: str) -> None:
        """Remove an unclaimed sandbox (forcefully). Idempotent."""

    @abc.abstractmethod
    async def idle(self) -> list[IdleSandbox]:
        """Every unclaimed sandbox of this instance on the engine, whoever started it."""


class Backend(abc.ABC):
    """Runs agents as containers."""

    @abc.abstractmethod
    async def launch(self, spec: AgentSpec) -> Launched:
        """Create the container, attach to its output, then start it, so no early line is missed.

        On failure nothing is left behind: a created container is removed before the error is raised.
        """

    @abc.abstractmethod
    async def status(self, agent_id: str) -> ContainerStatus:
        """The state of the agent's container; MISSING when it is gone."""

    @abc.abstractmethod
    async def wait(self, agent_id: str, timeout: float) -> ContainerStatus:
        """Wait until the agent's container has exited (or the timeout passes) and return its status."""

    @abc.abstractmethod
    async def stop(self, agent_id: str, grace_seconds: float) -> None:
        """SIGTERM, then SIGKILL after the grace. Idempotent: a stopped or missing container is fine."""

    @abc.abstractmethod
    async def remove(self, agent_id: str) -> None:
        """Remove the agent's container (forcefully). Idempotent: a missing container is fine."""

    @abc.abstractmethod
    async def logs(self, agent_id: str) -> OutputSource:
        """The agent's whole output from its start, following until it exits (restart recovery)."""

    @abc.abstractmethod
    async def list_managed(self) -> list[ManagedContainer]:
        """Every container carrying the agentfactory labels."""

    @abc.abstractmethod
    async def usage(self, agent_id: str) -> ResourceUsage:
        """Resource figures the engine reports for a running agent (empty when it reports none)."""

    @abc.abstractmethod
    async def ping(self) -> None:
        """Raise RuntimeUnavailableError when the engine does not answer."""

    @abc.abstractmethod
    async def engine_id(self) -> str:
        """The engine's stable identity (Docker's `info()["ID"]`): replicas that reach the same
        engine see the same id, so one adopts or marks lost only agents on an engine it reaches."""

    async def prepare_network(self, network: str) -> None:
        """Make `network` ready for agents with a network tool: made if missing, no agent reaching
        another, and the egress policy of SPEC §14 (the public internet only) in force and read back.

        Idempotent and cheap when recently verified; `launch` checks it too before a container joins
        the network. Raises NetworkPolicyError when the policy cannot be enforced (network tools are
        then refused; agents without a network keep running), RuntimeUnavailableError when the
        engine does not answer. A backend that cannot enforce egress refuses (this default).
        """
        raise NetworkPolicyError(f"{type(self).__name__} cannot enforce an egress policy for agents with a network")

    async def resources(self) -> EngineResources | None:
        """What the engine (the cluster: every node together) has for agents, or None when it
        cannot say; the default capacity is derived from it (SPEC §10)."""
        return None

    def sandboxes(self) -> Sandboxes | None:
        """Warm sandboxes on this backend (SPEC §10), or None when it keeps none (agents start cold)."""
        return None

    async def close(self) -> None:  # noqa: B027 - optional: most backends hold nothing to release
        """Release the client."""

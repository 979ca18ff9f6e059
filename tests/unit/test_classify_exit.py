"""How a container's end becomes the agent's status, reason and error (runc and gVisor)."""

from __future__ import annotations

import pytest

from agentfactory.backends.base import ContainerState, ContainerStatus
from agentfactory.runtime.outcome import classify_exit
from agentfactory.store.tables import AgentRow


def row(stop_reason: str | None = None) -> AgentRow:
    return AgentRow(id="ag_1", status="running", ttl_seconds=60, stop_reason=stop_reason)


def ended(code: int | None, *, oom: bool = False, runtime: str | None = None) -> ContainerStatus:
    return ContainerStatus(ContainerState.EXITED, exit_code=code, oom_killed=oom, runtime=runtime)


@pytest.mark.parametrize("runtime", ["runsc", "runsc-net"])
def test_runsc_exit_2_is_a_dead_sandbox_not_an_unknown_failure(runtime: str) -> None:
    status, reason, error = classify_exit(row(), ended(2, runtime=runtime))
    assert (status, reason) == ("failed", "sandbox_died")
    assert error is not None and "PIDs" in error


@pytest.mark.parametrize("runtime", [None, "runc", "io.containerd.runc.v2"])
def test_exit_2_under_runc_is_the_agents_own_exit(runtime: str | None) -> None:
    assert classify_exit(row(), ended(2, runtime=runtime)) == ("failed", "exit", "exited with code 2")


@pytest.mark.parametrize("runtime", [None, "runsc"])
def test_memory_death_is_oom_killed_under_both_runtimes(runtime: str | None) -> None:
    status, reason, _ = classify_exit(row(), ended(137, oom=True, runtime=runtime))
    assert (status, reason) == ("failed", "oom_killed")


def test_stop_reasons_and_clean_exits_are_unchanged_under_runsc() -> None:
    assert classify_exit(row(), ended(0, runtime="runsc")) == ("succeeded", "exit", None)
    assert classify_exit(row("cancelled"), ended(2, runtime="runsc"))[:2] == ("cancelled", "cancelled")
    assert classify_exit(row("ttl_expired"), ended(137, runtime="runsc"))[:2] == ("expired", "ttl_expired")
    assert classify_exit(row(), ended(1, runtime="runsc")) == ("failed", "exit", "exited with code 1")

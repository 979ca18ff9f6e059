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


def test_a_running_container_is_never_classified_as_an_end() -> None:
    # An engine with live-restore reports a container it lost track of with exit code 0.
    with pytest.raises(ValueError):
        classify_exit(row(), ContainerStatus(ContainerState.RUNNING, exit_code=0))


@pytest.mark.parametrize("code", [143, 137])
def test_a_container_the_engine_stopped_during_an_outage_is_lost_naming_the_engine(code: int) -> None:
    outage = AgentRow(id="ag_1", status="running", ttl_seconds=60, engine_lost_at=1.0)
    status, reason, error = classify_exit(outage, ended(code))
    assert (status, reason) == ("failed", "lost")
    assert error is not None and "engine stopped or restarted" in error and str(code) in error
    gone = classify_exit(outage, ContainerStatus(ContainerState.MISSING))
    assert gone[:2] == ("failed", "lost") and "engine" in (gone[2] or "")


def test_an_agents_own_exit_after_an_outage_is_still_its_own() -> None:
    outage = AgentRow(id="ag_1", status="running", ttl_seconds=60, engine_lost_at=1.0)
    assert classify_exit(outage, ended(0)) == ("succeeded", "exit", None)
    assert classify_exit(outage, ended(1)) == ("failed", "exit", "exited with code 1")
    assert classify_exit(outage, ended(137, oom=True))[1] == "oom_killed"
    # Without an outage, a signal exit is the agent's (or its tools') own.
    assert classify_exit(row(), ended(143)) == ("failed", "exit", "exited with code 143")

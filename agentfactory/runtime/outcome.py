"""How an agent ended: its container's final state, read as (status, reason, error), and the terminal
values of an agent that never ran. Pure."""

from __future__ import annotations

import hashlib
from typing import Any

from agentfactory.backends.base import ContainerState, ContainerStatus
from agentfactory.store.tables import AgentRow

ENGINE_LOST = "the container engine stopped or restarted while the agent ran"
KILLED_BY_ENGINE = (128 + 15, 128 + 9)  # SIGTERM, SIGKILL: how an engine that stops ends its containers
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()


def never_ran(status: str, reason: str, error: str | None, at: float) -> dict[str, Any]:
    """The terminal row values of an agent that never ran (a failed launch, a queued agent that
    timed out or was cancelled): an empty seal, its secrets and gateway token forgotten."""
    return {
        "status": status,
        "reason": reason,
        "error": error,
        "finished_at": at,
        "log_lines": 0,
        "log_bytes": 0,
        "log_sha256": EMPTY_SHA256,
        "secrets": {},
        "gateway_token_hash": None,
    }


def classify_exit(row: AgentRow, st: ContainerStatus) -> tuple[str, str, str | None]:
    """(status, reason, error) of an agent whose container ended as `st`.

    OOM: Docker sets OOMKilled when any process of the container was killed for memory, also
    when only a child was and the main process then exited 0. So the flag alone is not trusted as
    "the agent died of OOM", and neither is it ignored: such an agent is `failed`/`oom_killed`
    with its real exit code (0) and an error that says a child was killed.

    gVisor: when the sandbox's own kernel (the Go "sentry") dies, runsc ends the container with the
    Go runtime's exit code 2 and no OOM flag. In this profile that is a resource death: a fork bomb
    hits the PIDs limit, the sentry cannot create the host stub process of the next address space
    ("panic: unable to activate mm: creating stub process: resource temporarily unavailable") and the
    whole sandbox goes. Such an agent is `failed`/`sandbox_died`, not an ordinary non-zero exit. The
    runtime's own "bad spec" exit is also 2; its reason is on stderr, which the log keeps.

    Engine outages: `row.engine_lost_at` is set when the engine went away while the agent ran, and
    cleared once its container is seen running again (live-restore). A container then found gone,
    or stopped by a signal (SIGTERM/SIGKILL: the engine stops its containers when it stops without
    live-restore), was ended by the outage, not by the agent: `failed`/`lost`, and `error` says so.

    A running container has not ended: the caller never classifies one (ValueError).
    """
    if st.state is ContainerState.RUNNING:
        raise ValueError("a running container has not ended")
    if row.stop_reason == "cancelled":
        return "cancelled", "cancelled", None
    if row.stop_reason == "ttl_expired":
        return "expired", "ttl_expired", f"TTL of {row.ttl_seconds}s ran out"
    if st.state is ContainerState.MISSING:
        if row.engine_lost_at is not None:
            return "failed", "lost", f"{ENGINE_LOST}; its container is gone"
        return "failed", "lost", "the agent's container disappeared"
    if row.engine_lost_at is not None and st.exit_code in KILLED_BY_ENGINE and not st.oom_killed:
        return (
            "failed",
            "lost",
            f"{ENGINE_LOST} and stopped its container (exit code {st.exit_code}; "
            "an engine with live-restore keeps agents running through a restart)",
        )
    if st.oom_killed:
        if st.exit_code == 0:
            return "failed", "oom_killed", "a process inside the agent was killed for memory (main process exited 0)"
        return "failed", "oom_killed", f"killed for memory (limit reached), exit code {st.exit_code}"
    if st.exit_code == 2 and st.runtime is not None and st.runtime.startswith("runsc"):
        return (
            "failed",
            "sandbox_died",
            "the gVisor sandbox died (runsc exit code 2): a resource limit was hit, most often the PIDs "
            "limit (too many processes); see the last lines of stderr",
        )
    if st.exit_code == 0:
        return "succeeded", "exit", None
    return "failed", "exit", f"exited with code {st.exit_code}"

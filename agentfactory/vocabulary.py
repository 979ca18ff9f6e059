"""The product's words, defined once: agent statuses, end reasons, error codes, output streams,
lifecycle event types and webhook delivery states.

Used by the wire models, the tables, the metrics, the gateway, the runtime and the client alike.
Pure: imports nothing of agentfactory, so the light client can use it too.
"""

from __future__ import annotations

import enum


class AgentStatus(enum.StrEnum):
    """(queued →) pending → starting → running → one terminal status (SPEC §3)."""

    QUEUED = "queued"
    PENDING = "pending"
    STARTING = "starting"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    CANCELLED = "cancelled"
    EXPIRED = "expired"


class Reason(enum.StrEnum):
    """Why a terminal agent ended."""

    EXIT = "exit"
    OOM_KILLED = "oom_killed"
    SANDBOX_DIED = "sandbox_died"
    TTL_EXPIRED = "ttl_expired"
    QUEUE_TIMEOUT = "queue_timeout"
    CANCELLED = "cancelled"
    LAUNCH_FAILED = "launch_failed"
    LOST = "lost"


class ErrorCode(enum.StrEnum):
    """The `error.code` of the error envelope (SPEC §3)."""

    E_SCHEMA = "E_SCHEMA"
    E_CATALOG = "E_CATALOG"
    E_AUTH = "E_AUTH"
    E_FORBIDDEN = "E_FORBIDDEN"
    E_NOT_FOUND = "E_NOT_FOUND"
    E_CONFLICT = "E_CONFLICT"
    E_QUOTA = "E_QUOTA"
    E_CAPACITY = "E_CAPACITY"
    E_RATE_LIMIT = "E_RATE_LIMIT"
    E_TOO_LARGE = "E_TOO_LARGE"
    E_RUNTIME = "E_RUNTIME"
    E_INTERNAL = "E_INTERNAL"


class EventType(enum.StrEnum):
    """Lifecycle events of the event log (SPEC §11)."""

    QUEUED = "agent.queued"
    STARTED = "agent.started"
    FINISHED = "agent.finished"
    ARTIFACTS_READY = "agent.artifacts_ready"


class DeliveryStatus(enum.StrEnum):
    """A webhook delivery: `pending` (not tried yet), `failed` (an attempt failed, a retry is
    scheduled), `succeeded`, `dead` (out of attempts; a manual retry sends it again)."""

    PENDING = "pending"
    FAILED = "failed"
    SUCCEEDED = "succeeded"
    DEAD = "dead"


TERMINAL: tuple[str, ...] = (
    AgentStatus.SUCCEEDED,
    AgentStatus.FAILED,
    AgentStatus.CANCELLED,
    AgentStatus.EXPIRED,
)
ACTIVE: tuple[str, ...] = (AgentStatus.PENDING, AgentStatus.STARTING, AgentStatus.RUNNING)
UNDELIVERED: tuple[str, ...] = (DeliveryStatus.PENDING, DeliveryStatus.FAILED)
STDOUT, STDERR = 1, 2
STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}

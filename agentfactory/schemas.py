"""Wire models: what goes over HTTP (SPEC §3). Requests refuse unknown fields."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from agentfactory.vocabulary import AgentStatus, DeliveryStatus, ErrorCode, EventType, Reason

ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]{0,127}$")
# The runtime's own variables: a request may not override them.
RESERVED_ENV = {
    "PATH", "HOME", "USER", "HOSTNAME", "PWD", "SHELL", "LD_PRELOAD", "LD_LIBRARY_PATH", "PYTHONPATH",
    "PYTHONHOME", "PYTHONSTARTUP", "PYTHONUNBUFFERED", "PYTHONDONTWRITEBYTECODE", "PYTHONSAFEPATH",
}  # fmt: skip
MAX_ENV_ITEMS = 64
MAX_ENV_VALUE = 8192
MAX_METADATA_ITEMS = 32
MAX_ARTIFACT_GLOBS = 32
# Times go over the wire as RFC 3339 strings with milliseconds and a Z ("2026-11-22T10:00:00.130Z").
Timestamp = Annotated[str, WithJsonSchema({"type": "string", "format": "date-time"})]


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _check_env(value: dict[str, str], what: str) -> dict[str, str]:
    if len(value) > MAX_ENV_ITEMS:
        raise ValueError(f"at most {MAX_ENV_ITEMS} {what} entries")
    for name, val in value.items():
        if not ENV_NAME.match(name):
            raise ValueError(f"{what} name {name!r} is not a valid environment variable name")
        if name.upper().startswith("AGENTFACTORY_") or name.upper() in RESERVED_ENV:
            raise ValueError(f"{what} name {name!r} is reserved by the runtime")
        if len(val) > MAX_ENV_VALUE or "\x00" in val:
            raise ValueError(f"{what} value of {name!r} is too long or contains NUL")
    return value


# The largest value an integer column holds on PostgreSQL (int4): a number above it is a 422 here,
# not a 500 from the database (SQLite would have stored it).
INT32_MAX = 2_147_483_647


class AgentCreate(BaseModel):
    # allow_inf_nan=False on every request body: Python's JSON reader takes NaN and Infinity, which
    # are not JSON; stored, they break the response (and PostgreSQL's json refuses them mid-INSERT).
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "model": "echo",
                    "tools": ["python"],
                    "prompt": "say hi",
                    "ttl_seconds": 120,
                    "env": {"FOO": "bar"},
                    "secrets": {"GH_TOKEN": "ghp_example"},
                    "metadata": {"ci_run": "1234"},
                    "token_budget": 20000,
                }
            ]
        },
    )

    model: str = Field(min_length=1, max_length=64)
    prompt: str = Field(min_length=1)
    tools: list[str] = Field(default_factory=list, max_length=32)
    ttl_seconds: int | None = Field(None, ge=1, le=INT32_MAX)
    env: dict[str, str] = Field(default_factory=dict)
    secrets: dict[str, str] = Field(default_factory=dict)
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict)
    token_budget: int | None = Field(None, ge=1, le=INT32_MAX)
    workspace: str | None = Field(
        None,
        pattern=r"^up_[A-Za-z0-9]{1,40}$",
        description="an upload's id (POST /uploads): unpacked into /scratch/workspace before the agent runs",
    )
    artifacts: list[str] = Field(
        default_factory=list,
        max_length=MAX_ARTIFACT_GLOBS,
        description="glob patterns relative to /scratch/workspace (`**` crosses directories): the matching "
        "files are collected when the agent ends, whatever ends it",
    )

    @field_validator("artifacts")
    @classmethod
    def _artifacts(cls, v: list[str]) -> list[str]:
        for glob in v:
            if not glob or len(glob) > 512 or glob.startswith("/") or "\x00" in glob or ".." in glob.split("/"):
                raise ValueError(f"artifact pattern {glob[:64]!r} must be a relative glob without '..' (1-512 chars)")
        return v

    queue_timeout_seconds: int = Field(
        0,
        ge=0,
        le=3600,
        description="when the key's or the cluster's limit is full: 0 refuses with 429 (E_QUOTA / E_CAPACITY); "
        "N > 0 queues the agent (status `queued`) for up to N seconds, then it ends expired/queue_timeout",
    )

    @field_validator("tools")
    @classmethod
    def _tools(cls, v: list[str]) -> list[str]:
        if len(set(v)) != len(v):
            raise ValueError("tools must not repeat")
        if any(len(t) > 64 for t in v):
            raise ValueError("tool ids are at most 64 characters")
        return v

    @field_validator("env")
    @classmethod
    def _env(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_env(v, "env")

    @field_validator("secrets")
    @classmethod
    def _secrets(cls, v: dict[str, str]) -> dict[str, str]:
        return _check_env(v, "secrets")

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > MAX_METADATA_ITEMS:
            raise ValueError(f"at most {MAX_METADATA_ITEMS} metadata entries")
        for k, val in v.items():
            if len(k) > 64 or (isinstance(val, str) and len(val) > 1024):
                raise ValueError("metadata keys are at most 64 and values 1024 characters")
        return v


class Links(BaseModel):
    self: str
    logs: str
    stream: str
    result: str
    dashboard: str = Field(description="the agent's page in the dashboard (GET /ui, SPEC §12)")


class AgentOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "ag_5x2kq7m3b9w4t6r8p1n0c2vd",
                    "status": "running",
                    "reason": None,
                    "model": "echo",
                    "tools": ["python"],
                    "created_at": "2026-11-22T10:00:00.000Z",
                    "started_at": "2026-11-22T10:00:00.130Z",
                    "finished_at": None,
                    "expires_at": "2026-11-22T10:02:00.130Z",
                    "ttl_seconds": 120,
                    "exit_code": None,
                    "error": None,
                    "metadata": {"ci_run": "1234"},
                    "token_budget": 20000,
                    "log_lines": None,
                    "log_bytes": None,
                    "log_sha256": None,
                    "links": {
                        "self": "/agents/ag_5x2kq7m3b9w4t6r8p1n0c2vd",
                        "logs": "/agents/ag_5x2kq7m3b9w4t6r8p1n0c2vd/logs",
                        "stream": "/agents/ag_5x2kq7m3b9w4t6r8p1n0c2vd/stream",
                        "result": "/agents/ag_5x2kq7m3b9w4t6r8p1n0c2vd/result",
                        "dashboard": "/ui/agents/ag_5x2kq7m3b9w4t6r8p1n0c2vd",
                    },
                }
            ]
        }
    )

    id: str
    status: AgentStatus
    reason: Reason | None
    model: str
    tools: list[str]
    created_at: Timestamp
    started_at: Timestamp | None
    finished_at: Timestamp | None
    expires_at: Timestamp | None
    ttl_seconds: int
    exit_code: int | None
    error: str | None
    metadata: dict[str, Any]
    token_budget: int
    log_lines: int | None = Field(None, description="seal: lines captured (terminal agents)")
    log_bytes: int | None = Field(None, description="seal: bytes captured, each line's UTF-8 text + 1")
    log_sha256: str | None = Field(None, description="seal: SHA-256 over each line's UTF-8 text + '\\n'")
    queue_position: int | None = Field(None, description="while queued: 1 = the next to get a slot")
    estimated_start_at: Timestamp | None = Field(
        None, description="while queued: when it should start, from the queue's recent pace (null: no estimate yet)"
    )
    links: Links


class AgentList(BaseModel):
    items: list[AgentOut]
    next_cursor: str | None


class LogLine(BaseModel):
    seq: int
    ts: Timestamp
    stream: Literal["stdout", "stderr"]
    text: str


class LogPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "lines": [{"seq": 1, "ts": "2026-11-22T10:00:00.140Z", "stream": "stdout", "text": "hi"}],
                    "next_cursor": "1",
                    "complete": True,
                }
            ]
        }
    )

    lines: list[LogLine]
    next_cursor: str | None
    complete: bool


class TtlUpdate(BaseModel):
    model_config = ConfigDict(
        extra="forbid", allow_inf_nan=False, json_schema_extra={"examples": [{"ttl_seconds": 600}]}
    )

    ttl_seconds: int = Field(ge=1, le=INT32_MAX)


class Timings(BaseModel):
    accepted_at: Timestamp
    dequeued_at: Timestamp | None = Field(
        None, description="a queued agent: when it left the queue for a slot (null: it never waited in the queue)"
    )
    started_at: Timestamp | None
    first_output_at: Timestamp | None
    finished_at: Timestamp | None
    launch_seconds: float | None
    run_seconds: float | None


class TokenUsage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    model_calls: int
    budget: int


class Seal(BaseModel):
    log_lines: int | None
    log_bytes: int | None
    log_sha256: str | None
    dropped_lines: int
    dropped_bytes: int
    capture_complete: bool = Field(
        True,
        description="false when some of the agent's output could not be captured (capture_error says why); "
        "the seal still covers exactly the stored lines",
    )
    capture_error: str | None = None


class UploadOut(BaseModel):
    id: str
    bytes: int
    sha256: str
    files: int
    expires_at: Timestamp


class ArtifactItem(BaseModel):
    path: str
    bytes: int
    sha256: str


class DroppedArtifact(BaseModel):
    path: str
    bytes: int


class ArtifactManifest(BaseModel):
    items: list[ArtifactItem]
    dropped: list[DroppedArtifact]
    complete: bool = Field(description="the agent is terminal and collection ended")


class AgentResult(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "ag_5x2kq7m3b9w4t6r8p1n0c2vd",
                    "status": "succeeded",
                    "reason": "exit",
                    "exit_code": 0,
                    "error": None,
                    "timings": {
                        "accepted_at": "2026-11-22T10:00:00.000Z",
                        "started_at": "2026-11-22T10:00:00.130Z",
                        "first_output_at": "2026-11-22T10:00:00.180Z",
                        "finished_at": "2026-11-22T10:00:00.400Z",
                        "launch_seconds": 0.13,
                        "run_seconds": 0.27,
                    },
                    "peak_memory_bytes": 12582912,
                    "cpu_seconds": 0.05,
                    "tokens": {
                        "prompt_tokens": 3,
                        "completion_tokens": 3,
                        "total_tokens": 6,
                        "model_calls": 1,
                        "budget": 20000,
                    },
                    "seal": {
                        "log_lines": 4,
                        "log_bytes": 210,
                        "log_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                        "dropped_lines": 0,
                        "dropped_bytes": 0,
                        "capture_complete": True,
                        "capture_error": None,
                    },
                }
            ]
        }
    )

    id: str
    status: AgentStatus
    reason: Reason | None
    exit_code: int | None
    error: str | None
    timings: Timings
    peak_memory_bytes: int | None
    cpu_seconds: float | None
    tokens: TokenUsage
    seal: Seal
    artifacts: ArtifactManifest | None = Field(None, description="the agent's artifacts, when it asked for any")


class KeyCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        allow_inf_nan=False,
        json_schema_extra={
            "examples": [
                {
                    "name": "ci-main",
                    "admin": False,
                    "models": [],
                    "tools": [],
                    "max_concurrent_agents": 10,
                    "max_requests_per_minute": 600,
                    "max_ttl_seconds": 3600,
                    "max_streams": 10,
                }
            ]
        },
    )

    name: str = Field(min_length=1, max_length=200)
    admin: bool = False
    models: list[str] = Field(default_factory=list, max_length=256)
    tools: list[str] = Field(default_factory=list, max_length=256)
    max_concurrent_agents: int = Field(10, ge=1, le=100_000)
    max_requests_per_minute: int = Field(600, ge=1, le=1_000_000)
    max_ttl_seconds: int = Field(3600, ge=1, le=INT32_MAX)
    max_streams: int = Field(
        10, ge=1, le=100_000, description="most concurrent log streams and MCP waits (per control-plane replica)"
    )


class KeyOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "key_3m9x2kq7b4w6t8r1",
                    "name": "ci-main",
                    "prefix": "af_3m9x2k",
                    "admin": False,
                    "models": [],
                    "tools": [],
                    "max_concurrent_agents": 10,
                    "max_requests_per_minute": 600,
                    "max_ttl_seconds": 3600,
                    "max_streams": 10,
                    "created_at": "2026-11-22T10:00:00.000Z",
                    "revoked_at": None,
                }
            ]
        }
    )

    id: str
    name: str
    prefix: str
    admin: bool
    models: list[str]
    tools: list[str]
    max_concurrent_agents: int
    max_requests_per_minute: int
    max_ttl_seconds: int
    max_streams: int
    created_at: Timestamp
    revoked_at: Timestamp | None


class KeyCreated(KeyOut):
    key: str = Field(description="the API key; shown this once, stored only as a hash")


class KeyList(BaseModel):
    items: list[KeyOut]


# --- events and webhooks (SPEC §11) ---------------------------------------------------------------


def event_json(*, event_id: int, event_type: str, created_at: float, agent: str) -> str:
    """An event's wire JSON, `{"type", "id", "created_at", "agent"}`, around the agent's stored
    JSON: the `data:` of `GET /events` and the body of a webhook delivery, byte for byte."""
    head = json.dumps({"type": event_type, "id": event_id, "created_at": iso(created_at)}, separators=(",", ":"))
    return head[:-1] + ',"agent":' + agent + "}"


class EventOut(BaseModel):
    """A lifecycle event: the `data:` of `GET /events` and the body of a webhook delivery."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "agent.finished",
                    "id": 42,
                    "created_at": "2026-11-22T10:00:03.500Z",
                    "agent": AgentOut.model_config["json_schema_extra"]["examples"][0],  # type: ignore[index]
                }
            ]
        }
    )

    type: EventType
    id: int = Field(description="monotonically increasing; the SSE `id:` and the webhook-id header")
    created_at: str
    agent: AgentOut


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": "https://ci.example.com/hooks/agentfactory",
                    "events": ["agent.finished"],
                    "metadata": {"ci": "main"},
                }
            ]
        },
    )

    url: str = Field(min_length=1, max_length=2048, description="http(s) URL the events are POSTed to")
    events: list[EventType] = Field(
        default_factory=lambda: list(EventType), min_length=1, description="event types to send (default: all)"
    )
    metadata: dict[str, str | int | float | bool | None] = Field(
        default_factory=dict, description="only agents whose metadata contains all these pairs"
    )

    @field_validator("events")
    @classmethod
    def _events(cls, v: list[EventType]) -> list[EventType]:
        if len(set(v)) != len(v):
            raise ValueError("events must not repeat")
        return v

    @field_validator("metadata")
    @classmethod
    def _metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        if len(v) > MAX_METADATA_ITEMS:
            raise ValueError(f"at most {MAX_METADATA_ITEMS} metadata entries")
        return v


class WebhookOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "wh_7k2m9x4b3q5w8t1r6p0n",
                    "url": "https://ci.example.com/hooks/agentfactory",
                    "events": ["agent.finished"],
                    "metadata": {"ci": "main"},
                    "all_keys": False,
                    "created_at": "2026-11-22T10:00:00.000Z",
                    "circuit": "closed",
                    "consecutive_failures": 0,
                }
            ]
        }
    )

    id: str
    url: str
    events: list[EventType]
    metadata: dict[str, Any]
    all_keys: bool = Field(description="made by an admin key: receives every key's events")
    created_at: str
    circuit: Literal["closed", "open", "half_open"]
    consecutive_failures: int


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_...: the signing secret; shown this once")


class WebhookList(BaseModel):
    items: list[WebhookOut]


class DeliveryAttempt(BaseModel):
    at: str
    duration_seconds: float
    status_code: int | None = Field(description="the HTTP status the endpoint answered, if it answered")
    error: str | None = Field(description="timeout, connection refused, a refused address...; null on an answer")


class DeliveryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": 17,
                    "webhook_id": "wh_7k2m9x4b3q5w8t1r6p0n",
                    "event_id": 42,
                    "event_type": "agent.finished",
                    "agent_id": "ag_5x2kq7m3b9w4t6r8p1n0c2vd",
                    "status": "failed",
                    "attempt_count": 1,
                    "next_attempt_at": "2026-11-22T10:00:09.100Z",
                    "created_at": "2026-11-22T10:00:03.510Z",
                    "finished_at": None,
                    "attempts": [
                        {"at": "2026-11-22T10:00:03.520Z", "duration_seconds": 0.012, "status_code": 500, "error": None}
                    ],
                }
            ]
        }
    )

    id: int
    webhook_id: str
    event_id: int
    event_type: EventType | None
    agent_id: str | None
    status: DeliveryStatus
    attempt_count: int
    next_attempt_at: str | None = Field(description="when the next attempt is due (pending and failed)")
    created_at: str
    finished_at: str | None
    attempts: list[DeliveryAttempt]


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None


class ErrorDetail(BaseModel):
    code: ErrorCode
    message: str
    details: list[Any] = []


class ErrorBody(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "error": {"code": "E_CATALOG", "message": "unknown model 'gpt-9'", "details": []},
                    "request_id": "req_7b2k9x",
                }
            ]
        }
    )

    error: ErrorDetail
    request_id: str


class WarmPool(BaseModel):
    idle: int
    target: int


class KeyCapacity(BaseModel):
    key_id: str
    running: int = Field(description="agents of this key holding a slot (pending, starting, running)")
    queued: int
    max_concurrent_agents: int | None


class CapacityOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"max_running": 10, "running": 10, "queued": 42, "warm": {"idle": 0, "target": 0}}]
        }
    )

    max_running: int = Field(description="agents the cluster runs at once (AGENTFACTORY_MAX_RUNNING_AGENTS)")
    running: int = Field(description="agents holding a slot: pending, starting and running")
    queued: int
    warm: WarmPool
    keys: list[KeyCapacity] | None = Field(None, description="admin only: per-key figures")


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] | None = Field(None, description="/ready only: each dependency's state")

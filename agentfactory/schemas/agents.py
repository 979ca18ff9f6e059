"""Wire models of an agent: the request that creates one (with its env, secrets, metadata, workspace
and artifact checks), the agent as the API shows it, lists and log pages."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, WithJsonSchema, field_validator

from agentfactory.vocabulary import AgentStatus, Reason

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
    warm: bool = Field(False, description="whether it started in a warm sandbox (SPEC §10) rather than cold")
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

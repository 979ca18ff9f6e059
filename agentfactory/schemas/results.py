"""Wire models of an agent's outcome: TTL updates, timings, token usage, the seal, uploads and the
artifacts' manifest, and the result document."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agentfactory.schemas.agents import INT32_MAX, Timestamp
from agentfactory.vocabulary import AgentStatus, Reason


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

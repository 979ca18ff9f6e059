"""Wire models of the error envelope, capacity (SPEC §10) and health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentfactory.vocabulary import ErrorCode


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

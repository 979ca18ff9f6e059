"""Wire models of the error envelope, capacity (SPEC §10) and health."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from agentfactory.schemas.agents import Timestamp
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


class ReplicaOut(BaseModel):
    id: str
    host: str
    pid: int
    url: str | None
    engine_id: str | None = Field(description="the container engine it runs agents on")
    started_at: Timestamp
    heartbeat_at: Timestamp = Field(description="its lease's last renewal, by the database's clock")
    agents: int = Field(description="active agents (pending, starting, running) it owns")
    warm: WarmPool | None = Field(description="its warm pool at its last heartbeat; null: it keeps none")
    current: bool = Field(description="the replica that answered this request")


class ReplicasOut(BaseModel):
    """Every live replica of the cluster (SPEC §13) and the cluster's capacity as a whole."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "replicas": [
                        {
                            "id": "cp-a-4121-9f02aa",
                            "host": "cp-a",
                            "pid": 4121,
                            "url": "http://0.0.0.0:8080",
                            "engine_id": "K7QX:3JRP",
                            "started_at": "2026-11-22T09:00:00.000Z",
                            "heartbeat_at": "2026-11-22T10:00:00.000Z",
                            "agents": 3,
                            "warm": {"idle": 2, "target": 2},
                            "current": True,
                        }
                    ],
                    "unowned_agents": 0,
                    "lease_seconds": 18.0,
                    "capacity": {"max_running": 10, "running": 3, "queued": 0, "warm": {"idle": 2, "target": 2}},
                }
            ]
        }
    )

    replicas: list[ReplicaOut] = Field(description="replicas whose lease is current, oldest first")
    unowned_agents: int = Field(description="active agents no live replica owns yet (adopted at the next pass)")
    lease_seconds: float = Field(description="a lease not renewed within this long is dead")
    capacity: CapacityOut = Field(description="the cluster's slots and queue; warm: every live replica's pool summed")


class Health(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"status": "ok"}]})

    status: Literal["ok", "unavailable"]
    checks: dict[str, str] | None = Field(None, description="/ready only: each dependency's state")

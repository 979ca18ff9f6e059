"""Wire models of events and webhooks (SPEC §11)."""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from agentfactory.schemas.agents import MAX_METADATA_ITEMS, AgentOut, Timestamp, iso
from agentfactory.vocabulary import DeliveryStatus, EventType


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
    created_at: Timestamp
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
    created_at: Timestamp
    circuit: Literal["closed", "open", "half_open"]
    consecutive_failures: int


class WebhookCreated(WebhookOut):
    secret: str = Field(description="whsec_...: the signing secret; shown this once")


class WebhookList(BaseModel):
    items: list[WebhookOut]


class DeliveryAttempt(BaseModel):
    at: Timestamp
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
    next_attempt_at: Timestamp | None = Field(description="when the next attempt is due (pending and failed)")
    created_at: Timestamp
    finished_at: Timestamp | None
    attempts: list[DeliveryAttempt]


class DeliveryList(BaseModel):
    items: list[DeliveryOut]
    next_cursor: str | None

"""Wire models of API keys: what creates one, how one is shown, the secret shown once."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from agentfactory.schemas.agents import INT32_MAX, Timestamp


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

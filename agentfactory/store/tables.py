"""Tables. Times are float seconds since the epoch (UTC): cheap to compare, the same on SQLite and PG."""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Float, Index, Integer, SmallInteger, String, Text, UniqueConstraint
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentfactory.vocabulary import ACTIVE, STDERR, STDOUT, TERMINAL

__all__ = ["ACTIVE", "STDERR", "STDOUT", "TERMINAL", "AgentRow", "ApiKeyRow", "Base", "LogChunkRow"]


class Base(DeclarativeBase):
    pass


class AgentRow(Base):
    __tablename__ = "agents"

    pk: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(String(40), unique=True)
    key_id: Mapped[str] = mapped_column(String(40))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(String(32))
    error: Mapped[str | None] = mapped_column(Text)
    stop_reason: Mapped[str | None] = mapped_column(String(32))
    model: Mapped[str] = mapped_column(String(64))
    tools: Mapped[list[str]] = mapped_column(JSON)
    prompt: Mapped[str] = mapped_column(Text)
    env: Mapped[dict[str, str]] = mapped_column(JSON)
    secrets: Mapped[dict[str, str]] = mapped_column(JSON)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    ttl_seconds: Mapped[int] = mapped_column(Integer)
    token_budget: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)
    started_at: Mapped[float | None] = mapped_column(Float)
    first_output_at: Mapped[float | None] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    exit_code: Mapped[int | None] = mapped_column(Integer)
    container_id: Mapped[str | None] = mapped_column(String(80))
    gateway_token_hash: Mapped[str | None] = mapped_column(String(64), index=True)
    tokens_prompt: Mapped[int] = mapped_column(Integer, default=0)
    tokens_completion: Mapped[int] = mapped_column(Integer, default=0)
    model_calls: Mapped[int] = mapped_column(Integer, default=0)
    log_lines: Mapped[int] = mapped_column(Integer, default=0)
    log_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    log_sha256: Mapped[str | None] = mapped_column(String(64))
    log_dropped_lines: Mapped[int] = mapped_column(Integer, default=0)
    log_dropped_bytes: Mapped[int] = mapped_column(BigInteger, default=0)
    capture_error: Mapped[str | None] = mapped_column(Text)  # why some output could not be stored
    stdout_consumed: Mapped[int] = mapped_column(Integer, default=0)
    stderr_consumed: Mapped[int] = mapped_column(Integer, default=0)
    peak_memory_bytes: Mapped[int | None] = mapped_column(BigInteger)
    cpu_seconds: Mapped[float | None] = mapped_column(Float)
    idempotency_key: Mapped[str | None] = mapped_column(String(200))
    request_hash: Mapped[str | None] = mapped_column(String(64))

    __table_args__ = (
        UniqueConstraint("key_id", "idempotency_key", name="uq_agents_idempotency"),
        Index("ix_agents_key_status", "key_id", "status"),
        Index("ix_agents_status_expires", "status", "expires_at"),
    )


class LogChunkRow(Base):
    """Consecutive lines of one stream captured in one read: seqs first_seq..last_seq, their
    texts joined by "\n" (a line never holds one). One row per read, not per line, is what lets
    capture keep up with a flood."""

    __tablename__ = "log_chunks"

    agent_pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    last_seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    first_seq: Mapped[int] = mapped_column(Integer)
    ts: Mapped[float] = mapped_column(Float)
    stream: Mapped[int] = mapped_column(SmallInteger)
    text: Mapped[str] = mapped_column(Text)


class ApiKeyRow(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    admin: Mapped[bool] = mapped_column(default=False)
    models: Mapped[list[str]] = mapped_column(JSON)
    tools: Mapped[list[str]] = mapped_column(JSON)
    max_concurrent_agents: Mapped[int] = mapped_column(Integer)
    max_requests_per_minute: Mapped[int] = mapped_column(Integer)
    max_ttl_seconds: Mapped[int] = mapped_column(Integer)
    max_streams: Mapped[int] = mapped_column(Integer, default=10)
    created_at: Mapped[float] = mapped_column(Float)
    revoked_at: Mapped[float | None] = mapped_column(Float)
    lock_version: Mapped[int] = mapped_column(Integer, default=0)

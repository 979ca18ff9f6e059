"""Tables. Times are float seconds since the epoch (UTC): cheap to compare, the same on SQLite and PG."""

from __future__ import annotations

from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Float,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Text,
    UniqueConstraint,
    false,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from agentfactory.vocabulary import ACTIVE, STDERR, STDOUT, TERMINAL

__all__ = [
    "ACTIVE",
    "STDERR",
    "STDOUT",
    "TERMINAL",
    "AgentFilesRow",
    "AgentRow",
    "ApiKeyRow",
    "ArtifactRow",
    "Base",
    "CursorRow",
    "DeliveryAttemptRow",
    "DeliveryRow",
    "EventRow",
    "LogChunkRow",
    "QuotaRejectionRow",
    "RateBucketRow",
    "ReplicaRow",
    "UiSessionRow",
    "UploadRow",
    "WebhookRow",
]
# 64-bit ids on PostgreSQL; SQLite's rowid alias must be spelled INTEGER.
Id64 = BigInteger().with_variant(Integer(), "sqlite")


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
    # Tokens held by the agent's model calls in flight (SPEC §14): used + reserved never exceeds the budget.
    tokens_reserved: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
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
    # High availability (SPEC §13): the replica that watches it, the engine its container is on,
    # and when that engine was last found unreachable while it ran (None once seen running again).
    owner: Mapped[str | None] = mapped_column(String(80), index=True)
    engine_id: Mapped[str | None] = mapped_column(String(200))
    engine_lost_at: Mapped[float | None] = mapped_column(Float)
    # The queue (SPEC §10): the agent's round-robin round while queued (its order is (round, pk)),
    # its queue deadline, and when it left the queue for a slot. All null for an agent never queued
    # (but the deadline, set for any agent that asked to wait: it may go back to the queue when the
    # cluster cannot place it, `queue_retry_at` then saying when it is tried again).
    queue_round: Mapped[int | None] = mapped_column(Integer)
    queue_deadline: Mapped[float | None] = mapped_column(Float)
    dequeued_at: Mapped[float | None] = mapped_column(Float)
    queue_retry_at: Mapped[float | None] = mapped_column(Float)
    # Whether it started in a warm sandbox (SPEC §10).
    warm: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())

    __table_args__ = (
        UniqueConstraint("key_id", "idempotency_key", name="uq_agents_idempotency"),
        Index("ix_agents_key_status", "key_id", "status"),
        Index("ix_agents_key_pk", "key_id", "pk"),  # a key's agents newest first (the dashboard's list)
        Index("ix_agents_status_expires", "status", "expires_at"),
        Index("ix_agents_status_queue", "status", "queue_round", "pk"),
        Index("ix_agents_finished_at", "finished_at"),
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


class ReplicaRow(Base):
    """One control-plane process's lease: alive while `heartbeat_at` (the database's clock) is
    recent. `host` and `pid` let a replica on the same machine see at once that one is dead."""

    __tablename__ = "replicas"

    id: Mapped[str] = mapped_column(String(80), primary_key=True)
    host: Mapped[str] = mapped_column(String(255))
    pid: Mapped[int] = mapped_column(Integer)
    url: Mapped[str | None] = mapped_column(String(255))
    engine_id: Mapped[str | None] = mapped_column(String(200))
    started_at: Mapped[float] = mapped_column(Float)
    heartbeat_at: Mapped[float] = mapped_column(Float)
    # Its warm pool at its last heartbeat (the dashboard sums them for the cluster); NULL: none.
    warm_idle: Mapped[int | None] = mapped_column(Integer)
    warm_target: Mapped[int | None] = mapped_column(Integer)


class RateBucketRow(Base):
    """A key's request token bucket, shared by every replica (PostgreSQL): tokens left at `updated_at`."""

    __tablename__ = "rate_buckets"

    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    tokens: Mapped[float] = mapped_column(Float)
    updated_at: Mapped[float] = mapped_column(Float)


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


class EventRow(Base):
    """The event log (the outbox): one row per lifecycle event, written in the transaction of the
    status change that causes it. `id` only grows (SQLite AUTOINCREMENT: never reused after a
    purge), so it is the resume position of `GET /events` and the `webhook-id` of deliveries.
    `agent` is the agent's wire document (JSON) as it was at the event."""

    __tablename__ = "events"

    id: Mapped[int] = mapped_column(Id64, primary_key=True, autoincrement=True)
    type: Mapped[str] = mapped_column(String(32))
    agent_id: Mapped[str] = mapped_column(String(40))
    key_id: Mapped[str] = mapped_column(String(40))
    created_at: Mapped[float] = mapped_column(Float, index=True)
    agent: Mapped[str] = mapped_column(Text)

    __table_args__ = (
        Index("ix_events_key_id", "key_id", "id"),
        Index("ix_events_agent_id", "agent_id", "id"),
        {"sqlite_autoincrement": True},
    )


class WebhookRow(Base):
    """A webhook endpoint of one key. `all_keys` (made by an admin key) receives every key's
    events. It receives events with id > `after_event_id` (the log's end when it was created).
    The circuit: `consecutive_failures` attempts failed in a row; at the threshold nothing is
    sent until `circuit_open_until`, then one probe. `lease_until`/`lease_token`: the one
    delivery worker (of any replica) currently sending to it."""

    __tablename__ = "webhooks"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), index=True)
    all_keys: Mapped[bool] = mapped_column(Boolean, default=False)
    url: Mapped[str] = mapped_column(Text)
    events: Mapped[list[str]] = mapped_column(JSON)
    meta: Mapped[dict[str, Any]] = mapped_column("metadata", JSON)
    secret: Mapped[str] = mapped_column(String(80))
    created_at: Mapped[float] = mapped_column(Float)
    after_event_id: Mapped[int] = mapped_column(BigInteger, default=0)
    consecutive_failures: Mapped[int] = mapped_column(Integer, default=0)
    circuit_open_until: Mapped[float | None] = mapped_column(Float)
    lease_until: Mapped[float | None] = mapped_column(Float)
    lease_token: Mapped[str | None] = mapped_column(String(40))


class DeliveryRow(Base):
    """One event to one webhook. `retry_index`: failed attempts counted against the retry
    schedule (a manual retry of a dead delivery sets it to the schedule's end: one more try)."""

    __tablename__ = "webhook_deliveries"

    id: Mapped[int] = mapped_column(Id64, primary_key=True, autoincrement=True)
    webhook_id: Mapped[str] = mapped_column(String(40))
    event_id: Mapped[int] = mapped_column(BigInteger)
    status: Mapped[str] = mapped_column(String(16))
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    retry_index: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[float] = mapped_column(Float)
    created_at: Mapped[float] = mapped_column(Float)
    finished_at: Mapped[float | None] = mapped_column(Float)

    __table_args__ = (
        UniqueConstraint("webhook_id", "event_id", name="uq_deliveries_webhook_event"),
        Index("ix_deliveries_due", "status", "next_attempt_at"),
        Index("ix_deliveries_webhook", "webhook_id", "status", "id"),
        Index("ix_deliveries_event", "event_id"),
    )


class DeliveryAttemptRow(Base):
    """One HTTP attempt of a delivery: when, how long, the status code or the error."""

    __tablename__ = "webhook_attempts"

    id: Mapped[int] = mapped_column(Id64, primary_key=True, autoincrement=True)
    delivery_id: Mapped[int] = mapped_column(BigInteger, index=True)
    at: Mapped[float] = mapped_column(Float)
    duration: Mapped[float] = mapped_column(Float)
    http_status: Mapped[int | None] = mapped_column(Integer)
    error: Mapped[str | None] = mapped_column(String(200))


class CursorRow(Base):
    """Named positions in the event log (`webhooks`: the last event the dispatcher fanned out)."""

    __tablename__ = "cursors"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


class ServerKeyRow(Base):
    """The control plane's own secret keys (hex), made once at first start and shared by every
    replica: what is derived from them (agents' gateway tokens, request fingerprints) is the same
    wherever and whenever it is computed."""

    __tablename__ = "server_keys"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    secret: Mapped[str] = mapped_column(String(128))
    created_at: Mapped[float] = mapped_column(Float)


class UploadRow(Base):
    """A checked workspace archive (SPEC §9), owned by a key; its bytes live in the blob store under
    `uploads/<id>`. Purged at `expires_at` unless an agent used it (`used_at`)."""

    __tablename__ = "uploads"

    id: Mapped[str] = mapped_column(String(40), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), index=True)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
    files: Mapped[int] = mapped_column(Integer)
    unpacked_bytes: Mapped[int] = mapped_column(BigInteger)
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float, index=True)
    used_at: Mapped[float | None] = mapped_column(Float)


class AgentFilesRow(Base):
    """What an agent was given (`workspace`, an upload id) and asked to hand back (`artifacts`, globs);
    `collected`: the artifacts were received (or the agent ended without sending any)."""

    __tablename__ = "agent_files"

    agent_pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    workspace: Mapped[str | None] = mapped_column(String(40))
    artifacts: Mapped[list[str]] = mapped_column(JSON)
    collected: Mapped[bool] = mapped_column(Boolean, default=False)


class ArtifactRow(Base):
    """One collected file of an agent (bytes in the blob store under `artifacts/<agent_pk>/<seq>`),
    or one left out for the size bound (`dropped`: no blob, no sha256)."""

    __tablename__ = "artifacts"

    agent_pk: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(Integer, primary_key=True)
    path: Mapped[str] = mapped_column(Text)
    bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str | None] = mapped_column(String(64))
    dropped: Mapped[bool] = mapped_column(Boolean, default=False)


class BlobRow(Base):
    """A blob of the database blob store (AGENTFACTORY_FILES_STORE=db, SPEC §9): its key ("uploads/up_x",
    "artifacts/12/3") and size; its bytes are `blob_chunks` rows of `chunk_bytes` each (the last one
    shorter), written in the same transaction as this row."""

    __tablename__ = "blobs"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    size: Mapped[int] = mapped_column(BigInteger)
    chunk_bytes: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[float] = mapped_column(Float)


class BlobChunkRow(Base):
    """The `n`th chunk of a blob's bytes."""

    __tablename__ = "blob_chunks"

    key: Mapped[str] = mapped_column(String(255), primary_key=True)
    n: Mapped[int] = mapped_column(Integer, primary_key=True)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class UiSessionRow(Base):
    """A dashboard sign-in (SPEC §12): the browser holds only the random session token, stored here
    as its SHA-256; the API key it was opened with is never kept, only the key's id."""

    __tablename__ = "ui_sessions"

    token_hash: Mapped[str] = mapped_column(String(64), primary_key=True)
    key_id: Mapped[str] = mapped_column(String(40), index=True)
    csrf: Mapped[str] = mapped_column(String(64))
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)


class QuotaRejectionRow(Base):
    """Requests of a key refused by a quota (SPEC §10, §12), per hour and reason: every replica adds
    its own counts, tallied in memory and added every few seconds (never a write per refusal)."""

    __tablename__ = "quota_rejections"

    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)  # the hour's start, epoch seconds
    key_id: Mapped[str] = mapped_column(String(40), primary_key=True)
    reason: Mapped[str] = mapped_column(String(20), primary_key=True)
    refused: Mapped[int] = mapped_column(BigInteger)

"""Rows to wire models: the one place a stored agent, key or line becomes what a door sends."""

from __future__ import annotations

from collections.abc import Sequence

from agentfactory.schemas import (
    AgentOut,
    AgentResult,
    ArtifactItem,
    ArtifactManifest,
    DeliveryAttempt,
    DeliveryOut,
    DroppedArtifact,
    KeyOut,
    Links,
    LogLine,
    Seal,
    Timings,
    TokenUsage,
    WebhookOut,
    iso,
)
from agentfactory.store.tables import (
    TERMINAL,
    AgentRow,
    ApiKeyRow,
    ArtifactRow,
    DeliveryAttemptRow,
    DeliveryRow,
    WebhookRow,
)
from agentfactory.vocabulary import STREAM_NAMES, UNDELIVERED

StoredLine = tuple[int, float, int, str]  # seq, ts, stream, text


class Timestamps:
    """ISO capture times; lines of one read share a time, so the last conversion is cached."""

    def __init__(self) -> None:
        self._last: tuple[float, str] = (-1.0, "")

    def __call__(self, ts: float) -> str:
        if ts != self._last[0]:
            self._last = (ts, iso(ts) or "")
        return self._last[1]


def log_lines(rows: list[StoredLine]) -> list[LogLine]:
    ts = Timestamps()
    return [LogLine(seq=seq, ts=ts(t), stream=STREAM_NAMES[s], text=text) for seq, t, s, text in rows]


def agent_out(row: AgentRow, *, queue_position: int | None = None, estimated_start_at: float | None = None) -> AgentOut:
    """The agent document; a queued agent's position and estimated start come from the queue."""
    base = f"/agents/{row.id}"
    sealed = row.status in TERMINAL
    return AgentOut(
        id=row.id,
        status=row.status,
        reason=row.reason,
        model=row.model,
        tools=list(row.tools),
        created_at=iso(row.created_at) or "",
        started_at=iso(row.started_at),
        finished_at=iso(row.finished_at),
        # The TTL counts from the start (SPEC §10): an agent not started yet (queued, pending) or that
        # never started has no expiry to show.
        expires_at=iso(row.expires_at) if row.started_at is not None else None,
        ttl_seconds=row.ttl_seconds,
        exit_code=row.exit_code,
        error=row.error,
        metadata=dict(row.meta),
        token_budget=row.token_budget,
        log_lines=row.log_lines if sealed else None,
        log_bytes=row.log_bytes if sealed else None,
        log_sha256=row.log_sha256 if sealed else None,
        queue_position=queue_position,
        estimated_start_at=iso(estimated_start_at),
        warm=bool(row.warm),
        links=Links(
            self=base,
            logs=f"{base}/logs",
            stream=f"{base}/stream",
            result=f"{base}/result",
            dashboard=f"/ui/agents/{row.id}",
        ),
    )


def agent_json(row: AgentRow) -> str:
    """The agent's wire document as JSON: what the event log stores with each event."""
    return agent_out(row).model_dump_json()


def manifest_of(row: AgentRow, artifacts: Sequence[ArtifactRow]) -> ArtifactManifest:
    """An agent's artifacts (SPEC §9): kept files, dropped ones, and whether collection is over."""
    return ArtifactManifest(
        items=[ArtifactItem(path=a.path, bytes=a.bytes, sha256=a.sha256 or "") for a in artifacts if not a.dropped],
        dropped=[DroppedArtifact(path=a.path, bytes=a.bytes) for a in artifacts if a.dropped],
        complete=row.status in TERMINAL,
    )


def agent_result(row: AgentRow) -> AgentResult:
    sealed = row.status in TERMINAL
    launch = row.started_at - (row.dequeued_at or row.created_at) if row.started_at else None
    run = (row.finished_at - row.started_at) if row.finished_at and row.started_at else None
    return AgentResult(
        id=row.id,
        status=row.status,
        reason=row.reason,
        exit_code=row.exit_code,
        error=row.error,
        timings=Timings(
            accepted_at=iso(row.created_at) or "",
            dequeued_at=iso(row.dequeued_at),
            started_at=iso(row.started_at),
            first_output_at=iso(row.first_output_at),
            finished_at=iso(row.finished_at),
            launch_seconds=round(launch, 4) if launch is not None else None,
            run_seconds=round(run, 4) if run is not None else None,
        ),
        peak_memory_bytes=row.peak_memory_bytes,
        cpu_seconds=row.cpu_seconds,
        tokens=TokenUsage(
            prompt_tokens=row.tokens_prompt,
            completion_tokens=row.tokens_completion,
            total_tokens=row.tokens_prompt + row.tokens_completion,
            model_calls=row.model_calls,
            budget=row.token_budget,
        ),
        seal=Seal(
            log_lines=row.log_lines if sealed else None,
            log_bytes=row.log_bytes if sealed else None,
            log_sha256=row.log_sha256 if sealed else None,
            dropped_lines=row.log_dropped_lines,
            dropped_bytes=row.log_dropped_bytes,
            capture_complete=row.capture_error is None,
            capture_error=row.capture_error,
        ),
    )


def key_out(row: ApiKeyRow) -> KeyOut:
    return KeyOut(
        id=row.id,
        name=row.name,
        prefix=row.prefix,
        admin=row.admin,
        models=list(row.models),
        tools=list(row.tools),
        max_concurrent_agents=row.max_concurrent_agents,
        max_requests_per_minute=row.max_requests_per_minute,
        max_ttl_seconds=row.max_ttl_seconds,
        max_streams=row.max_streams,
        created_at=iso(row.created_at) or "",
        revoked_at=iso(row.revoked_at),
    )


def webhook_out(row: WebhookRow, *, circuit_failures: int, now: float) -> WebhookOut:
    """The webhook without its secret; `circuit` from its failures in a row and cool-down."""
    if row.consecutive_failures < circuit_failures:
        circuit = "closed"
    elif row.circuit_open_until is not None and row.circuit_open_until > now:
        circuit = "open"
    else:
        circuit = "half_open"
    return WebhookOut(
        id=row.id,
        url=row.url,
        events=list(row.events),
        metadata=dict(row.meta),
        all_keys=row.all_keys,
        created_at=iso(row.created_at) or "",
        circuit=circuit,
        consecutive_failures=row.consecutive_failures,
    )


def delivery_out(
    row: DeliveryRow, event_type: str | None, agent_id: str | None, attempts: list[DeliveryAttemptRow]
) -> DeliveryOut:
    return DeliveryOut(
        id=row.id,
        webhook_id=row.webhook_id,
        event_id=row.event_id,
        event_type=event_type,
        agent_id=agent_id,
        status=row.status,
        attempt_count=row.attempts,
        next_attempt_at=iso(row.next_attempt_at) if row.status in UNDELIVERED else None,
        created_at=iso(row.created_at) or "",
        finished_at=iso(row.finished_at),
        attempts=[
            DeliveryAttempt(
                at=iso(a.at) or "", duration_seconds=round(a.duration, 4), status_code=a.http_status, error=a.error
            )
            for a in attempts
        ],
    )

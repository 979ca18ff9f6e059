"""Every Prometheus metric of the control plane, in one registry owned by the app (SPEC §5).

Names are `agentfactory_<noun>_<verb>_<unit>`; label values are created up front so that a failure
series exists (at 0) before the first failure. No label ever carries an agent id, a key or a prompt.
"""

from __future__ import annotations

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    GCCollector,
    Histogram,
    PlatformCollector,
    ProcessCollector,
    generate_latest,
)

from agentfactory import __version__
from agentfactory.observability.rejections import RejectionTally
from agentfactory.vocabulary import TERMINAL, Reason

STATUSES = TERMINAL
REASONS = tuple(Reason)
QUOTA_REASONS = ("concurrency", "capacity", "rate", "body_size", "streams", "budget")
TOKEN_KINDS = ("prompt", "completion")
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
# An attempt's outcome: a 2xx; a failure with a retry scheduled; a failure out of retries.
WEBHOOK_OUTCOMES = ("succeeded", "failed", "dead")


class Metrics:
    """The registry and its metrics; one instance per app (tests build their own)."""

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = "agentfactory_"
        # The client library's standard collectors: process_* (CPU, memory, fds, start time),
        # python_info, python_gc_*; registered on this registry, not the global default one.
        ProcessCollector(registry=r)
        PlatformCollector(registry=r)
        GCCollector(registry=r)
        self.build_info = Gauge(p + "build_info", "The running version (always 1)", ["version"], registry=r)
        self.build_info.labels(version=__version__).set(1)
        self.agents_created = Counter(p + "agents_created_total", "Agents accepted", ["model"], registry=r)
        self.agents_finished = Counter(
            p + "agents_finished_total", "Agents that reached a terminal status", ["status"], registry=r
        )
        self.agents_finished_reason = Counter(
            p + "agents_finished_by_reason_total", "Terminal agents by reason", ["reason"], registry=r
        )
        self.agents_running = Gauge(p + "agents_running", "Agents whose container is running", registry=r)
        self.agents_queued = Gauge(p + "agents_queued", "Agents waiting in the queue for a slot", registry=r)
        self.max_running_agents = Gauge(
            p + "max_running_agents", "Agents the cluster may run at once (its capacity)", registry=r
        )
        self.pool_sandboxes = Gauge(
            p + "pool_sandboxes",
            "Warm sandboxes of this process, by state (idle: ready to claim)",
            ["state"],
            registry=r,
        )
        self.pool_claims = Counter(
            p + "pool_claims_total",
            "Launches that got a warm sandbox (hit) or started cold (miss)",
            ["outcome"],
            registry=r,
        )
        for state in ("idle", "starting"):
            self.pool_sandboxes.labels(state=state)
        for outcome in ("hit", "miss"):
            self.pool_claims.labels(outcome=outcome)
        self.queue_wait = Histogram(
            p + "queue_wait_seconds",
            "Time a queued agent waited for its slot (queued to dispatched)",
            buckets=(0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600),
            registry=r,
        )
        self.agents_oom_killed = Counter(p + "agents_oom_killed_total", "Agents killed for memory", registry=r)
        self.launch_duration = Histogram(
            p + "launch_duration_seconds",
            "Request accepted to container running",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.reaper_expired = Counter(p + "reaper_expired_total", "Agents the reaper expired", registry=r)
        self.reaper_passes = Counter(p + "reaper_passes_total", "Reaper passes completed", registry=r)
        self.reaper_last_pass = Gauge(
            p + "reaper_last_pass_timestamp_seconds", "When the reaper last finished a pass", registry=r
        )
        self.orphans_reaped = Counter(
            p + "orphans_reaped_total", "Labelled containers removed because no agent owns them", registry=r
        )
        self.agents_purged = Counter(p + "agents_purged_total", "Agents removed by retention", registry=r)
        # Files in and out (SPEC §9).
        self.upload_bytes = Counter(p + "upload_bytes_total", "Bytes of workspace archives kept", registry=r)
        self.artifact_bytes = Counter(p + "artifact_bytes_total", "Bytes of artifacts collected", registry=r)
        self.artifacts_dropped = Counter(
            p + "artifacts_dropped_total", "Artifact files left out for the size bound", registry=r
        )
        self.log_lines = Counter(p + "log_lines_total", "Log lines captured", registry=r)
        self.log_bytes = Counter(p + "log_bytes_total", "Log bytes captured", registry=r)
        self.log_bytes_dropped = Counter(
            p + "log_bytes_dropped_total", "Log bytes dropped past max_log_bytes", registry=r
        )
        self.log_write_failures = Counter(
            p + "log_write_failures_total", "Failed commits of captured lines (each is retried)", registry=r
        )
        self.log_queue_bytes = Gauge(
            p + "log_queue_bytes", "Captured bytes read from agents and waiting for the log writer", registry=r
        )
        self.stream_clients = Gauge(p + "stream_clients", "Open SSE stream clients", registry=r)
        self.stream_leases = Gauge(
            p + "stream_leases", "Streams and waits held against their keys' max_streams", registry=r
        )
        self.http_requests = Counter(
            p + "http_requests_total", "HTTP requests", ["method", "route", "code"], registry=r
        )
        self.http_request_duration = Histogram(
            p + "http_request_duration_seconds",
            "HTTP request duration",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.quota_rejections = Counter(
            p + "quota_rejections_total", "Requests refused by a quota", ["reason"], registry=r
        )
        self.rejections_by_key = RejectionTally()  # the same refusals per key, for the dashboard
        self.gateway_tokens = Counter(
            p + "gateway_tokens_total", "Model tokens through the gateway", ["model", "kind"], registry=r
        )
        self.gateway_request_duration = Histogram(
            p + "gateway_request_duration_seconds",
            "Model gateway call duration",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.gateway_requests = Counter(
            p + "gateway_requests_total", "Model gateway calls", ["model", "outcome"], registry=r
        )
        self.replicas_live = Gauge(
            p + "replicas_live", "Replicas whose lease is current, as this replica sees them", registry=r
        )
        self.agents_adopted = Counter(
            p + "agents_adopted_total", "Agents this replica adopted from a replica that died or stopped", registry=r
        )
        self.gateway_connections = Gauge(
            p + "gateway_connections", "Open connections to the model gateway's socket", registry=r
        )
        self.gateway_connections_refused = Counter(
            p + "gateway_connections_refused_total",
            "Gateway connections closed unserved: over the connection cap, or evicted to make room",
            registry=r,
        )
        self.gateway_relay_connections = Counter(
            p + "gateway_relay_connections_total",
            "Connections the node relays opened to the gateway's relay door: accepted (piped to the gateway) "
            "or refused (no relay secret)",
            ["outcome"],
            registry=r,
        )
        for outcome in ("accepted", "refused"):
            self.gateway_relay_connections.labels(outcome)
        self.webhook_deliveries = Counter(
            p + "webhook_deliveries_total", "Webhook delivery attempts by outcome", ["outcome"], registry=r
        )
        self.webhook_delivery_duration = Histogram(
            p + "webhook_delivery_duration_seconds",
            "Duration of one webhook delivery attempt (address check, request, answer)",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.webhook_circuits_open = Gauge(
            p + "webhook_circuits_open", "Webhooks whose circuit breaker is open or half-open", registry=r
        )
        self.webhook_circuits_opened = Counter(
            p + "webhook_circuits_opened_total", "Times a webhook's circuit breaker opened", registry=r
        )
        self.webhook_dead_letters = Gauge(
            p + "webhook_dead_letters", "Webhook deliveries out of attempts (dead), kept for a manual retry", registry=r
        )
        for o in WEBHOOK_OUTCOMES:
            self.webhook_deliveries.labels(outcome=o)
        for s in STATUSES:
            self.agents_finished.labels(status=s)
        for reason in REASONS:
            self.agents_finished_reason.labels(reason=reason)
        for q in QUOTA_REASONS:
            self.quota_rejections.labels(reason=q)

    def quota_rejected(self, reason: str, key_id: str | None) -> None:
        """A request refused by a quota: counted by reason here, and per key (when known) for the store."""
        self.quota_rejections.labels(reason=reason).inc()
        if key_id is not None:
            self.rejections_by_key.note(key_id, reason)

    def gateway_refused(self, model: str, outcome: str, key_id: str | None) -> None:
        """A model gateway call refused; one over its agent's token budget is a quota refusal too."""
        self.gateway_requests.labels(model, outcome).inc()
        if outcome == "budget":
            self.quota_rejected("budget", key_id)

    def prepare_models(self, model_ids: list[str]) -> None:
        """Create the per-model series of the catalog's models at 0."""
        for m in model_ids:
            self.agents_created.labels(model=m)
            for kind in TOKEN_KINDS:
                self.gateway_tokens.labels(model=m, kind=kind)

    def render(self) -> bytes:
        return generate_latest(self.registry)

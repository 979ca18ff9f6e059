"""Typed configuration from `AGENTFACTORY_*` environment variables (SPEC §8).

Built by the caller (`Settings()` in the CLI, explicit values in tests); nothing reads it at import time.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="AGENTFACTORY_", extra="ignore")

    database_url: str = Field(
        "sqlite:///./agentfactory.db", description="SQLAlchemy URL: a SQLite file, or postgresql+psycopg://..."
    )
    catalog: Path = Field(Path("catalog.json"), description="path of the JSON catalog of models and tools")
    admin_key: str | None = Field(
        None, description="bootstrap admin API key (accepted as an admin key; at least 24 characters)"
    )
    host: str = Field("127.0.0.1", description="address the HTTP server binds")
    port: int = Field(8000, description="port the HTTP server binds")
    retention_days: float = Field(30, description="finished agents and their logs are purged after this")
    reaper_interval_seconds: float = Field(2.0, description="seconds between reaper passes")
    db_threads: int = Field(32, ge=2, description="threads that run store queries off the event loop")
    usage_interval_seconds: float = Field(5.0, description="seconds between samples of agents' memory and CPU")
    backend: Literal["docker", "swarm"] = Field("docker", description="where agents run")
    runtime_image: str = Field("agentfactory-runtime:latest", description="image every agent runs in")
    container_runtime: str | None = Field(
        None, description="OCI runtime for agents (e.g. runsc for gVisor); the catalog may override it"
    )
    gateway_socket_dir: Path = Field(
        Path("/run/agentfactory/gateway"),
        description="host directory holding the model gateway's Unix socket, mounted read-only into agents",
    )
    agent_network: str = Field(
        "agentfactory-agents", description="isolated bridge network for agents whose tools need a network"
    )
    agent_dns: list[str] = Field(
        ["8.8.8.8", "1.1.1.1"],
        description="public DNS resolvers of agents with a network (the host's own resolver is a host or private "
        "address, which their egress policy blocks); [] leaves the engine's default",
    )
    start_deadline_seconds: float = Field(60, description="an agent still starting after this is failed")
    swarm_placement_seconds: float = Field(
        10,
        gt=0,
        description="swarm backend: how long a launch waits for Swarm to place the task (constraints no node "
        "meets, resources no node has); then an agent with queue_timeout_seconds goes back to the queue and is "
        "tried again after as long, one without fails with Swarm's reason",
    )
    swarm_relay: bool = Field(
        False,
        description="swarm backend: agents reach the model gateway through a relay on their node (a global service "
        "of the runtime image, through a TLS door of the gateway with a secret of its own), so they may run on any "
        "node; off, the nodes' gateway directory is the control plane's own socket (one node)",
    )
    swarm_relay_listen: str = Field(
        "0.0.0.0:8001", description="swarm relay: host:port where the gateway's TLS door for the node relays listens"
    )
    swarm_relay_address: str | None = Field(
        None,
        description="swarm relay: host:port the node relays dial to reach that door; default: the manager's swarm "
        "address with the listen port",
    )
    stop_grace_seconds: float = Field(3, description="SIGTERM → SIGKILL grace when an agent is stopped")
    max_body_bytes: int = Field(1_048_576, description="largest request body accepted")
    max_upload_mb: int = Field(100, ge=1, description="largest workspace archive POST /uploads accepts (SPEC §9)")
    max_upload_entries: int = Field(100_000, ge=1, description="most entries a workspace archive may hold")
    upload_ttl_hours: float = Field(24, description="an upload no agent used is purged after this")
    files_store: Literal["auto", "fs", "db"] = Field(
        "auto",
        description="where uploads' and artifacts' bytes are kept: fs (files under AGENTFACTORY_FILES_DIR), db "
        "(the database, in 1 MiB chunks: every replica on one PostgreSQL serves them with no shared directory); "
        "auto: db on PostgreSQL, fs on SQLite",
    )
    files_dir: Path | None = Field(
        None,
        description="where uploads and artifacts are kept (the local blob store; with the db store, only writes "
        "being staged); default: next to a SQLite database (<db>.files), else ./agentfactory-files",
    )
    artifact_grace_seconds: float = Field(
        10, description="how long an agent with artifacts is given to hand them back when it is stopped or expires"
    )
    max_prompt_chars: int = Field(65_536, description="longest prompt accepted")
    log_level: str = Field("info", description="control-plane log level")
    instance_id: str = Field(
        "local", description="label value naming this control plane (all its replicas) on its containers"
    )
    replica_id: str | None = Field(
        None, description="this replica's id in the replicas' leases; default: generated per process"
    )
    replica_host: str | None = Field(
        None,
        description="the machine name in this replica's lease (default: the hostname); replicas that share it "
        "see at once when one of them exits, without waiting for its lease to lapse",
    )
    adopt_after_seconds: float = Field(
        15, gt=0, description="a dead replica's agents are adopted by another replica within this"
    )
    agent_nofile: int = Field(
        1024, ge=64, description="open-file limit (soft and hard) of every agent container: sockets count too"
    )
    max_running_agents: int | None = Field(
        None,
        ge=1,
        description="agents the cluster runs at once (pending, starting and running together); unset: the "
        "engine's memory less a reserve (1 GiB and 10 %) divided by the catalog's memory_mb, at least 1",
    )
    warm_pool_size: int = Field(
        0,
        ge=0,
        le=64,
        description="warm sandboxes kept started for the catalog's default profile (SPEC §10): an agent without "
        "a network tool then starts in one, without a container start; each holds the catalog's memory_mb of the "
        "capacity while idle. 0 (the default): every agent starts cold, nothing runs idle",
    )
    queue_interval_seconds: float = Field(
        0.5, gt=0, description="seconds between passes of the queue dispatcher (it is also woken by every end)"
    )
    # The model gateway's bounds on what one agent may send (SPEC §14).
    gateway_max_body_bytes: int = Field(
        4 * 1024 * 1024, ge=1024, description="largest model-call body an agent may send; larger ones get 413 unread"
    )
    gateway_inline_json_bytes: int = Field(
        64 * 1024,
        ge=0,
        description="model-call bodies (and answers) up to this size are parsed on the event loop; larger "
        "ones in the gateway's JSON worker processes, so a big body never stalls the API",
    )
    gateway_json_workers: int = Field(2, ge=1, description="worker processes that parse and re-encode large bodies")
    gateway_max_connections: int = Field(
        512,
        ge=8,
        description="open connections to the gateway socket, all agents together; past it the oldest "
        "connection that has not sent a request is closed, else the new one is refused",
    )
    gateway_max_connections_per_agent: int = Field(
        16, ge=1, description="open connections one agent's token may hold; past it a request gets 429"
    )
    gateway_max_concurrent_calls_per_agent: int = Field(
        4, ge=1, description="model calls of one agent in flight at once; past it a call gets 429"
    )
    gateway_calls_per_second_per_agent: float = Field(
        10.0, gt=0, description="sustained gateway requests per second of one agent (token bucket rate)"
    )
    gateway_call_burst_per_agent: int = Field(
        20, ge=1, description="gateway requests one agent may make in a burst above its per-second rate"
    )
    gateway_header_timeout_seconds: float = Field(
        10.0, gt=0, description="a gateway connection that sends no complete request within this is closed"
    )
    gateway_body_timeout_seconds: float = Field(
        30.0, gt=0, description="a model-call body must arrive whole within this many seconds"
    )
    gateway_default_max_tokens: int = Field(
        4096,
        ge=1,
        description="completion tokens a model call may use when it names no max_tokens (always clamped to "
        "what the agent's token budget has left)",
    )
    gateway_prompt_bytes_per_token: float = Field(
        1.0,
        ge=1.0,
        description="bytes of request body reserved as one prompt token before a call: 1 is an upper bound for "
        "byte-level BPE tokenizers, so concurrent calls can never overshoot a budget; larger values reserve "
        "less and may overshoot by the difference",
    )
    event_retention_days: float = Field(
        7, ge=1, description="lifecycle events (and their webhook deliveries) are kept this long (at least 1 day)"
    )
    webhook_retry_schedule: str = Field(
        "5,30,120,600,1800,3600,7200,14400,28800,28800",
        description="comma-separated seconds before each retry of a failed webhook delivery (up to 20 % jitter "
        "added); out of retries a delivery is dead. The default spans about 24 h",
    )
    webhook_timeout_seconds: float = Field(10, gt=0, description="a delivery succeeds on a 2xx within this")
    webhook_circuit_failures: int = Field(
        5, ge=1, description="consecutive failed attempts that open a webhook's circuit (its deliveries pause)"
    )
    webhook_circuit_cooldown_seconds: float = Field(
        60, ge=0, description="an open circuit waits this long, then one probe decides"
    )
    webhook_allow_private: bool = Field(
        False, description="allow webhook URLs resolving to loopback, private, link-local or metadata addresses"
    )
    webhook_concurrency: int = Field(16, ge=1, description="webhooks delivered to at once (one request in flight each)")

    @field_validator("webhook_retry_schedule")
    @classmethod
    def _retry_schedule(cls, value: str) -> str:
        try:
            delays = [float(x) for x in value.split(",") if x.strip()]
        except ValueError:
            raise ValueError("a comma-separated list of seconds, e.g. 5,30,120") from None
        if any(d < 0 or d != d for d in delays):
            raise ValueError("retry delays must be seconds >= 0")
        return value

    @property
    def webhook_retry_delays(self) -> tuple[float, ...]:
        """The retry schedule: seconds before retry 1, 2, ...; empty: no retry."""
        return tuple(float(x) for x in self.webhook_retry_schedule.split(",") if x.strip())

    @field_validator("agent_dns")
    @classmethod
    def _ipv4_resolvers(cls, value: list[str]) -> list[str]:
        # Whether each is public is the egress policy's call, checked when the app is built.
        for address in value:
            try:
                ipaddress.IPv4Address(address)
            except ValueError:
                raise ValueError(f"{address!r} is not an IPv4 address") from None
        return value

    @field_validator("agent_network")
    @classmethod
    def _isolated_network(cls, value: str) -> str:
        # Agents must never share the host's network namespace, the default bridge or a container's.
        if value in ("host", "bridge", "default", "none") or value.startswith("container:"):
            raise ValueError(f"{value!r} is not an isolated user-defined network")
        return value

    def files_in_database(self) -> bool:
        """Whether the blob store is the database (AGENTFACTORY_FILES_STORE, SPEC §9)."""
        if self.files_store == "auto":
            return not self.database_url.startswith("sqlite")
        return self.files_store == "db"

    def blob_dir(self) -> Path:
        """The local blob store's directory (SPEC §9)."""
        if self.files_dir is not None:
            return self.files_dir
        if self.database_url.startswith("sqlite:///") and ":memory:" not in self.database_url:
            db = Path(self.database_url.removeprefix("sqlite:///"))
            return db.with_name(db.name + ".files")
        return Path("agentfactory-files")

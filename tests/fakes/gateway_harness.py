"""A real `ModelGateway` for tests: its own event-loop thread, a temp Unix socket, a real SQLite store.

Tests (and the benchmark) talk to it over the socket like an agent does, and add agents straight
into the store with the token hash the control plane would have stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import shutil
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import structlog
import uvloop

from agentfactory.catalog import Catalog
from agentfactory.gateway import ModelGateway
from agentfactory.gateway.limits import GatewayLimits
from agentfactory.observability.metrics import Metrics
from agentfactory.store.engine import Store
from agentfactory.store.tables import AgentRow
from tests.support.server import database_url

KEY_ENV = "FAKE_OPENAI_KEY"
KEY_VALUE = "sk-fake-control-plane-key-6f1c"


def make_catalog(upstream_url: str, *, timeout_seconds: float = 5.0) -> Catalog:
    """echo, `fake` (the scripted upstream, keyed from KEY_ENV), `other` (same upstream, another
    model), `keyless` (names an env var the control plane does not have)."""
    return Catalog.model_validate(
        {
            "version": 1,
            "models": [
                {"id": "echo", "provider": "echo"},
                {
                    "id": "fake",
                    "provider": "openai",
                    "base_url": upstream_url,
                    "api_key_env": KEY_ENV,
                    "upstream_model": "fake-upstream-v1",
                    "timeout_seconds": timeout_seconds,
                },
                {"id": "other", "provider": "openai", "base_url": upstream_url, "api_key_env": KEY_ENV},
                {"id": "keyless", "provider": "openai", "base_url": upstream_url, "api_key_env": "NO_SUCH_KEY"},
            ],
            "tools": [
                {"id": "python", "description": "run Python", "network": False},
                {"id": "shell", "description": "run shell commands", "network": False},
                {"id": "browser_server", "description": "fetch web pages", "network": True},
            ],
        }
    )


class GatewayHarness:
    """Starts the gateway in a background loop; `add_agent` returns (agent_id, gateway token)."""

    def __init__(
        self, catalog: Catalog, *, environ: Mapping[str, str] | None = None, limits: GatewayLimits | None = None
    ) -> None:
        # AF_UNIX paths are limited to ~107 bytes: keep the directory short.
        self.dir = Path(tempfile.mkdtemp(prefix="afgw-", dir="/tmp"))
        self.socket_dir = self.dir / "sock"
        self.socket_path = self.socket_dir / "gateway.sock"
        self.store = Store(database_url(self.dir / "store.db"))
        self.store.migrate()
        self.metrics = Metrics()
        # The server runs the gateway on uvloop (uvicorn's choice when it is installed): so do tests.
        self.loop = uvloop.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name="gateway-loop", daemon=True)
        self.gateway = ModelGateway(
            catalog=catalog,
            store=self.store,
            socket_path=self.socket_path,
            environ=dict(environ if environ is not None else {KEY_ENV: KEY_VALUE}),
            metrics=self.metrics,
            logger=structlog.get_logger("gateway-test"),
            limits=limits,
        )

    def start(self) -> GatewayHarness:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self.gateway.start(), self.loop).result(timeout=10)
        return self

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self.gateway.stop(), self.loop).result(timeout=15)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout=5)
        self.loop.close()
        self.store.dispose()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> GatewayHarness:
        return self.start()

    def __exit__(self, *_exc: object) -> None:
        self.stop()

    def add_agent(
        self, model: str, *, status: str = "running", token_budget: int = 100_000, prompt: str = "(test)"
    ) -> tuple[str, str]:
        token = secrets.token_urlsafe(24)
        agent_id = f"ag_{secrets.token_hex(8)}"
        now = time.time()
        with self.store.session() as s:
            s.add(
                AgentRow(
                    id=agent_id,
                    key_id="key_test",
                    status=status,
                    model=model,
                    tools=["python", "shell"],
                    prompt=prompt,
                    env={},
                    secrets={},
                    meta={},
                    ttl_seconds=600,
                    token_budget=token_budget,
                    created_at=now,
                    expires_at=now + 600,
                    gateway_token_hash=hashlib.sha256(token.encode()).hexdigest(),
                    tokens_prompt=0,
                    tokens_completion=0,
                    model_calls=0,
                    log_lines=0,
                    log_bytes=0,
                    log_dropped_lines=0,
                    log_dropped_bytes=0,
                    stdout_consumed=0,
                    stderr_consumed=0,
                )
            )
        return agent_id, token

    def agent(self, agent_id: str) -> AgentRow:
        with self.store.session() as s:
            row = s.query(AgentRow).filter_by(id=agent_id).one()
            s.expunge(row)
            return row

    def agent_reserved_total(self) -> int:
        with self.store.session() as s:
            return sum(row.tokens_reserved for row in s.query(AgentRow))

    def gateway_connections(self) -> int:
        async def count() -> int:
            return self.gateway.open_connections

        return asyncio.run_coroutine_threadsafe(count(), self.loop).result(timeout=5)

    def set_status(self, agent_id: str, status: str) -> None:
        with self.store.session() as s:
            s.query(AgentRow).filter_by(id=agent_id).update({"status": status})

    def metric(self, name: str, **labels: Any) -> float:
        return self.metrics.registry.get_sample_value(name, labels) or 0.0

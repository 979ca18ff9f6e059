"""The app in-process over a FakeBackend: fast state-machine and contract tests."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from agentfactory.app import create_app
from agentfactory.backends.fake import FakeBackend
from agentfactory.settings import Settings
from tests.support.server import database_url

ADMIN = "af_admin_test_key_" + "k" * 24


@dataclass
class Api:
    client: TestClient
    backend: FakeBackend
    admin: dict[str, str]

    def key(self, **body: object) -> dict[str, str]:
        """Create a key; returns the auth header for it."""
        r = self.client.post("/keys", json={"name": "k", **body}, headers=self.admin)
        assert r.status_code == 201, r.text
        return {"Authorization": f"Bearer {r.json()['key']}", "X-Key-Id": r.json()["id"]}


@pytest.fixture
def api(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Api]:
    """The app in process on a fake backend; a test module may parametrize it (indirectly) with the
    blob store ("auto", "fs", "db")."""
    settings = Settings(
        database_url=database_url(tmp_path / "af.db"),
        files_dir=tmp_path / "af.db.files",  # SQLite's default; PostgreSQL's would be the working directory's
        files_store=getattr(request, "param", "auto"),
        admin_key=ADMIN,
        gateway_socket_dir=tmp_path / "gw",
        reaper_interval_seconds=3600,
    )
    backend = FakeBackend()
    app = create_app(settings, backend=backend, run_loops=False)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client=client, backend=backend, admin={"Authorization": f"Bearer {ADMIN}"})

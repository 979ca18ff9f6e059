"""Issue 19 items 6 and 8 over the FakeBackend: NaN refused, keyed fingerprints, zeroed secrets,
a bootstrap admin key that is long enough and never shown."""

from __future__ import annotations

import hashlib
import json
import sqlite3
from pathlib import Path

import pytest

from agentfactory.app import create_app
from agentfactory.backends.fake import FakeBackend
from agentfactory.schemas import AgentCreate
from agentfactory.settings import Settings
from tests.api.conftest import ADMIN, Api
from tests.api.test_agents_api import wait_status
from tests.support.db import rows
from tests.support.server import sqlite_only


def database(api: Api) -> sqlite3.Connection:
    url = api.client.app.state.services.settings.database_url  # type: ignore[attr-defined]
    return sqlite3.connect(url.removeprefix("sqlite:///"))


@pytest.mark.parametrize("number", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_in_metadata_is_422(api: Api, number: str) -> None:
    body = '{"model": "echo", "prompt": "hi", "metadata": {"x": NUMBER}}'.replace("NUMBER", number)
    r = api.client.post("/agents", content=body, headers=api.admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "E_SCHEMA", r.text
    assert api.client.get("/agents", headers=api.admin).json()["items"] == []


def test_the_idempotency_fingerprint_is_keyed(api: Api) -> None:
    body = {"model": "echo", "prompt": "hi", "secrets": {"GH_TOKEN": "ghp_guessable"}}
    h = {**api.admin, "Idempotency-Key": "ci-7"}
    first = api.client.post("/agents", json=body, headers=h)
    again = api.client.post("/agents", json=body, headers=h)
    assert first.status_code == 201 and again.json()["id"] == first.json()["id"]
    other = api.client.post("/agents", json={**body, "secrets": {"GH_TOKEN": "ghp_other"}}, headers=h)
    assert other.status_code == 409
    url = api.client.app.state.services.settings.database_url  # type: ignore[attr-defined]
    ((stored,),) = rows(url, "SELECT request_hash FROM agents")
    bare = hashlib.sha256(json.dumps(AgentCreate.model_validate(body).model_dump(), sort_keys=True).encode())
    assert len(stored) == 64 and stored != bare.hexdigest(), "a bare hash lets anyone check a guessed secret"


@sqlite_only
def test_secrets_are_zeroed_in_the_database_file_once_they_are_gone(api: Api) -> None:
    """A finished agent's secrets are cleared, a row the engine never ran deleted: neither leaves
    the secret's bytes in the file's free space."""
    finished, forgotten = "ghp_Finished0ut9Xq2Lm7Wv4Kd", "ghp_Forgotten0ut9Xq2Lm7Wv4K"
    r = api.client.post(
        "/agents",
        json={"model": "echo", "prompt": "hi", "env": {"FAKE_LINES": "2"}, "secrets": {"GH_TOKEN": finished}},
        headers=api.admin,
    )
    wait_status(api, r.json()["id"], {"succeeded"})
    api.backend.engine_down = True
    r = api.client.post(
        "/agents", json={"model": "echo", "prompt": "hi", "secrets": {"GH_TOKEN": forgotten}}, headers=api.admin
    )
    assert r.status_code == 503
    with database(api) as db:
        assert db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()[0] == 0
        path = Path(db.execute("PRAGMA database_list").fetchone()[2])
    data = path.read_bytes()
    assert finished.encode() not in data and forgotten.encode() not in data


def test_get_keys_shows_no_character_of_the_bootstrap_admin_key(api: Api) -> None:
    r = api.client.get("/keys", headers=api.admin)
    bootstrap = next(k for k in r.json()["items"] if k["id"] == "key_admin")
    assert bootstrap["prefix"] == "" and ADMIN[:4] not in r.text
    created = api.client.post("/keys", json={"name": "ci"}, headers=api.admin).json()
    assert created["key"].startswith(created["prefix"]) and len(created["prefix"]) == 9


def test_a_short_bootstrap_admin_key_is_refused_without_being_quoted(tmp_path: Path) -> None:
    short = "af_admin_" + "x" * 14
    settings = Settings(database_url=f"sqlite:///{tmp_path / 'af.db'}", admin_key=short, gateway_socket_dir=tmp_path)
    with pytest.raises(ValueError, match="at least 24") as refused:
        create_app(settings, backend=FakeBackend(), run_loops=False)
    assert short not in str(refused.value)
    create_app(settings.model_copy(update={"admin_key": short + "y"}), backend=FakeBackend(), run_loops=False)

"""Files' retention (SPEC §9) in either blob store, one reaper pass at a time with an injected clock:
an upload no agent used goes after AGENTFACTORY_UPLOAD_TTL_HOURS; one an agent used, and the
agent's artifacts, go when retention purges the agent."""

from __future__ import annotations

import io
import tarfile
import time
from typing import Any

import pytest

from agentfactory.store import queries
from agentfactory.store.dbblobs import DbBlobs
from tests.api.conftest import Api
from tests.api.test_reaper import get, run_pass, state

DAY = 86_400


# Every test here runs in either blob store.
pytestmark = pytest.mark.parametrize("api", ["fs", "db"], indirect=True)


def upload(api: Api) -> str:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        info = tarfile.TarInfo("a.txt")
        info.size = 2
        tar.addfile(info, io.BytesIO(b"hi"))
    r = api.client.post("/uploads", content=data.getvalue(), headers=api.admin)
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def has_blob(api: Api, key: str) -> bool:
    try:
        state(api).services.blobs.size(key)
        return True
    except FileNotFoundError:
        return False


def test_unused_uploads_go_after_their_ttl_and_the_rest_with_their_agent(api: Api, request: Any) -> None:
    svc = state(api).services
    assert isinstance(svc.blobs, DbBlobs) == (request.node.callspec.params["api"] == "db")
    unused, used = upload(api), upload(api)
    r = api.client.post("/agents", json={"model": "echo", "prompt": "hi", "workspace": used}, headers=api.admin)
    assert r.status_code == 201, r.text
    agent = r.json()
    deadline = time.monotonic() + 10
    while get(api, agent["id"]).json()["status"] != "succeeded" and time.monotonic() < deadline:
        time.sleep(0.02)
    # The agent's artifacts as the gateway keeps them (blobs, then the manifest).
    pk = svc.store.call(queries.get_agent, agent_id=agent["id"], key_id=None).pk
    for n, body in enumerate((b"one", b"two" * 1000)):
        w = svc.blobs.writer(f"artifacts/{pk}/{n}")
        w.write(body)
        w.commit()
    assert svc.store.call(queries.store_artifacts, agent_pk=pk, kept=[("a", 3, "x"), ("b", 3000, "y")], dropped=[])
    assert api.client.get(f"/agents/{agent['id']}/artifacts/b", headers=api.admin).content == b"two" * 1000

    run_pass(api, now=time.time() + 23 * 3600)
    assert has_blob(api, f"uploads/{unused}") and has_blob(api, f"uploads/{used}")
    run_pass(api, now=time.time() + 25 * 3600)
    assert not has_blob(api, f"uploads/{unused}")
    assert has_blob(api, f"uploads/{used}") and has_blob(api, f"artifacts/{pk}/1")
    run_pass(api, now=time.time() + 31 * DAY)
    assert get(api, agent["id"]).status_code == 404
    assert not any(has_blob(api, k) for k in (f"uploads/{used}", f"artifacts/{pk}/0", f"artifacts/{pk}/1"))
    if isinstance(svc.blobs, DbBlobs):
        assert svc.store.call(queries.count_blobs, key="artifacts") == 0
        assert svc.store.call(queries.count_blobs, key="uploads") == 0

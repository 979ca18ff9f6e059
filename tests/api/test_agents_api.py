"""The /agents contract over the FakeBackend: statuses, reasons, errors, idempotency, isolation."""

from __future__ import annotations

import time
from typing import Any

import pytest

from tests.api.conftest import Api


def wait_status(api: Api, agent_id: str, statuses: set[str], headers: dict[str, str] | None = None) -> dict[str, Any]:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        body: dict[str, Any] = api.client.get(f"/agents/{agent_id}", headers=headers or api.admin).json()
        if body["status"] in statuses:
            return body
        time.sleep(0.02)
    raise AssertionError(f"{agent_id} never reached {statuses}")


def create(api: Api, headers: dict[str, str] | None = None, **body: Any) -> Any:
    return api.client.post("/agents", json={"model": "echo", "prompt": "hi", **body}, headers=headers or api.admin)


def test_echo_agent_succeeds_with_a_seal(api: Api) -> None:
    r = create(api, env={"FAKE_LINES": "3"})
    assert r.status_code == 201
    body = wait_status(api, r.json()["id"], {"succeeded"})
    assert body["exit_code"] == 0 and body["reason"] == "exit"
    assert body["log_lines"] == 3 and body["log_bytes"] == 3 * len("line 1\n")
    page = api.client.get(f"/agents/{body['id']}/logs", headers=api.admin).json()
    assert [line["text"] for line in page["lines"]] == ["line 1", "line 2", "line 3"]
    assert page["complete"] is True


def test_nonzero_exit_is_failed_with_reason_exit(api: Api) -> None:
    body = wait_status(api, create(api, env={"FAKE_EXIT_CODE": "3"}).json()["id"], {"failed"})
    assert (body["exit_code"], body["reason"]) == (3, "exit")


def test_oom_with_exit_zero_is_not_a_plain_success(api: Api) -> None:
    body = wait_status(api, create(api, env={"FAKE_OOM": "1"}).json()["id"], {"failed", "succeeded"})
    assert (body["status"], body["reason"], body["exit_code"]) == ("failed", "oom_killed", 0)
    assert "killed for memory" in body["error"]


def test_launch_failure_is_failed_launch_failed(api: Api) -> None:
    r = create(api, env={"FAKE_CRASH_AT_LAUNCH": "1"})
    assert r.status_code == 201
    assert (r.json()["status"], r.json()["reason"]) == ("failed", "launch_failed")
    assert "refused" in r.json()["error"]


def test_engine_down_is_503_and_leaves_no_row(api: Api) -> None:
    api.backend.engine_down = True
    r = create(api)
    assert r.status_code == 503 and r.json()["error"]["code"] == "E_RUNTIME"
    assert api.client.get("/agents", headers=api.admin).json()["items"] == []
    assert api.client.get("/ready").status_code == 503


@pytest.mark.parametrize(
    ("body", "code"),
    [
        ({"model": "gpt-9", "prompt": "x"}, "E_CATALOG"),
        ({"model": "echo", "prompt": "x", "tools": ["laser"]}, "E_CATALOG"),
        ({"model": "echo", "prompt": "x", "ttl_seconds": 10**6}, "E_SCHEMA"),
        ({"model": "echo", "prompt": "x", "image": "alpine"}, "E_SCHEMA"),
        ({"model": "echo", "prompt": "x", "privileged": True}, "E_SCHEMA"),
        ({"model": "echo"}, "E_SCHEMA"),
        ({"model": "echo", "prompt": "x", "env": {"AGENTFACTORY_SPEC": "{}"}}, "E_SCHEMA"),
        ({"model": "echo", "prompt": "x", "env": {"PATH": "/evil"}}, "E_SCHEMA"),
        ({"model": "echo", "prompt": "x", "env": {"1BAD": "x"}}, "E_SCHEMA"),
    ],
)
def test_bad_input_is_refused_and_nothing_launches(api: Api, body: dict[str, Any], code: str) -> None:
    r = api.client.post("/agents", json=body, headers=api.admin)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code and r.json()["request_id"]
    assert api.backend.launches == 0


def test_malformed_json_unknown_route_and_no_key_use_the_envelope(api: Api) -> None:
    r = api.client.post("/agents", content=b"{not json", headers=api.admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "E_SCHEMA"
    r = api.client.get("/nowhere", headers=api.admin)
    assert r.status_code == 404 and r.json()["error"]["code"] == "E_NOT_FOUND"
    r = api.client.get("/agents")
    assert r.status_code == 401 and r.json()["error"]["code"] == "E_AUTH"
    r = api.client.post("/agents", content=b"x" * 2_000_000, headers=api.admin)
    assert r.status_code == 413 and r.json()["error"]["code"] == "E_TOO_LARGE"
    assert api.backend.launches == 0


def test_cancel_twice_is_idempotent(api: Api) -> None:
    agent = create(api, env={"FAKE_RUN_UNTIL_STOPPED": "1"}).json()
    assert agent["status"] == "running"
    first = api.client.delete(f"/agents/{agent['id']}", headers=api.admin)
    second = api.client.delete(f"/agents/{agent['id']}", headers=api.admin)
    assert first.status_code == second.status_code == 200
    assert first.json()["status"] == second.json()["status"] == "cancelled"
    assert first.json()["reason"] == "cancelled" and first.json()["log_sha256"]
    assert api.backend.containers == {}


def test_extend_ttl_moves_expires_at_within_the_max(api: Api) -> None:
    agent = create(api, env={"FAKE_RUN_UNTIL_STOPPED": "1"}, ttl_seconds=60).json()
    r = api.client.post(f"/agents/{agent['id']}/ttl", json={"ttl_seconds": 1200}, headers=api.admin)
    assert r.status_code == 200 and r.json()["expires_at"] > agent["expires_at"]
    r = api.client.post(f"/agents/{agent['id']}/ttl", json={"ttl_seconds": 10**7}, headers=api.admin)
    assert r.status_code == 422 and r.json()["error"]["code"] == "E_SCHEMA"


def test_idempotency_key_returns_the_same_agent_and_conflicts_on_another_body(api: Api) -> None:
    h = {**api.admin, "Idempotency-Key": "ci-42"}
    a = api.client.post("/agents", json={"model": "echo", "prompt": "hi"}, headers=h)
    b = api.client.post("/agents", json={"model": "echo", "prompt": "hi"}, headers=h)
    assert a.json()["id"] == b.json()["id"] and b.headers["Idempotent-Replayed"] == "true"
    c = api.client.post("/agents", json={"model": "echo", "prompt": "other"}, headers=h)
    assert c.status_code == 409 and c.json()["error"]["code"] == "E_CONFLICT"
    assert api.backend.launches == 1


def test_another_keys_agent_is_not_found_everywhere(api: Api) -> None:
    a, b = api.key(), api.key()
    agent = create(api, headers=a, env={"FAKE_RUN_UNTIL_STOPPED": "1"}).json()
    for method, path in [
        ("GET", ""), ("GET", "/status"), ("GET", "/logs"), ("GET", "/stream"), ("GET", "/result"),
        ("DELETE", ""), ("POST", "/ttl"),
    ]:  # fmt: skip
        r = api.client.request(method, f"/agents/{agent['id']}{path}", headers=b, json={"ttl_seconds": 5})
        assert r.status_code == 404 and r.json()["error"]["code"] == "E_NOT_FOUND", (method, path)
    assert api.client.get("/agents", headers=b).json()["items"] == []
    assert [x["id"] for x in api.client.get("/agents", headers=a).json()["items"]] == [agent["id"]]
    assert api.client.get(f"/agents/{agent['id']}", headers=api.admin).status_code == 200


def test_non_admin_on_keys_is_forbidden(api: Api) -> None:
    a = api.key()
    assert api.client.post("/keys", json={"name": "x"}, headers=a).json()["error"]["code"] == "E_FORBIDDEN"
    assert api.client.get("/keys", headers=a).status_code == 403
    assert len(api.client.get("/keys", headers=api.admin).json()["items"]) == 2


def test_model_restricted_key(api: Api) -> None:
    a = api.key(models=["echo"])
    r = create(api, headers=a, model="gpt-4o-mini")
    assert r.status_code == 403 and r.json()["error"]["code"] == "E_FORBIDDEN"


def test_quota_and_rate_limit(api: Api) -> None:
    a = api.key(max_concurrent_agents=2, max_requests_per_minute=1000)
    for _ in range(2):
        assert create(api, headers=a, env={"FAKE_RUN_UNTIL_STOPPED": "1"}).status_code == 201
    r = create(api, headers=a)
    assert r.status_code == 429 and r.json()["error"]["code"] == "E_QUOTA" and r.headers["Retry-After"]
    slow = api.key(max_requests_per_minute=2)
    codes = [api.client.get("/agents", headers=slow).status_code for _ in range(3)]
    assert codes == [200, 200, 429]
    assert api.client.get("/agents", headers=a).status_code == 200


def test_revoked_key_is_refused_at_once(api: Api) -> None:
    a = api.key()
    assert api.client.get("/agents", headers=a).status_code == 200
    api.client.delete(f"/keys/{a['X-Key-Id']}", headers=api.admin)
    assert api.client.get("/agents", headers=a).status_code == 401


def test_list_pages_newest_first(api: Api) -> None:
    ids = [create(api).json()["id"] for _ in range(5)]
    page1 = api.client.get("/agents", params={"limit": 3}, headers=api.admin).json()
    page2 = api.client.get("/agents", params={"limit": 3, "cursor": page1["next_cursor"]}, headers=api.admin).json()
    assert [a["id"] for a in page1["items"] + page2["items"]] == ids[::-1]
    assert page2["next_cursor"] is None


def test_result_document(api: Api) -> None:
    agent = create(api, env={"FAKE_LINES": "2"}).json()
    wait_status(api, agent["id"], {"succeeded"})
    res = api.client.get(f"/agents/{agent['id']}/result", headers=api.admin).json()
    assert res["status"] == "succeeded" and res["seal"]["log_lines"] == 2
    assert res["timings"]["accepted_at"] and res["timings"]["finished_at"] and res["timings"]["first_output_at"]
    assert set(res["tokens"]) >= {"prompt_tokens", "completion_tokens", "total_tokens"}

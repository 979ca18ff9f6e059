"""Events and webhooks in-process over a FakeBackend with loopback receivers (SPEC §11): the outbox,
/events' filters and resume position, webhook CRUD and its refusals, signed deliveries, retries,
dead letters, the circuit breaker, manual retries. The real-server acceptance runs are in
tests/integration/test_webhooks.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import standardwebhooks
from fastapi.testclient import TestClient

from agentfactory.app import create_app
from agentfactory.backends.fake import FakeBackend
from agentfactory.settings import Settings
from tests.api.conftest import ADMIN, Api
from tests.support.receiver import Receiver, always
from tests.support.server import database_url, wait_until
from tests.support.sse import iter_events

FAST = {
    "webhook_allow_private": True,
    "webhook_retry_schedule": "0.05,0.05",
    "webhook_timeout_seconds": 2,
    "webhook_circuit_failures": 3,
    "webhook_circuit_cooldown_seconds": 0.3,
}


def make_api(tmp_path: Path, **overrides: Any) -> Iterator[Api]:
    settings = Settings(
        database_url=database_url(tmp_path / "af.db"),
        admin_key=ADMIN,
        files_dir=tmp_path / "af.db.files",
        gateway_socket_dir=tmp_path / "gw",
        reaper_interval_seconds=3600,
        **overrides,
    )
    backend = FakeBackend()
    app = create_app(settings, backend=backend, run_loops=True)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield Api(client=client, backend=backend, admin={"Authorization": f"Bearer {ADMIN}"})


@pytest.fixture
def hooks_api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path, **FAST)


@pytest.fixture
def strict_api(tmp_path: Path) -> Iterator[Api]:
    yield from make_api(tmp_path)


def finished_agent(api: Api, headers: dict[str, str] | None = None, **body: Any) -> dict[str, Any]:
    r = api.client.post("/agents", json={"model": "echo", "prompt": "hi", **body}, headers=headers or api.admin)
    assert r.status_code == 201, r.text

    def done() -> dict[str, Any] | None:
        got: dict[str, Any] = api.client.get(f"/agents/{r.json()['id']}", headers=headers or api.admin).json()
        return got if got["status"] in ("succeeded", "failed") else None

    result: dict[str, Any] = wait_until(done, timeout=10, what="agent finished")
    return result


def history(api: Api, headers: dict[str, str] | None = None, **params: Any) -> list[dict[str, Any]]:
    with api.client.stream("GET", "/events", params={"follow": "false", **params}, headers=headers or api.admin) as r:
        assert r.status_code == 200, r.read()
        out = []
        for ev in iter_events(r):
            data = ev.json()
            assert (ev.event, ev.id) == (data["type"], str(data["id"]))
            out.append(data)
        return out


def metric(api: Api, name: str) -> float:
    text = api.client.get("/metrics").text
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith(name + " ") or line.startswith(name + "{")
    )


# -- the event log -----------------------------------------------------------------------------


def test_an_agent_has_one_started_and_one_finished_event_with_its_sealed_document(hooks_api: Api) -> None:
    agent = finished_agent(hooks_api, env={"FAKE_LINES": "3"}, metadata={"ci": "7"})
    events = history(hooks_api, agent_id=agent["id"])
    assert [e["type"] for e in events] == ["agent.started", "agent.finished"]
    assert events[0]["id"] < events[1]["id"]
    assert events[0]["agent"]["status"] == "running"
    assert events[1]["agent"] == agent  # the sealed agent, as GET shows it
    assert agent["log_lines"] == 3 and agent["log_sha256"]


def test_events_are_filtered_by_key_type_and_agent_and_resume_after_an_id(hooks_api: Api) -> None:
    api = hooks_api
    alice, bob = api.key(name="alice"), api.key(name="bob")
    a = finished_agent(api, alice)
    b = finished_agent(api, bob)
    assert {e["agent"]["id"] for e in history(api, alice)} == {a["id"]}
    assert {e["agent"]["id"] for e in history(api)} == {a["id"], b["id"]}  # admin: all
    finished = history(api, type="agent.finished")
    assert [e["agent"]["id"] for e in finished] == [a["id"], b["id"]]
    assert history(api, type=["agent.started", "agent.finished"]) == history(api, type="agent.started,agent.finished")
    everything = history(api)
    assert history(api, after=everything[1]["id"]) == everything[2:]
    with api.client.stream("GET", "/events", params={"follow": "false"},
                           headers={**api.admin, "Last-Event-ID": str(everything[2]["id"])}) as r:  # fmt: skip
        assert [int(e.id or 0) for e in iter_events(r)] == [e["id"] for e in everything[3:]]


@pytest.mark.parametrize(
    ("params", "headers", "status"),
    [({"type": "agent.exploded"}, {}, 422), ({"agent_id": "ag_nope"}, {}, 404), ({}, {"Last-Event-ID": "x"}, 422),
     ({"after": "-1"}, {}, 422)],
)  # fmt: skip
def test_bad_event_queries_get_the_error_envelope(
    hooks_api: Api, params: dict[str, str], headers: dict[str, str], status: int
) -> None:
    r = hooks_api.client.get("/events", params=params, headers={**hooks_api.admin, **headers})
    assert r.status_code == status
    assert r.json()["error"]["code"] == {422: "E_SCHEMA", 404: "E_NOT_FOUND"}[status]


def test_another_keys_agent_is_not_found_on_events(hooks_api: Api) -> None:
    alice, bob = hooks_api.key(name="alice"), hooks_api.key(name="bob")
    a = finished_agent(hooks_api, alice)
    r = hooks_api.client.get("/events", params={"agent_id": a["id"]}, headers=bob)
    assert r.status_code == 404


# -- webhooks: registration ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "url", ["http://127.0.0.1/", "http://169.254.169.254/", "http://[::1]:8080/", "http://10.0.0.8/x"]
)
def test_private_targets_are_refused_without_the_opt_in(strict_api: Api, url: str) -> None:
    r = strict_api.client.post("/webhooks", json={"url": url}, headers=strict_api.admin)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "E_SCHEMA"
    assert r.json()["error"]["details"][0]["loc"] == ["body", "url"]


def test_a_refused_loopback_receiver_never_hears_from_us(strict_api: Api) -> None:
    receiver = Receiver().start()
    try:
        r = strict_api.client.post("/webhooks", json={"url": receiver.url}, headers=strict_api.admin)
        assert r.status_code == 422
        finished_agent(strict_api)
        assert strict_api.client.get("/webhooks", headers=strict_api.admin).json()["items"] == []
        assert receiver.snapshot() == []
    finally:
        receiver.stop()


@pytest.mark.parametrize(
    "body",
    [{"url": "ftp://example.com/"}, {"url": "http://example.com/", "events": ["agent.exploded"]},
     {"url": "http://example.com/", "events": []}, {"url": "http://example.com/", "extra": 1}],
)  # fmt: skip
def test_bad_webhook_bodies_are_refused(hooks_api: Api, body: dict[str, Any]) -> None:
    r = hooks_api.client.post("/webhooks", json=body, headers=hooks_api.admin)
    assert (r.status_code, r.json()["error"]["code"]) == (422, "E_SCHEMA")


def test_the_secret_is_shown_once_and_a_key_sees_only_its_own(hooks_api: Api) -> None:
    api = hooks_api
    alice, bob = api.key(name="alice"), api.key(name="bob")
    r = api.client.post("/webhooks", json={"url": "http://127.0.0.1:9/a", "events": ["agent.finished"]}, headers=alice)
    assert r.status_code == 201, r.text
    created = r.json()
    assert created["id"].startswith("wh_") and created["secret"].startswith("whsec_")
    assert (created["circuit"], created["all_keys"], created["events"]) == ("closed", False, ["agent.finished"])
    listed = api.client.get("/webhooks", headers=alice).json()["items"]
    assert [h["id"] for h in listed] == [created["id"]]
    assert "secret" not in listed[0] and created["secret"] not in api.client.get("/webhooks", headers=alice).text
    assert api.client.get("/webhooks", headers=bob).json()["items"] == []
    assert [h["id"] for h in api.client.get("/webhooks", headers=api.admin).json()["items"]] == [created["id"]]
    assert api.client.get(f"/webhooks/{created['id']}", headers=bob).status_code == 404
    assert api.client.delete(f"/webhooks/{created['id']}", headers=bob).status_code == 404
    assert api.client.delete(f"/webhooks/{created['id']}", headers=alice).status_code == 200
    assert api.client.get("/webhooks", headers=alice).json()["items"] == []


# -- webhooks: delivery ----------------------------------------------------------------------------


def test_deliveries_are_signed_and_carry_exactly_the_events_data(hooks_api: Api) -> None:
    api = hooks_api
    receiver = Receiver().start()
    try:
        alice, bob = api.key(name="alice"), api.key(name="bob")
        hook = api.client.post(
            "/webhooks",
            json={"url": receiver.url, "events": ["agent.finished"], "metadata": {"ci": "main"}},
            headers=alice,
        ).json()
        finished_agent(api, alice, metadata={"ci": "branch"})  # metadata filter: not sent
        finished_agent(api, bob, metadata={"ci": "main"})  # another key's agent: not sent
        wanted = finished_agent(api, alice, metadata={"ci": "main", "run": 3})
        # Events fan out and go out in log order: once the last one is here, earlier ones were decided.
        got = wait_until(receiver.snapshot, timeout=10, what="a delivery")
        assert len(got) == 1
        payload = standardwebhooks.Webhook(hook["secret"]).verify(got[0].body, got[0].headers)
        assert payload["agent"] == wanted and payload["type"] == "agent.finished"
        (event,) = [e for e in history(api, alice, agent_id=wanted["id"]) if e["type"] == "agent.finished"]
        assert got[0].body == json.dumps(event, separators=(",", ":")).encode()
        assert got[0].webhook_id == str(event["id"])
        listed = api.client.get(f"/webhooks/{hook['id']}/deliveries", headers=alice).json()["items"]
        assert [(d["status"], d["event_id"], d["agent_id"]) for d in listed] == [
            ("succeeded", event["id"], wanted["id"])
        ]
        assert listed[0]["attempts"][0]["status_code"] == 204
    finally:
        receiver.stop()


def test_a_failing_endpoint_is_retried_dead_lettered_circuit_broken_and_manually_retried(hooks_api: Api) -> None:
    api = hooks_api
    receiver = Receiver(always(500)).start()
    try:
        hook = api.client.post(
            "/webhooks", json={"url": receiver.url, "events": ["agent.finished"]}, headers=api.admin
        ).json()
        agent = finished_agent(api)

        def dead() -> list[dict[str, Any]]:
            r = api.client.get(f"/webhooks/{hook['id']}/deliveries", params={"status": "dead"}, headers=api.admin)
            items: list[dict[str, Any]] = r.json()["items"]
            return items

        (delivery,) = wait_until(dead, timeout=10, what="the delivery dead")
        assert delivery["agent_id"] == agent["id"]
        assert [a["status_code"] for a in delivery["attempts"]] == [500, 500, 500]  # 1 + 2 retries
        assert len({r.webhook_id for r in receiver.snapshot()}) == 1 and len(receiver.snapshot()) == 3
        assert wait_until(lambda: metric(api, "agentfactory_webhook_dead_letters") == 1, timeout=5)
        assert wait_until(lambda: metric(api, "agentfactory_webhook_circuits_open") == 1, timeout=5)
        assert metric(api, "agentfactory_webhook_circuits_opened_total") == 1
        assert metric(api, 'agentfactory_webhook_deliveries_total{outcome="dead"}') == 1
        assert api.client.get(f"/webhooks/{hook['id']}", headers=api.admin).json()["circuit"] in ("open", "half_open")

        receiver.respond = always(200)
        r = api.client.post(f"/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry", headers=api.admin)
        assert r.status_code == 202, r.text

        def succeeded() -> bool:
            items = api.client.get(f"/webhooks/{hook['id']}/deliveries", headers=api.admin).json()["items"]
            return bool(items[0]["status"] == "succeeded")

        wait_until(succeeded, timeout=10, what="the manual retry delivered")
        assert api.client.get(f"/webhooks/{hook['id']}", headers=api.admin).json()["circuit"] == "closed"
        assert wait_until(lambda: metric(api, "agentfactory_webhook_circuits_open") == 0, timeout=5)
        again = api.client.post(f"/webhooks/{hook['id']}/deliveries/{delivery['id']}/retry", headers=api.admin)
        assert (again.status_code, again.json()["error"]["code"]) == (409, "E_CONFLICT")
        missing = api.client.post(f"/webhooks/{hook['id']}/deliveries/99999/retry", headers=api.admin)
        assert missing.status_code == 404
    finally:
        receiver.stop()

"""GET /agents/{id}/ws: the same events as the SSE stream, resumable with ?after=, closed with 1000."""

from __future__ import annotations

import json
from typing import Any

import pytest
from starlette.websockets import WebSocketDisconnect

from tests.api.conftest import Api
from tests.support.sse import read_stream


def ws_events(api: Api, agent_id: str, query: str = "", headers: dict[str, str] | None = None) -> list[dict[str, Any]]:
    events = []
    with api.client.websocket_connect(f"/agents/{agent_id}/ws{query}", headers=headers or api.admin) as ws:
        while True:
            try:
                events.append(json.loads(ws.receive_text()))
            except WebSocketDisconnect as closed:
                assert closed.code == 1000
                return events


def test_the_websocket_carries_the_streams_lines_statuses_and_end(api: Api) -> None:
    agent = api.client.post(
        "/agents", json={"model": "echo", "prompt": "hi", "env": {"FAKE_LINES": "40"}}, headers=api.admin
    ).json()
    events = ws_events(api, agent["id"])
    logs = [e["data"] for e in events if e["event"] == "log"]
    assert [e["id"] for e in events if e["event"] == "log"] == list(range(1, 41))
    assert events[-1]["event"] == "end" and events[-1]["data"]["status"] == "succeeded"
    sse_lines, sse_end = read_stream(api.client, agent["id"], headers=api.admin)
    assert logs == sse_lines
    assert sse_end is not None and events[-1]["data"]["log_sha256"] == sse_end.json()["log_sha256"]

    resumed = ws_events(api, agent["id"], "?after=37")
    assert [e["id"] for e in resumed if e["event"] == "log"] == [38, 39, 40]
    tail = ws_events(api, agent["id"], "?tail=2")
    assert [e["id"] for e in tail if e["event"] == "log"] == [39, 40]


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Bearer af_nope"}])
def test_the_websocket_refuses_a_missing_or_unknown_key(api: Api, headers: dict[str, str]) -> None:
    agent = api.client.post("/agents", json={"model": "echo", "prompt": "hi"}, headers=api.admin).json()
    with api.client.websocket_connect(f"/agents/{agent['id']}/ws", headers=headers) as ws:
        first = json.loads(ws.receive_text())
        assert first["data"]["error"]["code"] == "E_AUTH"
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_text()
        assert closed.value.code == 1008


def test_a_websocket_holds_one_of_the_keys_streams_and_revoking_the_key_closes_it(api: Api) -> None:
    key = api.key(max_streams=1)
    key_id = key["X-Key-Id"]
    agent = api.client.post("/agents", json={"model": "echo", "prompt": "hi", "env": {"FAKE_RUN_UNTIL_STOPPED": "1"}},
                            headers=key).json()  # fmt: skip
    with api.client.websocket_connect(f"/agents/{agent['id']}/ws", headers=key) as first:
        assert json.loads(first.receive_text())["event"] == "status"  # it holds the key's one stream
        with api.client.websocket_connect(f"/agents/{agent['id']}/ws", headers=key) as second:
            refused = json.loads(second.receive_text())
            assert refused["data"]["error"]["code"] == "E_RATE_LIMIT"
            with pytest.raises(WebSocketDisconnect) as closed:
                second.receive_text()
            assert closed.value.code == 1008
        assert api.client.delete(f"/keys/{key_id}", headers=api.admin).status_code == 200
        ended = json.loads(first.receive_text())
        assert ended["event"] == "error" and ended["data"]["error"]["code"] == "E_AUTH"
        with pytest.raises(WebSocketDisconnect) as closed:
            first.receive_text()
        assert closed.value.code == 1008

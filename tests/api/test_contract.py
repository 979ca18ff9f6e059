"""The outside of the API as SPEC §3/§15 pin it: /health's body, the OpenAPI document, parse errors."""

from __future__ import annotations

from typing import Any

import pytest

from tests.api.conftest import Api


def test_health_is_exactly_the_contracts_body(api: Api) -> None:
    r = api.client.get("/health")
    assert (r.status_code, r.json()) == (200, {"status": "ok"})


def test_openapi_has_stable_operation_ids_enums_and_declared_errors(api: Api) -> None:
    doc: dict[str, Any] = api.client.get("/openapi.json").json()
    ops = [(path, method, op) for path, item in doc["paths"].items() for method, op in item.items()]
    ids = [op["operationId"] for _p, _m, op in ops]
    assert len(ids) == len(set(ids))
    assert all("_" not in i for i in ids), ids  # not FastAPI's generated create_agent_agents_post
    schemas = doc["components"]["schemas"]
    assert set(schemas["AgentStatus"]["enum"]) >= {"pending", "running", "succeeded", "expired"}
    assert "lost" in schemas["Reason"]["enum"]
    assert "E_CAPACITY" in schemas["ErrorCode"]["enum"]
    assert schemas["AgentOut"]["properties"]["created_at"]["format"] == "date-time"
    for path, method, op in ops:
        if path.startswith("/agents"):
            for code in ("401", "404", "409", "413", "422", "429", "500", "503"):
                ref = op["responses"][code]["content"]["application/json"]["schema"]["$ref"]
                assert ref.endswith("/ErrorBody"), (method, path, code)


@pytest.mark.parametrize("query", ["cursor=%C2%B2", "cursor=-1", "cursor=99999999999999999999999"])
def test_a_bad_cursor_is_a_422_not_a_500(api: Api, query: str) -> None:
    agent = api.client.post("/agents", json={"model": "echo", "prompt": "hi"}, headers=api.admin).json()
    for url in (f"/agents?{query}", f"/agents/{agent['id']}/logs?{query}"):
        r = api.client.get(url, headers=api.admin)
        assert (r.status_code, r.json()["error"]["code"]) == (422, "E_SCHEMA"), url


def test_a_bad_last_event_id_is_a_422_not_a_500(api: Api) -> None:
    agent = api.client.post("/agents", json={"model": "echo", "prompt": "hi"}, headers=api.admin).json()
    r = api.client.get(f"/agents/{agent['id']}/stream", headers={**api.admin, "Last-Event-ID": "²".encode()})
    assert (r.status_code, r.json()["error"]["code"]) == (422, "E_SCHEMA")

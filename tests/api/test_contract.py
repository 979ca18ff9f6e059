"""The outside of the API as SPEC §3/§15 pin it: /health's body, the OpenAPI document, parse errors."""

from __future__ import annotations

from typing import Any

import pytest

from agentfactory.schemas import EventOut
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


def _timestamp_properties(node: Any, where: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every property named `at` or `*_at`, anywhere in a JSON schema document (components, inline
    bodies, nested definitions), with where it is."""
    found: list[tuple[str, dict[str, Any]]] = []
    if isinstance(node, dict):
        for name, prop in (node.get("properties") or {}).items():
            if isinstance(prop, dict) and (name == "at" or name.endswith("_at")):
                found.append((f"{where}.{name}", prop))
        for key, value in node.items():
            found += _timestamp_properties(value, f"{where}/{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            found += _timestamp_properties(value, f"{where}[{i}]")
    return found


def _is_date_time(prop: dict[str, Any]) -> bool:
    """`{"type": "string", "format": "date-time"}`, or that or null (`anyOf`/`oneOf` with a null)."""
    if prop.get("type") == "string":
        return prop.get("format") == "date-time"
    forms = prop.get("anyOf") or prop.get("oneOf") or []
    strings = [f for f in forms if f.get("type") != "null"]
    return bool(strings) and all(f.get("type") == "string" and f.get("format") == "date-time" for f in strings)


def test_every_timestamp_in_the_openapi_document_is_a_date_time(api: Api) -> None:
    doc: dict[str, Any] = api.client.get("/openapi.json").json()
    # EventOut is the `data:` of the /events stream, a text/event-stream body the document cannot name.
    found = _timestamp_properties(doc) + _timestamp_properties(EventOut.model_json_schema(), "EventOut")
    names = {where.rsplit("/", 1)[-1] for where, _prop in found}
    for expected in ("AgentOut.created_at", "WebhookOut.created_at", "DeliveryAttempt.at", "EventOut.created_at"):
        assert any(where.endswith(expected) for where, _prop in found), (expected, names)
    bad = [where for where, prop in found if not _is_date_time(prop)]
    assert not bad, bad


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

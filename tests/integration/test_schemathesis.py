"""Issue 8: no input breaks the API. Schemathesis generates requests from the running server's own
/openapi.json (loopback only), valid and invalid (negative mode), with the admin key; every answer
must be below 500, and every 4xx in the error envelope of SPEC §3.

Bounded: a fixed number of examples per operation (derandomized, so CI sees the same requests every
run), at least 1,000 requests in all. Failures are collected rather than raised inside Hypothesis, so
nothing is shrunk and the run time stays bounded; each is reported with its curl command.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import hypothesis.strategies as st
import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis import GenerationMode

from tests.support.server import ServerProcess

pytestmark = pytest.mark.docker

MIN_REQUESTS = 1_000
EXAMPLES_PER_OPERATION = 100  # operations without parameters stop early: their input space is tiny
# Only the `echo` model (answered by the gateway itself) and no network tool: whatever the generated
# requests launch talks to nothing but the control plane.
CATALOG = {
    "version": 1,
    "limits": {"default_ttl_seconds": 30, "max_ttl_seconds": 60},
    "models": [{"id": "echo", "provider": "echo", "description": "diagnostic model"}],
    "tools": [
        {"id": "python", "description": "run Python inside the sandbox", "network": False},
        {"id": "shell", "description": "run shell commands inside the sandbox", "network": False},
    ],
}


@pytest.fixture(scope="module")
def fuzz_server(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("schemathesis")
    catalog = work / "catalog.json"
    catalog.write_text(json.dumps(CATALOG))
    srv = ServerProcess(work, catalog=catalog).start()
    try:
        yield srv
    finally:
        srv.stop()
        srv.cleanup_containers()


# SPEC §3's table: each error code has one HTTP status (405 is the method-not-allowed form of 404).
STATUS_OF_CODE = {
    "E_SCHEMA": {422}, "E_CATALOG": {422}, "E_AUTH": {401}, "E_FORBIDDEN": {403}, "E_NOT_FOUND": {404, 405},
    "E_QUOTA": {429}, "E_RATE_LIMIT": {429}, "E_TOO_LARGE": {413}, "E_RUNTIME": {503}, "E_INTERNAL": {500},
}  # fmt: skip


def envelope_problem(response: requests.Response) -> str | None:
    """Why this error response is not `{"error": {"code", "message", "details"}, "request_id"}`."""
    try:
        body = response.json()
    except ValueError:
        return f"not JSON: {response.text[:200]!r}"
    if not isinstance(body, dict) or set(body) != {"error", "request_id"}:
        return f"top-level keys {sorted(body) if isinstance(body, dict) else type(body).__name__}"
    error = body["error"]
    if not isinstance(error, dict) or set(error) != {"code", "message", "details"}:
        return f"error keys {sorted(error) if isinstance(error, dict) else type(error).__name__}"
    if not (isinstance(error["code"], str) and error["code"].startswith("E_")):
        return f"code {error['code']!r}"
    if not (isinstance(error["message"], str) and error["message"]):
        return "empty message"
    if not isinstance(error["details"], list) or not isinstance(body["request_id"], str):
        return "details is not a list or request_id not a string"
    if "Traceback" in response.text:
        return "a traceback in the body"
    if response.status_code not in STATUS_OF_CODE.get(error["code"], {response.status_code}):
        return f"{error['code']} answered with HTTP {response.status_code}"
    return None


def test_generated_requests_never_get_a_5xx_or_an_error_outside_the_envelope(
    fuzz_server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    schema = schemathesis.openapi.from_url(fuzz_server.url + "/openapi.json")
    auth = {"Authorization": f"Bearer {fuzz_server.admin_key}"}
    session = requests.Session()
    sent: dict[str, int] = {}
    statuses: dict[int, int] = {}
    failures: list[str] = []
    started = time.monotonic()

    def exercise(operation: Any) -> None:
        strategy = st.one_of(
            operation.as_strategy(GenerationMode.POSITIVE), operation.as_strategy(GenerationMode.NEGATIVE)
        )

        @given(case=strategy)
        @settings(
            max_examples=EXAMPLES_PER_OPERATION,
            deadline=None,
            database=None,
            derandomize=True,
            phases=[Phase.generate],
            suppress_health_check=list(HealthCheck),
        )
        def call(case: Any) -> None:
            # Our admin key replaces whatever bearer token the generator made up for the security scheme.
            headers = {k: v for k, v in (case.headers or {}).items() if k.lower() != "authorization"} | auth
            try:
                response = case.call(base_url=fuzz_server.url, session=session, headers=headers, timeout=15)
            except (requests.exceptions.InvalidHeader, requests.exceptions.InvalidURL, UnicodeError):
                return  # the HTTP client refused to send it: nothing reached the server
            sent[operation.label] = sent.get(operation.label, 0) + 1
            statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
            problem = None
            if response.status_code >= 500:
                problem = f"{response.status_code}: {response.text[:300]}"
            elif response.status_code >= 400:
                problem = envelope_problem(response)
            if problem:
                failures.append(f"{operation.label} → {problem}\n    {case.as_curl_command(headers=headers)}")

        call()

    for result in schema.get_all_operations():
        operation = result.ok()
        if operation.path.startswith("/mcp"):
            continue
        if operation.path == "/events":
            continue  # a valid request is an endless stream (tests/api/test_events_webhooks.py covers it)
        if (operation.method.upper(), operation.path) == ("POST", "/webhooks"):
            continue  # a generated host name would be resolved: a DNS query leaves the machine (same file)
        exercise(operation)

    elapsed = time.monotonic() - started
    total = sum(sent.values())
    with capsys.disabled():
        print(f"\nschemathesis: {total} requests over {len(sent)} operations in {elapsed:.0f}s; statuses {statuses}")
        for label, n in sorted(sent.items()):
            print(f"  {n:5}  {label}")
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures[:20])
    assert total >= MIN_REQUESTS


def test_a_body_that_is_not_utf8_is_e_schema_422(fuzz_server: ServerProcess) -> None:
    # Found by schemathesis: FastAPI answers 400 to a body it cannot decode; SPEC §3 says E_SCHEMA/422.
    headers = {"Authorization": f"Bearer {fuzz_server.admin_key}", "Content-Type": "application/json"}
    for path in ("/agents", "/keys", "/agents/ag_x/ttl"):
        r = requests.post(fuzz_server.url + path, data=b"\xff\xfe{", headers=headers, timeout=10)
        assert r.status_code == 422, (path, r.status_code, r.text)
        assert r.json()["error"]["code"] == "E_SCHEMA" and envelope_problem(r) is None

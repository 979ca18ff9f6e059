"""Issue 10: an MCP client session from the SDK against the real server process and Docker Engine.

Each test drives its session inside `run(...)`, which bounds it with a deadline; the `sh` model of
`shell_server` runs its prompt as a shell command, so `sleep 30` is an agent that keeps running.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Coroutine
from contextlib import asynccontextmanager
from typing import Any, TypeVar

import httpx
import httpx2
import pytest
from mcp.client.session import ClientSession
from mcp.client.stdio import StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client
from mcp_types import CallToolResult

from agentfactory.schemas import AgentCreate, TtlUpdate
from tests.support.server import ROOT, ServerProcess, all_log_lines, wait_terminal

pytestmark = pytest.mark.docker

T = TypeVar("T")
RELAY = (
    "import sys; from agentfactory.mcp.stdio import run_stdio; sys.exit(run_stdio(sys.argv[1], sys.argv[2] or None))"
)
TOOLS = {
    *("list_catalog", "launch_agent", "get_agent", "read_logs", "wait_agent", "cancel_agent", "extend_ttl"),
    "read_artifact",
}


def run(coro: Coroutine[Any, Any, T], timeout: float = 60) -> T:
    return asyncio.run(asyncio.wait_for(coro, timeout))


@asynccontextmanager
async def mcp_session(srv: ServerProcess, key: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=httpx2.Timeout(30, read=120)) as http,
        streamable_http_client(srv.url + "/mcp", http_client=http) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


async def connect(srv: ServerProcess, key: str | None) -> None:
    async with mcp_session(srv, key):
        pass


def make_key(srv: ServerProcess, name: str, **quota: Any) -> str:
    with srv.client() as admin:
        r = admin.post("/keys", json={"name": name, **quota})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


def ok(result: CallToolResult) -> dict[str, Any]:
    assert not result.is_error, result.content
    assert result.structured_content is not None
    return result.structured_content


def error_of(result: CallToolResult) -> dict[str, Any]:
    """The `error` of a tool error's envelope (also in its text, for hosts that show only text)."""
    assert result.is_error, result.structured_content
    assert result.structured_content is not None
    body = result.structured_content
    assert body["request_id"].startswith("req_")
    assert body["error"]["code"] in result.content[0].text  # type: ignore[union-attr]
    error: dict[str, Any] = body["error"]
    return error


def error_code(result: CallToolResult) -> str:
    return str(error_of(result)["code"])


@pytest.fixture(scope="module")
def key_a(shell_server: ServerProcess) -> str:
    return make_key(shell_server, "mcp-a")


def test_tools_are_listed_with_schemas_from_the_http_models(shell_server: ServerProcess, key_a: str) -> None:
    async def scenario() -> Any:
        async with mcp_session(shell_server, key_a) as s:
            return (await s.list_tools()).tools, (await s.list_resource_templates()).resource_templates

    tools, templates = run(scenario())
    by_name = {t.name: t for t in tools}
    assert set(by_name) == TOOLS
    for tool in tools:
        assert tool.description and tool.input_schema["type"] == "object", tool.name
        assert tool.input_schema.get("additionalProperties") is False, tool.name
        assert tool.output_schema and tool.output_schema["type"] == "object", tool.name
    launch = by_name["launch_agent"].input_schema
    http = AgentCreate.model_json_schema()
    assert launch["required"] == http["required"] == ["model", "prompt"]
    for field in ("model", "prompt", "tools", "ttl_seconds", "env", "metadata", "token_budget"):
        described = {k: v for k, v in launch["properties"][field].items() if k != "description"}
        assert described == http["properties"][field], field
    assert "secrets" not in launch["properties"]
    ttl = by_name["extend_ttl"].input_schema["properties"]["ttl_seconds"]
    assert ttl["minimum"] == TtlUpdate.model_json_schema()["properties"]["ttl_seconds"]["minimum"]
    assert by_name["wait_agent"].input_schema["properties"]["timeout_seconds"]["maximum"] == 300
    assert [t.uri_template for t in templates] == [
        "agentfactory://agents/{agent_id}/logs{?cursor,limit,stream}",
        "agentfactory://agents/{agent_id}/artifacts/{+path}",
    ]


def test_launch_echo_then_wait_returns_succeeded_and_the_output(shell_server: ServerProcess, key_a: str) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with mcp_session(shell_server, key_a) as s:
            catalog = ok(await s.call_tool("list_catalog", {}))
            launched = ok(
                await s.call_tool(
                    "launch_agent", {"model": "echo", "prompt": "hello from mcp", "metadata": {"via": "mcp"}}
                )
            )
            waited = ok(await s.call_tool("wait_agent", {"agent_id": launched["id"], "timeout_seconds": 60}))
            return catalog, launched, waited

    catalog, launched, waited = run(scenario(), timeout=90)
    assert "echo" in {m["id"] for m in catalog["models"]}
    assert launched["id"].startswith("ag_") and launched["status"] in ("starting", "running", "succeeded")
    assert waited["done"] is True
    result = waited["result"]
    assert (result["status"], result["reason"], result["exit_code"]) == ("succeeded", "exit", 0)
    assert result["seal"]["log_lines"] == len(waited["tail"]) > 0
    finals = [json.loads(line["text"]) for line in waited["tail"] if '"final"' in line["text"]]
    assert finals and finals[-1]["content"] == "hello from mcp"
    with shell_server.client(key_a) as c:
        assert c.get(f"/agents/{launched['id']}/result").json() == result
        assert c.get(f"/agents/{launched['id']}").json()["metadata"] == {"via": "mcp"}


def test_launch_with_artifacts_then_read_one(shell_server: ServerProcess, key_a: str) -> None:
    async def scenario() -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
        async with mcp_session(shell_server, key_a) as s:
            args = {"model": "sh", "tools": ["shell"], "prompt": "mkdir -p out && seq 1 5000 > out/n.txt",
                    "artifacts": ["out/*.txt"]}  # fmt: skip
            launched = ok(await s.call_tool("launch_agent", args))
            waited = ok(await s.call_tool("wait_agent", {"agent_id": launched["id"], "timeout_seconds": 60}))
            read = ok(await s.call_tool("read_artifact", {"agent_id": launched["id"], "path": "out/n.txt",
                                                           "max_bytes": 10}))  # fmt: skip
            missing = error_of(await s.call_tool("read_artifact", {"agent_id": launched["id"], "path": "nope"}))
            return waited, read, missing

    waited, read, missing = run(scenario())
    assert waited["done"] and waited["result"]["artifacts"]["items"][0]["path"] == "out/n.txt"
    assert read["text"] == "1\n2\n3\n4\n5\n" and read["truncated"] is True
    assert read["bytes"] == waited["result"]["artifacts"]["items"][0]["bytes"]
    assert missing["code"] == "E_NOT_FOUND"


def test_artifacts_are_resources_read_bounded_as_text_or_base64_for_their_key_only(
    shell_server: ServerProcess, key_a: str
) -> None:
    key_b = make_key(shell_server, "mcp-b-artifacts")
    prompt = (
        "mkdir -p out/sub && seq 1 50000 > 'out/sub/big list.txt' && printf 'x\\000\\377y' > out/bin.dat "
        "&& : > out/empty.txt"
    )
    with shell_server.client(key_a) as c:
        body = {"model": "sh", "tools": ["shell"], "prompt": prompt, "artifacts": ["out/**"]}
        agent = c.post("/agents", json=body).json()
        assert wait_terminal(c, agent["id"], timeout=60)["status"] == "succeeded"
        http = {
            p: c.get(f"/agents/{agent['id']}/artifacts/{p}").content for p in ("out/sub/big list.txt", "out/bin.dat")
        }
    base = f"agentfactory://agents/{agent['id']}/artifacts/"
    big, binary, empty = base + "out/sub/big%20list.txt", base + "out/bin.dat", base + "out/empty.txt"

    async def scenario() -> tuple[Any, ...]:
        async with mcp_session(shell_server, key_a) as s:
            templates = {t.uri_template for t in (await s.list_resource_templates()).resource_templates}
            listed = {str(r.uri): r for r in (await s.list_resources()).resources}
            reads = [(await s.read_resource(uri)).contents[0] for uri in (big, binary, empty)]
        async with mcp_session(shell_server, key_b) as s:
            others = {str(r.uri) for r in (await s.list_resources()).resources}
            try:
                await s.read_resource(big)
                refused: Exception | None = None
            except Exception as exc:  # the SDK raises the JSON-RPC error
                refused = exc
        return templates, listed, reads, others, refused

    templates, listed, (text, blob, nothing), others, refused = run(scenario())
    assert "agentfactory://agents/{agent_id}/artifacts/{+path}" in templates
    assert {big, binary, empty} <= set(listed) and listed[big].size == len(http["out/sub/big list.txt"])
    assert text.text == http["out/sub/big list.txt"][:131_072].decode() and text.mime_type == "text/plain"
    assert text.meta == {"bytes": 288_894, "sha256": hashlib.sha256(http["out/sub/big list.txt"]).hexdigest(),
                         "truncated": True}  # fmt: skip
    assert base64.b64decode(blob.blob) == http["out/bin.dat"] == b"x\0\xffy" and blob.meta["truncated"] is False
    assert nothing.text == "" and nothing.meta["bytes"] == 0
    assert not any(uri.startswith(base) for uri in others)
    assert refused is not None and "E_NOT_FOUND" in str(refused), refused


def test_read_logs_pages_equal_the_http_pages(shell_server: ServerProcess, key_a: str) -> None:
    with shell_server.client(key_a) as c:
        prompt = "for i in 1 2 3 4 5 6 7; do echo line-$i; done"
        agent = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": prompt}).json()
        assert wait_terminal(c, agent["id"], timeout=60)["status"] == "succeeded"

        def http_page(**params: Any) -> dict[str, Any]:
            page: dict[str, Any] = c.get(f"/agents/{agent['id']}/logs", params=params).json()
            return page

        async def scenario() -> None:
            async with mcp_session(shell_server, key_a) as s:
                cursor, pages = None, 0
                while True:
                    args = {"agent_id": agent["id"], "limit": 3, **({"cursor": cursor} if cursor else {})}
                    page = ok(await s.call_tool("read_logs", args))
                    assert page == http_page(limit=3, **({"cursor": cursor} if cursor else {}))
                    pages += 1
                    if page["complete"]:
                        break
                    cursor = page["next_cursor"]
                assert pages >= 3
                stdout = ok(await s.call_tool("read_logs", {"agent_id": agent["id"], "stream": "stdout"}))
                assert stdout == http_page(stream="stdout", limit=200)
                assert {f"line-{i}" for i in range(1, 8)} <= {line["text"] for line in stdout["lines"]}
                resource = await s.read_resource(f"agentfactory://agents/{agent['id']}/logs?cursor=2&limit=4")
                assert json.loads(resource.contents[0].text) == http_page(cursor=2, limit=4)  # type: ignore[union-attr]
                listed = (await s.list_resources()).resources
                assert f"agentfactory://agents/{agent['id']}/logs" in {str(r.uri) for r in listed}

        run(scenario())


def test_read_logs_pages_are_bounded_in_bytes(shell_server: ServerProcess, key_a: str) -> None:
    with shell_server.client(key_a) as c:
        prompt = "for i in $(seq 1 40); do head -c 60000 /dev/zero | tr '\\0' x; echo; done"
        agent = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": prompt}).json()
        assert wait_terminal(c, agent["id"], timeout=60)["status"] == "succeeded"
        http_lines = all_log_lines(c, agent["id"])
        assert sum(len(line["text"]) == 60000 for line in http_lines) == 40

    async def scenario() -> list[dict[str, Any]]:
        async with mcp_session(shell_server, key_a) as s:
            lines: list[dict[str, Any]] = []
            cursor = "0"
            for _ in range(40):
                page = ok(await s.call_tool("read_logs", {"agent_id": agent["id"], "cursor": cursor, "limit": 1000}))
                assert 0 < sum(len(line["text"]) for line in page["lines"]) <= 196_608
                lines.extend(page["lines"])
                if page["complete"]:
                    return lines
                cursor = page["next_cursor"]
            raise AssertionError("read_logs never completed")

    assert run(scenario()) == http_lines


def test_without_a_valid_key_the_session_is_refused(shell_server: ServerProcess) -> None:
    for key in (None, "af_not_a_key"):
        with pytest.raises(Exception):  # noqa: B017 - the SDK reports the HTTP 401 inside task groups
            run(connect(shell_server, key), timeout=30)
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        init = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
        r = httpx.post(shell_server.url + "/mcp", json=init, headers=headers, timeout=10)
        assert r.status_code == 401 and r.json()["error"]["code"] == "E_AUTH" and r.json()["request_id"]
    with shell_server.client() as c:
        for method, path, status in [("POST", "/mcp/nope", 404), ("GET", "/mcp", 405), ("DELETE", "/mcp", 405)]:
            r = c.request(method, path)
            assert r.status_code == status and r.json()["error"]["code"] == "E_NOT_FOUND", (method, path)
        openapi = c.get("/openapi.json")
        assert openapi.status_code == 200 and "/mcp" not in openapi.json()["paths"]


def test_key_b_cannot_see_or_touch_key_a_agent(shell_server: ServerProcess, key_a: str) -> None:
    key_b = make_key(shell_server, "mcp-b")
    with shell_server.client(key_a) as a, shell_server.client(key_b) as b:
        agent = a.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": "sleep 30"}).json()
        try:
            http_404 = b.get(f"/agents/{agent['id']}").json()["error"]
            assert http_404["code"] == "E_NOT_FOUND"

            async def scenario() -> list[dict[str, Any]]:
                async with mcp_session(shell_server, key_b) as s:
                    calls = [
                        ("get_agent", {}),
                        ("read_logs", {}),
                        ("wait_agent", {"timeout_seconds": 1}),
                        ("cancel_agent", {}),
                        ("extend_ttl", {"ttl_seconds": 60}),
                    ]
                    out = []
                    for name, extra in calls:
                        error = error_of(await s.call_tool(name, {"agent_id": agent["id"], **extra}))
                        assert error["code"] == "E_NOT_FOUND", name
                        out.append(error)
                    return out

            for error in run(scenario()):
                assert error["message"] == http_404["message"]
            assert a.get(f"/agents/{agent['id']}").json()["status"] in ("starting", "running")
        finally:
            a.delete(f"/agents/{agent['id']}")


def test_a_key_at_its_quota_gets_e_quota(shell_server: ServerProcess) -> None:
    key = make_key(shell_server, "mcp-quota", max_concurrent_agents=1, max_ttl_seconds=600)

    async def scenario() -> None:
        async with mcp_session(shell_server, key) as s:
            sleeper = {"model": "sh", "tools": ["shell"], "prompt": "sleep 30", "ttl_seconds": 60}
            first = ok(await s.call_tool("launch_agent", sleeper))
            try:
                refused = error_of(await s.call_tool("launch_agent", {"model": "echo", "prompt": "one too many"}))
                assert refused["code"] == "E_QUOTA" and refused["retry_after"] >= 1
                queued = ok(
                    await s.call_tool(
                        "launch_agent", {"model": "echo", "prompt": "room again", "queue_timeout_seconds": 120}
                    )
                )
                assert queued["status"] == "queued" and queued["queue_position"] == 1

                t0 = time.monotonic()
                waited = ok(await s.call_tool("wait_agent", {"agent_id": first["id"], "timeout_seconds": 1}))
                assert waited["done"] is False and waited["result"]["status"] == "running"
                assert time.monotonic() - t0 < 10

                extended = ok(await s.call_tool("extend_ttl", {"agent_id": first["id"], "ttl_seconds": 500}))
                assert extended["expires_at"] > first["expires_at"]
                too_long = await s.call_tool("extend_ttl", {"agent_id": first["id"], "ttl_seconds": 601})
                assert error_code(too_long) == "E_SCHEMA"
            finally:
                cancelled = ok(await s.call_tool("cancel_agent", {"agent_id": first["id"]}))
            assert cancelled["status"] == "cancelled" and cancelled["reason"] == "cancelled"
            # The slot it freed goes to the queued agent.
            done = ok(await s.call_tool("wait_agent", {"agent_id": queued["id"], "timeout_seconds": 60}))
            assert done["result"]["status"] == "succeeded"

    run(scenario(), timeout=120)


def test_bad_arguments_are_tool_errors_and_create_nothing(shell_server: ServerProcess) -> None:
    key = make_key(shell_server, "mcp-bad", max_ttl_seconds=600)
    before = set(shell_server.containers())
    cases: list[tuple[dict[str, Any], str]] = [
        ({"model": "gpt-9", "prompt": "x"}, "E_CATALOG"),
        ({"model": "echo", "tools": ["laser"], "prompt": "x"}, "E_CATALOG"),
        ({"model": "echo", "prompt": "x", "ttl_seconds": 999_999}, "E_SCHEMA"),
        ({"model": "echo", "prompt": "x", "ttl_seconds": 601}, "E_SCHEMA"),
        ({"model": "echo", "prompt": "x", "ttl_seconds": "soon"}, "E_SCHEMA"),
        ({"model": "echo"}, "E_SCHEMA"),
        ({"model": "echo", "prompt": "x", "colour": "red"}, "E_SCHEMA"),
        ({"model": "echo", "prompt": "x", "secrets": {"GH_TOKEN": "ghp_x"}}, "E_SCHEMA"),
        ({"model": "echo", "prompt": "x", "env": {"PATH": "/evil"}}, "E_SCHEMA"),
    ]

    async def scenario() -> list[dict[str, Any]]:
        async with mcp_session(shell_server, key) as s:
            errors = []
            for args, code in cases:
                error = error_of(await s.call_tool("launch_agent", args))
                assert error["code"] == code, args
                errors.append(error)
            assert error_code(await s.call_tool("read_logs", {"agent_id": "ag_x", "limit": 0})) == "E_SCHEMA"
            assert error_code(await s.call_tool("wait_agent", {"agent_id": "ag_x", "timeout_seconds": 301})) == (
                "E_SCHEMA"
            )
            return errors

    errors = run(scenario())
    assert errors[0]["details"] and errors[5]["details"][0]["loc"] == ["prompt"]
    with shell_server.client(key) as c:
        assert c.get("/agents").json()["items"] == []
    assert set(shell_server.containers()) <= before


def test_stdio_relay_serves_the_same_tools(shell_server: ServerProcess, key_a: str) -> None:
    params = StdioServerParameters(command=sys.executable, args=["-c", RELAY, shell_server.url, key_a], cwd=ROOT)

    async def scenario() -> tuple[set[str], dict[str, Any], str]:
        async with stdio_client(params) as (read, write), ClientSession(read, write) as s:
            await s.initialize()
            names = {t.name for t in (await s.list_tools()).tools}
            launched = ok(await s.call_tool("launch_agent", {"model": "echo", "prompt": "over stdio"}))
            waited = ok(await s.call_tool("wait_agent", {"agent_id": launched["id"], "timeout_seconds": 60}))
            return names, waited, error_code(await s.call_tool("get_agent", {"agent_id": "ag_nope"}))

    names, waited, missing = run(scenario(), timeout=90)
    assert names == TOOLS and missing == "E_NOT_FOUND"
    assert waited["result"]["status"] == "succeeded"
    assert any("over stdio" in line["text"] for line in waited["tail"])
    for key, code in (("", 2), ("af_not_a_key", 3)):
        refused = subprocess.run(
            [sys.executable, "-c", RELAY, shell_server.url, key], cwd=ROOT, capture_output=True, text=True, timeout=60
        )
        assert refused.returncode == code and "agentfactory mcp:" in refused.stderr

"""What one agent may send the gateway (SPEC §14): real sockets, a real SQLite store, a fake upstream."""

from __future__ import annotations

import concurrent.futures
import contextlib
import json
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI, Reply, completion, final_answer
from tests.fakes.gateway_harness import GatewayHarness, make_catalog
from tests.support.server import wait_until

MESSAGES = [{"role": "user", "content": "hello there"}]


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(final_answer("hi")) as fake:
        yield fake


def harness_with(upstream: FakeOpenAI, **limits: Any) -> GatewayHarness:
    from agentfactory.gateway.limits import GatewayLimits

    return GatewayHarness(make_catalog(upstream.base_url), limits=GatewayLimits(**limits))


def client_for(h: GatewayHarness, timeout: float = 10) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(h.socket_path)), base_url="http://gateway", timeout=timeout
    )


def chat(client: httpx.Client, token: str, **body: Any) -> httpx.Response:
    return client.post(
        "/v1/chat/completions",
        json={"messages": MESSAGES, **body},
        headers={"Authorization": f"Bearer {token}"},
    )


def raw_request(path: Path, head: bytes, body: bytes = b"", timeout: float = 10) -> tuple[int, bytes, float]:
    """Send a request's head (and maybe part of a body) on a raw socket; (status, response, seconds)."""
    started = time.monotonic()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(str(path))
        # refused at accept: answered and closed before the request was all sent
        with contextlib.suppress(BrokenPipeError):
            sock.sendall(head + body)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    status = int(data.split(b" ", 2)[1]) if data else 0
    return status, data, time.monotonic() - started


def head_for(token: str, length: int | None) -> bytes:
    framing = f"Content-Length: {length}" if length is not None else "Transfer-Encoding: chunked"
    return (
        f"POST /v1/chat/completions HTTP/1.1\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n"
        f"Content-Type: application/json\r\n{framing}\r\n\r\n"
    ).encode()


# --- body size ----------------------------------------------------------------------------------


def test_a_body_over_the_cap_is_refused_from_its_head_alone(upstream: FakeOpenAI) -> None:
    with harness_with(upstream) as h:
        _, token = h.add_agent("echo", token_budget=1_000_000)
        # Only the head is sent: the 413 comes without the gateway waiting for 32 MiB.
        status, data, seconds = raw_request(h.socket_path, head_for(token, 32 * 1024 * 1024))
        assert status == 413 and b"E_TOO_LARGE" in data and seconds < 2
        assert b"Connection: close" in data


def test_a_chunked_body_over_the_cap_is_refused_without_reading_past_it(upstream: FakeOpenAI) -> None:
    cap = 256 * 1024
    with harness_with(upstream, max_body_bytes=cap) as h:
        _, token = h.add_agent("echo", token_budget=1_000_000)
        chunk = b"x" * 65536
        framed = f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n"
        sent = 0
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(10)
            sock.connect(str(h.socket_path))
            sock.sendall(head_for(token, None))
            try:
                while sent < 32 * 1024 * 1024:
                    sock.sendall(framed)
                    sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError):
                pass
            data = sock.recv(65536)
        assert b" 413 " in data.split(b"\r\n", 1)[0] and b"E_TOO_LARGE" in data
        # Refused once past the cap, plus what sat in the socket's buffers: far from 32 MiB.
        assert sent < 8 * cap


def test_a_large_body_is_parsed_in_a_worker_process_and_answered(upstream: FakeOpenAI) -> None:
    with harness_with(upstream, inline_json_bytes=1024) as h, client_for(h) as c:
        _, token = h.add_agent("echo", token_budget=1_000_000)
        text = "数据" * 50_000
        response = c.post(
            "/v1/chat/completions",
            json={"messages": [{"role": "user", "content": text}], "max_tokens": 100_000},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["message"]["content"] == text


def test_bodies_that_are_not_json_or_not_unicode_are_refused(upstream: FakeOpenAI) -> None:
    with harness_with(upstream, inline_json_bytes=0) as h, client_for(h) as c:
        _, token = h.add_agent("echo")
        headers = {"Authorization": f"Bearer {token}"}
        for body in (b"{nope", b'{"messages": [], "x": NaN}', b'{"messages": [{"content": "\\ud800"}]}'):
            response = c.post("/v1/chat/completions", content=body, headers=headers)
            assert response.status_code == 422, body
        assert chat(c, token, max_tokens=0).status_code == 422
        assert chat(c, token).status_code == 200
        assert h.agent_reserved_total() == 0


# --- per-agent limits ---------------------------------------------------------------------------


def test_calls_in_flight_per_agent_are_bounded(upstream: FakeOpenAI) -> None:
    upstream.responder = lambda _body: Reply(200, completion("late"), delay=1.0)
    with harness_with(upstream, max_concurrent_calls_per_agent=2) as h:
        _, busy = h.add_agent("fake")
        _, other = h.add_agent("fake")

        def call(token: str) -> int:
            with client_for(h) as c:
                return chat(c, token).status_code

        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            mine = [pool.submit(call, busy) for _ in range(5)]
            wait_until(lambda: len(upstream.seen) >= 2, timeout=5, what="two calls upstream")
            theirs = pool.submit(call, other)
            codes = sorted(f.result() for f in mine)
        assert codes == [200, 200, 429, 429, 429]
        assert theirs.result() == 200


def test_calls_per_second_per_agent_are_bounded(upstream: FakeOpenAI) -> None:
    with harness_with(upstream, calls_per_second_per_agent=1, call_burst_per_agent=3) as h, client_for(h) as c:
        _, token = h.add_agent("echo")
        _, other = h.add_agent("echo")
        codes = [chat(c, token).status_code for _ in range(4)]
        assert codes == [200, 200, 200, 429]
        refused = chat(c, token)
        assert refused.json()["error"]["code"] == "E_RATE_LIMIT" and int(refused.headers["Retry-After"]) >= 1
        assert chat(c, other).status_code == 200


def test_max_tokens_is_clamped_to_the_budget_left_and_n_is_one(upstream: FakeOpenAI) -> None:
    with harness_with(upstream) as h, client_for(h) as c:
        agent_id, token = h.add_agent("fake", token_budget=2000)
        assert chat(c, token, max_tokens=50_000, n=8).status_code == 200
        assert chat(c, token, max_completion_tokens=30).status_code == 200
        first, second = upstream.seen
        assert "n" not in first.body and first.body["max_tokens"] < 2000
        assert second.body["max_completion_tokens"] == 30 and "max_tokens" not in second.body
        assert h.agent(agent_id).tokens_reserved == 0


def test_twenty_concurrent_calls_never_spend_more_than_a_budget_for_three(upstream: FakeOpenAI) -> None:
    # Each call writes all the max_tokens it may (20) and counts a token per prompt byte: the worst case.
    upstream.responder = lambda body: Reply(
        200, completion("x", usage=(len(json.dumps(body["messages"])), body["max_tokens"])), delay=0.3
    )
    body = {"messages": MESSAGES, "max_tokens": 20}
    per_call = len(json.dumps(body)) + 20
    with harness_with(upstream, max_concurrent_calls_per_agent=20, call_burst_per_agent=20) as h:
        agent_id, token = h.add_agent("fake", token_budget=3 * per_call)

        def call(_: int) -> int:
            with client_for(h) as c:
                return c.post(
                    "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {token}"}
                ).status_code

        with concurrent.futures.ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(call, range(20)))
        row = h.agent(agent_id)
        assert row.tokens_prompt + row.tokens_completion <= row.token_budget
        assert codes.count(200) == row.model_calls == len(upstream.seen) == 3
        assert row.tokens_reserved == 0


# --- connections --------------------------------------------------------------------------------


def test_idle_connections_cannot_crowd_out_a_working_agent(upstream: FakeOpenAI) -> None:
    with harness_with(upstream, max_connections=8) as h, client_for(h) as c:
        _, token = h.add_agent("echo")
        idle = []
        for _ in range(50):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(str(h.socket_path))
            idle.append(sock)
        try:
            for _ in range(5):
                assert chat(c, token).status_code == 200
            wait_until(lambda: h.gateway_connections() <= 8, timeout=5, what="the cap held")
        finally:
            for sock in idle:
                sock.close()


def test_full_of_working_connections_a_new_one_is_refused_with_503(upstream: FakeOpenAI) -> None:
    upstream.responder = lambda _body: Reply(200, completion("late"), delay=1.5)
    with harness_with(upstream, max_connections=8, max_connections_per_agent=2) as h:
        tokens = [h.add_agent("fake")[1] for _ in range(4)]

        def call(token: str) -> int:
            with client_for(h) as c:
                return chat(c, token).status_code

        with concurrent.futures.ThreadPoolExecutor(8) as pool:
            busy = [pool.submit(call, t) for t in tokens for _ in range(2)]
            wait_until(lambda: len(upstream.seen) == 8, timeout=5, what="eight calls upstream")
            status, data, _ = raw_request(h.socket_path, b"GET /health HTTP/1.1\r\nHost: g\r\n\r\n")
            assert status == 503 and b"E_CAPACITY" in data
            assert [f.result() for f in busy] == [200] * 8


def test_one_agent_may_hold_only_so_many_connections(upstream: FakeOpenAI) -> None:
    with harness_with(upstream, max_connections_per_agent=3) as h:
        _, token = h.add_agent("echo")
        body = json.dumps({"messages": MESSAGES}).encode()
        socks = []
        try:
            for _ in range(3):  # keep-alive connections, each with one answered call
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                sock.settimeout(5)
                sock.connect(str(h.socket_path))
                sock.sendall(head_for(token, len(body)) + body)
                assert b" 200 " in sock.recv(65536).split(b"\r\n", 1)[0]
                socks.append(sock)
            status, data, _ = raw_request(h.socket_path, head_for(token, len(body)), body)
            assert status == 429 and b"connections" in data
        finally:
            for sock in socks:
                sock.close()


def test_a_connection_that_sends_nothing_is_closed_after_the_header_timeout(upstream: FakeOpenAI) -> None:
    with harness_with(upstream, header_timeout_seconds=0.5) as h, socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(h.socket_path))
        started = time.monotonic()
        assert sock.recv(1) == b""  # closed by the gateway
        assert 0.3 < time.monotonic() - started < 4


# --- the runtime's spec -------------------------------------------------------------------------


def test_the_spec_is_served_to_the_agent_s_token_only(upstream: FakeOpenAI) -> None:
    with harness_with(upstream) as h, client_for(h) as c:
        prompt = "汉字" * 40_000
        agent_id, token = h.add_agent("echo", prompt=prompt)
        response = c.get("/v1/agent/spec", headers={"Authorization": f"Bearer {token}"})
        assert response.status_code == 200
        spec = response.json()
        assert spec["agent_id"] == agent_id and spec["prompt"] == prompt and spec["model"] == "echo"
        assert [t["id"] for t in spec["tools"]] == ["python", "shell"]
        assert spec["tool_output_limit"] == 16_384
        assert c.get("/v1/agent/spec", headers={"Authorization": "Bearer nope"}).status_code == 401
        h.set_status(agent_id, "succeeded")
        assert c.get("/v1/agent/spec", headers={"Authorization": f"Bearer {token}"}).status_code == 401

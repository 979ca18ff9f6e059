"""The model gateway against a fake OpenAI-compatible upstream: real sockets, a real SQLite store."""

from __future__ import annotations

import concurrent.futures
import json
import os
import socket
import stat
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.fakes.fake_openai import (
    FakeOpenAI,
    Reply,
    closed_port_url,
    completion,
    failing,
    final_answer,
    garbage,
    slow,
    streamed,
)
from tests.fakes.gateway_harness import KEY_VALUE, GatewayHarness, make_catalog

MESSAGES = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello there"}]


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(final_answer("hi from upstream")) as fake:
        yield fake


@pytest.fixture
def harness(upstream: FakeOpenAI) -> Iterator[GatewayHarness]:
    with GatewayHarness(make_catalog(upstream.base_url)) as h:
        yield h


def client_for(h: GatewayHarness, timeout: float = 10) -> httpx.Client:
    return httpx.Client(
        transport=httpx.HTTPTransport(uds=str(h.socket_path)), base_url="http://gateway", timeout=timeout
    )


@pytest.fixture
def client(harness: GatewayHarness) -> Iterator[httpx.Client]:
    with client_for(harness) as c:
        yield c


def chat(client: httpx.Client, token: str | None, **body: object) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    return client.post("/v1/chat/completions", json={"messages": MESSAGES, **body}, headers=headers)


def error_of(response: httpx.Response) -> tuple[str, str]:
    err = response.json()["error"]
    return err["code"], err["message"]


# --- serving --------------------------------------------------------------------------------


def test_health_and_socket_mode(harness: GatewayHarness, client: httpx.Client) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert stat.S_IMODE(os.stat(harness.socket_path).st_mode) == 0o666
    assert stat.S_IMODE(os.stat(harness.socket_dir).st_mode) == 0o755


def test_unknown_route_is_a_json_error(client: httpx.Client) -> None:
    response = client.get("/v1/models")
    assert response.status_code == 404
    assert error_of(response)[0] == "E_NOT_FOUND"


def test_stale_socket_is_replaced_but_a_live_one_is_not(upstream: FakeOpenAI) -> None:
    h = GatewayHarness(make_catalog(upstream.base_url))
    h.socket_dir.mkdir(parents=True)
    stale = socket.socket(socket.AF_UNIX)
    stale.bind(str(h.socket_path))
    stale.close()  # bound, never listening: what a crashed control plane leaves behind
    with h, client_for(h) as c:
        assert c.get("/health").status_code == 200
        second = GatewayHarness(make_catalog(upstream.base_url))
        second.gateway.socket_path = h.socket_path
        with pytest.raises(RuntimeError, match="another model gateway"):
            second.start()
        second.stop()
        assert c.get("/health").status_code == 200


# --- providers ------------------------------------------------------------------------------


def test_echo_answers_the_last_user_message_and_counts_tokens(harness: GatewayHarness, client: httpx.Client) -> None:
    agent_id, token = harness.add_agent("echo")
    response = chat(client, token)
    assert response.status_code == 200
    answer = response.json()
    assert answer["choices"][0]["message"] == {"role": "assistant", "content": "hello there"}
    assert "tool_calls" not in answer["choices"][0]["message"]
    row = harness.agent(agent_id)
    assert (row.tokens_prompt, row.tokens_completion) == (
        answer["usage"]["prompt_tokens"],
        answer["usage"]["completion_tokens"],
    )
    assert row.tokens_completion == 3 and row.model_calls == 1


def test_openai_call_carries_the_control_plane_key_and_the_upstream_model(
    harness: GatewayHarness, client: httpx.Client, upstream: FakeOpenAI
) -> None:
    agent_id, token = harness.add_agent("fake")
    response = chat(client, token, model="fake", temperature=0)
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "hi from upstream"
    [seen] = upstream.seen
    assert seen.path == "/v1/chat/completions"
    assert seen.authorization == f"Bearer {KEY_VALUE}"
    assert seen.body == {"messages": MESSAGES, "model": "fake-upstream-v1", "temperature": 0, "max_tokens": 4096}
    row = harness.agent(agent_id)
    assert (row.tokens_prompt, row.tokens_completion, row.model_calls) == (7, 3, 1)
    assert harness.metric("agentfactory_gateway_tokens_total", model="fake", kind="prompt") == 7
    assert harness.metric("agentfactory_gateway_tokens_total", model="fake", kind="completion") == 3
    assert harness.metric("agentfactory_gateway_requests_total", model="fake", outcome="ok") == 1


def test_usage_is_estimated_when_the_upstream_gives_none(
    harness: GatewayHarness, client: httpx.Client, upstream: FakeOpenAI
) -> None:
    upstream.responder = final_answer("x" * 400, usage=None)
    agent_id, token = harness.add_agent("fake")
    assert chat(client, token).status_code == 200
    row = harness.agent(agent_id)
    assert row.tokens_completion == 100 and row.tokens_prompt > 0


def test_streaming_is_relayed_and_its_usage_counted(
    harness: GatewayHarness, client: httpx.Client, upstream: FakeOpenAI
) -> None:
    upstream.responder = streamed(["Hel", "lo"], usage=(11, 5))
    agent_id, token = harness.add_agent("fake")
    response = chat(client, token, stream=True)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    assert '"Hel"' in response.text and response.text.rstrip().endswith("data: [DONE]")
    assert upstream.seen[0].body["stream_options"] == {"include_usage": True}
    row = harness.agent(agent_id)
    assert (row.tokens_prompt, row.tokens_completion) == (11, 5)


def test_echo_streams_too(harness: GatewayHarness, client: httpx.Client) -> None:
    _, token = harness.add_agent("echo")
    response = chat(client, token, stream=True)
    assert response.status_code == 200
    assert '"content": "hello there"' in response.text and "data: [DONE]" in response.text


# --- who may call what ----------------------------------------------------------------------


def test_missing_or_unknown_token_is_refused(harness: GatewayHarness, client: httpx.Client) -> None:
    for token in (None, "not-a-token"):
        response = chat(client, token)
        assert response.status_code == 401
        assert error_of(response)[0] == "E_AUTH"


@pytest.mark.parametrize("status", ["pending", "succeeded", "failed", "cancelled", "expired"])
def test_token_of_an_agent_that_is_not_live_is_refused(
    harness: GatewayHarness, client: httpx.Client, upstream: FakeOpenAI, status: str
) -> None:
    agent_id, token = harness.add_agent("fake", status=status)
    response = chat(client, token)
    assert response.status_code == 401
    code, message = error_of(response)
    assert code == "E_AUTH" and agent_id in message
    assert upstream.seen == []


def test_token_stops_working_when_its_agent_ends(harness: GatewayHarness, client: httpx.Client) -> None:
    agent_id, token = harness.add_agent("echo", status="starting")
    assert chat(client, token).status_code == 200
    harness.set_status(agent_id, "running")
    assert chat(client, token).status_code == 200
    harness.set_status(agent_id, "cancelled")
    assert chat(client, token).status_code == 401


def test_an_agent_may_only_use_its_own_model(
    harness: GatewayHarness, client: httpx.Client, upstream: FakeOpenAI
) -> None:
    a_id, a_token = harness.add_agent("fake")
    b_id, _ = harness.add_agent("other")
    response = chat(client, a_token, model="other")
    assert response.status_code == 403
    assert error_of(response)[0] == "E_FORBIDDEN"
    assert upstream.seen == []
    assert chat(client, a_token, model="fake-upstream-v1").status_code == 200
    assert harness.agent(a_id).model_calls == 1
    assert harness.agent(b_id).model_calls == 0


def test_twenty_parallel_agents_are_each_billed_for_their_own_calls(
    harness: GatewayHarness, upstream: FakeOpenAI
) -> None:
    agents = [harness.add_agent("fake") for _ in range(20)]

    def three_calls(token: str) -> list[int]:
        with client_for(harness) as c:
            return [chat(c, token).status_code for _ in range(3)]

    with concurrent.futures.ThreadPoolExecutor(20) as pool:
        results = list(pool.map(three_calls, [t for _, t in agents]))
    assert results == [[200, 200, 200]] * 20
    for agent_id, _ in agents:
        row = harness.agent(agent_id)
        assert (row.model_calls, row.tokens_prompt, row.tokens_completion) == (3, 21, 9)
    harness.set_status(agents[0][0], "succeeded")
    with client_for(harness) as c:
        assert chat(c, agents[0][1]).status_code == 401
        assert chat(c, agents[1][1]).status_code == 200


def test_malformed_body_is_refused(harness: GatewayHarness, client: httpx.Client) -> None:
    _, token = harness.add_agent("echo")
    headers = {"Authorization": f"Bearer {token}"}
    assert client.post("/v1/chat/completions", content=b"{nope", headers=headers).status_code == 422
    assert client.post("/v1/chat/completions", json={"model": "echo"}, headers=headers).status_code == 422


# --- budget ---------------------------------------------------------------------------------


def uses_all_it_may(body: Any) -> dict[str, Any]:
    """An upstream that writes until `max_tokens`, and counts a token per prompt byte: the worst case."""
    return completion("x" * 10, usage=(len(json.dumps(body["messages"])), body["max_tokens"]))


def test_budget_is_enforced_once_spent(harness: GatewayHarness, client: httpx.Client, upstream: FakeOpenAI) -> None:
    upstream.responder = uses_all_it_may
    agent_id, token = harness.add_agent("fake", token_budget=1000)
    assert chat(client, token).status_code == 200
    # The completion was clamped to what the budget had left once the prompt's bound was held.
    [seen] = upstream.seen
    row = harness.agent(agent_id)
    assert seen.body["max_tokens"] < 1000 and row.tokens_completion == seen.body["max_tokens"]
    assert row.tokens_prompt + row.tokens_completion <= 1000 and row.tokens_reserved == 0
    refused = chat(client, token)
    assert refused.status_code == 429
    code, message = error_of(refused)
    assert code == "E_BUDGET" and f"used {row.tokens_prompt + row.tokens_completion} of 1000" in message
    assert len(upstream.seen) == 1
    assert harness.metric("agentfactory_gateway_requests_total", model="fake", outcome="budget") == 1
    # A refusal over the budget is a quota refusal of the agent's key too (the dashboard's usage charts),
    # whether the handler refuses it or the connection's screen does, from what it remembers of the token.
    assert chat(client, token).status_code == 429
    assert harness.metric("agentfactory_quota_rejections_total", reason="budget") == 2
    assert {(k, r): n for (_hour, k, r), n in harness.metrics.rejections_by_key.take().items()} == {
        ("key_test", "budget"): 2
    }


def test_a_prompt_that_cannot_fit_the_budget_is_refused_before_the_upstream(
    harness: GatewayHarness, client: httpx.Client, upstream: FakeOpenAI
) -> None:
    agent_id, token = harness.add_agent("fake", token_budget=10)
    refused = chat(client, token)
    assert refused.status_code == 429
    assert error_of(refused)[0] == "E_BUDGET"
    assert upstream.seen == []
    assert harness.agent(agent_id).tokens_reserved == 0


# --- upstream failures: clear, fast, never a hang -------------------------------------------


def test_upstream_down_gives_a_fast_error_naming_the_model() -> None:
    with GatewayHarness(make_catalog(closed_port_url())) as h, client_for(h) as c:
        agent_id, token = h.add_agent("fake")
        started = time.monotonic()
        response = chat(c, token)
        assert time.monotonic() - started < 3
        assert response.status_code == 502
        code, message = error_of(response)
        assert code == "E_UPSTREAM" and "'fake'" in message and "unreachable" in message
        assert h.agent(agent_id).model_calls == 0


def test_slow_upstream_times_out_at_the_model_timeout(upstream: FakeOpenAI) -> None:
    upstream.responder = slow(30)
    with GatewayHarness(make_catalog(upstream.base_url, timeout_seconds=0.5)) as h, client_for(h) as c:
        _, token = h.add_agent("fake")
        started = time.monotonic()
        response = chat(c, token)
        elapsed = time.monotonic() - started
        assert 0.4 < elapsed < 3
        assert response.status_code == 504
        code, message = error_of(response)
        assert code == "E_UPSTREAM_TIMEOUT" and "'fake'" in message


def test_slow_stream_times_out_too(upstream: FakeOpenAI) -> None:
    upstream.responder = lambda _body: Reply(200, completion("late"), delay=30, sse=[])
    with GatewayHarness(make_catalog(upstream.base_url, timeout_seconds=0.5)) as h, client_for(h) as c:
        _, token = h.add_agent("fake")
        started = time.monotonic()
        response = chat(c, token, stream=True)
        assert time.monotonic() - started < 3
        assert response.status_code == 504


@pytest.mark.parametrize(
    ("responder", "status", "code", "words"),
    [
        (garbage(), 502, "E_UPSTREAM", "not a chat completion"),
        (failing(500), 502, "E_UPSTREAM", "HTTP 500: upstream exploded"),
        (failing(400, "context too long"), 400, "E_UPSTREAM_REJECTED", "context too long"),
        (failing(401, "bad key sk-..."), 502, "E_UPSTREAM", "refused the control plane's credentials"),
    ],
)
def test_upstream_errors_become_clear_gateway_errors(
    harness: GatewayHarness,
    client: httpx.Client,
    upstream: FakeOpenAI,
    responder: object,
    status: int,
    code: str,
    words: str,
) -> None:
    upstream.responder = responder  # type: ignore[assignment]
    _, token = harness.add_agent("fake")
    response = chat(client, token)
    assert response.status_code == status
    got_code, message = error_of(response)
    assert got_code == code and words in message and "'fake'" in message
    assert "sk-" not in message


def test_upstream_rate_limit_is_relayed_with_retry_after(
    harness: GatewayHarness, client: httpx.Client, upstream: FakeOpenAI
) -> None:
    upstream.responder = lambda _body: Reply(429, {"error": {"message": "slow down"}}, headers={"Retry-After": "2"})
    _, token = harness.add_agent("fake")
    response = chat(client, token)
    assert response.status_code == 429
    assert error_of(response)[0] == "E_UPSTREAM_RATE_LIMIT"
    assert response.headers["Retry-After"] == "2"


def test_missing_key_in_the_control_plane_env_is_named(
    harness: GatewayHarness, client: httpx.Client, upstream: FakeOpenAI
) -> None:
    _, token = harness.add_agent("keyless")
    response = chat(client, token)
    assert response.status_code == 502
    assert "NO_SUCH_KEY" in error_of(response)[1]
    assert upstream.seen == []

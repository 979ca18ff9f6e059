"""runtime_entry.py run as a process on the host, against the real gateway and a fake upstream."""

from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_openai import (
    FakeOpenAI,
    always_tool,
    chatty,
    closed_port_url,
    completion,
    python_then_final,
    tool_call,
    tool_messages,
    tool_then_final,
)
from tests.fakes.gateway_harness import KEY_VALUE, GatewayHarness, make_catalog
from tests.fakes.runtime_process import Run, collect

ENTRY = Path(__file__).resolve().parents[2] / "runtime_image" / "runtime_entry.py"
TOOLS = [{"id": "python", "description": "run Python"}, {"id": "shell", "description": "run shell"}]


def start_runtime(
    socket_path: Path | str, token: str, *, model: str, scratch: Path, prompt: str = "do the task", **spec: Any
) -> subprocess.Popen[bytes]:
    full_spec = {
        "agent_id": "ag_test",
        "model": model,
        "prompt": prompt,
        "tools": TOOLS,
        "max_steps": 8,
        "tool_timeout_seconds": 20,
        "tool_output_limit": 16384,
    } | spec
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "AGENTFACTORY_SPEC": json.dumps(full_spec),
        "AGENTFACTORY_GATEWAY_TOKEN": token,
        "AGENTFACTORY_GATEWAY_SOCKET": str(socket_path),
        "AGENTFACTORY_SCRATCH": str(scratch),
    }
    return subprocess.Popen([sys.executable, "-u", str(ENTRY)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def harness(upstream: FakeOpenAI) -> Iterator[GatewayHarness]:
    with GatewayHarness(make_catalog(upstream.base_url)) as h:
        yield h


@pytest.fixture
def run(harness: GatewayHarness, tmp_path: Path) -> Any:
    def run(model: str = "fake", *, token_budget: int = 100_000, deadline: float = 60, **spec: Any) -> Run:
        _, token = harness.add_agent(model, token_budget=token_budget)
        return collect(start_runtime(harness.socket_path, token, model=model, scratch=tmp_path, **spec), deadline)

    return run


# --- the loop -------------------------------------------------------------------------------


def test_echo_answers_with_the_prompt(run: Any) -> None:
    result = run("echo", prompt="say hi")
    assert result.code == 0, result.stderr
    assert [e["event"] for e in result.events] == ["start", "model_turn", "final", "usage"]
    assert result.of("final")[0]["content"] == "say hi"
    assert result.of("usage")[0]["completion_tokens"] > 0


def test_python_print_42_is_a_raw_stdout_line_and_goes_back_to_the_model(run: Any, upstream: FakeOpenAI) -> None:
    upstream.responder = python_then_final("print(42)")
    result = run()
    assert result.code == 0, result.stderr
    assert "42" in result.raw
    assert [e["event"] for e in result.events] == [
        "start", "model_turn", "tool_call", "tool_result", "model_turn", "final", "usage",
    ]  # fmt: skip
    assert result.of("tool_call")[0]["arguments"] == {"code": "print(42)"}
    assert result.of("tool_result")[0] | {"duration_ms": 0} == {
        "event": "tool_result", "step": 1, "id": result.of("tool_call")[0]["id"], "tool": "python",
        "exit_code": 0, "timed_out": False, "truncated": False, "bytes": 3, "duration_ms": 0,
    }  # fmt: skip
    first, second = (s.body for s in upstream.seen)
    assert {t["function"]["name"] for t in first["tools"]} == {"python", "shell"}
    assert tool_messages(second)[0]["content"] == "exit code: 0\noutput:\n42\n"
    assert result.of("final")[0]["content"] == "final: exit code: 0\noutput:\n42\n"
    assert {s.authorization for s in upstream.seen} == {f"Bearer {KEY_VALUE}"}
    assert result.of("usage")[0] == {
        "event": "usage", "prompt_tokens": 14, "completion_tokens": 6, "model_calls": 2,
    }  # fmt: skip


def test_shell_exit_code_and_stderr_reach_the_model(run: Any, upstream: FakeOpenAI) -> None:
    upstream.responder = tool_then_final("shell", {"command": "echo out; echo err >&2; exit 7"})
    result = run()
    assert result.code == 0, result.stderr
    assert result.raw == ["out", "err"]
    assert result.of("tool_result")[0]["exit_code"] == 7
    assert tool_messages(upstream.seen[1].body)[0]["content"] == "exit code: 7\noutput:\nout\nerr\n"


def test_tool_output_streams_while_the_tool_runs(run: Any, upstream: FakeOpenAI) -> None:
    code = "import time\nfor i in range(6):\n    print('tick', i)\n    time.sleep(0.3)\n"
    upstream.responder = python_then_final(code)
    result = run()
    assert result.code == 0, result.stderr
    ticks = [t for t, text in result.lines if text.startswith("tick ")]
    done = next(t for t, text in result.lines if '"tool_result"' in text)
    assert len(ticks) == 6
    assert ticks[-1] - ticks[0] >= 1.2
    assert done - ticks[0] >= 1.5


def test_long_output_is_bounded_for_the_model_but_whole_on_stdout(run: Any, upstream: FakeOpenAI) -> None:
    upstream.responder = python_then_final("for i in range(2000):\n    print(f'line {i:05d} ' + 'x' * 40)")
    result = run(tool_output_limit=1024)
    assert result.code == 0, result.stderr
    assert len(result.raw) == 2000 and result.raw[-1].startswith("line 01999")
    assert result.of("tool_result")[0]["truncated"] is True
    seen = tool_messages(upstream.seen[1].body)[0]["content"]
    assert len(seen) < 1200
    assert "line 00000" in seen and "line 01999" in seen and "bytes of output omitted" in seen


def test_tool_timeout_kills_the_whole_process_group(run: Any, upstream: FakeOpenAI) -> None:
    upstream.responder = tool_then_final("shell", {"command": "sleep 30 & echo started; sleep 30"})
    result = run(tool_timeout_seconds=1)
    assert result.code == 0, result.stderr
    assert result.elapsed < 5  # the background sleep held the pipe: it was killed too
    assert result.of("tool_result")[0]["timed_out"] is True
    assert "ran longer than 1 s" in tool_messages(upstream.seen[1].body)[0]["content"]


def test_unknown_tool_and_bad_arguments_are_fed_back_not_fatal(run: Any, upstream: FakeOpenAI) -> None:
    def respond(body: Any) -> dict[str, Any]:
        done = len(tool_messages(body))
        if done == 0:
            return completion(None, [tool_call("rm_rf", {"path": "/"})])
        if done == 1:
            return completion(None, [tool_call("python", "{not json")])
        if done == 2:
            return completion(None, [tool_call("python", {"source": "print(1)"})])
        return completion("gave up")

    upstream.responder = respond
    result = run()
    assert result.code == 0, result.stderr
    replies = [m["content"] for m in tool_messages(upstream.seen[-1].body)]
    assert "unknown tool 'rm_rf'" in replies[0] and "python, shell" in replies[0]
    assert "must be a JSON object" in replies[1]
    assert "needs a string argument 'code'" in replies[2]
    assert result.of("final")[0]["content"] == "gave up"


def test_tools_do_not_see_the_gateway_token(run: Any, upstream: FakeOpenAI, harness: GatewayHarness) -> None:
    upstream.responder = tool_then_final("shell", {"command": "env"})
    result = run()
    assert result.code == 0, result.stderr
    assert not any(line.startswith(("AGENTFACTORY_GATEWAY_TOKEN=", "AGENTFACTORY_SPEC=")) for line in result.raw)
    assert any(line.startswith("AGENTFACTORY_GATEWAY_SOCKET=") for line in result.raw)


def test_browser_server_refuses_the_host_and_never_connects(run: Any, upstream: FakeOpenAI) -> None:
    """Defence in depth (the packet filter is the guard): a loopback page, a name resolving to loopback,
    and a redirect to one are refused before any connection. Fetching a public page is tested from
    inside a real agent (tests/integration/test_egress.py): this host has no public address to serve."""
    requests: list[str] = []

    class Page(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requests.append(self.path)
            self.send_response(200)
            self.end_headers()

        def log_message(self, *_args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Page)
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    port = server.server_address[1]
    urls = [f"http://127.0.0.1:{port}/page", f"http://localhost:{port}/page", f"http://[::ffff:127.0.0.1]:{port}/"]
    try:
        upstream.responder = lambda body: (
            completion("done")
            if tool_messages(body)
            else completion(None, [tool_call("browser_server", {"url": u}) for u in urls])
        )
        result = run(tools=[{"id": "browser_server", "description": "fetch", "network": True}])
    finally:
        server.shutdown()
        server.server_close()
    assert result.code == 0, result.stderr
    seen = [m["content"] for m in tool_messages(upstream.seen[1].body)]
    first = [s.splitlines()[0] for s in seen]
    assert first[0] == f"GET {urls[0]} -> refused: 127.0.0.1 is not a public internet address"
    assert first[1].startswith(f"GET {urls[1]} -> refused: localhost resolves to ")  # 127.0.0.1 or ::1
    assert first[2] == f"GET {urls[2]} -> refused: ::ffff:127.0.0.1 is not a public internet address"
    assert requests == []


# --- why it stops ---------------------------------------------------------------------------


def test_budget_spent_exits_3(run: Any, upstream: FakeOpenAI) -> None:
    upstream.responder = chatty(5000)  # an upstream that reports more than it was allowed: counted as told
    result = run(token_budget=3000)
    assert result.code == 3
    assert result.stderr.startswith("token budget spent") and "10000 of 3000" in result.stderr
    assert result.of("usage")[0]["prompt_tokens"] == 5000
    assert len(upstream.seen) == 1


def test_step_bound_exits_4(run: Any, upstream: FakeOpenAI) -> None:
    upstream.responder = always_tool("shell", {"command": "true"})
    result = run(max_steps=3)
    assert result.code == 4
    assert "step bound reached: 3 model turns" in result.stderr
    assert len(upstream.seen) == 3
    assert len(result.of("tool_call")) == 2


def test_refused_token_exits_5_at_once(run: Any, harness: GatewayHarness, tmp_path: Path) -> None:
    agent_id, token = harness.add_agent("fake", status="cancelled")
    result = collect(start_runtime(harness.socket_path, token, model="fake", scratch=tmp_path), 20)
    assert result.code == 5
    assert "E_AUTH" in result.stderr and agent_id in result.stderr
    assert result.elapsed < 5


def test_upstream_down_exits_5_naming_the_model_within_30s(tmp_path: Path) -> None:
    with GatewayHarness(make_catalog(closed_port_url())) as h:
        _, token = h.add_agent("fake")
        result = collect(start_runtime(h.socket_path, token, model="fake", scratch=tmp_path), 30)
    assert result.code == 5
    assert "model 'fake'" in result.stderr and "unreachable" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_no_gateway_socket_exits_5_within_bounded_time(tmp_path: Path) -> None:
    proc = start_runtime(tmp_path / "nothing.sock", "tok", model="gpt-x", scratch=tmp_path, gateway_retry_seconds=2)
    result = collect(proc, 30)
    assert result.code == 5
    assert 1.5 < result.elapsed < 5
    assert "model 'gpt-x' unreachable" in result.stderr and "socket does not exist" in result.stderr


@pytest.mark.parametrize(
    ("spec_env", "words"),
    [
        ("{not json", "not valid JSON"),
        ('{"prompt": "x"}', "'model'"),
        ('{"model": "fake"}', "'prompt'"),
        ('{"model": "fake", "prompt": "x", "max_steps": "many"}', "'max_steps'"),
        ('{"model": "fake", "prompt": "x", "tools": ["python"]}', "every tool"),
    ],
)
def test_bad_spec_exits_2(tmp_path: Path, spec_env: str | None, words: str) -> None:
    env = {"PATH": os.environ["PATH"], "AGENTFACTORY_GATEWAY_TOKEN": "t"}
    if spec_env is not None:
        env["AGENTFACTORY_SPEC"] = spec_env
    proc = subprocess.run([sys.executable, str(ENTRY)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("bad spec") and words in proc.stderr
    assert proc.stdout == ""


def test_the_spec_comes_from_the_gateway_when_the_environment_has_none(
    harness: GatewayHarness, upstream: FakeOpenAI, tmp_path: Path
) -> None:
    prompt = "请把这句话原样说回来。" * 13_000  # 130,000 characters: ~390 KB, far over one env string
    _, token = harness.add_agent("echo", prompt=prompt, token_budget=1_000_000)
    env = {
        "PATH": os.environ["PATH"],
        "AGENTFACTORY_GATEWAY_TOKEN": token,
        "AGENTFACTORY_GATEWAY_SOCKET": str(harness.socket_path),
        "AGENTFACTORY_SCRATCH": str(tmp_path),
    }
    proc = subprocess.Popen([sys.executable, "-u", str(ENTRY)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    result = collect(proc, 60)
    assert result.code == 0, result.stderr
    [start] = result.of("start")
    assert start["prompt_chars"] == len(prompt)
    assert start["prompt_sha256"] == hashlib.sha256(prompt.encode()).hexdigest()
    assert start["tools"] == ["python", "shell"]


def test_a_token_the_gateway_refuses_exits_2_at_once(harness: GatewayHarness, tmp_path: Path) -> None:
    env = {
        "PATH": os.environ["PATH"],
        "AGENTFACTORY_GATEWAY_TOKEN": "not-a-token",
        "AGENTFACTORY_GATEWAY_SOCKET": str(harness.socket_path),
    }
    proc = subprocess.run([sys.executable, str(ENTRY)], env=env, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 2
    assert proc.stderr.startswith("bad spec: the gateway refused") and "E_AUTH" in proc.stderr
    assert proc.stdout == ""


def test_sigterm_stops_the_runtime_and_its_tool(harness: GatewayHarness, upstream: FakeOpenAI, tmp_path: Path) -> None:
    upstream.responder = tool_then_final("shell", {"command": "echo pid=$$; sleep 30; echo survived"})
    _, token = harness.add_agent("fake")
    proc = start_runtime(harness.socket_path, token, model="fake", scratch=tmp_path)
    assert proc.stdout is not None and proc.stderr is not None
    tool_pid = next(int(line[4:]) for line in iter(proc.stdout.readline, b"") if line.startswith(b"pid="))
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=5) == 128 + signal.SIGTERM
    assert b"terminated by signal" in proc.stderr.read()
    deadline = time.monotonic() + 5
    while process_alive(tool_pid):
        assert time.monotonic() < deadline, "the tool outlived the runtime"
        time.sleep(0.05)


def process_alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_a_gateway_that_comes_up_late_is_waited_for(upstream: FakeOpenAI, tmp_path: Path) -> None:
    """As when the control plane restarts while its agents run: the socket is gone for a while."""
    upstream.responder = python_then_final("print(42)")
    h = GatewayHarness(make_catalog(upstream.base_url))
    _, token = h.add_agent("fake")
    proc = start_runtime(h.socket_path, token, model="fake", scratch=tmp_path, gateway_retry_seconds=20)
    try:
        time.sleep(1)  # the runtime must find no socket first; nothing passes because of this sleep
        h.start()
        result = collect(proc, 30)
    finally:
        h.stop()
    assert result.code == 0, result.stderr
    assert "42" in result.raw


def test_a_warm_runtime_waits_silently_for_its_assignment_on_stdin_then_runs_as_a_cold_one(
    harness: GatewayHarness, tmp_path: Path
) -> None:
    _, token = harness.add_agent("echo", prompt="warm hello", token_budget=100_000)
    env = {
        "PATH": os.environ["PATH"],
        "AGENTFACTORY_WARM": "1",
        "AGENTFACTORY_GATEWAY_SOCKET": str(harness.socket_path),
        "AGENTFACTORY_SCRATCH": str(tmp_path),
    }
    proc = subprocess.Popen(
        [sys.executable, "-u", str(ENTRY)],
        env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
    )  # fmt: skip
    assert proc.stdin is not None
    with pytest.raises(subprocess.TimeoutExpired):  # it waits (and, below, printed nothing meanwhile)
        proc.wait(0.5)
    proc.stdin.write(json.dumps({"env": {"AGENTFACTORY_GATEWAY_TOKEN": token, "GREETING": "hi"}}).encode() + b"\n")
    proc.stdin.flush()  # left open: the runtime reads one line and then has /dev/null for stdin
    result = collect(proc, 60)
    assert result.code == 0, result.stderr
    assert result.lines[0][1].startswith('{"event": "start"'), result.lines[:2]  # its first line is the agent's
    [start] = result.of("start")
    assert start["prompt_chars"] == len("warm hello")
    assert result.of("final")


def test_a_warm_runtime_whose_stdin_ends_without_an_assignment_fails_and_prints_nothing(tmp_path: Path) -> None:
    env = {"PATH": os.environ["PATH"], "AGENTFACTORY_WARM": "1", "AGENTFACTORY_SCRATCH": str(tmp_path)}
    proc = subprocess.run(
        [sys.executable, str(ENTRY)], env=env, input=b"", capture_output=True, timeout=30
    )  # fmt: skip
    assert proc.returncode == 2 and proc.stdout == b""
    assert b"no assignment" in proc.stderr

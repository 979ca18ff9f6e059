"""The real runtime image, sealed as agentfactory runs it, against the real gateway and a fake upstream."""

from __future__ import annotations

import json
import secrets
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.fakes.fake_openai import FakeOpenAI, closed_port_url, python_then_final, tool_then_final
from tests.fakes.gateway_harness import KEY_VALUE, GatewayHarness, make_catalog
from tests.fakes.runtime_process import Run, collect

pytestmark = pytest.mark.docker
IMAGE = "agentfactory-runtime:latest"


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake


@pytest.fixture
def harness(upstream: FakeOpenAI, docker_engine: None) -> Iterator[GatewayHarness]:
    with GatewayHarness(make_catalog(upstream.base_url)) as h:
        yield h


def run_container(
    h: GatewayHarness, socket_dir: Path, *, model: str = "fake", deadline: float = 60, **spec: Any
) -> Run:
    agent_id, token = h.add_agent(model)
    full_spec = {
        "agent_id": agent_id,
        "model": model,
        "prompt": "do the task",
        "tools": [{"id": "python", "description": "run Python"}, {"id": "shell", "description": "run shell"}],
        "max_steps": 4,
        "tool_timeout_seconds": 30,
        "tool_output_limit": 16384,
        "gateway_retry_seconds": 2,
    } | spec
    name = f"af-runtime-test-{secrets.token_hex(4)}"
    argv = [
        "docker", "run", "--rm", "--name", name,
        "--network", "none", "--read-only", "--tmpfs", "/scratch:uid=10001",
        "--user", "10001:10001", "--cap-drop", "ALL", "--security-opt", "no-new-privileges",
        "-v", f"{socket_dir}:/run/agentfactory:ro",
        "-e", f"AGENTFACTORY_SPEC={json.dumps(full_spec)}",
        "-e", f"AGENTFACTORY_GATEWAY_TOKEN={token}",
        IMAGE,
    ]  # fmt: skip
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        return collect(proc, deadline)
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def test_python_print_42_reaches_stdout_and_the_key_stays_outside(
    harness: GatewayHarness, upstream: FakeOpenAI
) -> None:
    upstream.responder = python_then_final("print(42)")
    result = run_container(harness, harness.socket_dir)
    assert result.code == 0, result.stderr
    assert "42" in result.raw
    assert result.of("final")[0]["content"] == "final: exit code: 0\noutput:\n42\n"
    assert {s.authorization for s in upstream.seen} == {f"Bearer {KEY_VALUE}"}


def test_no_provider_key_and_no_network_inside(harness: GatewayHarness, upstream: FakeOpenAI) -> None:
    command = (
        "env; echo ---; tr '\\0' '\\n' < /proc/self/environ; echo ---; "
        "tr '\\0' '\\n' < /proc/1/environ; echo ---; ls /sys/class/net"
    )
    upstream.responder = tool_then_final("shell", {"command": command})
    result = run_container(harness, harness.socket_dir)
    assert result.code == 0, result.stderr
    output = "\n".join(result.raw)
    assert KEY_VALUE not in output and "FAKE_OPENAI_KEY" not in output
    assert "HOME=/scratch" in output  # the env really was printed
    assert result.raw[-1] == "lo" and result.raw[-2] == "---"


def test_tool_output_streams_live_from_the_container(harness: GatewayHarness, upstream: FakeOpenAI) -> None:
    code = "import time\nfor i in range(7):\n    print('tick', i)\n    time.sleep(0.5)\n"
    upstream.responder = python_then_final(code)
    result = run_container(harness, harness.socket_dir)
    assert result.code == 0, result.stderr
    ticks = [t for t, text in result.lines if text.startswith("tick ")]
    done = next(t for t, text in result.lines if '"tool_result"' in text)
    assert len(ticks) == 7
    assert ticks[-1] - ticks[0] >= 2.5
    assert done - ticks[0] >= 3.0


def test_upstream_down_fails_fast_naming_the_model(docker_engine: None) -> None:
    with GatewayHarness(make_catalog(closed_port_url())) as h:
        result = run_container(h, h.socket_dir, deadline=30)
    assert result.code == 5
    assert "model 'fake'" in result.stderr and "unreachable" in result.stderr

"""Issue 3 end to end: a real model↔tools loop behind the real server, keys never inside."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime

import pytest

from tests.fakes.fake_openai import FakeOpenAI, chatty, closed_port_url, python_then_final
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, write_catalog
from tests.support.server import ServerProcess, all_log_lines, wait_terminal

pytestmark = pytest.mark.docker


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


@pytest.fixture(scope="module")
def python_server(
    tmp_path_factory: pytest.TempPathFactory, docker_engine: None
) -> Iterator[tuple[ServerProcess, FakeOpenAI]]:
    work = tmp_path_factory.mktemp("runtime-server")
    with FakeOpenAI(python_then_final("print(42)")) as fake:
        down = {"id": "down", "provider": "openai", "base_url": closed_port_url(), "api_key_env": UPSTREAM_KEY_ENV}
        chat = {"id": "chatty", "provider": "openai", "base_url": fake.base_url, "api_key_env": UPSTREAM_KEY_ENV}
        catalog = write_catalog(work / "catalog.json", fake, extra_models=[down, chat])
        raw = json.loads(catalog.read_text())
        raw["models"].append({**raw["models"][-3], "id": "fake"})  # the `sh` entry, renamed
        catalog.write_text(json.dumps(raw))
        srv = ServerProcess(work, catalog=catalog, env={UPSTREAM_KEY_ENV: UPSTREAM_KEY}).start()
        try:
            yield srv, fake
        finally:
            srv.stop()
            srv.cleanup_containers()


@pytest.fixture(autouse=True)
def _reset_responder(python_server: tuple[ServerProcess, FakeOpenAI]) -> None:
    python_server[1].responder = python_then_final("print(42)")
    python_server[1].seen.clear()


def test_python_print_42_succeeds_and_the_key_stays_in_the_control_plane(
    python_server: tuple[ServerProcess, FakeOpenAI],
) -> None:
    srv, fake = python_server
    with srv.client() as c:
        agent = c.post("/agents", json={"model": "fake", "tools": ["python"], "prompt": "print 42"}).json()
        final = wait_terminal(c, agent["id"])
        assert final["status"] == "succeeded", final
        assert "42" in [x["text"] for x in all_log_lines(c, agent["id"])]
        assert {s.authorization for s in fake.seen} == {f"Bearer {UPSTREAM_KEY}"}
        tokens = c.get(f"/agents/{agent['id']}/result").json()["tokens"]
        assert tokens["model_calls"] == 2 and tokens["total_tokens"] > 0


def test_no_provider_key_and_no_network_inside(python_server: tuple[ServerProcess, FakeOpenAI]) -> None:
    srv, fake = python_server
    code = (
        "import os; print('\\n'.join(f'{k}={v}' for k, v in os.environ.items()));"
        "print(open('/proc/self/environ','rb').read().decode(errors='replace'));"
        "print(open('/proc/1/environ','rb').read().decode(errors='replace'));"
        "print('IFACES', sorted(os.listdir('/sys/class/net')))"
    )
    fake.responder = python_then_final(code)
    with srv.client() as c:
        agent = c.post("/agents", json={"model": "fake", "tools": ["python"], "prompt": "dump"}).json()
        final = wait_terminal(c, agent["id"])
        texts = "\n".join(x["text"] for x in all_log_lines(c, agent["id"]))
        assert final["status"] == "succeeded"
        assert UPSTREAM_KEY not in texts
        assert "IFACES ['lo']" in texts


def test_upstream_down_fails_naming_the_model(python_server: tuple[ServerProcess, FakeOpenAI]) -> None:
    srv, _ = python_server
    with srv.client() as c:
        agent = c.post("/agents", json={"model": "down", "prompt": "anyone there?"}).json()
        final = wait_terminal(c, agent["id"], timeout=30)
        assert final["status"] == "failed" and final["reason"] == "exit"
        assert "down" in final["error"], final["error"]
        stderr = [x["text"] for x in all_log_lines(c, agent["id"]) if x["stream"] == "stderr"]
        assert any("down" in t for t in stderr)
        assert ts(final["finished_at"]) - ts(final["created_at"]) < 30


def test_token_budget_spent_fails_with_tokens_counted(python_server: tuple[ServerProcess, FakeOpenAI]) -> None:
    srv, fake = python_server
    fake.responder = chatty()
    with srv.client() as c:
        # The first call's prompt fits the budget; the upstream then reports more than it was allowed
        # (counted as reported), and the next call is refused.
        body = {"model": "chatty", "tools": ["shell"], "prompt": "talk", "token_budget": 3000}
        agent = c.post("/agents", json=body).json()
        final = wait_terminal(c, agent["id"], timeout=30)
        assert final["status"] == "failed" and "budget" in final["error"]
        assert c.get(f"/agents/{agent['id']}/result").json()["tokens"]["total_tokens"] >= 3000


def test_tool_output_is_captured_live(python_server: tuple[ServerProcess, FakeOpenAI]) -> None:
    srv, fake = python_server
    fake.responder = python_then_final(
        "import time\nfor i in range(10):\n    print('tick', i, flush=True)\n    time.sleep(0.5)"
    )
    with srv.client() as c:
        agent = c.post("/agents", json={"model": "fake", "tools": ["python"], "prompt": "ticks"}).json()
        wait_terminal(c, agent["id"])
        ticks = [x for x in all_log_lines(c, agent["id"]) if x["text"].startswith("tick")]
        assert len(ticks) == 10
        assert ts(ticks[-1]["ts"]) - ts(ticks[0]["ts"]) >= 4

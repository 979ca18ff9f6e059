"""The WebSocket stream on the real server and engine: the same lines and end as SSE, resumable."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest
import websockets

from tests.support.server import ServerProcess, wait_terminal
from tests.support.sse import read_stream

pytestmark = pytest.mark.docker


async def ws_events(server: ServerProcess, agent_id: str, query: str = "") -> tuple[list[dict[str, Any]], int | None]:
    url = server.url.replace("http://", "ws://") + f"/agents/{agent_id}/ws{query}"
    events = []
    async with websockets.connect(url, additional_headers={"Authorization": f"Bearer {server.admin_key}"}) as ws:
        async for message in ws:
            events.append(json.loads(message))
        return events, ws.close_code


def test_a_websocket_follower_gets_what_the_sse_stream_gets(shell_server: ServerProcess) -> None:
    with shell_server.client() as c:
        prompt = "for i in $(seq 1 50); do echo line $i; sleep 0.01; done"
        agent = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": prompt}).json()
        live, code = asyncio.run(ws_events(shell_server, agent["id"]))  # joins while it runs
        assert code == 1000 and live[-1]["event"] == "end"
        final = wait_terminal(c, agent["id"], timeout=30)
        sse_lines, _end = read_stream(c, agent["id"])
        assert [e["data"] for e in live if e["event"] == "log"] == sse_lines
        assert live[-1]["data"]["log_sha256"] == final["log_sha256"]
        assert any(e["event"] == "status" and e["data"]["status"] == "running" for e in live)
        resumed, _ = asyncio.run(ws_events(shell_server, agent["id"], f"?after={sse_lines[-3]['seq']}"))
        assert [e["data"] for e in resumed if e["event"] == "log"] == sse_lines[-2:]

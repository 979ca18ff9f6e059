"""Issue 19 items 4: memory held for one agent or one client is bounded (SPEC §14).

The control plane's resident memory is sampled from /proc while a flooding agent prints 200 MB and
while a thousand stream clients stall; the bound is the one documented in the README.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.test_mcp import error_of, mcp_session, ok
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, prompt_as_shell, write_catalog
from tests.support.server import ServerProcess, all_log_lines, wait_terminal, wait_until

pytestmark = pytest.mark.docker

RSS_BOUND_MB = 300  # README, "Memory bounds": this machine's idle server (~145 MB) and the buffers below
MAX_LOG_BYTES = 100 * 1024 * 1024  # the catalog's default
# What capture may hold besides a flooding agent's tail ring (max_log_bytes/2): the log queue
# (32 MiB), the group being committed (8 MiB) and slack for the allocator.
CAPTURE_HEADROOM_MB = 48


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


class PeakRss:
    """The highest RSS of a process, sampled every 20 ms in a thread while the block runs."""

    def __init__(self, pid: int):
        self.pid, self.peak, self._stop = pid, rss_mb(pid), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.02):
            self.peak = max(self.peak, rss_mb(self.pid))

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, rss_mb(self.pid))


def run(c: httpx.Client, command: str) -> str:
    r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": command, "ttl_seconds": 600})
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


@pytest.fixture
def shell_srv(make_server: type[ServerProcess], tmp_path: Path) -> Iterator[ServerProcess]:
    with FakeOpenAI(prompt_as_shell()) as fake:
        catalog = write_catalog(tmp_path / "catalog.json", fake, limits={"max_log_bytes": MAX_LOG_BYTES})
        yield make_server(catalog=catalog, env={UPSTREAM_KEY_ENV: UPSTREAM_KEY}).start()


FLOOD = (
    "python3 -c \"import sys; b = ('x' * 99 + '\\n').encode() * 10000; w = sys.stdout.buffer.write; "
    "[w(b) for _ in range(200)]; print('FLOOD DONE')\""
)
# 20,000 numbered lines in 40 bursts of 500, a little apart: an ordinary chatty agent.
NORMAL = "for b in $(seq 0 39); do seq -f 'n%g' $((b*500+1)) $((b*500+500)); sleep 0.05; done"


def test_a_200_mb_flood_next_to_ten_agents_keeps_rss_bounded_and_loses_no_line(shell_srv: ServerProcess) -> None:
    assert shell_srv.proc is not None
    pid = shell_srv.proc.pid
    idle = rss_mb(pid)
    with shell_srv.client(timeout=120) as c, PeakRss(pid) as rss:
        flood = run(c, FLOOD)
        wait_until(lambda: c.get(f"/agents/{flood}/logs", params={"limit": 1}).json()["lines"], timeout=60,
                   what="the flood's first line")  # fmt: skip
        normal = [run(c, NORMAL) for _ in range(10)]
        for agent_id in normal:
            assert wait_terminal(c, agent_id, timeout=300)["status"] == "succeeded"
        agent = wait_terminal(c, flood, timeout=600)
    print(f"server RSS: idle {idle:.0f} MB, peak {rss.peak:.0f} MB during a 200 MB flood next to 10 agents")
    assert agent["status"] == "succeeded", agent
    with shell_srv.client(timeout=120) as c:
        for agent_id in normal:
            texts = [x["text"] for x in all_log_lines(c, agent_id)]
            assert [t for t in texts if t.startswith("n")] == [f"n{i}" for i in range(1, 20_001)]
        texts = [x["text"] for x in all_log_lines(c, flood)]
        assert "FLOOD DONE" in texts and sum("dropped here" in t for t in texts) == 1
    assert rss.peak < RSS_BOUND_MB, f"server RSS peaked at {rss.peak:.0f} MB (bound {RSS_BOUND_MB} MB)"
    growth_bound = MAX_LOG_BYTES / 2**21 + CAPTURE_HEADROOM_MB
    assert rss.peak - idle < growth_bound, f"RSS grew {rss.peak - idle:.0f} MB (bound {growth_bound:.0f} MB)"


def make_key(srv: ServerProcess, name: str, **quota: object) -> tuple[str, str]:
    with srv.client() as admin:
        r = admin.post("/keys", json={"name": name, "max_requests_per_minute": 100_000, **quota})
        assert r.status_code == 201, r.text
        return str(r.json()["id"]), str(r.json()["key"])


def stream_clients(srv: ServerProcess) -> int:
    text = httpx.get(srv.url + "/metrics", timeout=60).text
    return int(float(next(ln.split()[1] for ln in text.splitlines() if ln.startswith("agentfactory_stream_clients "))))


def test_a_thousand_stalled_stream_clients_stay_within_the_bound(shell_srv: ServerProcess) -> None:
    """Each client asks for an agent's 20 MB of output and never reads: each may hold one slice of
    events in its connection's buffer, not the block (old: a 4 MB block each)."""
    assert shell_srv.proc is not None
    pid = shell_srv.proc.pid
    key = shell_srv.admin_key  # max_streams 10,000
    with httpx.Client(base_url=shell_srv.url, headers={"Authorization": f"Bearer {key}"}, timeout=120) as c:
        agent_id = run(c, "python3 -c \"import sys; sys.stdout.write(('y' * 4095 + '\\n') * 5000)\"")
        assert wait_terminal(c, agent_id, timeout=120)["status"] == "succeeded"
    request = (
        f"GET /agents/{agent_id}/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()
    idle = rss_mb(pid)
    sockets: list[socket.socket] = []
    try:
        with PeakRss(pid) as rss:
            for _batch in range(10):
                for _ in range(100):
                    s = socket.socket()
                    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # the client's kernel holds little
                    s.connect(("127.0.0.1", shell_srv.port))
                    s.sendall(request)
                    sockets.append(s)
                opened = len(sockets)
                wait_until(lambda n=opened: stream_clients(shell_srv) >= n, timeout=60, what=f"{opened} streams")
                assert rss.peak < RSS_BOUND_MB, f"RSS {rss.peak:.0f} MB with {opened} stalled clients"
            # every stream has written what its client's socket took, and holds the rest
            last = [0.0]

            def stable() -> bool:
                now, before = rss_mb(pid), last[0]
                last[0] = now
                return abs(now - before) < 1

            wait_until(stable, timeout=60, interval=0.5, what="RSS stable")
        print(f"server RSS: idle {idle:.0f} MB, peak {rss.peak:.0f} MB with 1000 stalled stream clients")
        assert rss.peak < RSS_BOUND_MB
        assert stream_clients(shell_srv) == 1000
    finally:
        for s in sockets:
            s.close()
    wait_until(lambda: stream_clients(shell_srv) == 0, timeout=60, what="streams closed")


def test_a_key_holds_at_most_max_streams_and_revoking_it_ends_them_at_once(shell_srv: ServerProcess) -> None:
    """Streams and MCP waits count alike; the 11th of a key with max_streams=10 is 429 E_RATE_LIMIT
    with Retry-After; revoking the key ends every one of them within a second or two."""
    key_id, key = make_key(shell_srv, "ten-streams", max_streams=10)
    headers = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=shell_srv.url, headers=headers, timeout=30) as c:
        agent_id = run(c, "sleep 120")

    async def scenario() -> None:
        async with httpx.AsyncClient(base_url=shell_srv.url, headers=headers, timeout=30) as ac:

            async def open_stream() -> httpx.Response:
                return await ac.send(ac.build_request("GET", f"/agents/{agent_id}/stream"), stream=True)

            streams = [await open_stream() for _ in range(10)]
            assert [r.status_code for r in streams] == [200] * 10
            refused = await open_stream()
            assert refused.status_code == 429 and refused.headers["retry-after"] == "5"
            body = await refused.aread()
            assert b"E_RATE_LIMIT" in body and b"max_streams 10" in body
            await refused.aclose()

            async def held(n: int) -> None:  # until the server holds n leases (its gauge says)
                async def count() -> int:
                    text = (await ac.get("/metrics")).text
                    return int(float(next(ln.split()[1] for ln in text.splitlines()
                                          if ln.startswith("agentfactory_stream_leases "))))  # fmt: skip

                while await count() != n:
                    await asyncio.sleep(0.05)

            async with mcp_session(shell_srv, key) as session:
                wait = {"agent_id": agent_id, "timeout_seconds": 0, "tail": 0}
                assert error_of(await session.call_tool("wait_agent", wait))["code"] == "E_RATE_LIMIT"
                await streams.pop().aclose()
                await asyncio.wait_for(held(9), 10)  # the server saw the close
                assert ok(await session.call_tool("wait_agent", wait))["done"] is False
                long_wait = asyncio.create_task(
                    session.call_tool("wait_agent", {"agent_id": agent_id, "timeout_seconds": 300, "tail": 0})
                )
                await asyncio.wait_for(held(10), 10)  # the long wait holds the 10th
                refused = await open_stream()
                assert refused.status_code == 429
                await refused.aclose()

                async def drained(r: httpx.Response) -> bytes:
                    tail = b""
                    with contextlib.suppress(httpx.HTTPError):
                        async for chunk in r.aiter_raw():
                            tail = (tail + chunk)[-2000:]
                    return tail

                with httpx.Client(base_url=shell_srv.url, timeout=30) as admin:
                    revoked_at = time.monotonic()
                    admin_headers = {"Authorization": f"Bearer {shell_srv.admin_key}"}
                    assert admin.delete(f"/keys/{key_id}", headers=admin_headers).status_code == 200
                ends = await asyncio.wait_for(asyncio.gather(*(drained(r) for r in streams)), 5)
                assert all(b"event: error" in end and b"E_AUTH" in end for end in ends), ends[0]
                result = await asyncio.wait_for(long_wait, 5)
                took = time.monotonic() - revoked_at
                assert error_of(result)["code"] == "E_AUTH"
                print(f"revoking the key ended its 9 streams and its wait in {took:.2f}s")
                assert took < 3

    asyncio.run(scenario())

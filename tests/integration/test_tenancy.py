"""Issue 6 on the real server: keys, isolation, atomic quotas, rate limits."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from tests.support.db import rows
from tests.support.server import ServerProcess, wait_terminal, wait_until

pytestmark = pytest.mark.docker

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


def ts(value: str) -> float:
    return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()


def new_key(srv: ServerProcess, **body: object) -> tuple[str, str]:
    with srv.client() as c:
        r = c.post("/keys", json={"name": "t", **body})
        assert r.status_code == 201, r.text
        return r.json()["id"], r.json()["key"]


def test_quota_race_never_over_admits(shell_server: ServerProcess) -> None:
    _, key = new_key(shell_server, max_concurrent_agents=5, max_requests_per_minute=100_000)
    body = {"model": "sh", "tools": ["shell"], "prompt": "sleep 60", "ttl_seconds": 120}
    for _ in range(10):
        barrier = threading.Barrier(20)

        def post(_: int, barrier: threading.Barrier = barrier) -> httpx.Response:
            with shell_server.client(key) as c:
                barrier.wait()
                return c.post("/agents", json=body)

        with ThreadPoolExecutor(20) as pool:
            responses = list(pool.map(post, range(20)))
        admitted = [r.json()["id"] for r in responses if r.status_code == 201]
        refused = [r for r in responses if r.status_code == 429]
        assert len(admitted) == 5 and len(refused) == 15
        assert all(r.json()["error"]["code"] == "E_QUOTA" and r.headers["Retry-After"] for r in refused)
        with shell_server.client(key) as c, ThreadPoolExecutor(5) as pool:
            assert all(r.status_code == 200 for r in pool.map(lambda a: c.delete(f"/agents/{a}"), admitted))


def test_a_slot_frees_within_two_seconds_however_the_agent_ends(shell_server: ServerProcess) -> None:
    _, key = new_key(shell_server, max_concurrent_agents=1, max_requests_per_minute=100_000)
    with shell_server.client(key) as c:

        def launch(prompt: str, **extra: object) -> dict:  # type: ignore[type-arg]
            r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": prompt, **extra})
            assert r.status_code == 201, r.text
            return r.json()  # type: ignore[no-any-return]

        def slot_free_by(deadline: float) -> None:
            probe = {"model": "sh", "tools": ["shell"], "prompt": "sleep 30"}

            def admitted() -> str | None:
                r = c.post("/agents", json=probe)
                return r.json()["id"] if r.status_code == 201 else None

            probe_id = wait_until(admitted, timeout=max(0.5, deadline - time.time()) + 0.5, interval=0.1)
            assert time.time() <= deadline + 0.5
            c.delete(f"/agents/{probe_id}")

        # exit
        a = launch("exit 3")
        final = wait_terminal(c, a["id"])
        slot_free_by(ts(final["finished_at"]) + 2)
        # cancel
        a = launch("sleep 60")
        t_cancel = time.time()
        c.delete(f"/agents/{a['id']}")
        slot_free_by(t_cancel + 2)
        # expiry
        a = launch("sleep 60", ttl_seconds=2)
        slot_free_by(ts(a["expires_at"]) + 2)
        # OOM
        a = launch('python3 -c "b=[]\nwhile True: b.append(bytearray(64*1024*1024))"')
        final = wait_terminal(c, a["id"], timeout=60)
        assert final["reason"] == "oom_killed"
        slot_free_by(ts(final["finished_at"]) + 2)


def test_a_key_over_its_rate_is_refused_and_another_key_is_not(server: ServerProcess) -> None:
    """While one key floods far past its rate and is refused, another key's requests all succeed.
    (How much the flood slows the calm key is measured, beside the calm key alone, by bench/tenancy.py.)"""
    _, hot = new_key(server, max_requests_per_minute=60)
    _, calm = new_key(server, max_requests_per_minute=100_000)
    done = threading.Event()
    codes: list[int] = []

    def hammer() -> None:
        # About 100 requests/s from each of two clients: 200x the hot key's rate of 1/s.
        with server.client(hot) as c:
            while not done.wait(0.01):
                codes.append(c.get("/agents").status_code)

    threads = [threading.Thread(target=hammer) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: 429 in codes, timeout=30, what="the hot key to be rate limited")
        refused_before = codes.count(429)
        with server.client(calm) as c:
            for _ in range(100):
                r = c.get("/agents")
                assert r.status_code == 200, r.text
        assert codes.count(429) > refused_before, "the flood stopped being refused while the calm key worked"
    finally:
        done.set()
        for t in threads:
            t.join()
    assert set(codes) <= {200, 429}
    with server.client(hot) as c:
        for _ in range(5):  # the bucket refills at 1/s: a token may have come back since the flood stopped
            r = c.get("/agents")
            if r.status_code == 429:
                break
        assert r.status_code == 429 and r.json()["error"]["code"] == "E_RATE_LIMIT" and r.headers["Retry-After"]


def test_keys_are_stored_hashed_and_revocation_is_immediate(server: ServerProcess) -> None:
    key_id, key = new_key(server, models=["echo"])
    with server.client(key) as c:
        assert c.get("/agents").status_code == 200
        r = c.post("/agents", json={"model": "gpt-4o-mini", "prompt": "x"})
        assert r.status_code == 403 and r.json()["error"]["code"] == "E_FORBIDDEN"
    url = server.env["AGENTFACTORY_DATABASE_URL"]
    stored = repr(rows(url, "SELECT * FROM api_keys"))
    assert key not in stored and server.admin_key not in stored and key_id in stored
    db = Path(url.removeprefix("sqlite:///"))  # SQLite: nor anywhere in the file, free pages included
    for f in (db, Path(f"{db}-wal")):
        if f.exists():
            assert key.encode() not in f.read_bytes() and server.admin_key.encode() not in f.read_bytes()
    assert key not in "\n".join(server.log_lines())
    with server.client() as admin:
        assert admin.delete(f"/keys/{key_id}").status_code == 200
    with server.client(key) as c:
        r = c.get("/agents")
        assert r.status_code == 401 and r.json()["error"]["code"] == "E_AUTH"


def test_b_cannot_see_or_touch_a(server: ServerProcess) -> None:
    _, a = new_key(server)
    _, b = new_key(server)
    with server.client(a) as ca, server.client(b) as cb:
        agent = ca.post("/agents", json={"model": "echo", "prompt": "mine"}).json()
        wait_terminal(ca, agent["id"])
        for method, path in [("GET", ""), ("GET", "/logs"), ("GET", "/stream"), ("GET", "/result"),
                             ("DELETE", ""), ("POST", "/ttl")]:  # fmt: skip
            r = cb.request(method, f"/agents/{agent['id']}{path}", json={"ttl_seconds": 5})
            assert r.status_code == 404 and r.json()["error"]["code"] == "E_NOT_FOUND"
        assert agent["id"] not in cb.get("/agents").text
        assert ca.get(f"/agents/{agent['id']}").json()["status"] in TERMINAL
        r = cb.post("/keys", json={"name": "sneaky", "admin": True})
        assert r.status_code == 403 and r.json()["error"]["code"] == "E_FORBIDDEN"

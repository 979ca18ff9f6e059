"""Load test of an agentfactory server: a fleet of CI jobs and people sharing one API key.

Each simulated user, with think time between actions, mostly watches agents (polls their status,
pages their logs, follows a stream for a moment, lists), and now and then launches one or cancels
one. Launches are paced for the whole locust process (AF_LOAD_CREATE_RATE per second), because a
real fleet launches at the rate its CI produces work, not once per page view; most launched agents
are `echo` agents (done in about a second), some (AF_LOAD_SLEEPER_MODEL, when set) run a `sleep`
and are the ones cancelled.

    AF_LOAD_KEY=af_... locust -f locustfile.py --host http://127.0.0.1:8000 --headless -u 120 -r 20 -t 60s

Environment: AF_LOAD_KEY (required), AF_LOAD_CREATE_RATE (launches per second, default 2),
AF_LOAD_SLEEPER_MODEL (a model whose prompt runs as a shell command, e.g. the test catalog's `sh`;
unset: echo agents only), AF_LOAD_SLEEPER_SHARE (default 0.2), AF_LOAD_WAIT_MIN/MAX (think time,
default 0.1-0.6 s), AF_LOAD_STREAM_SECONDS (how long a follower stays, default 2).
`bench/load.py` starts a server and runs this for you.
"""

from __future__ import annotations

import http.client
import json
import os
import random
import time
import urllib.parse
from collections import deque
from typing import Any

from locust import FastHttpUser, between, events, task

KEY = os.environ.get("AF_LOAD_KEY", "")
CREATE_RATE = float(os.environ.get("AF_LOAD_CREATE_RATE", "2"))
SLEEPER_MODEL = os.environ.get("AF_LOAD_SLEEPER_MODEL", "")
SLEEPER_SHARE = float(os.environ.get("AF_LOAD_SLEEPER_SHARE", "0.2"))
STREAM_SECONDS = float(os.environ.get("AF_LOAD_STREAM_SECONDS", "2"))
WAIT = (float(os.environ.get("AF_LOAD_WAIT_MIN", "0.1")), float(os.environ.get("AF_LOAD_WAIT_MAX", "0.6")))

# Shared by every user of this locust process: the fleet's recent agents and the sleepers to cancel.
recent: deque[str] = deque(maxlen=300)
sleepers: deque[str] = deque(maxlen=300)


class LaunchPacer:
    """A token bucket for launches across all users (one locust process, gevent: no locking needed)."""

    def __init__(self, rate: float, burst: float = 2):
        self.rate, self.burst = rate, burst
        self.tokens, self.at = burst, time.monotonic()

    def take(self) -> bool:
        now = time.monotonic()
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        return False


pacer = LaunchPacer(CREATE_RATE)


def agent_body(sleeper: bool) -> dict[str, Any]:
    if sleeper:
        return {
            "model": SLEEPER_MODEL,
            "tools": ["shell"],
            "prompt": "sleep 20",
            "ttl_seconds": 120,
            "metadata": {"load": "sleeper"},
        }
    return {"model": "echo", "prompt": "load test", "ttl_seconds": 120, "metadata": {"load": "echo"}}


@events.test_start.add_listener
def seed(environment: Any, **_kwargs: Any) -> None:
    """A few agents exist before the users arrive, so the watchers have something to watch."""
    if not KEY:
        raise SystemExit("AF_LOAD_KEY is not set")
    host = urllib.parse.urlsplit(environment.host)
    for _ in range(5):
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=60)
        conn.request(
            "POST",
            "/agents",
            body=json.dumps(agent_body(False)),
            headers={"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"},
        )
        response = conn.getresponse()
        body = response.read()
        conn.close()
        if response.status == 201:
            recent.append(json.loads(body)["id"])


class FleetUser(FastHttpUser):
    wait_time = between(*WAIT)

    def on_start(self) -> None:
        self.client.auth_header = f"Bearer {KEY}"

    def _some_agent(self) -> str | None:
        return random.choice(recent) if recent else None

    @task(1)
    def create_agent(self) -> None:
        if not pacer.take():
            self.poll_status()
            return
        sleeper = bool(SLEEPER_MODEL) and random.random() < SLEEPER_SHARE
        with self.client.post("/agents", json=agent_body(sleeper), name="/agents [POST]", catch_response=True) as r:
            if r.status_code == 201:
                agent_id = r.json()["id"]
                recent.append(agent_id)
                if sleeper:
                    sleepers.append(agent_id)

    @task(10)
    def poll_status(self) -> None:
        agent_id = self._some_agent()
        if agent_id:
            self.client.get(f"/agents/{agent_id}", name="/agents/{id}")

    @task(3)
    def page_logs(self) -> None:
        agent_id = self._some_agent()
        if not agent_id:
            return
        cursor = "0"
        for _ in range(3):
            with self.client.get(
                f"/agents/{agent_id}/logs?cursor={cursor}&limit=100", name="/agents/{id}/logs", catch_response=True
            ) as r:
                if r.status_code != 200:
                    return
                page = r.json()
            if page["complete"] or not page["lines"]:
                return
            cursor = page["next_cursor"]

    @task(2)
    def list_agents(self) -> None:
        self.client.get("/agents?limit=20", name="/agents")

    @task(1)
    def result(self) -> None:
        agent_id = self._some_agent()
        if agent_id:
            self.client.get(f"/agents/{agent_id}/result", name="/agents/{id}/result")

    @task(1)
    def follow_stream(self) -> None:
        """Follow an agent's SSE stream for a moment (or to its `end`), then hang up."""
        agent_id = self._some_agent()
        if not agent_id:
            return
        host = urllib.parse.urlsplit(self.host)
        started = time.perf_counter()
        received, error = 0, None
        conn = http.client.HTTPConnection(host.hostname, host.port, timeout=STREAM_SECONDS + 5)
        try:
            conn.request("GET", f"/agents/{agent_id}/stream", headers={"Authorization": f"Bearer {KEY}"})
            response = conn.getresponse()
            response_time = (time.perf_counter() - started) * 1000
            if response.status != 200:
                error = RuntimeError(f"HTTP {response.status}")
            else:
                deadline = time.monotonic() + STREAM_SECONDS
                try:
                    while (left := deadline - time.monotonic()) > 0:
                        if conn.sock is not None:
                            conn.sock.settimeout(left)
                        line = response.readline()
                        if not line:
                            break
                        received += len(line)
                        if line.startswith(b"event: end"):
                            break
                except TimeoutError:
                    pass  # the moment is over: hang up, as a person closing the tab would
        except OSError as exc:
            response_time, error = (time.perf_counter() - started) * 1000, exc
        finally:
            conn.close()
        self.environment.events.request.fire(
            request_type="GET",
            name="/agents/{id}/stream",
            response_time=response_time,
            response_length=received,
            exception=error,
            context={},
        )

    @task(1)
    def cancel(self) -> None:
        """Cancel a sleeper (running: it becomes `cancelled`), else an agent that is done (no change)."""
        agent_id = sleepers.popleft() if sleepers else self._some_agent()
        if agent_id:
            self.client.delete(f"/agents/{agent_id}", name="/agents/{id} [DELETE]")

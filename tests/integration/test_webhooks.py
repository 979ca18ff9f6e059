"""Issue 22's acceptance on the real server and engine, with loopback receivers run by the test.

Scaled for CI: 50 echo agents instead of 200 and a 5 s outage instead of 20 s (the retry schedule
is shortened in proportion), 25 agents (50 deliveries) across the kill -9 instead of 100."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
import standardwebhooks

from tests.support.receiver import Received, Receiver, always
from tests.support.server import ServerProcess, wait_until
from tests.support.sse import iter_events

pytestmark = pytest.mark.docker
AGENTFACTORY = str(Path(sys.executable).parent / "agentfactory")

TIMEOUT = 1.0
FLAKY_ENV = {
    "AGENTFACTORY_WEBHOOK_ALLOW_PRIVATE": "true",
    "AGENTFACTORY_WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1,2,4,8",  # ~16 s: longer than the 5 s outage
    "AGENTFACTORY_WEBHOOK_TIMEOUT_SECONDS": str(TIMEOUT),
    "AGENTFACTORY_WEBHOOK_CIRCUIT_FAILURES": "5",
    "AGENTFACTORY_WEBHOOK_CIRCUIT_COOLDOWN_SECONDS": "1",
}


@pytest.fixture(scope="module")
def flaky_server(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("webhooks"), env=FLAKY_ENV).start()
    try:
        yield srv
    finally:
        srv.stop()
        srv.cleanup_containers()


def launch(c: httpx.Client, n: int, **body: Any) -> list[str]:
    def one(_i: int) -> str:
        r = c.post("/agents", json={"model": "echo", "prompt": "hi", "ttl_seconds": 120, **body})
        assert r.status_code == 201, r.text
        return str(r.json()["id"])

    with ThreadPoolExecutor(6) as pool:
        return list(pool.map(one, range(n)))


def create_hook(c: httpx.Client, url: str, events: list[str] | None = None) -> dict[str, Any]:
    r = c.post("/webhooks", json={"url": url, **({"events": events} if events else {})})
    assert r.status_code == 201, r.text
    return r.json()  # type: ignore[no-any-return]


def deliveries(c: httpx.Client, hook_id: str, status: str | None = None) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    params: dict[str, Any] = {"limit": 500, **({"status": status} if status else {})}
    while True:
        page = c.get(f"/webhooks/{hook_id}/deliveries", params=params).json()
        out.extend(page["items"])
        if not page["next_cursor"]:
            return out
        params["cursor"] = page["next_cursor"]


def metric(c: httpx.Client, name: str) -> float:
    lines = c.get("/metrics").text.splitlines()
    return sum(float(line.split()[-1]) for line in lines if line.split(" ")[0] == name)


def verified(received: list[Received], secret: str) -> dict[str, list[Any]]:
    """{webhook-id: [payload of each request]}, every request's signature checked."""
    wh = standardwebhooks.Webhook(secret)
    by_id: dict[str, list[Any]] = defaultdict(list)
    for r in received:
        by_id[r.webhook_id].append(wh.verify(r.body, r.headers))
    return by_id


def history(c: httpx.Client, after: int) -> list[int]:
    with c.stream("GET", "/events", params={"after": after, "follow": "false"}) as r:
        return [int(ev.id or 0) for ev in iter_events(r)]


def last_event(c: httpx.Client) -> int:
    ids = history(c, 0)
    return ids[-1] if ids else 0


class EventReader(threading.Thread):
    """Follows /events from `after`, dropping the connection every `drop_every` events and resuming
    with Last-Event-ID, until `stop` is set; `ids` is every event id received, in order."""

    def __init__(self, url: str, key: str, after: int, drop_every: int = 0):
        super().__init__(daemon=True)
        self.url, self.key, self.last, self.drop_every = url, key, str(after), drop_every
        self.ids: list[int] = []
        self.types: dict[int, tuple[str, str]] = {}
        self.stop = threading.Event()
        self.connections = 0
        self.errors = 0

    def run(self) -> None:
        while not self.stop.is_set():
            try:
                headers = {"Authorization": f"Bearer {self.key}", "Last-Event-ID": self.last}
                with httpx.stream("GET", self.url + "/events", headers=headers, timeout=httpx.Timeout(5, read=20)) as r:
                    assert r.status_code == 200
                    self.connections += 1
                    for n, ev in enumerate(iter_events(r), 1):
                        data = ev.json()
                        self.ids.append(int(ev.id or 0))
                        self.types[data["id"]] = (data["type"], data["agent"]["id"])
                        self.last = str(ev.id)
                        if self.stop.is_set() or (self.drop_every and n % self.drop_every == 0):
                            break
            except (httpx.HTTPError, OSError):
                self.errors += 1  # the server is down (restarting): try again
                time.sleep(0.2)


def test_every_finished_agent_arrives_signed_through_errors_timeouts_and_an_outage(flaky_server: ServerProcess) -> None:
    n_agents = 50

    def respond(r: Received) -> tuple[int, float]:
        if r.nth <= 2:
            return 500, 0.0  # the first two attempts of every event fail
        if r.nth == 3 and int(r.webhook_id) % 4 == 0:
            return 200, TIMEOUT + 0.5  # answered too late: the sender times out and retries
        return 200, 0.0

    receiver = Receiver(respond).start()
    c = flaky_server.client()
    try:
        hook = create_hook(c, receiver.url, ["agent.finished"])
        reader = EventReader(flaky_server.url, flaky_server.admin_key, last_event(c), drop_every=7)
        reader.start()
        outage_done = threading.Event()

        def outage() -> None:  # the receiver goes down for 5 s in the middle of the run
            wait_until(lambda: len(receiver.snapshot()) >= 60, timeout=240, what="half the traffic")
            receiver.stop()
            time.sleep(5)
            receiver.start()
            outage_done.set()

        threading.Thread(target=outage, daemon=True).start()
        agents = set(launch(c, n_agents))
        wait_until(outage_done.is_set, timeout=240, what="the outage over")

        def all_delivered() -> bool:
            return len(deliveries(c, hook["id"], "succeeded")) == n_agents

        wait_until(all_delivered, timeout=240, interval=0.5, what="every delivery succeeded")
        by_id = verified(receiver.snapshot(), hook["secret"])
        finished = {payloads[0]["agent"]["id"] for payloads in by_id.values()}
        assert finished == agents  # dedupe by webhook-id: exactly the agents, once each
        assert len(by_id) == n_agents
        for msg_id, payloads in by_id.items():
            assert all(p == payloads[0] for p in payloads) and payloads[0]["id"] == int(msg_id)
            assert payloads[0]["type"] == "agent.finished" and payloads[0]["agent"]["status"] == "succeeded"
        assert sum(len(p) for p in by_id.values()) > 3 * n_agents  # two 500s each, plus timeouts and the outage
        assert deliveries(c, hook["id"], "dead") == []
        timed_out = [
            a for d in deliveries(c, hook["id"]) for a in d["attempts"] if (a["error"] or "").startswith("timeout")
        ]
        assert timed_out, "no attempt timed out"

        # /events, resumed with Last-Event-ID after every 7th event, missed nothing and repeated nothing
        wait_until(lambda: {a for t, a in reader.types.values() if t == "agent.finished"} >= agents, timeout=30,
                   what="the event reader saw every finish")  # fmt: skip
        reader.stop.set()
        assert reader.connections > 10
        assert len(reader.ids) == len(set(reader.ids)) and reader.ids == sorted(reader.ids)
        assert reader.ids == history(c, reader.ids[0] - 1)[: len(reader.ids)]
        log = (Path(flaky_server.log_path)).read_text()
        assert hook["secret"] not in log and '"type":"agent.finished"' not in log  # never the secret or a body
    finally:
        receiver.stop()
        c.close()


def test_an_endpoint_down_past_the_schedule_dead_letters_opens_its_circuit_and_a_manual_retry_delivers(
    make_server: type[ServerProcess],
) -> None:
    env = {
        **FLAKY_ENV,
        "AGENTFACTORY_WEBHOOK_RETRY_SCHEDULE": "0.2,0.5,1",
        "AGENTFACTORY_WEBHOOK_CIRCUIT_FAILURES": "3",
        "AGENTFACTORY_WEBHOOK_CIRCUIT_COOLDOWN_SECONDS": "0.5",
    }
    srv = make_server(env=env).start()
    receiver = Receiver(always(200))  # not started: the endpoint is down (connection refused)
    with srv.client() as c:
        hook = create_hook(c, receiver.url, ["agent.finished"])
        agents = set(launch(c, 3))
        wait_until(lambda: len(deliveries(c, hook["id"], "dead")) == 3, timeout=60, interval=0.3, what="all dead")
        dead = deliveries(c, hook["id"], "dead")
        assert {d["agent_id"] for d in dead} == agents
        assert all(len(d["attempts"]) == 4 and d["attempts"][-1]["status_code"] is None for d in dead)
        assert all("ConnectError" in a["error"] for d in dead for a in d["attempts"])
        assert metric(c, "agentfactory_webhook_circuits_opened_total") >= 1
        wait_until(lambda: metric(c, "agentfactory_webhook_circuits_open") == 1, timeout=5, what="circuit gauge")
        wait_until(lambda: metric(c, "agentfactory_webhook_dead_letters") == 3, timeout=5, what="dead-letter gauge")
        assert c.get(f"/webhooks/{hook['id']}").json()["circuit"] in ("open", "half_open")

        receiver.start()  # back
        try:
            r = c.post(f"/webhooks/{hook['id']}/deliveries/{dead[0]['id']}/retry")
            assert r.status_code == 202, r.text
            wait_until(lambda: receiver.snapshot(), timeout=10, what="the manual retry")
            (got,) = receiver.snapshot()
            assert standardwebhooks.Webhook(hook["secret"]).verify(got.body, got.headers)["id"] == dead[0]["event_id"]
            wait_until(lambda: len(deliveries(c, hook["id"], "succeeded")) == 1, timeout=10, what="succeeded")
            assert c.get(f"/webhooks/{hook['id']}").json()["circuit"] == "closed"
            wait_until(lambda: metric(c, "agentfactory_webhook_dead_letters") == 2, timeout=5, what="gauge down")
        finally:
            receiver.stop()


def test_deliveries_pending_at_a_kill_9_are_all_delivered_after_the_restart_and_events_resume(
    make_server: type[ServerProcess],
) -> None:
    env = {**FLAKY_ENV, "AGENTFACTORY_WEBHOOK_RETRY_SCHEDULE": ",".join(["1"] * 60)}
    srv = make_server(env=env).start()
    receiver = Receiver(always(200))  # down until after the restart
    c = srv.client()
    try:
        hook = create_hook(c, receiver.url)  # started and finished: two deliveries per agent
        reader = EventReader(srv.url, srv.admin_key, 0)
        reader.start()
        agents = set(launch(c, 25))
        wait_until(lambda: len(deliveries(c, hook["id"])) == 50, timeout=120, interval=0.3, what="50 deliveries")
        assert deliveries(c, hook["id"], "succeeded") == []
        wait_until(lambda: len(reader.ids) == 50, timeout=20, what="the reader saw every event")
        seen_before = list(reader.ids)

        srv.kill()
        c.close()
        srv.start()
        c = srv.client()
        receiver.start()
        wait_until(lambda: len(deliveries(c, hook["id"], "succeeded")) == 50, timeout=60, interval=0.3,
                   what="every pending delivery delivered after the restart")  # fmt: skip
        by_id = verified(receiver.snapshot(), hook["secret"])
        kinds = {(p[0]["type"], p[0]["agent"]["id"]) for p in by_id.values()}
        assert kinds == {(t, a) for a in agents for t in ("agent.started", "agent.finished")}

        # The reader reconnected with Last-Event-ID after the restart: more events come, none repeated.
        more = launch(c, 2)
        wait_until(lambda: len(reader.ids) == 54, timeout=60, what="events after the restart")
        reader.stop.set()
        assert reader.errors >= 1  # it did lose the connection
        assert reader.ids[:50] == seen_before and reader.ids == history(c, 0)[:54]
        assert {reader.types[i][1] for i in reader.ids[50:]} == set(more)
    finally:
        receiver.stop()
        c.close()


@pytest.mark.parametrize("url", ["http://127.0.0.1/", "http://169.254.169.254/"])
def test_private_webhook_urls_are_refused_without_the_opt_in(server: ServerProcess, url: str) -> None:
    with server.client() as c:
        r = c.post("/webhooks", json={"url": url})
        assert (r.status_code, r.json()["error"]["code"]) == (422, "E_SCHEMA")
        assert c.get("/webhooks").json()["items"] == []


def test_the_cli_manages_webhooks_and_prints_events(flaky_server: ServerProcess) -> None:
    env = {**os.environ, "AGENTFACTORY_URL": flaky_server.url, "AGENTFACTORY_API_KEY": flaky_server.admin_key}

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([AGENTFACTORY, *args], capture_output=True, text=True, timeout=60, env=env, check=False)

    receiver = Receiver().start()
    try:
        made = cli("webhooks", "create", receiver.url, "--event", "agent.finished", "--meta", "cli=yes")
        assert made.returncode == 0, made.stderr
        secret = made.stdout.strip()
        assert secret.startswith("whsec_") and "shown only this once" in made.stderr
        hook_id = made.stderr.split()[1]
        listed = json.loads(cli("webhooks", "list", "--json").stdout)["items"]
        assert hook_id in [h["id"] for h in listed] and secret not in json.dumps(listed)
        assert hook_id in cli("webhooks", "list").stdout

        with flaky_server.client() as c:
            (agent,) = launch(c, 1, metadata={"cli": "yes"})
        wait_until(receiver.snapshot, timeout=60, what="the delivery")
        assert standardwebhooks.Webhook(secret).verify(receiver.snapshot()[0].body, receiver.snapshot()[0].headers)
        wait_until(lambda: "succeeded" in cli("webhooks", "deliveries", hook_id).stdout, timeout=10, what="listed")
        (delivery,) = json.loads(cli("webhooks", "deliveries", hook_id, "--json").stdout)["items"]
        assert (delivery["status"], delivery["agent_id"]) == ("succeeded", agent)

        printed = cli("events", "--agent", agent).stdout.splitlines()
        assert [line.split("\t")[2:4] for line in printed] == [["agent.started", agent], ["agent.finished", agent]]
        finished = cli("events", "--agent", agent, "--type", "agent.finished", "--json").stdout
        as_json = [json.loads(line) for line in finished.splitlines()]
        assert [e["agent"]["status"] for e in as_json] == ["succeeded"]
        with subprocess.Popen([AGENTFACTORY, "events", "-f", "--agent", agent, "--json"], stdout=subprocess.PIPE,
                              text=True, env=env) as follower:  # fmt: skip
            assert follower.stdout is not None
            followed = [json.loads(follower.stdout.readline()) for _ in range(2)]
            follower.kill()
        assert [e["type"] for e in followed] == ["agent.started", "agent.finished"]

        again = cli("webhooks", "retry", hook_id, str(delivery["id"]))
        assert again.returncode == 65 and "E_CONFLICT" in again.stderr  # EX_DATAERR: the server refused it
        assert cli("webhooks", "rm", hook_id).stdout.split() == [hook_id, "deleted"]
        gone = cli("webhooks", "deliveries", hook_id)
        assert gone.returncode == 66 and "E_NOT_FOUND" in gone.stderr  # EX_NOINPUT
    finally:
        receiver.stop()

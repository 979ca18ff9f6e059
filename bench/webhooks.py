"""Webhook delivery under a burst: event → delivery latency, and what the burst costs the API.

N agents (default 200) are launched, each running a `shell` tool that waits for one shared wall
clock second and then exits, so they all finish within about a second of each other. A loopback
receiver (run by this script, answering 204) is subscribed to `agent.finished`.

  latency   receiver's arrival time - the event's `created_at` (written in the transaction that
            made the agent terminal), over the N deliveries; each must arrive with a valid signature.
  API       a client polling `GET /agents/{id}` back to back: its p50/p99 while idle (before the
            launches) and during the burst (from the first finish to the last delivery).

No baseline: nothing comparable runs without agentfactory. Everything talks to loopback and the
project's own containers.

    .venv/bin/python bench/webhooks.py [--agents 200]
"""

from __future__ import annotations

import argparse
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    ROOT,
    BenchServer,
    Report,
    Row,
    Sidecar,
    Summary,
    common_args,
    create_agent,
    ensure_ready,
    machine_note,
    print_rows,
    wait_terminal,
)

if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from agentfactory.webhooks import verify
from tests.support.receiver import Receiver

# one process that sleeps until the shared second (a polling loop in 200 containers loads the machine)
WAIT_FOR = "python3 -c 'import time; time.sleep(max(0.0, {at} - time.time()))'; echo done"


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


class Poller(threading.Thread):
    """GET /agents/{id} back to back; (wall time sent, seconds taken) of each."""

    def __init__(self, client: Any, agent_id: str):
        super().__init__(daemon=True)
        self.client, self.agent_id = client, agent_id
        self.samples: list[tuple[float, float]] = []
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            sent = time.time()
            t0 = time.perf_counter()
            r = self.client.get(f"/agents/{self.agent_id}")
            took = time.perf_counter() - t0
            if r.status_code == 200:
                self.samples.append((sent, took))

    def between(self, start: float, end: float) -> list[float]:
        return [took for sent, took in self.samples if start <= sent <= end]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--idle-seconds", type=float, default=5.0)
    parser.add_argument("--launch-seconds", type=float, default=1.0, help="launch time allowed per agent")
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    report = Report("webhooks")
    receiver = Receiver().start()
    env = {"AGENTFACTORY_WEBHOOK_ALLOW_PRIVATE": "true"}
    try:
        with Sidecar() as sidecar, BenchServer(sidecar, env=env) as server, server.client() as c:
            probe = create_agent(c, {"model": "echo", "prompt": "hi"})
            wait_terminal(c, probe["id"])  # finished before the webhook exists: not delivered
            hook = c.post("/webhooks", json={"url": receiver.url, "events": ["agent.finished"]}).json()
            poll_client = server.client()
            poller = Poller(poll_client, probe["id"])
            poller.start()
            time.sleep(args.idle_seconds)  # the idle sample
            idle_end = time.time()

            # every agent running before this second (launches took 0.75 s each on 2 busy cores)
            at = int(time.time() + 30 + args.agents * args.launch_seconds)
            body = {"model": "sh", "tools": ["shell"], "prompt": WAIT_FOR.format(at=at), "ttl_seconds": 900}
            launch_start = time.time()
            with ThreadPoolExecutor(8) as pool:
                ids = list(pool.map(lambda _i: create_agent(c, body)["id"], range(args.agents)))
            launched = time.time()
            print(f"[bench] {args.agents} agents launched in {launched - launch_start:.1f} s; "
                  f"finish at +{at - launched:.1f} s", file=sys.stderr)  # fmt: skip
            if launched > at:
                print("[bench] WARNING: launches overran the finish second: raise --launch-seconds", file=sys.stderr)
            deadline = time.monotonic() + 600
            while len({r.webhook_id for r in receiver.snapshot()}) < args.agents:
                if time.monotonic() > deadline:
                    raise SystemExit("not every agent.finished was delivered within 600 s")
                time.sleep(0.2)
            burst_end = time.time()
            poller.stop.set()
            poller.join(10)

            got = receiver.snapshot()
            first: dict[str, Any] = {}
            for r in got:
                payload = verify(r.headers, r.body, hook["secret"], now=r.at)
                first.setdefault(r.webhook_id, (payload, r.at))
            assert {p["agent"]["id"] for p, _ in first.values()} == set(ids), "deliveries do not match the agents"
            latency = [arrived - epoch(p["created_at"]) for p, arrived in first.values()]
            finished = [epoch(p["agent"]["finished_at"]) for p, _ in first.values()]
            burst_start = min(finished)
            # where the time goes: event -> delivery row (dispatch), row -> first attempt (queue), the attempt
            created = {p["id"]: epoch(p["created_at"]) for p, _ in first.values()}
            rows = c.get(f"/webhooks/{hook['id']}/deliveries", params={"limit": 500}).json()["items"]
            dispatch = [epoch(d["created_at"]) - created[d["event_id"]] for d in rows]
            queue = [epoch(d["attempts"][0]["at"]) - epoch(d["created_at"]) for d in rows if d["attempts"]]
            attempt = [d["attempts"][0]["duration_seconds"] for d in rows if d["attempts"]]
            for name, values in (("dispatch", dispatch), ("queue", queue), ("attempt", attempt)):
                part = Summary.of(values)
                report.details[name] = vars(part)
                line = f"p50 {part.median * 1e3:8.1f} ms  p99 {part.p99 * 1e3:8.1f} ms"
                print(f"[bench] {name:<9} {line}", file=sys.stderr)
            idle = Summary.of(poller.between(launch_start - args.idle_seconds - 1, idle_end))
            burst = Summary.of(poller.between(burst_start, burst_end))
            lat = Summary.of(latency)
            report.details.update(
                {
                    "agents": args.agents,
                    "finish_spread_seconds": max(finished) - burst_start,
                    "deliveries_received": len(got),
                    "latency": vars(lat),
                    "get_idle": vars(idle),
                    "get_burst": vars(burst),
                }
            )
            print(f"\nwebhooks: {args.agents} agents finishing within {max(finished) - burst_start:.2f} s "
                  f"({machine_note()})")  # fmt: skip
            print(f"  event -> delivery   p50 {lat.median * 1000:8.1f} ms   p99 {lat.p99 * 1000:8.1f} ms   "
                  f"max {lat.max * 1000:8.1f} ms   (n={lat.n})")  # fmt: skip
            for name, s in (("idle ", idle), ("burst", burst)):
                print(f"  GET /agents/{{id}} {name} p50 {s.median * 1e3:6.2f} ms  p99 {s.p99 * 1e3:6.2f} ms (n={s.n})")
            rows = [
                report.add(Row("webhook event->delivery p50", lat.median * 1000, None, "ms")),
                report.add(Row("webhook event->delivery p99", lat.p99 * 1000, None, "ms")),
                report.add(Row("GET /agents/{id} p99 during burst vs idle", burst.p99 * 1000, idle.p99 * 1000, "ms")),
            ]
            print_rows(rows)
            poll_client.close()
    finally:
        receiver.stop()
    report.write(args.json)


if __name__ == "__main__":
    main()

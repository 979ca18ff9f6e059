"""The queue: a burst of echo agents posted at once against a capacity of C, vs `docker run` at C.

  ours      every agent POSTed at once (20 posting threads) with queue_timeout_seconds=600 to a server
            with AGENTFACTORY_MAX_RUNNING_AGENTS=C; done when every agent has ended (GET polling).
            Nobody retries: the queue hands the slots out.
  docker    the same agents by `docker run --rm --network none`, C at a time (a client-side semaphore:
            the best a caller can do without a queue).
  no queue  the same burst with queue_timeout_seconds=0: how many POSTs the cluster refuses (429).

Each side runs its burst in two halves, ABBA (ours, docker, docker, ours). Also reported: the peak of
slots held (GET /capacity sampled every 100 ms), which must not pass C.

    .venv/bin/python bench/queue_burst.py [--agents 100] [--capacity 10]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BenchServer, Report, Row, Sidecar, common_args, ensure_ready, machine_note, print_rows

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=100, help="agents per side")
    parser.add_argument("--capacity", type=int, default=10)
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    cap = args.capacity
    print(f"queue: bursts of {args.agents} echo agents, capacity {cap}, halves ABBA; {machine_note()}")
    report = Report("queue")
    env = {"AGENTFACTORY_MAX_RUNNING_AGENTS": str(cap)}
    with Sidecar() as sidecar, BenchServer(sidecar, env=env) as server:
        client = server.client()
        command = sidecar.docker_run()
        peak = [0]

        def ours(n: int) -> float:
            stop = threading.Event()

            def sample() -> None:
                with server.client() as c:
                    while not stop.is_set():
                        peak[0] = max(peak[0], c.get("/capacity").json()["running"])
                        stop.wait(0.1)

            sampler = threading.Thread(target=sample, daemon=True)
            sampler.start()
            t0 = time.monotonic()
            body = {"model": "echo", "prompt": "hi", "queue_timeout_seconds": 600}
            with ThreadPoolExecutor(20) as pool:
                ids = list(pool.map(lambda _i: client.post("/agents", json=body).json()["id"], range(n)))
            pending = set(ids)
            while pending:
                for agent_id in list(pending):
                    status = client.get(f"/agents/{agent_id}").json()["status"]
                    if status in TERMINAL:
                        if status != "succeeded":
                            raise RuntimeError(f"{agent_id} ended {status}")
                        pending.discard(agent_id)
                time.sleep(0.2)
            wall = time.monotonic() - t0
            stop.set()
            sampler.join(2)
            return wall

        def docker(n: int) -> float:
            def one(_i: int) -> None:
                done = subprocess.run(command, capture_output=True, check=False)
                if done.returncode != 0:
                    raise RuntimeError(f"docker run exited {done.returncode}: {done.stderr[-300:]!r}")

            t0 = time.monotonic()
            with ThreadPoolExecutor(cap) as pool:
                list(pool.map(one, range(n)))
            return time.monotonic() - t0

        ours(2)
        docker(2)
        halves = [args.agents // 2, args.agents - args.agents // 2]
        wall = {"ours": 0.0, "docker": 0.0}
        for side, n in (("ours", halves[0]), ("docker", halves[0]), ("docker", halves[1]), ("ours", halves[1])):
            w = ours(n) if side == "ours" else docker(n)
            wall[side] += w
            print(f"  {side:<6} {n} agents in {w:6.1f} s ({n / w:5.2f}/s)   {machine_note()}")
        rate = {side: args.agents / w for side, w in wall.items()}
        print(f"burst at capacity {cap}: ours {rate['ours']:.2f}/s, docker run {rate['docker']:.2f}/s, "
              f"ratio {rate['ours'] / rate['docker']:.2f}x; peak slots held {peak[0]} (capacity {cap})")  # fmt: skip
        # The same burst without a queue: how many the cluster refuses.
        body = {"model": "echo", "prompt": "hi"}
        with ThreadPoolExecutor(20) as pool:
            codes = list(pool.map(lambda _i: client.post("/agents", json=body).status_code, range(args.agents)))
        refused = sum(code == 429 for code in codes)
        print(f"without queue_timeout_seconds: {refused} of {args.agents} refused with 429 E_CAPACITY")
        report.add(Row(f"burst completed/s at capacity {cap}", rate["ours"], rate["docker"], "/s", better="higher"))
        report.details = {"rate": rate, "peak_slots": peak[0], "refused_without_queue": refused}
        client.close()
    print("\nsummary")
    print_rows(report.rows)
    report.write(args.json)


if __name__ == "__main__":
    main()

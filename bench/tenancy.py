"""One key flooding past its rate limit: what it costs another key's requests.

A "hot" key (60 requests/minute) is flooded at --flood-rate requests per second (open loop, aiohttp,
in a child process so the flood's client costs the measuring process no CPU), far past its rate, so
nearly every one of its requests is refused with 429. Meanwhile a "calm" key (no practical limit)
makes --samples `GET /agents` requests a round, one every --interval seconds (a client polling, not a
second flood), and each one's latency is recorded.

  while flooded (ours)   the calm key's latency while the hot key is flooded and refused
  idle (the baseline)    the same requests with the flood paused

Rounds alternate (idle, flooded, flooded, idle...) so drift on the machine hits both alike. A flooded
round starts only once the hot key is being refused. Any calm-key request that is not a 200 counts as
a failure. The flood's pace (not as fast as possible) matters on a small machine: an unpaced flood
from the same cores measures CPU contention, not the rate limiter.

    .venv/bin/python bench/tenancy.py [--rounds 10] [--samples 50] [--interval 0.02] [--flood-rate 200]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BenchServer,
    Report,
    Row,
    Sidecar,
    Summary,
    common_args,
    ensure_ready,
    machine_note,
    print_rows,
    quantile,
)


def _flood_main(url: str, key: str, rate: float, flooding: Any, stop: Any, counts: Any) -> None:
    """Child process: GET /agents with `key` at `rate` per second while `flooding` is set.
    counts = [200s, 429s, anything else]."""
    import aiohttp

    async def go() -> None:
        headers = {"Authorization": f"Bearer {key}"}
        async with aiohttp.ClientSession(url, headers=headers, connector=aiohttp.TCPConnector(limit=32)) as s:

            async def one() -> None:
                try:
                    async with s.get("/agents") as r:
                        await r.read()
                        slot = {200: 0, 429: 1}.get(r.status, 2)
                except aiohttp.ClientError:
                    slot = 2
                with counts.get_lock():
                    counts[slot] += 1

            pending: set[asyncio.Task[None]] = set()
            while not stop.is_set():
                if not flooding.is_set():
                    await asyncio.sleep(0.05)
                    continue
                start, i = time.perf_counter(), 0
                while flooding.is_set() and not stop.is_set():
                    due = start + i / rate
                    delay = due - time.perf_counter()
                    if delay > 0:
                        await asyncio.sleep(delay)
                    task = asyncio.create_task(one())
                    pending.add(task)
                    task.add_done_callback(pending.discard)
                    i += 1
            await asyncio.gather(*pending)

    asyncio.run(go())


class Flood:
    """The hot key's flood in a child process, switched on and off between rounds."""

    def __init__(self, url: str, key: str, rate: float) -> None:
        ctx = mp.get_context("spawn")
        self.flooding, self.stop = ctx.Event(), ctx.Event()
        self.counts = ctx.Array("q", 3)
        self.proc = ctx.Process(
            target=_flood_main, args=(url, key, rate, self.flooding, self.stop, self.counts), daemon=True
        )

    def __enter__(self) -> Flood:
        self.proc.start()
        return self

    def __exit__(self, *_exc: object) -> None:
        self.stop.set()
        self.flooding.clear()
        self.proc.join(30)
        if self.proc.is_alive():
            self.proc.terminate()

    def refused(self) -> int:
        return int(self.counts[1])


def make_key(srv: BenchServer, name: str, per_minute: int) -> str:
    with srv.client() as c:
        r = c.post("/keys", json={"name": name, "max_requests_per_minute": per_minute})
        r.raise_for_status()
        return str(r.json()["key"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=10, help="rounds a side, interleaved ABBA")
    parser.add_argument("--samples", type=int, default=50, help="calm-key requests a round")
    parser.add_argument("--interval", type=float, default=0.02, help="seconds between calm-key requests")
    parser.add_argument("--flood-rate", type=float, default=200, help="hot-key requests per second while flooding")
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    print(
        f"tenancy: calm key GET /agents, {args.rounds}x{args.samples} a side; hot key (60/min) flooded at "
        f"{args.flood_rate:.0f}/s; {machine_note()}"
    )
    report = Report("tenancy")
    latencies: dict[str, list[float]] = {"idle": [], "flooded": []}
    failures = {"idle": 0, "flooded": 0}
    with Sidecar() as sidecar, BenchServer(sidecar) as srv:
        hot = make_key(srv, "hot", 60)
        calm = make_key(srv, "calm", 1_000_000)
        with Flood(srv.url, hot, args.flood_rate) as flood, srv.client(calm) as c:
            for _ in range(20):  # warm the connection, the key cache and the route
                c.get("/agents")
            for r in range(args.rounds):
                order = ("idle", "flooded") if r % 2 == 0 else ("flooded", "idle")
                for side in order:
                    if side == "flooded":
                        refused = flood.refused()
                        flood.flooding.set()
                        deadline = time.monotonic() + 30
                        while flood.refused() <= refused + 10:  # the limiter is refusing the flood
                            if time.monotonic() > deadline:
                                raise RuntimeError("the hot key was not rate limited within 30 s")
                            time.sleep(0.01)
                    else:
                        flood.flooding.clear()
                        time.sleep(0.2)  # the flood's requests in flight finish
                    refused_before = flood.refused()
                    for _ in range(args.samples):
                        t0 = time.perf_counter()
                        status = c.get("/agents").status_code
                        latencies[side].append(time.perf_counter() - t0)
                        failures[side] += status != 200
                        time.sleep(args.interval)
                    s = Summary.of(latencies[side][-args.samples :])
                    print(
                        f"  round {r + 1} {side:<8} calm p50 {s.median * 1e3:6.2f} ms  p90 {s.p90 * 1e3:6.2f} ms"
                        f"  hot refused meanwhile {flood.refused() - refused_before:5d}   {machine_note()}"
                    )
        counts = [int(flood.counts[i]) for i in range(3)]  # the flood's process has finished: final
    idle, flooded = Summary.of(latencies["idle"]), Summary.of(latencies["flooded"])
    print(f"\ncalm key GET /agents ({idle.n} requests a side); hot key: {counts[0]} ok, {counts[1]} refused (429),")
    print(f"  {counts[2]} other; calm-key failures: idle {failures['idle']}, flooded {failures['flooded']}")
    p95_idle, p95_flooded = quantile(latencies["idle"], 0.95), quantile(latencies["flooded"], 0.95)
    figures = (("p50", idle.median, flooded.median), ("p95", p95_idle, p95_flooded), ("p99", idle.p99, flooded.p99))
    for q, a, b in figures:
        print(f"  {q}: idle {a * 1e3:6.2f} ms   while another key is flooded {b * 1e3:6.2f} ms   ratio {b / a:.2f}x")
    print(f"after: {machine_note()}")
    row = report.add(
        Row("calm key GET /agents p95: other key flooded vs idle", p95_flooded * 1e3, p95_idle * 1e3, "ms", "≤ 2x idle")
    )
    row.met = row.ratio is not None and row.ratio <= 2 and not failures["flooded"] and counts[1] > 0
    p50 = Row("calm key GET /agents p50: other key flooded vs idle", flooded.median * 1e3, idle.median * 1e3, "ms")
    report.add(p50)
    report.details = {"hot_key_counts": counts, "calm_failures": failures}
    print("\nsummary")
    print_rows(report.rows)
    report.write(args.json)


if __name__ == "__main__":
    main()

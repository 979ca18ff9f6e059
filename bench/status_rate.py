"""GET /agents/{id} at a fixed request rate: the status poll a CI step or a dashboard makes.

An open-loop generator (one asyncio process, aiohttp, keep-alive connections) sends GET
/agents/{id} at exactly --rate requests per second for --seconds, cycling over --agents running
agents (their `shell` tool sleeps) and as many finished ones. Latency is counted from the moment
each request was *due*, not sent, so a stalled server cannot hide behind a slowed generator
(no coordinated omission). Meanwhile nothing else loads the server: this is the goal's figure
("p99 < 20 ms at 300 req/s"); `load.py` measures the mixed workload with locust.

The baseline is the same poll answered by the engine: `GET /containers/{id}/json` (what `docker
inspect` asks) on the same running containers, at the same rate, by the same generator. The two
take turns in --rounds rounds, so that both meet the same machine; and since a tail of a few ms
is at the mercy of the hypervisor on a VM, the share of CPU time stolen from this machine
(/proc/stat `steal`) during each side's rounds is printed beside its figures.

    .venv/bin/python bench/status_rate.py [--rate 300] [--seconds 20] [--agents 20] [--rounds 4]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BenchServer,
    Report,
    Row,
    Sidecar,
    Summary,
    agent_body,
    common_args,
    create_agent,
    ensure_ready,
    machine_note,
    print_rows,
    wait_terminal,
)


async def fixed_rate(
    session: aiohttp.ClientSession, urls: list[str], rate: float, seconds: float
) -> tuple[list[float], int, float]:
    """(latencies from due time, failures, achieved rate)."""
    n = int(rate * seconds)
    latencies: list[float] = []
    failures = 0
    start = time.perf_counter() + 0.2

    async def one(i: int) -> None:
        nonlocal failures
        due = start + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        try:
            async with session.get(urls[i % len(urls)]) as r:
                await r.read()
                if r.status != 200:
                    failures += 1
                    return
        except aiohttp.ClientError:
            failures += 1
            return
        latencies.append(time.perf_counter() - due)

    await asyncio.gather(*(one(i) for i in range(n)))
    return latencies, failures, n / (time.perf_counter() - start)


def cpu_ticks() -> tuple[int, int]:
    """(ticks stolen by the hypervisor, all ticks) since boot, from /proc/stat."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return fields[7], sum(fields[:8])


class Side:
    """One side's rounds: latencies, failures, achieved rates and stolen CPU, summed up."""

    def __init__(self, base: str, paths: list[str], headers: dict[str, str], unix: str = ""):
        self.base, self.paths, self.headers, self.unix = base, paths, headers, unix
        self.latencies: list[float] = []
        self.failed = 0
        self.rates: list[float] = []
        self.stolen = self.ticks = 0

    def run(self, rate: float, seconds: float) -> None:
        async def go() -> Any:
            unix = self.unix
            connector = aiohttp.UnixConnector(path=unix, limit=64) if unix else aiohttp.TCPConnector(limit=64)
            async with aiohttp.ClientSession(self.base, headers=self.headers, connector=connector) as session:
                await fixed_rate(session, self.paths, rate, 1.0)  # warm the connections and the caches
                stolen0, ticks0 = cpu_ticks()
                result = await fixed_rate(session, self.paths, rate, seconds)
                stolen1, ticks1 = cpu_ticks()
                self.stolen += stolen1 - stolen0
                self.ticks += ticks1 - ticks0
                return result

        latencies, failed, achieved = asyncio.run(go())
        self.latencies += latencies
        self.failed += failed
        self.rates.append(achieved)

    @property
    def steal_share(self) -> float:
        return self.stolen / self.ticks if self.ticks else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rate", type=float, default=300)
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--agents", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=4, help="turns each side takes, interleaved")
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    print(f"status_rate: GET /agents/{{id}} at {args.rate:.0f}/s for {args.seconds:.0f} s; {machine_note()}")
    report = Report("status_rate")
    with Sidecar() as sidecar, BenchServer(sidecar) as srv:
        key = srv.create_key()
        with srv.client(key) as c:
            finished = [create_agent(c, agent_body())["id"] for _ in range(args.agents)]
            for agent_id in finished:
                wait_terminal(c, agent_id)
            running = [create_agent(c, agent_body(shell="sleep 600"))["id"] for _ in range(args.agents)]
        headers = {"Authorization": f"Bearer {key}"}
        ours = Side(srv.url, [f"/agents/{a}" for a in finished + running], headers)
        engine = Side(
            "http://docker", [f"/containers/agentfactory-{a}/json" for a in running], {}, "/var/run/docker.sock"
        )
        for _ in range(args.rounds):
            ours.run(args.rate, args.seconds / args.rounds)
            engine.run(args.rate, args.seconds / args.rounds)
        with srv.client(key) as c:
            for agent_id in running:
                c.delete(f"/agents/{agent_id}")
    s_ours, s_engine = Summary.of(ours.latencies), Summary.of(engine.latencies)
    ours_rate, engine_rate = min(ours.rates), min(engine.rates)
    print(
        f"  ours   GET /agents/{{id}}          : p50 {s_ours.median * 1e3:6.2f} ms  p99 {s_ours.p99 * 1e3:6.2f} ms"
        f"  max {s_ours.max * 1e3:7.1f} ms  at {ours_rate:.0f}/s, {ours.failed} failed,"
        f" CPU stolen {ours.steal_share:.1%}"
    )
    print(
        f"  engine GET /containers/{{id}}/json : p50 {s_engine.median * 1e3:6.2f} ms  p99 {s_engine.p99 * 1e3:6.2f} ms"
        f"  max {s_engine.max * 1e3:7.1f} ms  at {engine_rate:.0f}/s, {engine.failed} failed,"
        f" CPU stolen {engine.steal_share:.1%}"
    )
    print(f"after: {machine_note()}")
    at = f"at {args.rate:.0f} req/s"
    row = report.add(
        Row(f"GET /agents/{{id}} p99 {at}", s_ours.p99 * 1e3, s_engine.p99 * 1e3, "ms", goal=f"< 20 ms {at}")
    )
    row.met = s_ours.p99 < 0.020 and not ours.failed and ours_rate >= args.rate * 0.95
    report.add(Row(f"GET /agents/{{id}} p50 {at}", s_ours.median * 1e3, s_engine.median * 1e3, "ms"))
    report.details = {
        "ours_failed": ours.failed,
        "engine_failed": engine.failed,
        "ours_rate": ours_rate,
        "ours_cpu_stolen": ours.steal_share,
        "engine_cpu_stolen": engine.steal_share,
    }
    print("\nsummary")
    print_rows(report.rows)
    report.write(args.json)


if __name__ == "__main__":
    main()

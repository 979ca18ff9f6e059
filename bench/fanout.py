"""Stream fan-out: 100 followers of one agent, delivery lag from a line's capture to its receipt.

The agent's `shell` tool waits (so every follower is connected and live), then prints 3,000
numbered lines in bursts of 50 every 0.1 s (~6 s). Lag of a line at a client = time the client
received the chunk holding it - the line's capture timestamp.

  ours     100 SSE clients (aiohttp, one process) on GET /agents/{id}/stream; the capture time is the
           `ts` of each `log` event (millisecond resolution, written by the log pump at read time).
  docker   100 `docker logs -f -t` of a `docker run` of the same agent; the capture time is the
           timestamp Docker's log copier stamps on each line (`-t`).

Lags are taken over the 3,000 numbered lines at every client (300,000 samples a side). Every client
must receive every line. Rounds alternate their order (ours, docker, docker, ours...).

    .venv/bin/python bench/fanout.py [--clients 100] [--rounds 2]
"""

from __future__ import annotations

import argparse
import asyncio
import re
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

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
    quantile,
)

LINES = 3000
WORKLOAD = "sleep {pause}; for b in $(seq 0 59); do seq $((b*50+1)) $((b*50+50)); sleep 0.1; done"
SSE_LOG = re.compile(
    rb'event: log\nid: (\d+)\ndata: \{"seq": \d+, "ts": "([^"]+)", "stream": "stdout", "text": "(\d+)"'
)
DOCKER_LINE = re.compile(rb"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(?:\.(\d+))?Z (\d+)$", re.M)


class Epochs:
    """ISO timestamp → epoch seconds, cached (many lines share a timestamp)."""

    def __init__(self) -> None:
        self.cache: dict[bytes, float] = {}

    def sse(self, iso: bytes) -> float:
        v = self.cache.get(iso)
        if v is None:
            v = self.cache[iso] = datetime.fromisoformat(iso.decode().replace("Z", "+00:00")).timestamp()
        return v

    def docker(self, seconds: bytes, frac: bytes | None) -> float:
        v = self.cache.get(seconds)
        if v is None:
            v = self.cache[seconds] = datetime.fromisoformat(seconds.decode() + "+00:00").timestamp()
        return v + (int(frac) / 10 ** len(frac) if frac else 0.0)


class Follower:
    def __init__(self) -> None:
        self.lags: list[float] = []
        self.numbers: set[int] = set()
        self.connected_at = 0.0
        self.first_ts: float | None = None


async def sse_client(session: Any, url: str, key: str, follower: Follower, epochs: Epochs) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    buf = b""
    async with session.get(url, headers=headers, timeout=None) as response:
        response.raise_for_status()
        follower.connected_at = time.time()
        async for chunk in response.content.iter_any():
            at = time.time()
            buf += chunk
            cut = buf.rfind(b"\n\n")
            if cut < 0:
                continue
            block, buf = buf[: cut + 2], buf[cut + 2 :]
            for m in SSE_LOG.finditer(block):
                ts = epochs.sse(m.group(2))
                if follower.first_ts is None:
                    follower.first_ts = ts
                follower.lags.append(at - ts)
                follower.numbers.add(int(m.group(3)))
            if b"event: end\n" in block:
                return


async def docker_client(cid: str, follower: Follower, epochs: Epochs) -> None:
    proc = await asyncio.create_subprocess_exec(
        "docker", "logs", "-f", "-t", cid, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
    )
    assert proc.stdout is not None
    follower.connected_at = time.time()
    buf = b""
    try:
        while True:
            chunk = await proc.stdout.read(1 << 16)
            if not chunk:
                return
            at = time.time()
            buf += chunk
            cut = buf.rfind(b"\n")
            if cut < 0:
                continue
            block, buf = buf[: cut + 1], buf[cut + 1 :]
            for m in DOCKER_LINE.finditer(block):
                ts = epochs.docker(m.group(1), m.group(2))
                if follower.first_ts is None:
                    follower.first_ts = ts
                follower.lags.append(at - ts)
                follower.numbers.add(int(m.group(3)))
            if len(follower.numbers) >= LINES:
                return
    finally:
        if proc.returncode is None:
            proc.kill()
        await proc.wait()


async def run_ours(server: BenchServer, key: str, clients: int, pause: float) -> list[Follower]:
    import aiohttp

    with server.client(key) as c:
        agent = create_agent(c, agent_body(shell=WORKLOAD.format(pause=pause)))
    url = f"{server.url}/agents/{agent['id']}/stream"
    epochs = Epochs()
    followers = [Follower() for _ in range(clients)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        await asyncio.wait_for(
            asyncio.gather(*(sse_client(session, url, key, f, epochs) for f in followers)), timeout=180
        )
    return followers


async def run_docker(sidecar: Sidecar, clients: int, pause: float) -> list[Follower]:
    run = await asyncio.create_subprocess_exec(
        *sidecar.docker_run(shell=WORKLOAD.format(pause=pause), detach=True), stdout=asyncio.subprocess.PIPE
    )
    out, _ = await run.communicate()
    cid = out.decode().strip()
    epochs = Epochs()
    followers = [Follower() for _ in range(clients)]
    await asyncio.wait_for(asyncio.gather(*(docker_client(cid, f, epochs) for f in followers)), timeout=180)
    return followers


def check(side: str, followers: list[Follower]) -> list[float]:
    short = [len(f.numbers) for f in followers if len(f.numbers) != LINES]
    if short:
        raise RuntimeError(f"{side}: {len(short)} client(s) missed lines (got {short[:5]} of {LINES})")
    late = [f for f in followers if f.first_ts is not None and f.connected_at > f.first_ts]
    if late:
        raise RuntimeError(f"{side}: {len(late)} client(s) connected after the output began; raise --pause")
    return [lag for f in followers for lag in f.lags]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2, help="rounds per side, alternating order")
    parser.add_argument("--pause", type=float, default=6, help="seconds before the agent starts printing")
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    print(f"fanout: {args.clients} followers, {LINES} lines, {args.rounds} rounds per side; {machine_note()}")

    report = Report("fanout")
    lags: dict[str, list[float]] = {"ours": [], "docker": []}
    with Sidecar() as sidecar, BenchServer(sidecar) as server:
        key = server.create_key("fanout")
        for r in range(args.rounds):
            for side in ("ours", "docker") if r % 2 == 0 else ("docker", "ours"):
                if side == "ours":
                    followers = asyncio.run(run_ours(server, key, args.clients, args.pause))
                else:
                    followers = asyncio.run(run_docker(sidecar, args.clients, args.pause))
                got = check(side, followers)
                lags[side] += got
                print(
                    f"  round {r + 1} {side:<6} p50 {quantile(got, 0.5) * 1000:7.1f} ms  "
                    f"p99 {quantile(got, 0.99) * 1000:7.1f} ms   {machine_note()}"
                )
    so, sd = Summary.of(lags["ours"]), Summary.of(lags["docker"])
    print("\ndelivery lag, capture → received, over every line at every client")
    print(
        f"  ours   (SSE)             : p50 {so.median * 1000:7.1f} ms  p90 {so.p90 * 1000:7.1f} ms  "
        f"p99 {so.p99 * 1000:7.1f} ms  max {so.max * 1000:7.1f} ms  (n={so.n})"
    )
    print(
        f"  docker logs -f -t        : p50 {sd.median * 1000:7.1f} ms  p90 {sd.p90 * 1000:7.1f} ms  "
        f"p99 {sd.p99 * 1000:7.1f} ms  max {sd.max * 1000:7.1f} ms  (n={sd.n})"
    )
    report.add(Row(f"fan-out {args.clients} clients: p99 delivery lag", so.p99 * 1000, sd.p99 * 1000, "ms"))
    report.add(Row(f"fan-out {args.clients} clients: p50 delivery lag", so.median * 1000, sd.median * 1000, "ms"))
    report.details = {"ours": vars(so), "docker": vars(sd)}
    print("\nsummary")
    print_rows(report.rows)
    report.write(args.json)


if __name__ == "__main__":
    main()

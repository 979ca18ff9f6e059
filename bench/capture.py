"""Capture rate: lines per second from a container's print to stored and pageable, vs Docker's own ways.

The workload prints N numbered lines (`seq N`, default 200,000) after a one-second pause, so every
follower is attached and reading live before the flood starts. Rate = (N - 1) / (time the last
line is seen - time the first line is seen).

  ours             an agent whose `shell` tool runs `sleep 1; seq N`: from the capture timestamp of line
                   "1" (as stored) to the moment GET /agents/{id}/logs returns line "N" (polled every
                   10 ms with the cursor just before it). Stored, committed and pageable.
  docker logs -f   `docker logs -f` of a container running the workload, read from its stdout.
  raw attach       docker-py attach socket, opened before start, frames demultiplexed in Python.

The baselines run twice: with a plain `seq` in the runtime image (`--entrypoint /bin/sh`, the
workload with no agent around it: Docker's best case), and with the very agent agentfactory runs
(the runtime's entry point relaying the tool's output line by line, via a real gateway): the same
producer as ours. Variants rotate their order from round to round.

    .venv/bin/python bench/capture.py [--lines 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCH_LABEL,
    GATEWAY_MOUNT,
    IMAGE,
    RUN_ID,
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


class Marks:
    """Finds the first ("1") and last ("N") line in a byte stream fed chunk by chunk, cheaply."""

    def __init__(self, n: int):
        self.first_pat = b"\n1\n"
        self.last_pat = b"\n%d\n" % n
        self.tail = b"\n"
        self.first: float | None = None
        self.last: float | None = None
        self.newlines = 0

    def feed(self, data: bytes, at: float) -> bool:
        buf = self.tail + data
        self.newlines += data.count(b"\n")
        if self.first is None and self.first_pat in buf:
            self.first = at
        if self.last is None and self.last_pat in buf:
            self.last = at
        self.tail = buf[-16:]
        return self.last is not None

    def rate(self, n: int) -> float:
        if self.first is None or self.last is None or self.last <= self.first:
            raise RuntimeError(f"lines not seen: first={self.first} last={self.last} newlines={self.newlines}")
        return (n - 1) / (self.last - self.first)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def ours(client: Any, n: int, workload: str) -> dict[str, float]:
    agent = create_agent(client, agent_body(shell=workload))
    aid = agent["id"]
    deadline = time.monotonic() + 120
    first_seq = ts_first = None
    while first_seq is None:
        if time.monotonic() > deadline:
            raise TimeoutError(f"agent {aid}: line 1 not stored")
        for line in client.get(f"/agents/{aid}/logs", params={"limit": 50}).json()["lines"]:
            if line["text"] == "1":
                first_seq, ts_first = line["seq"], epoch(line["ts"])
                break
        else:
            time.sleep(0.01)
    target = first_seq + n - 1
    while True:
        if time.monotonic() > deadline:
            raise TimeoutError(f"agent {aid}: line {n} not pageable")
        lines = client.get(f"/agents/{aid}/logs", params={"cursor": target - 1, "limit": 1}).json()["lines"]
        if lines:
            seen = time.time()
            break
        time.sleep(0.01)
    if lines[0]["text"] != str(n) or lines[0]["seq"] != target:
        raise RuntimeError(f"agent {aid}: seq {target} is {lines[0]!r}, expected line {n}")
    ts_last = epoch(lines[0]["ts"])
    final = wait_terminal(client, aid, timeout=120)
    if final["status"] != "succeeded" or final["log_lines"] < n:
        raise RuntimeError(f"agent {aid}: {final['status']}, {final.get('log_lines')} lines")
    return {
        "rate": (n - 1) / (seen - ts_first),
        "capture_rate": (n - 1) / (ts_last - ts_first) if ts_last > ts_first else float("nan"),
        "last_line_to_pageable": seen - ts_last,
    }


def docker_logs_follow(run_args: list[str], n: int) -> dict[str, float]:
    cid = subprocess.run(run_args, capture_output=True, text=True, check=True).stdout.strip()
    follower = subprocess.Popen(["docker", "logs", "-f", cid], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert follower.stdout is not None
    marks = Marks(n)
    try:
        fd = follower.stdout.fileno()
        import os

        while True:
            data = os.read(fd, 1 << 18)
            if not data:
                break
            if marks.feed(data, time.time()):
                break
    finally:
        follower.kill()
        follower.wait()
        subprocess.run(["docker", "rm", "-f", cid], capture_output=True, check=False)
    return {"rate": marks.rate(n)}


class RawAttach:
    """docker-py: create, attach (before start), start; demultiplex the frames; stdout bytes to Marks."""

    def __init__(self) -> None:
        import docker

        self.api = docker.APIClient(version="auto", timeout=120)

    def __call__(self, n: int, *, command: list[str] | None, env: dict[str, str], binds: dict[str, Any]) -> dict:
        api = self.api
        host_config = api.create_host_config(network_mode="none", binds=binds or None)
        extra: dict[str, Any] = {"entrypoint": ["/bin/sh"], "command": command} if command else {}
        cid = api.create_container(
            IMAGE, environment=env, labels={BENCH_LABEL: RUN_ID}, host_config=host_config, **extra
        )["Id"]
        marks = Marks(n)
        try:
            raw = api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0})
            sock: socket.socket = getattr(raw, "_sock", raw)
            sock.settimeout(120)
            api.start(cid)
            buf = bytearray()
            done = False
            while not done:
                data = sock.recv(1 << 18)
                if not data:
                    break
                at = time.time()
                buf += data
                pos, size_all = 0, len(buf)
                out = bytearray()
                while size_all - pos >= 8:
                    size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
                    if size_all - pos - 8 < size:
                        break
                    if buf[pos] == 1:
                        out += buf[pos + 8 : pos + 8 + size]
                    pos += 8 + size
                del buf[:pos]
                done = marks.feed(bytes(out), at)
            sock.close()
        finally:
            api.remove_container(cid, force=True)
        return {"rate": marks.rate(n)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    n = args.lines
    workload = f"sleep 1; seq {n}"
    print(f"capture: {n} lines, {args.rounds} rounds, variants rotate; {machine_note()}")

    report = Report("capture")
    with Sidecar() as sidecar, BenchServer(sidecar) as server, server.client() as client:
        attach = RawAttach()
        plain_cmd = ["-c", workload]
        plain_run = [
            "docker",
            "run",
            "-d",
            "--rm",
            "--network",
            "none",
            "--label",
            f"{BENCH_LABEL}={RUN_ID}",
            "--entrypoint",
            "/bin/sh",
            IMAGE,
            *plain_cmd,
        ]
        agent_env = sidecar.env(shell=workload)
        binds = {sidecar.socket_dir: {"bind": GATEWAY_MOUNT, "mode": "ro"}}
        variants: dict[str, Callable[[], dict[str, float]]] = {
            "ours": lambda: ours(client, n, workload),
            "logs_seq": lambda: docker_logs_follow(plain_run, n),
            "attach_seq": lambda: attach(n, command=plain_cmd, env={}, binds={}),
            "logs_agent": lambda: docker_logs_follow(sidecar.docker_run(shell=workload, detach=True), n),
            "attach_agent": lambda: attach(n, command=None, env=agent_env, binds=binds),
        }
        results: dict[str, list[dict[str, float]]] = {k: [] for k in variants}
        names = list(variants)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                value = variants[name]()
                results[name].append(value)
                print(f"  round {r + 1} {name:<13} {value['rate']:>10,.0f} lines/s   {machine_note()}")

    def med(name: str, key: str = "rate") -> float:
        return Summary.of([v[key] for v in results[name]]).median

    labels = {
        "ours": "agentfactory (agent relaying seq → stored+pageable)",
        "logs_seq": "docker logs -f, plain seq",
        "attach_seq": "raw attach, plain seq",
        "logs_agent": "docker logs -f, the same agent",
        "attach_agent": "raw attach, the same agent",
    }
    print("\nmedian lines/s (p90 is of the per-round rates)")
    for name, label in labels.items():
        s = Summary.of([v["rate"] for v in results[name]])
        print(f"  {label:<54} median {s.median:>10,.0f}   p90 {s.p90:>10,.0f}   min {s.min:>10,.0f}")
    print(f"  ours, capture side alone (ts of line N - ts of line 1): {med('ours', 'capture_rate'):,.0f} lines/s")
    print(f"  ours, last line captured → pageable: {med('ours', 'last_line_to_pageable') * 1000:.0f} ms")

    row = report.add(
        Row(
            "capture lines/s vs docker logs -f (plain seq)",
            med("ours"),
            med("logs_seq"),
            "lines/s",
            goal="≥ 2x docker logs -f",
            better="higher",
        )
    )
    row.met = row.ratio is not None and row.ratio >= 2
    report.add(
        Row("capture lines/s vs raw attach (plain seq)", med("ours"), med("attach_seq"), "lines/s", better="higher")
    )
    report.add(
        Row(
            "capture lines/s vs docker logs -f (same agent)", med("ours"), med("logs_agent"), "lines/s", better="higher"
        )
    )
    report.add(
        Row("capture lines/s vs raw attach (same agent)", med("ours"), med("attach_agent"), "lines/s", better="higher")
    )
    report.details = {k: [dict(v) for v in vals] for k, vals in results.items()}
    print("\nsummary")
    print_rows(report.rows)
    report.write(args.json)


if __name__ == "__main__":
    main()

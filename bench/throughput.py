"""Throughput: echo agents completed per second at a given concurrency, agentfactory vs `docker run --rm`.

At each concurrency C, C workers run agents back to back until the point's total is done:

  ours      POST /agents, then follow GET /agents/{id}/stream?tail=0 until `end` (status succeeded);
  docker    `docker run --rm --network none` of the same agent (image, env, gateway socket), output
            piped, until the CLI exits.

Each side runs its total in two halves, in the order ours, docker, docker, ours (ABBA), so drift on
the machine hits both alike. Completed per second = agents / summed wall time of the halves.

    .venv/bin/python bench/throughput.py [--concurrency 10 50] [--agents 100] [--warm N]

With `--warm N` the server keeps a warm pool of N sandboxes (AGENTFACTORY_WARM_POOL_SIZE): run it
once without and once with, for the cold and the warm figures.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BenchServer,
    Report,
    Row,
    Sidecar,
    Summary,
    agent_body,
    common_args,
    cpu_seconds,
    create_agent,
    engine_processes,
    ensure_ready,
    machine_busy_seconds,
    machine_note,
    print_rows,
    sse_events,
)


def run_batch(total: int, concurrency: int, one: Callable[[int], float]) -> tuple[float, list[float]]:
    """Run `total` jobs on `concurrency` threads; (wall seconds, per-job seconds)."""
    lock = threading.Lock()
    next_job = [0]
    latencies: list[float] = []
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        while True:
            with lock:
                if next_job[0] >= total or errors:
                    return
                next_job[0] += 1
            try:
                elapsed = one(slot)
            except BaseException as exc:
                with lock:
                    errors.append(exc)
                return
            with lock:
                latencies.append(elapsed)

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(concurrency)]
    started = time.monotonic()
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=900)
    wall = time.monotonic() - started
    if errors:
        raise RuntimeError(f"{len(errors)} job(s) failed; first: {errors[0]!r}") from errors[0]
    return wall, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, nargs="+", default=[10, 50])
    parser.add_argument("--agents", type=int, default=100, help="agents per side per concurrency point")
    parser.add_argument("--warm", type=int, default=0, help="the server's warm pool size (0: every start cold)")
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    mode = f"warm pool of {args.warm}" if args.warm else "cold starts"
    print(f"throughput ({mode}): {args.agents} echo agents per side per point, halves in ABBA order; {machine_note()}")

    report = Report("throughput")
    env = {"AGENTFACTORY_WARM_POOL_SIZE": str(args.warm)}
    with Sidecar() as sidecar, BenchServer(sidecar, env=env) as server:
        clients = [server.client() for _ in range(max(args.concurrency))]
        command = sidecar.docker_run()

        def ours(slot: int) -> float:
            client = clients[slot]
            t0 = time.monotonic()
            agent = create_agent(client, agent_body())
            status = ""
            for event, data, _at in sse_events(client, agent["id"], {"tail": 0}):
                if event == "end":
                    status = json.loads(data)["status"]
                    break
            if status != "succeeded":
                raise RuntimeError(f"agent {agent['id']} ended {status!r}")
            return time.monotonic() - t0

        def docker(_slot: int) -> float:
            t0 = time.monotonic()
            done = subprocess.run(command, capture_output=True, check=False)
            if done.returncode != 0:
                raise RuntimeError(f"docker run exited {done.returncode}: {done.stderr[-300:]!r}")
            return time.monotonic() - t0

        engine = engine_processes()
        server_proc = [psutil.Process(server.pid)]

        def children_cpu() -> float:
            r = resource.getrusage(resource.RUSAGE_CHILDREN)
            return r.ru_utime + r.ru_stime

        # Warm both paths once (image cache, server imports, connection pools).
        run_batch(2, 2, ours)
        run_batch(2, 2, docker)
        for c in args.concurrency:
            halves = [args.agents // 2, args.agents - args.agents // 2]
            wall = {"ours": 0.0, "docker": 0.0}
            lat: dict[str, list[float]] = {"ours": [], "docker": []}
            # CPU seconds spent per side: by the engine (dockerd + containerd), and by the side's own
            # control plane (the server process; the docker CLI processes, reaped children of this one).
            # ... and by the whole machine (containers, shims, runc, the kernel, this script: everything).
            spent = {side: {"engine": 0.0, "control": 0.0, "machine": 0.0} for side in wall}
            for side, n in (("ours", halves[0]), ("docker", halves[0]), ("docker", halves[1]), ("ours", halves[1])):
                e0, s0, k0, m0 = cpu_seconds(engine), cpu_seconds(server_proc), children_cpu(), machine_busy_seconds()
                w, ls = run_batch(n, c, ours if side == "ours" else docker)
                spent[side]["machine"] += machine_busy_seconds() - m0
                spent[side]["engine"] += cpu_seconds(engine) - e0
                spent[side]["control"] += (cpu_seconds(server_proc) - s0) if side == "ours" else (children_cpu() - k0)
                wall[side] += w
                lat[side] += ls
                print(f"  c={c:<3} {side:<6} {n} agents in {w:6.1f} s  ({n / w:5.2f}/s)   {machine_note()}")
            rate = {side: args.agents / wall[side] for side in wall}
            so, sd = Summary.of(lat["ours"]), Summary.of(lat["docker"])
            print(
                f"concurrency {c}: ours {rate['ours']:.2f}/s, docker run {rate['docker']:.2f}/s, "
                f"ratio {rate['ours'] / rate['docker']:.2f}x"
            )
            print(f"  per-agent latency  ours  : {so.ms()}")
            print(f"  per-agent latency  docker: {sd.ms()}")
            for side, label in (("ours", "ours   (server process)"), ("docker", "docker (CLI processes)  ")):
                per = {k: 1000 * v / args.agents for k, v in spent[side].items()}
                print(
                    f"  CPU per agent {label}: control {per['control']:6.1f} ms, engine {per['engine']:6.1f} ms, "
                    f"whole machine {per['machine']:6.1f} ms"
                )
            name = f"agents completed/s at concurrency {c}, {mode}"
            row = report.add(Row(name, rate["ours"], rate["docker"], "/s", better="higher"))
            if c == 10 and not args.warm:
                row.goal = "≥ 1.5x docker run"
                row.met = row.ratio is not None and row.ratio >= 1.5
            report.details[f"c{c}"] = {"rate": rate, "ours_latency": vars(so), "docker_latency": vars(sd), "cpu": spent}
        for client in clients:
            client.close()
    print("\nsummary")
    print_rows(report.rows)
    report.write(args.json)


if __name__ == "__main__":
    main()

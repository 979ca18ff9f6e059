"""Control-plane footprint with 200 running agents: RSS and CPU of the server process.

  ours     one `agentfactory serve` process: RSS idle, then 200 agents whose `shell` tool sleeps
           are launched (8 at a time) and all reach their sleep; RSS after, then CPU seconds and
           peak RSS over a steady window (default 30 s); then all are cancelled (DELETE).
  docker   what a script holds to run the same 200 agents with `docker run --rm` (attached, output
           to a file each, as a script keeping each agent's output would): 200 docker CLI
           processes. Their summed RSS and CPU seconds over the same window.

The engine's own cost (dockerd, containerd, one shim per container) is the same for both and is
counted for neither. Sides run one after the other (ours first): 200 containers at a time.

    .venv/bin/python bench/footprint.py [--agents 200] [--window 30]
"""

from __future__ import annotations

import argparse
import contextlib
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCH_LABEL,
    RUN_ID,
    BenchServer,
    Report,
    Row,
    Sidecar,
    agent_body,
    cleanup_baseline,
    common_args,
    cpu_seconds,
    create_agent,
    engine_processes,
    ensure_ready,
    machine_note,
    print_rows,
)

SLEEP = "sleep 600"
MB = 1024 * 1024


def rss(procs: list[psutil.Process]) -> int:
    total = 0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


def window(procs: list[psutil.Process], seconds: float) -> dict[str, float]:
    """CPU seconds used and peak RSS over `seconds`, sampling RSS every second; also the CPU the
    engine (dockerd + containerd) spent meanwhile, which the control plane's polling drives."""
    engine = engine_processes()
    c0, e0, t0, peak = cpu_seconds(procs), cpu_seconds(engine), time.monotonic(), rss(procs)
    while time.monotonic() - t0 < seconds:
        time.sleep(1)
        peak = max(peak, rss(procs))
    elapsed = time.monotonic() - t0
    used = cpu_seconds(procs) - c0
    return {
        "cpu_seconds": used,
        "cpu_percent": 100 * used / elapsed,
        "peak_rss": peak,
        "seconds": elapsed,
        "engine_cpu_seconds": cpu_seconds(engine) - e0,
    }


def run_ours(sidecar: Sidecar, n: int, seconds: float, parallel: int) -> dict[str, Any]:
    with BenchServer(sidecar) as server:
        proc = psutil.Process(server.pid)
        time.sleep(2)
        idle = rss([proc])
        with server.client() as c:
            c.get("/agents")  # touch the app once so lazily built bits exist before "idle"
        idle = max(idle, rss([proc]))
        key = server.create_key("footprint")
        local = threading.local()

        def client() -> Any:
            if not hasattr(local, "c"):
                local.c = server.client(key)
            return local.c

        t0 = time.monotonic()
        with ThreadPoolExecutor(parallel) as pool:
            ids = list(pool.map(lambda _i: create_agent(client(), agent_body(shell=SLEEP, ttl=1800))["id"], range(n)))

            def sleeping(aid: str) -> bool:
                lines = client().get(f"/agents/{aid}/logs", params={"limit": 10}).json()["lines"]
                return any('"event": "tool_call"' in line["text"] for line in lines)

            deadline = time.monotonic() + 300
            waiting = list(ids)
            while waiting and time.monotonic() < deadline:
                done = list(pool.map(sleeping, waiting))
                waiting = [a for a, d in zip(waiting, done, strict=True) if not d]
                if waiting:
                    time.sleep(1)
            if waiting:
                raise RuntimeError(f"{len(waiting)} agents never reached their sleep")
            launch_s = time.monotonic() - t0
            with server.client() as c:
                running = len(c.get("/agents", params={"status": "running", "limit": 500}).json()["items"])
            time.sleep(3)
            after = rss([proc])
            threads = proc.num_threads()
            steady = window([proc], seconds)
            t1 = time.monotonic()
            list(pool.map(lambda aid: client().delete(f"/agents/{aid}").raise_for_status(), ids))
            cancel_s = time.monotonic() - t1
        time.sleep(2)
        end = rss([proc])
    return {
        "idle_rss": idle,
        "rss": after,
        "threads": threads,
        "running": running,
        "launch_seconds": launch_s,
        "cancel_seconds": cancel_s,
        "rss_after_cancel": end,
        **steady,
    }


def run_docker(sidecar: Sidecar, n: int, seconds: float, parallel: int) -> dict[str, Any]:
    outdir = Path(tempfile.mkdtemp(prefix="afb-fp-"))
    args = sidecar.docker_run(shell=SLEEP)
    procs: list[subprocess.Popen[bytes]] = []
    files = []
    t0 = time.monotonic()
    try:
        for i in range(n):
            out = open(outdir / f"{i}.log", "wb")  # noqa: SIM115 - held for the CLI's life
            files.append(out)
            procs.append(subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT))
            if i % parallel == parallel - 1:  # launch like ours: `parallel` at a time
                _wait_running(i + 1, time.monotonic() + 120)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            sleeping = sum(1 for i in range(n) if b'"event": "tool_call"' in (outdir / f"{i}.log").read_bytes())
            if sleeping == n:
                break
            time.sleep(1)
        else:
            raise RuntimeError("not every docker run agent reached its sleep")
        launch_s = time.monotonic() - t0
        time.sleep(3)
        ps = [psutil.Process(p.pid) for p in procs]
        after = rss(ps)
        steady = window(ps, seconds)
    finally:
        cleanup_baseline()
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        for f in files:
            f.close()
        shutil.rmtree(outdir, ignore_errors=True)
    return {"rss": after, "launch_seconds": launch_s, "processes": n, **steady}


def _wait_running(count: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        out = subprocess.run(
            ["docker", "ps", "-q", "--filter", f"label={BENCH_LABEL}={RUN_ID}"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.split()
        if len(out) >= count:
            return
        time.sleep(0.2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=200)
    parser.add_argument("--window", type=float, default=30, help="seconds of steady state measured")
    parser.add_argument("--parallel", type=int, default=8, help="launches in flight")
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    print(f"footprint: {args.agents} sleeping agents, {args.window:.0f} s window; {machine_note()}")
    report = Report("footprint")
    with Sidecar() as sidecar:
        ours = run_ours(sidecar, args.agents, args.window, args.parallel)
        print(f"  ours done   {machine_note()}")
        docker = run_docker(sidecar, args.agents, args.window, args.parallel)
        print(f"  docker done {machine_note()}")
    print(f"\nours: agentfactory serve, {ours['running']} agents running, {ours['threads']} threads")
    print(
        f"  RSS idle {ours['idle_rss'] / MB:.0f} MB → with agents {ours['rss'] / MB:.0f} MB "
        f"(peak in window {ours['peak_rss'] / MB:.0f} MB; after cancelling all {ours['rss_after_cancel'] / MB:.0f} MB)"
    )
    print(f"  CPU {ours['cpu_seconds']:.2f} s over {ours['seconds']:.0f} s ({ours['cpu_percent']:.1f} % of one core)")
    print(f"  engine (dockerd+containerd) CPU meanwhile: {ours['engine_cpu_seconds']:.2f} s")
    print(f"  launched in {ours['launch_seconds']:.0f} s; cancelled in {ours['cancel_seconds']:.1f} s")
    print(f"docker: {docker['processes']} `docker run` CLI processes")
    print(f"  RSS {docker['rss'] / MB:.0f} MB (peak in window {docker['peak_rss'] / MB:.0f} MB)")
    d = docker
    print(f"  CPU {d['cpu_seconds']:.2f} s over {d['seconds']:.0f} s ({d['cpu_percent']:.1f} % of one core)")
    print(f"  engine (dockerd+containerd) CPU meanwhile: {docker['engine_cpu_seconds']:.2f} s")
    print(f"  launched in {docker['launch_seconds']:.0f} s")
    row = report.add(
        Row(
            f"control-plane RSS, {args.agents} agents",
            ours["peak_rss"] / MB,
            docker["peak_rss"] / MB,
            "MB",
            goal="< 200 MB",
        )
    )
    row.met = ours["peak_rss"] / MB < 200
    report.add(
        Row(
            f"control-plane CPU s per {args.window:.0f} s, {args.agents} agents",
            ours["cpu_seconds"],
            docker["cpu_seconds"],
            "s",
        )
    )
    report.add(
        Row(
            f"engine CPU s per {args.window:.0f} s, {args.agents} agents",
            ours["engine_cpu_seconds"],
            docker["engine_cpu_seconds"],
            "s",
        )
    )
    report.details = {"ours": ours, "docker": docker}
    print("\nsummary")
    print_rows(report.rows)
    report.write(args.json)


if __name__ == "__main__":
    main()

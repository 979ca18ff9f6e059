"""Load test: locustfile.py, headless, against a local server for a bounded time; zero 5xx required.

Starts its own `agentfactory serve` (loopback port, own SQLite file; catalog plus the `sh` model so
some agents sleep and get cancelled), makes a non-admin key with quotas far above the load, runs
locust headless (`--users`, default 120, for `--time`, default 60 s), then prints request rates and
p50/p95/p99 by route as locust measured them, the server's CPU and RSS during the run, and the
count of 5xx answers from the server's own `agentfactory_http_requests_total`. Exits non-zero if
any request got a 5xx or failed at the transport level.

    .venv/bin/python bench/load.py [--users 120] [--time 60] [--create-rate 2]
"""

from __future__ import annotations

import argparse
import csv
import os
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, BenchServer, Report, Row, Sidecar, common_args, ensure_ready, machine_note

MB = 1024 * 1024


def server_5xx(metrics: str) -> int:
    total = 0
    for m in re.finditer(r"^agentfactory_http_requests_total\{(.*)\} ([0-9.e+]+)$", metrics, re.M):
        if re.search(r'code="5\d\d"', m.group(1)):
            total += int(float(m.group(2)))
    return total


def server_quantiles(metrics: str, q: float) -> dict[str, float]:
    """histogram_quantile(q) of agentfactory_http_request_duration_seconds per (method, route), in ms:
    the server's own view of a request (coarse: interpolated within the histogram's buckets)."""
    buckets: dict[str, list[tuple[float, float]]] = {}
    pattern = r"^agentfactory_http_request_duration_seconds_bucket\{(.*)\} ([0-9.e+]+)$"
    for m in re.finditer(pattern, metrics, re.M):
        labels = dict(re.findall(r'(\w+)="([^"]*)"', m.group(1)))
        le = float("inf") if labels["le"] == "+Inf" else float(labels["le"])
        buckets.setdefault(f"{labels['method']} {labels['route']}", []).append((le, float(m.group(2))))
    out = {}
    for name, bs in buckets.items():
        bs.sort()
        total = bs[-1][1]
        if not total:
            continue
        rank, prev_le, prev_count = q * total, 0.0, 0.0
        for le, count in bs:
            if count >= rank:
                if le == float("inf"):
                    out[name] = prev_le * 1000
                else:
                    frac = (rank - prev_count) / (count - prev_count) if count > prev_count else 1
                    out[name] = (prev_le + (le - prev_le) * frac) * 1000
                break
            prev_le, prev_count = le, count
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=120)
    parser.add_argument("--spawn-rate", type=float, default=20)
    parser.add_argument("--time", type=int, default=60, help="seconds of load")
    parser.add_argument("--create-rate", type=float, default=2, help="agent launches per second, whole fleet")
    common_args(parser)
    args = parser.parse_args()
    if args.users < 1 or args.time < 1 or args.time > 3600:
        raise SystemExit("--users ≥ 1 and 1 ≤ --time ≤ 3600")
    ensure_ready()
    print(f"load: {args.users} users, {args.time} s, {args.create_rate} launches/s; {machine_note()}")

    report = Report("load")
    work = ROOT / "bench" / "results" / "load"  # git-ignored; the locust log and CSVs stay for a look
    work.mkdir(parents=True, exist_ok=True)
    with Sidecar() as sidecar, BenchServer(sidecar) as server:
        key = server.create_key("load")
        proc = psutil.Process(server.pid)
        samples: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.wait(1):
                samples.append(proc.memory_info().rss)

        sampler = threading.Thread(target=sample, daemon=True)
        cpu0 = sum(proc.cpu_times()[:2])
        sampler.start()
        env = {
            **os.environ,
            "AF_LOAD_KEY": key,
            "AF_LOAD_SLEEPER_MODEL": "sh",
            "AF_LOAD_CREATE_RATE": str(args.create_rate),
        }
        locust = [
            str(ROOT / ".venv" / "bin" / "locust"),
            "-f",
            str(ROOT / "locustfile.py"),
            "--headless",
            "-u",
            str(args.users),
            "-r",
            str(args.spawn_rate),
            "-t",
            f"{args.time}s",
            "--stop-timeout",
            "10",
            "--host",
            server.url,
            "--csv",
            str(work / "load"),
            "--only-summary",
            "--loglevel",
            "WARNING",
        ]
        started = time.monotonic()
        with open(work / "locust.log", "wb") as log:
            done = subprocess.run(
                locust, env=env, stdout=log, stderr=subprocess.STDOUT, timeout=args.time + 120, check=False, cwd=ROOT
            )
        wall = time.monotonic() - started
        stop.set()
        cpu_used = sum(proc.cpu_times()[:2]) - cpu0
        with server.client() as c:
            metrics = c.get("/metrics").text
        fives = server_5xx(metrics)
        server_p50, server_p99 = server_quantiles(metrics, 0.5), server_quantiles(metrics, 0.99)
        load_after = machine_note()

    with open(work / "load_stats.csv") as f:
        stats = list(csv.DictReader(f))
    failures = []
    if (work / "load_failures.csv").exists():
        with open(work / "load_failures.csv") as f:
            failures = list(csv.DictReader(f))
    print(f"\nlocust exit code {done.returncode}; wall {wall:.0f} s (log: {work / 'locust.log'})")
    print(f"{'route':<28}{'requests':>9}{'fail':>6}{'req/s':>8}{'p50 ms':>8}{'p95 ms':>8}{'p99 ms':>8}{'max ms':>8}")
    by_route = {}
    for s in stats:
        name = s["Name"] if s["Name"] != "Aggregated" else "ALL"
        by_route[name] = s
        print(
            f"{name:<28}{s['Request Count']:>9}{s['Failure Count']:>6}{float(s['Requests/s']):>8.1f}"
            f"{s['50%']:>8}{s['95%']:>8}{s['99%']:>8}{float(s['Max Response Time']):>8.0f}"
        )
    for fl in failures:
        print(f"  failure: {fl['Method']} {fl['Name']}: {fl['Error']} x {fl['Occurrences']}")
    print("server's own view (agentfactory_http_request_duration_seconds, interpolated in its buckets):")
    for name in sorted(server_p99):
        if name.split(" ", 1)[1] in ("/metrics", "/keys", "/health"):
            continue
        print(f"  {name:<32} p50 {server_p50[name]:7.1f} ms   p99 {server_p99[name]:7.1f} ms")
    peak = max(samples, default=0)
    print(
        f"server: CPU {cpu_used:.1f} s over {wall:.0f} s ({100 * cpu_used / wall:.0f} % of one core), "
        f"peak RSS {peak / MB:.0f} MB; 5xx answers (server metrics): {fives}"
    )
    print(f"after: {load_after}")

    total = by_route.get("ALL", {})
    rps = float(total.get("Requests/s", 0) or 0)
    get_one = by_route.get("/agents/{id}", {})
    p99 = float(get_one.get("99%", "nan") or "nan")
    row = report.add(
        Row(f"GET /agents/{{id}} p99 under load ({rps:.0f} req/s total)", p99, None, "ms", goal="< 20 ms at 300 req/s")
    )
    row.met = p99 < 20 and rps >= 300
    transport = sum(int(fl["Occurrences"]) for fl in failures if not re.search(r"\b[1-4]\d\d\b", fl["Error"]))
    row5 = report.add(
        Row(f"5xx + transport errors, {args.users} users x {args.time} s", fives + transport, None, "count", goal="0")
    )
    row5.met = fives + transport == 0
    report.details = {
        "routes": by_route,
        "server_cpu_seconds": cpu_used,
        "server_peak_rss_mb": peak / MB,
        "locust_exit": done.returncode,
        "failures": failures,
        "server_p50_ms": server_p50,
        "server_p99_ms": server_p99,
    }
    report.write(args.json)
    if not row5.met:
        raise SystemExit(f"FAILED: {fives} 5xx answers, {transport} transport errors")


if __name__ == "__main__":
    main()

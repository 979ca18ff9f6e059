"""Following an agent on another replica: lag between the container printing a line and a stream
delivering it, on the replica that captures it vs on another replica (SPEC §13, issue 17).

Two real `agentfactory serve` replicas on one PostgreSQL database (a cluster this script starts
from Debian's binaries, tests/support/postgres.py). An agent launched through replica A prints
`t <epoch seconds>` 20 times a second; `--followers` SSE clients on A (same replica: woken by A's
own hub) and as many on B (woken by PostgreSQL LISTEN/NOTIFY when A commits) read its stream.
Lag of a line = time the client received it - the time printed in it (container and clients
share this machine's clock). Rounds alternate which side's clients connect first.

    .venv/bin/python bench/replica_follow.py [--lines 400] [--followers 5] [--rounds 2]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from common import Report, Row, Sidecar, Summary, common_args, ensure_ready, machine_note, print_rows

from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, write_catalog
from tests.support.postgres import LocalPostgres
from tests.support.server import ServerProcess, wait_terminal


def follow(srv: ServerProcess, agent_id: str, lags: list[float], connected: threading.Event) -> None:
    with srv.client(timeout=120) as c, c.stream("GET", f"/agents/{agent_id}/stream") as r:
        connected.set()
        event = ""
        for line in r.iter_lines():
            if line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:") and event == "log":
                text = line.split('"text": "', 1)[1].rsplit('"', 1)[0]
                if text.startswith("t "):
                    lags.append(time.time() - float(text[2:]))
            elif line.startswith("data:") and event == "end":
                return


def one_round(
    a: ServerProcess, b: ServerProcess, lines: int, followers: int, b_first: bool
) -> tuple[list[float], list[float]]:
    command = f'sleep 2; for i in $(seq 1 {lines}); do echo "t $(date +%s.%N)"; sleep 0.05; done'
    with a.client() as c:
        r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": command, "ttl_seconds": 600})
        r.raise_for_status()
        agent_id = r.json()["id"]
    same: list[list[float]] = [[] for _ in range(followers)]
    other: list[list[float]] = [[] for _ in range(followers)]
    threads = []
    sides = [(b, other), (a, same)] if b_first else [(a, same), (b, other)]
    for srv, buckets in sides:
        for bucket in buckets:
            ok = threading.Event()
            t = threading.Thread(target=follow, args=(srv, agent_id, bucket, ok), daemon=True)
            t.start()
            ok.wait(30)
            threads.append(t)
    for t in threads:
        t.join(300)
    with a.client() as c:
        final = wait_terminal(c, agent_id, timeout=120)
        assert final["status"] == "succeeded", final
    for bucket in same + other:
        assert len(bucket) == lines, f"a follower got {len(bucket)} of {lines} lines"
    return [x for s in same for x in s], [x for s in other for x in s]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=400)
    parser.add_argument("--followers", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2)
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    print(machine_note())
    pg = LocalPostgres().start()
    root = Path(tempfile.mkdtemp(prefix="afr-", dir="/tmp"))
    replicas: list[ServerProcess] = []
    try:
        with Sidecar() as sidecar:
            catalog = write_catalog(root / "catalog.json", SimpleNamespace(base_url=sidecar.upstream_url))  # type: ignore[arg-type]
            shared: dict[str, Any] = {
                UPSTREAM_KEY_ENV: UPSTREAM_KEY,
                "AGENTFACTORY_DATABASE_URL": pg.new_database("bench"),
                "AGENTFACTORY_GATEWAY_SOCKET_DIR": str(root / "gw"),
                "AGENTFACTORY_REAPER_INTERVAL_SECONDS": "2",
                "AGENTFACTORY_INSTANCE_ID": "bench-replicas",
            }
            for name in ("a", "b"):
                (root / name).mkdir()
                srv = ServerProcess(root / name, catalog=catalog, env=shared)
                if replicas:
                    srv.admin_key = replicas[0].admin_key
                srv.env["AGENTFACTORY_ADMIN_KEY"] = replicas[0].admin_key if replicas else srv.admin_key
                replicas.append(srv.start())
            a, b = replicas
            same: list[float] = []
            other: list[float] = []
            for i in range(args.rounds):
                s, o = one_round(a, b, args.lines, args.followers, b_first=i % 2 == 1)
                same += s
                other += o
    finally:
        for srv in replicas:
            srv.stop()
            srv.cleanup_containers()
        pg.stop()
    s, o = Summary.of(same), Summary.of(other)
    print(f"same replica  (A's hub)          lag {s.ms()}   p99 {s.p99 * 1000:.1f} ms")
    print(f"other replica (LISTEN/NOTIFY)    lag {o.ms()}   p99 {o.p99 * 1000:.1f} ms")
    report = Report("replica_follow")
    report.add(Row("follow lag p50, other replica vs same", o.median, s.median, "s", goal="≤ same + 50 ms",
                   met=o.median <= s.median + 0.05))  # fmt: skip
    report.add(Row("follow lag p99, other replica vs same", o.p99, s.p99, "s"))
    report.details = {"same": s.__dict__, "other": o.__dict__, "lines": args.lines, "followers": args.followers}
    print_rows(report.rows)
    report.write(args.json)


if __name__ == "__main__":
    main()

"""The swarm backend side by side (issue 18): POST → first line, and agents/s at concurrency C.

  swarm    agentfactory on the swarm backend (a private single-node swarm: tests/support/swarm_engine.py)
  docker   agentfactory on the docker backend (this machine's engine)
  plain    `docker service create` (the runtime image, `echo first`) + `docker service logs -f --raw`
           until its first line, on the same private swarm: the floor Swarm itself sets

Each agent is an `echo` agent (its runtime asks the gateway for its spec, calls the echo model,
prints four lines). First line = the first line pageable through GET /agents/{id}/logs (polled every
20 ms) for ours, the first line `docker service logs -f` prints for plain. agents/s = agents / the wall
time from the first POST to the last agent final (plain: to the last first line, then removal).

    .venv/bin/python bench/swarm.py [--agents 30] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.server import ServerProcess  # noqa: E402
from tests.support.swarm_engine import PrivateSwarm  # noqa: E402

TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


def ours(srv: ServerProcess) -> float:
    with srv.client() as c:
        t0 = time.monotonic()
        r = c.post("/agents", json={"model": "echo", "prompt": "bench"})
        r.raise_for_status()
        agent_id = r.json()["id"]
        while not c.get(f"/agents/{agent_id}/logs", params={"limit": 1}).json()["lines"]:
            time.sleep(0.02)
        first = time.monotonic() - t0
        while c.get(f"/agents/{agent_id}").json()["status"] not in TERMINAL:
            time.sleep(0.05)
        return first


def plain(engine: PrivateSwarm, image: str) -> float:
    name = f"afbench-{time.monotonic_ns()}"
    t0 = time.monotonic()
    engine.cli("service", "create", "-d", "-q", "--no-resolve-image", "--restart-condition", "none", "--name", name,
               "--entrypoint", "/bin/sh", image, "-c", "echo first")  # fmt: skip
    follow = ["docker", "-H", engine.host, "service", "logs", "-f", "--raw", name]
    logs = subprocess.Popen(follow, stdout=subprocess.PIPE)
    assert logs.stdout is not None
    logs.stdout.readline()
    first = time.monotonic() - t0
    logs.kill()
    logs.wait()
    engine.cli("service", "rm", name, check=False)
    return first


def run(label: str, one: Callable[[], float], agents: int, concurrency: int) -> tuple[str, list[float], float]:
    one()  # warm-up
    t0 = time.monotonic()
    with ThreadPoolExecutor(concurrency) as pool:
        firsts = list(pool.map(lambda _: one(), range(agents)))
    wall = time.monotonic() - t0
    return label, firsts, agents / wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    engine = PrivateSwarm().start()
    servers: list[ServerProcess] = []
    try:
        work = Path(tempfile.mkdtemp(prefix="afbench-"))
        (work / "s").mkdir()
        (work / "d").mkdir()
        swarm_srv = ServerProcess(work / "s", env={"DOCKER_HOST": engine.host, "AGENTFACTORY_BACKEND": "swarm"})
        docker_srv = ServerProcess(work / "d")
        servers += [swarm_srv.start(), docker_srv.start()]
        image = engine.cli("image", "inspect", "--format", "{{.Id}}", "agentfactory-runtime:latest").strip()
        rows = [
            run("swarm backend", lambda: ours(swarm_srv), args.agents, args.concurrency),
            run("docker backend", lambda: ours(docker_srv), args.agents, args.concurrency),
            run("plain service create + logs -f", lambda: plain(engine, image), args.agents, args.concurrency),
        ]
    finally:
        for srv in servers:
            srv.stop()
            srv.cleanup_containers()
        engine.destroy()
    print(f"{args.agents} echo agents, concurrency {args.concurrency}")
    print(f"{'variant':34} {'first line p50':>15} {'p90':>8} {'agents/s':>9}")
    for label, firsts, rate in rows:
        firsts.sort()
        p50, p90 = statistics.median(firsts), firsts[int(0.9 * (len(firsts) - 1))]
        print(f"{label:34} {p50 * 1000:13.0f}ms {p90 * 1000:6.0f}ms {rate:9.2f}")
    base = {label: (statistics.median(f), r) for label, f, r in rows}
    s, d, p = base["swarm backend"], base["docker backend"], base["plain service create + logs -f"]
    print(f"swarm/docker: first line x{s[0] / d[0]:.2f}, agents/s x{s[1] / d[1]:.2f}")
    print(f"swarm/plain:  first line x{s[0] / p[0]:.2f}, agents/s x{s[1] / p[1]:.2f}")


if __name__ == "__main__":
    main()

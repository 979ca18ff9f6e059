"""The swarm backend side by side (issue 18): POST → first line, and agents/s at concurrency C.

  swarm    agentfactory on the swarm backend (a private single-node swarm: tests/support/swarm_engine.py)
  docker   agentfactory on the docker backend (this machine's engine)
  plain    `docker service create` (the runtime image, `echo first`) + `docker service logs -f --raw`
           until its first line (raced by a polled non-following read: a follow opened after the task
           completed never prints), on the same private swarm: the floor Swarm itself sets

Each agent is an `echo` agent (its runtime asks the gateway for its spec, calls the echo model,
prints four lines). First line = the first line pageable through GET /agents/{id}/logs (polled every
20 ms) for ours, the first line `docker service logs -f` prints for plain. agents/s = agents / the wall
time from the first POST to the last agent final (plain: to the last first line, then removal).

    .venv/bin/python bench/swarm.py [--agents 30] [--concurrency 10]

`--flood` instead: 20 swarm agents each printing 10 numbered lines/s for 30 s (200 lines/s in all);
checks that every line is stored once and that each agent's seal equals a full page read.

    .venv/bin/python bench/swarm.py --flood [--agents 20] [--seconds 30]
"""

from __future__ import annotations

import argparse
import hashlib
import selectors
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

from tests.fakes.fake_openai import FakeOpenAI  # noqa: E402
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, prompt_as_shell, write_catalog  # noqa: E402
from tests.support.server import ServerProcess, all_log_lines, wait_terminal  # noqa: E402
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
    """`docker service logs -f` races a non-following `docker service logs` polled every 0.1 s: a follow
    opened after the task has completed prints nothing and never ends (seen here), a poll sees it."""
    name = f"afbench-{time.monotonic_ns()}"
    t0 = time.monotonic()
    engine.cli("service", "create", "-d", "-q", "--no-resolve-image", "--restart-condition", "none", "--name", name,
               "--entrypoint", "/bin/sh", image, "-c", "echo first")  # fmt: skip
    follow = ["docker", "-H", engine.host, "service", "logs", "-f", "--raw", name]
    logs = subprocess.Popen(follow, stdout=subprocess.PIPE)
    assert logs.stdout is not None
    with selectors.DefaultSelector() as sel:
        sel.register(logs.stdout, selectors.EVENT_READ)
        while not (sel.select(0.1) and logs.stdout.readline()):
            if engine.cli("service", "logs", "--raw", name, check=False).strip():
                break
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


def flood(engine: PrivateSwarm, agents: int, seconds: int) -> None:
    work = Path(tempfile.mkdtemp(prefix="afbench-flood-"))
    with FakeOpenAI(prompt_as_shell()) as fake:
        catalog = write_catalog(work / "catalog.json", fake)
        env = {"DOCKER_HOST": engine.host, "AGENTFACTORY_BACKEND": "swarm", UPSTREAM_KEY_ENV: UPSTREAM_KEY}
        srv = ServerProcess(work, catalog=catalog, env=env).start()
        try:
            command = f"for i in $(seq 1 {seconds * 10}); do echo $i; sleep 0.1; done"
            with srv.client(timeout=120) as c:
                t0 = time.monotonic()
                ids = [c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": command}).json()["id"]
                       for _ in range(agents)]  # fmt: skip
                ok = 0
                for agent_id in ids:
                    agent = wait_terminal(c, agent_id, timeout=seconds * 4 + 120)
                    lines = all_log_lines(c, agent_id)
                    numbered = [int(x["text"]) for x in lines if x["text"].isdigit()]
                    h = hashlib.sha256(b"".join(x["text"].encode() + b"\n" for x in lines)).hexdigest()
                    once = numbered == list(range(1, seconds * 10 + 1))
                    sealed = (agent["log_lines"], agent["log_sha256"]) == (len(lines), h)
                    ok += once and sealed and agent["status"] == "succeeded"
                    if not (once and sealed):
                        print(f"{agent_id}: {agent['status']} lines once: {once}, seal matches: {sealed}")
                wall = time.monotonic() - t0
            total = agents * seconds * 10
            print(f"flood: {agents} swarm agents x {seconds * 10} lines ({total / seconds:.0f} lines/s for {seconds}s)")
            print(f"  {ok}/{agents} agents: every line stored once and seal == full page read; wall {wall:.1f}s")
        finally:
            srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--agents", type=int, default=30)
    parser.add_argument("--concurrency", type=int, default=10)
    parser.add_argument("--flood", action="store_true")
    parser.add_argument("--seconds", type=int, default=30)
    args = parser.parse_args()
    engine = PrivateSwarm().start()
    if args.flood:
        try:
            flood(engine, args.agents if args.agents != 30 else 20, args.seconds)
        finally:
            engine.destroy()
        return
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

"""Launch time under gVisor (runsc) vs runc: the same echo agent, the same hardened profile.

Two `agentfactory serve` processes, one with AGENTFACTORY_CONTAINER_RUNTIME=runsc, one with the
engine's default (runc), take turns (ABBA order, so drift hits both alike). Per trial:

  launch    POST /agents → its 201 answer (the server answers once the container runs)
  done      POST → the agent is terminal (`succeeded`), polled every 20 ms
  engine    `docker run --rm --network none --runtime=R` of the runtime image running
            `python3 -c pass`: the engine's own floor for each runtime, no control plane

Needs runsc registered with Docker: `AGENTFACTORY_WITH_RUNSC=1 bash scripts/setup.sh`.

    .venv/bin/python bench/runsc_vs_runc.py [--trials 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.support.server import ServerProcess  # noqa: E402

IMAGE = "agentfactory-runtime:latest"
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}


def one_agent(srv: ServerProcess) -> tuple[float, float]:
    with srv.client() as c:
        t0 = time.monotonic()
        r = c.post("/agents", json={"model": "echo", "prompt": "hi"})
        launch = time.monotonic() - t0
        if r.status_code != 201:
            raise RuntimeError(f"POST /agents answered {r.status_code}: {r.text[:300]}")
        agent_id = r.json()["id"]
        deadline = t0 + 60
        while time.monotonic() < deadline:
            body = c.get(f"/agents/{agent_id}").json()
            if body["status"] in TERMINAL:
                if body["status"] != "succeeded":
                    raise RuntimeError(f"agent {agent_id} ended {body['status']}: {body.get('error')}")
                return launch, time.monotonic() - t0
            time.sleep(0.02)
    raise TimeoutError(f"agent {agent_id} not terminal within 60 s")


def engine_run(runtime: str) -> float:
    t0 = time.monotonic()
    subprocess.run(
        ["docker", "run", "--rm", "--network", "none", f"--runtime={runtime}", "--entrypoint", "python3", IMAGE,
         "-c", "pass"],
        check=True, capture_output=True, timeout=60,
    )  # fmt: skip
    return time.monotonic() - t0


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p90 = ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]
    return f"median {statistics.median(values) * 1000:6.0f} ms  p90 {p90 * 1000:6.0f} ms  (n={len(values)})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()
    info = subprocess.run(["docker", "info", "--format", "{{json .Runtimes}}"], capture_output=True, text=True)
    if "runsc" not in json.loads(info.stdout or "{}"):
        print("runsc is not registered with Docker: AGENTFACTORY_WITH_RUNSC=1 bash scripts/setup.sh", file=sys.stderr)
        return 2
    runtimes = ("runc", "runsc")
    servers: dict[str, ServerProcess] = {}
    results: dict[str, dict[str, list[float]]] = {rt: {"launch": [], "done": [], "engine": []} for rt in runtimes}
    try:
        for rt in runtimes:
            env = {"AGENTFACTORY_CONTAINER_RUNTIME": rt} if rt != "runc" else {}
            servers[rt] = ServerProcess(Path(tempfile.mkdtemp(prefix="afb-rt-", dir="/tmp")), env=env).start()
        for trial in range(args.warmup + args.trials):
            order = runtimes if trial % 4 in (0, 3) else runtimes[::-1]  # ABBA
            for rt in order:
                launch, done = one_agent(servers[rt])
                engine = engine_run(rt)
                if trial >= args.warmup:
                    results[rt]["launch"].append(launch)
                    results[rt]["done"].append(done)
                    results[rt]["engine"].append(engine)
    finally:
        for srv in servers.values():
            srv.stop()
            srv.cleanup_containers()
    runsc_version = subprocess.run(["runsc", "--version"], capture_output=True, text=True).stdout.splitlines()
    print(f"echo agent, {args.trials} trials after {args.warmup} warm-ups, ABBA; {runsc_version[:1]}")
    for metric in ("launch", "done", "engine"):
        for rt in runtimes:
            print(f"{metric:7} {rt:6} {summary(results[rt][metric])}")
        ratio = statistics.median(results["runsc"][metric]) / statistics.median(results["runc"][metric])
        print(f"{metric:7} runsc/runc median ratio {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Launch latency: agentfactory vs `docker run --rm --network none` of the same agent.

Each trial runs one echo agent (the runtime's entry point, the `echo` model answered by a real model
gateway over the mounted Unix socket) three ways, in an order that rotates from trial to trial:

  ours      POST /agents, then GET /agents/{id}/stream: time to the first `log` event received, and
            to the `end` event (status `succeeded`, seal included).
  docker    `docker run --rm --network none` of the same image, env and socket mount, stdout piped:
            time to its first stdout line, and to the CLI's exit (container gone).
  engine    (diagnostic) docker-py with agentfactory's own create arguments (the hardened profile
            from docker_spec.py): create, attach, start, first line, exit. The floor any control
            plane on this engine pays; ours minus this is the control plane's own cost.

Also printed: the server's own phase timings from GET /agents/{id}/result.

    .venv/bin/python bench/launch.py [--trials 20] [--warmup 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BENCH_LABEL,
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
    interleaved,
    machine_note,
    print_rows,
    sse_events,
)


def ours(client: Any) -> dict[str, float]:
    t0 = time.time()
    agent = create_agent(client, agent_body())
    t_post = time.time()
    first = end = None
    status = ""
    for event, data, at in sse_events(client, agent["id"]):
        if event == "log" and first is None:
            first = at
        if event == "end":
            end, status = at, json.loads(data)["status"]
            break
    if first is None or end is None or status != "succeeded":
        raise RuntimeError(f"agent {agent['id']}: first={first} end={end} status={status!r}")
    result = client.get(f"/agents/{agent['id']}/result").json()
    timings = result["timings"]

    def epoch(key: str) -> float:
        return datetime.fromisoformat(timings[key].replace("Z", "+00:00")).timestamp()

    return {
        "post": t_post - t0,
        "first": first - t0,
        "done": end - t0,
        "accepted_to_started": epoch("started_at") - epoch("accepted_at"),
        "started_to_first_output": epoch("first_output_at") - epoch("started_at"),
        "first_output_to_finished": epoch("finished_at") - epoch("first_output_at"),
    }


def docker_run(sidecar: Sidecar) -> dict[str, float]:
    t0 = time.time()
    proc = subprocess.Popen(sidecar.docker_run(), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    first = time.time()
    proc.stdout.read()
    _, err = proc.communicate()
    done = time.time()
    if proc.returncode != 0 or not line.startswith(b'{"event": "start"'):
        raise RuntimeError(f"docker run exited {proc.returncode}: first line {line[:100]!r}, stderr {err[-300:]!r}")
    return {"first": first - t0, "done": done - t0}


class EngineFloor:
    """docker-py with agentfactory's create arguments: create → attach → start → read → wait → remove."""

    def __init__(self, sidecar: Sidecar):
        import docker

        from agentfactory.backends.base import AgentSpec
        from agentfactory.backends.docker_spec import build_create_args
        from agentfactory.catalog import load_catalog

        limits = load_catalog(Path(__file__).resolve().parents[1] / "catalog.json").limits
        self.api = docker.APIClient(version="auto", timeout=60)
        self.sidecar = sidecar
        self.n = 0
        self.spec = lambda n: AgentSpec(
            agent_id=f"bench{RUN_ID}x{n}",
            key_id="key_bench",
            image=IMAGE,
            env=sidecar.env(shell=None),
            memory_mb=limits.memory_mb,
            cpus=limits.cpus,
            pids=limits.pids,
            scratch_mb=limits.scratch_mb,
            max_log_bytes=limits.max_log_bytes,
            gateway_socket_dir=Path(sidecar.socket_dir),
            instance="bench-" + RUN_ID,
        )
        self.build = build_create_args

    def __call__(self) -> dict[str, float]:
        self.n += 1
        api = self.api
        t0 = time.time()
        args = self.build(self.spec(self.n))
        args["labels"] = {**args["labels"], BENCH_LABEL: RUN_ID}  # so a leftover is found and removed
        host_config = api.create_host_config(**args.pop("host_config"))
        args.pop("detach")
        cid = api.create_container(**args, host_config=host_config)["Id"]
        try:
            raw = api.attach_socket(cid, params={"stdout": 1, "stderr": 1, "stream": 1, "logs": 0})
            sock: socket.socket = getattr(raw, "_sock", raw)
            sock.settimeout(60)
            api.start(cid)
            buf = b""
            first = None
            while True:
                data = sock.recv(1 << 16)
                if not data:
                    break
                buf += data
                if first is None and len(buf) > 8 and b"\n" in buf[8:]:
                    first = time.time()
            sock.close()
            code = api.wait(cid, timeout=60)["StatusCode"]
            done = time.time()
        finally:
            api.remove_container(cid, force=True)
        if code != 0 or first is None:
            raise RuntimeError(f"engine-floor container exited {code}: {buf[:200]!r}")
        return {"first": first - t0, "done": done - t0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="measured trials per side")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured trials per side first")
    parser.add_argument("--no-engine", action="store_true", help="skip the docker-py diagnostic")
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    print(f"launch: {args.trials} trials per side, interleaved; {machine_note()}")

    report = Report("launch")
    results: dict[str, list[dict[str, float]]] = {"ours": [], "docker": [], "engine": []}
    with Sidecar() as sidecar, BenchServer(sidecar) as server, server.client() as client:
        engine = None if args.no_engine else EngineFloor(sidecar)
        sides = {"ours": lambda: ours(client), "docker": lambda: docker_run(sidecar)}
        if engine is not None:
            sides["engine"] = engine
        results.update(interleaved(sides, trials=args.trials, warmup=args.warmup))
        load_after = machine_note()

    def col(side: str, key: str) -> Summary:
        return Summary.of([r[key] for r in results[side]])

    print("\n(a) to the first output line")
    print(f"  ours   POST → first log event on /stream : {col('ours', 'first').ms()}")
    print(f"  docker run --rm --network none → line  : {col('docker', 'first').ms()}")
    if results["engine"]:
        print(f"  engine floor (docker-py, our args)      : {col('engine', 'first').ms()}")
    print("(b) to the end (echo agent)")
    print(f"  ours   POST → `end` event (succeeded)    : {col('ours', 'done').ms()}")
    print(f"  docker run --rm → CLI exit              : {col('docker', 'done').ms()}")
    if results["engine"]:
        print(f"  engine floor → container exit           : {col('engine', 'done').ms()}")
    print("ours, by phase (server timestamps, GET /agents/{id}/result)")
    print(f"  POST round trip (create+attach+start)   : {col('ours', 'post').ms()}")
    for key in ("accepted_to_started", "started_to_first_output", "first_output_to_finished"):
        print(f"  {key:<40}: {col('ours', key).ms()}")

    first_o, first_d = col("ours", "first"), col("docker", "first")
    done_o, done_d = col("ours", "done"), col("docker", "done")
    r1 = report.add(
        Row(
            "POST→first line on stream, p50",
            first_o.median * 1000,
            first_d.median * 1000,
            "ms",
            goal="≤ 0.6x docker run",
            better="lower",
        )
    )
    r1.met = r1.ratio is not None and r1.ratio <= 0.6
    report.add(Row("POST→first line on stream, p90", first_o.p90 * 1000, first_d.p90 * 1000, "ms"))
    report.add(Row("POST→succeeded (echo), p50", done_o.median * 1000, done_d.median * 1000, "ms"))
    report.add(Row("POST→succeeded (echo), p90", done_o.p90 * 1000, done_d.p90 * 1000, "ms"))
    report.details = {
        "trials": args.trials,
        "load_after": load_after,
        **{f"{side}_{key}": vars(col(side, key)) for side in results if results[side] for key in results[side][0]},
    }
    print("\nsummary")
    print_rows(report.rows)
    print(f"after: {load_after}")
    report.write(args.json)


if __name__ == "__main__":
    main()

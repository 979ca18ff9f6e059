"""Warm sandboxes (SPEC §10): POST→first line with the pool warm, cold, and `docker run`, interleaved.

Two servers on the same catalog: one with `AGENTFACTORY_WARM_POOL_SIZE` (default 2), one without (every
agent cold). Each trial runs the same echo agent three ways, in an order that rotates from trial to
trial (launch.py's `ours` and `docker_run`):

  warm      POST /agents to the pooled server once its pool has an idle sandbox (it refills between
            trials: "with the pool warm"), then its /stream to the first `log` event and to `end`.
  cold      the same on the server without a pool.
  docker    `docker run --rm --network none` of the same image, env and socket mount: to its first
            stdout line and to the CLI's exit.

Goal (issue 21): warm p50 ≤ 0.2x docker run's.

    .venv/bin/python bench/warm.py [--trials 20] [--warmup 3] [--pool 2]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
    BenchServer,
    Report,
    Row,
    Sidecar,
    Summary,
    common_args,
    ensure_ready,
    interleaved,
    machine_note,
    print_rows,
)
from launch import docker_run, ours


def wait_idle(client: Any, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while client.get("/capacity").json()["warm"]["idle"] < 1:
        if time.monotonic() > deadline:
            raise RuntimeError("the pool did not refill")
        time.sleep(0.02)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=20, help="measured trials per side")
    parser.add_argument("--warmup", type=int, default=3, help="unmeasured trials per side first")
    parser.add_argument("--pool", type=int, default=2, help="AGENTFACTORY_WARM_POOL_SIZE of the warm server")
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    print(f"warm: {args.trials} trials per side, interleaved; pool {args.pool}; {machine_note()}")

    report = Report("warm")
    results: dict[str, list[dict[str, float]]] = {"warm": [], "cold": [], "docker": []}
    warm_flags: list[bool] = []
    with (
        Sidecar() as sidecar,
        BenchServer(sidecar, env={"AGENTFACTORY_WARM_POOL_SIZE": str(args.pool)}) as pooled,
        BenchServer(sidecar) as plain,
        pooled.client() as wc,
        plain.client() as cc,
    ):

        def warm() -> dict[str, float]:
            wait_idle(wc)
            value = ours(wc)
            agents = wc.get("/agents", params={"limit": 1}).json()["items"]
            warm_flags.append(bool(agents and agents[0]["warm"]))
            return value

        sides = {"warm": warm, "cold": lambda: ours(cc), "docker": lambda: docker_run(sidecar)}
        results.update(interleaved(sides, trials=args.trials, warmup=args.warmup))
        load_after = machine_note()

    def col(side: str, key: str) -> Summary:
        return Summary.of([r[key] for r in results[side]])

    measured_flags = warm_flags[args.warmup :]
    print(f"\nwarm trials that got a sandbox: {sum(measured_flags)}/{len(measured_flags)}")
    print("(a) POST → first output line")
    print(f"  warm   (pool {args.pool}, idle sandbox)         : {col('warm', 'first').ms()}")
    print(f"  cold   (no pool)                        : {col('cold', 'first').ms()}")
    print(f"  docker run --rm --network none → line  : {col('docker', 'first').ms()}")
    print("(b) POST → end (echo agent)")
    print(f"  warm                                    : {col('warm', 'done').ms()}")
    print(f"  cold                                    : {col('cold', 'done').ms()}")
    print(f"  docker run --rm → CLI exit              : {col('docker', 'done').ms()}")
    print("server phases (GET /agents/{id}/result), warm | cold")
    for key in ("post", "accepted_to_started", "started_to_first_output"):
        print(f"  {key:<40}: {col('warm', key).ms()} | {col('cold', key).ms()}")

    w, c, d = col("warm", "first"), col("cold", "first"), col("docker", "first")
    r = report.add(Row("warm POST→first line, p50", w.median * 1000, d.median * 1000, "ms", goal="≤ 0.2x docker run"))
    r.met = r.ratio is not None and r.ratio <= 0.2
    report.add(Row("warm POST→first line, p90", w.p90 * 1000, d.p90 * 1000, "ms"))
    report.add(Row("cold POST→first line, p50", c.median * 1000, d.median * 1000, "ms"))
    report.add(Row("cold POST→first line, p90", c.p90 * 1000, d.p90 * 1000, "ms"))
    report.add(Row("warm vs cold POST→first line, p50", w.median * 1000, c.median * 1000, "ms"))
    report.details = {
        "trials": args.trials,
        "pool": args.pool,
        "warm_hits": sum(measured_flags),
        "load_after": load_after,
        **{f"{side}_{key}": vars(col(side, key)) for side in results if results[side] for key in results[side][0]},
    }
    print("\nsummary (baseline: docker run, except the last row: cold)")
    print_rows(report.rows)
    print(f"after: {load_after}")
    report.write(args.json)


if __name__ == "__main__":
    main()

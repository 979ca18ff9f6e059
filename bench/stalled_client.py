"""A stalled stream client vs none: how long an agent takes to print its output.

The agent's `shell` tool waits a second (so the stream client is connected before the first line),
then runs a Python producer that writes --lines numbered lines and prints the seconds it took,
measured inside the container (`time.perf_counter`). If capture waited on a client that never reads,
the producer would block on a full pipe and that figure would grow.

  with a stalled client   --clients clients open GET /agents/{id}/stream right after the POST and
                          never read: their socket buffers fill within the first few MB
  alone (the baseline)    the same agent with no stream client

Rounds alternate their order (alone, stalled, stalled, alone...) so drift on the machine hits both
alike. Each stalled run also checks that every line was stored. The agent's own run time
(`finished_at - started_at`, which includes the capture draining its pipe) is printed beside it.

    .venv/bin/python bench/stalled_client.py [--lines 800000] [--rounds 6] [--clients 1]
"""

from __future__ import annotations

import argparse
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import (
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

PRODUCER = (
    'sleep 1; python3 -c "import sys, time; t = time.perf_counter(); '
    "sys.stdout.writelines(f'{{i}}\\n' for i in range({n})); sys.stdout.flush(); "
    "print('PRODUCER', time.perf_counter() - t)\""
)


def epoch(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def producer_seconds(client: Any, agent_id: str, n: int) -> float:
    """The producer's own figure, from the agent's last lines; checks that all n lines were stored."""
    agent = client.get(f"/agents/{agent_id}").json()
    tail = client.get(f"/agents/{agent_id}/logs", params={"cursor": max(0, agent["log_lines"] - 50)}).json()
    found = [x["text"] for x in tail["lines"] if x["text"].startswith("PRODUCER")]
    if not found:
        raise RuntimeError(f"agent {agent_id}: no PRODUCER line in its last lines: {tail['lines'][-5:]!r}")
    numbered = [x for x in tail["lines"] if x["text"].isdigit()]
    if not numbered or numbered[-1]["text"] != str(n - 1) or agent["log_lines"] < n:
        raise RuntimeError(f"agent {agent_id}: {agent['log_lines']} lines stored, expected at least {n}")
    return float(found[-1].split()[1])


def one_run(srv: BenchServer, client: Any, n: int, stalled_clients: int) -> dict[str, float]:
    agent = create_agent(client, agent_body(shell=PRODUCER.format(n=n)))
    headers = {"Authorization": f"Bearer {srv.admin_key}"}
    stalled = [httpx.Client(base_url=srv.url, headers=headers, timeout=None) for _ in range(stalled_clients)]
    try:
        responses = [s.send(s.build_request("GET", f"/agents/{agent['id']}/stream"), stream=True) for s in stalled]
        final = wait_terminal(client, agent["id"], timeout=300)
        for r in responses:
            r.close()
    finally:
        for s in stalled:
            s.close()
    if final["status"] != "succeeded":
        raise RuntimeError(f"agent {agent['id']}: {final['status']} {final.get('reason')}")
    return {
        "producer": producer_seconds(client, agent["id"], n),
        # the agent slept 1 s before printing
        "agent_run": epoch(final["finished_at"]) - epoch(final["started_at"]) - 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--lines", type=int, default=800_000)
    parser.add_argument("--rounds", type=int, default=6, help="runs a side, interleaved ABBA")
    parser.add_argument("--clients", type=int, default=1, help="stalled stream clients in the stalled runs")
    common_args(parser)
    args = parser.parse_args()
    ensure_ready()
    n = args.lines
    print(f"stalled_client: {n:,} lines, {args.rounds} rounds a side, {args.clients} stalled; {machine_note()}")
    report = Report("stalled_client")
    runs: dict[str, list[dict[str, float]]] = {"alone": [], "stalled": []}
    with Sidecar() as sidecar, BenchServer(sidecar) as srv, srv.client(timeout=120) as client:
        one_run(srv, client, 10_000, 0)  # warm-up: image cache, the server's first agent
        for r in range(args.rounds):
            order = ("alone", "stalled") if r % 2 == 0 else ("stalled", "alone")
            for side in order:
                value = one_run(srv, client, n, args.clients if side == "stalled" else 0)
                runs[side].append(value)
                print(
                    f"  round {r + 1} {side:<8} producer {value['producer']:6.3f} s"
                    f"   agent run {value['agent_run']:6.3f} s   {machine_note()}"
                )

    def summary(side: str, key: str) -> Summary:
        return Summary.of([v[key] for v in runs[side]])

    print("\nmedian of the rounds (min, max)")
    for key, label in (("producer", "producer, inside the container"), ("agent_run", "agent run, start to finished")):
        alone, stalled = summary("alone", key), summary("stalled", key)
        print(
            f"  {label:<32} alone {alone.median:6.3f} s ({alone.min:.3f}, {alone.max:.3f})"
            f"   stalled {stalled.median:6.3f} s ({stalled.min:.3f}, {stalled.max:.3f})"
            f"   ratio {stalled.median / alone.median:.2f}x"
        )
    print(f"after: {machine_note()}")
    row = report.add(
        Row(
            f"producer {n // 1000}k lines: {args.clients} stalled client(s) vs none",
            summary("stalled", "producer").median,
            summary("alone", "producer").median,
            "s",
            goal="≤ 1.2x alone",
        )
    )
    row.met = row.ratio is not None and row.ratio <= 1.2
    report.add(
        Row(
            f"agent run {n // 1000}k lines: {args.clients} stalled client(s) vs none",
            summary("stalled", "agent_run").median,
            summary("alone", "agent_run").median,
            "s",
        )
    )
    report.details = runs
    print("\nsummary")
    print_rows(report.rows)
    report.write(args.json)


if __name__ == "__main__":
    main()

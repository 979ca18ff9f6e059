"""Every benchmark in one go, then one table: metric, ours, baseline, ratio, goal, met?

Runs (each in its own process, output shown live and kept under bench/results/):
launch.py, warm.py, throughput.py, capture.py, fanout.py, stalled_client.py, footprint.py, gateway_overhead.py,
status_rate.py, tenancy.py and load.py.
Needs a Docker Engine and the runtime image; when either is missing it runs scripts/setup.sh first.
Takes about 17 minutes on a 2-core machine.

    .venv/bin/python bench/run_all.py [--only launch capture ...] [--skip load]
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, ensure_ready, machine_note

RESULTS = ROOT / "bench" / "results"
BENCHES = [
    "launch",
    "warm",
    "throughput",
    "capture",
    "fanout",
    "stalled_client",
    "footprint",
    "gateway_overhead",
    "status_rate",
    "tenancy",
    "load",
]


def run(name: str) -> tuple[int, Path]:
    log = RESULTS / f"{name}.log"
    out = RESULTS / f"{name}.json"
    out.unlink(missing_ok=True)
    cmd = [sys.executable, str(ROOT / "bench" / f"{name}.py")]
    if name != "gateway_overhead":
        cmd += ["--json", str(out)]
    print(f"\n=== {name} ({machine_note()}) ===", flush=True)
    started = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=ROOT)
        assert proc.stdout is not None
        for line in proc.stdout:
            sys.stdout.buffer.write(line)
            sys.stdout.flush()
            f.write(line)
        proc.wait()
    print(f"=== {name}: exit {proc.returncode} in {time.monotonic() - started:.0f} s ({machine_note()}) ===")
    if name == "gateway_overhead" and proc.returncode == 0:
        gateway_rows(log.read_text(), out)
    return proc.returncode, out


def gateway_rows(text: str, out: Path) -> None:
    """gateway_overhead.py prints text only: turn its medians into a row."""
    direct = re.search(r"direct to the fake upstream\s*: median\s+([\d.]+) ms", text)
    through = re.search(r"through the model gateway\s*: median\s+([\d.]+) ms", text)
    if not (direct and through):
        return
    row = {
        "metric": "model call via gateway vs direct, p50",
        "ours": float(through.group(1)),
        "baseline": float(direct.group(1)),
        "unit": "ms",
        "goal": "",
        "met": None,
    }
    out.write_text(json.dumps({"name": "gateway_overhead", "rows": [row]}))


def fmt(value: float | None) -> str:
    if value is None:
        return "-"
    if value != value:  # NaN
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3g}" if abs(value) < 10 else f"{value:.1f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=BENCHES, help="run only these")
    parser.add_argument("--skip", nargs="+", choices=BENCHES, default=[], help="leave these out")
    args = parser.parse_args()
    ensure_ready()
    RESULTS.mkdir(parents=True, exist_ok=True)
    names = [n for n in (args.only or BENCHES) if n not in args.skip]
    started = time.monotonic()
    first_note = machine_note()
    failed: list[str] = []
    rows: list[dict] = []
    for name in names:
        code, out = run(name)
        if code != 0:
            failed.append(name)
        if out.exists():
            rows += json.loads(out.read_text())["rows"]
        else:
            rows.append(
                {
                    "metric": f"{name}: no result (exit {code})",
                    "ours": None,
                    "baseline": None,
                    "unit": "",
                    "goal": "",
                    "met": False,
                }
            )

    print(f"\n\nagentfactory benchmarks: {len(names)} runs in {(time.monotonic() - started) / 60:.1f} min")
    print(f"machine at start: {first_note}; at end: {machine_note()}")
    header = f"| {'metric':<52} | {'ours':>10} | {'baseline':>10} | {'unit':<7} | {'ratio':>6} | {'goal':<22} | met? |"
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for r in rows:
        base = r.get("baseline")
        ours = r.get("ours")
        ratio = ours / base if (ours is not None and base) else None
        met = {True: "yes", False: "NO", None: ""}[r.get("met")]
        print(
            f"| {r['metric']:<52} | {fmt(ours):>10} | {fmt(base):>10} | {r.get('unit', ''):<7} | "
            f"{(f'{ratio:.2f}x' if ratio is not None else '-'):>6} | {r.get('goal', ''):<22} | {met:<4} |"
        )
    (RESULTS / "table.json").write_text(json.dumps({"machine": first_note, "rows": rows}, indent=2))
    if failed:
        print(f"\nfailed runs: {', '.join(failed)} (logs in {RESULTS})")
        raise SystemExit(1)


if __name__ == "__main__":
    main()

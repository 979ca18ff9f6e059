"""Files in and out (SPEC §9): upload and artifact throughput vs `docker cp` of the same tree, and
POST → first line with a 50 MiB workspace vs without.

  upload            POST /uploads of a tar of the tree (streamed to the blob store, every entry checked)
  docker cp in      `docker cp - CTR:/work` of the same tar into a created container (no checks; a tmpfs
                    cannot be written by `docker cp`, so a plain directory of the container's layer)
  artifacts         an agent writes the tree's bytes (100 files) into out/ and ends; run_seconds with
                    `artifacts: ["out/**"]` minus without = collection; plus the tar.gz download
  docker cp out     `docker cp CTR:/work -` of the same tree out of a stopped container
  first line        POST /agents → the agent's first output line (result timings), with the workspace
                    (fetched and unpacked by the runtime before it starts) vs without

    AGENTFACTORY_RUNTIME_IMAGE=... .venv/bin/python bench/files.py [--files 5000] [--mib 50] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
import time
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import IMAGE, BenchServer, Sidecar, ensure_ready, wait_terminal

MIB = 1024 * 1024


def make_tree(root: Path, files: int, total: int) -> bytes:
    for i in range(files):
        path = root / f"d{i % 50:02d}" / f"f{i:05d}.bin"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(os.urandom(total // files))
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root, arcname=".")
    return buf.getvalue()


def docker(*args: str, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["docker", *args], input=stdin, capture_output=True, check=True).stdout


def seconds(ts: str) -> float:
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=5000)
    parser.add_argument("--mib", type=int, default=50)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ensure_ready()
    size = args.mib * MIB
    with tempfile.TemporaryDirectory(prefix="afb-files-") as tmp:
        body = make_tree(Path(tmp) / "tree", args.files, size)
    mib = len(body) / MIB
    rows: dict[str, list[float]] = {k: [] for k in ("upload", "cp_in", "artifacts", "download", "cp_out")}
    first: dict[str, list[float]] = {"with workspace": [], "without": []}
    per_file = size // 100
    write = f"mkdir -p out && for i in $(seq 1 100); do head -c {per_file} /dev/urandom > out/f$i.bin; done"
    with Sidecar() as sidecar, BenchServer(sidecar, limits={"max_artifact_bytes": 2 * size}) as server:
        key = server.create_key("files")
        with server.client(key, timeout=600) as c:
            for _ in range(args.rounds):
                started = time.perf_counter()
                up = c.post("/uploads", content=body, headers={"Content-Type": "application/x-tar"})
                rows["upload"].append(mib / (time.perf_counter() - started))
                up.raise_for_status()
                name = f"afb-files-{os.getpid()}"
                docker("create", "--name", name, "--label", "io.agentfactory.bench=1", "--entrypoint", "/bin/sh",
                       IMAGE, "-c", "exit 0")  # fmt: skip
                try:
                    started = time.perf_counter()
                    docker("cp", "-", f"{name}:/opt", stdin=body)
                    rows["cp_in"].append(mib / (time.perf_counter() - started))
                    started = time.perf_counter()
                    docker("cp", f"{name}:/opt", "-")
                    rows["cp_out"].append(mib / (time.perf_counter() - started))
                finally:
                    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
                for label, extra in (("with workspace", {"workspace": up.json()["id"]}), ("without", {})):
                    agent = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": "echo first", **extra})
                    agent.raise_for_status()
                    wait_terminal(c, agent.json()["id"])
                    t = c.get(f"/agents/{agent.json()['id']}/result").json()["timings"]
                    first[label].append(seconds(t["first_output_at"]) - seconds(t["accepted_at"]))
                runs = {}
                for label, extra in (("with", {"artifacts": ["out/**"]}), ("without", {})):
                    agent = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": write, **extra})
                    agent.raise_for_status()
                    wait_terminal(c, agent.json()["id"])
                    runs[label] = (agent.json()["id"], c.get(f"/agents/{agent.json()['id']}/result").json())
                extra_seconds = runs["with"][1]["timings"]["run_seconds"] - runs["without"][1]["timings"]["run_seconds"]
                rows["artifacts"].append(args.mib / max(extra_seconds, 1e-3))
                started = time.perf_counter()
                tgz = c.get(f"/agents/{runs['with'][0]}/artifacts.tar.gz")
                tgz.raise_for_status()
                rows["download"].append(args.mib / (time.perf_counter() - started))
    print(f"tree: {args.files} files, {args.mib} MiB (tar {mib:.1f} MiB); median of {args.rounds} rounds")
    print(f"{'upload (POST /uploads, checked)':44} {statistics.median(rows['upload']):8.1f} MiB/s")
    print(f"{'docker cp in (same tar)':44} {statistics.median(rows['cp_in']):8.1f} MiB/s")
    print(f"{'artifacts (collection, from run_seconds)':44} {statistics.median(rows['artifacts']):8.1f} MiB/s")
    print(f"{'artifacts.tar.gz download':44} {statistics.median(rows['download']):8.1f} MiB/s")
    print(f"{'docker cp out (same tree)':44} {statistics.median(rows['cp_out']):8.1f} MiB/s")
    for label, values in first.items():
        print(f"{'POST -> first line, ' + label:44} {statistics.median(values) * 1000:8.0f} ms")


if __name__ == "__main__":
    main()

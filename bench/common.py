"""What every benchmark shares: the server under test, the baseline's gateway, `docker run` lines, stats.

Both sides of every comparison run the *same agent*: the runtime image's entry point with the same
spec, talking to a real model gateway over a mounted Unix socket. agentfactory's side is a real
`agentfactory serve` process (`BenchServer`); the baseline's side is `docker run --rm --network none`
of that image with the socket of a standalone gateway (`Sidecar`: the real `ModelGateway` from
tests/fakes/gateway_harness.py) mounted in. The fake OpenAI-compatible upstream that turns a prompt
into one `shell` tool call lives in the sidecar process and serves both sides, so neither side's
model answers cost the benchmark process any CPU.

Everything talks to loopback and to the project's own containers only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import multiprocessing as mp
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

IMAGE = os.environ.get("AGENTFACTORY_RUNTIME_IMAGE", "agentfactory-runtime:latest")
BENCH_LABEL = "io.agentfactory.bench"
RUN_ID = "b" + uuid.uuid4().hex[:10]
TERMINAL = {"succeeded", "failed", "cancelled", "expired"}
GATEWAY_MOUNT = "/run/agentfactory"
# The launcher gives the model this much of a tool's output (agentfactory.runtime.launcher.TOOL_OUTPUT_LIMIT).
TOOL_OUTPUT_LIMIT = 16_384
T = TypeVar("T")


# -- machine ---------------------------------------------------------------------------------------


def ensure_ready() -> None:
    """Docker Engine answering and the runtime image present; otherwise run scripts/setup.sh once."""

    def ok() -> bool:
        engine = subprocess.run(["docker", "version"], capture_output=True, check=False).returncode == 0
        image = (
            engine
            and subprocess.run(["docker", "image", "inspect", IMAGE], capture_output=True, check=False).returncode == 0
        )
        return image

    if shutil.which("docker") and ok():
        return
    print("[bench] Docker Engine or runtime image missing: running scripts/setup.sh", file=sys.stderr)
    subprocess.run(["bash", str(ROOT / "scripts" / "setup.sh")], check=True, cwd=ROOT)
    if not ok():
        raise SystemExit("the Docker Engine or the runtime image is still missing after scripts/setup.sh")


def machine_note() -> str:
    load = os.getloadavg()
    return f"{os.cpu_count()} CPUs, load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"


def engine_processes() -> list[Any]:
    """dockerd and containerd (the long-lived engine processes) for CPU accounting; [] if not visible."""
    import psutil

    found = []
    for p in psutil.process_iter(["name"]):
        if p.info["name"] in ("dockerd", "containerd"):
            found.append(p)
    return found


def cpu_seconds(procs: Sequence[Any]) -> float:
    """User+system CPU seconds of these processes so far (processes that vanished count as 0)."""
    import psutil

    total = 0.0
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def machine_busy_seconds() -> float:
    """CPU seconds the whole machine has spent busy (every core, every process, the kernel) so far."""
    import psutil

    t = psutil.cpu_times()
    return t.user + t.nice + t.system + t.irq + t.softirq + getattr(t, "steal", 0.0)


# -- statistics ------------------------------------------------------------------------------------


def quantile(values: Sequence[float], q: float) -> float:
    """Linear-interpolated quantile, q in [0, 1] (numpy's default)."""
    if not values:
        return float("nan")
    s = sorted(values)
    pos = (len(s) - 1) * q
    lo = int(pos)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (pos - lo)


@dataclass
class Summary:
    n: int
    median: float
    p90: float
    p99: float
    mean: float
    min: float
    max: float

    @classmethod
    def of(cls, values: Sequence[float]) -> Summary:
        if not values:
            nan = float("nan")
            return cls(0, nan, nan, nan, nan, nan, nan)
        return cls(
            len(values),
            statistics.median(values),
            quantile(values, 0.9),
            quantile(values, 0.99),
            statistics.fmean(values),
            min(values),
            max(values),
        )

    def ms(self) -> str:
        return f"median {self.median * 1000:8.1f} ms   p90 {self.p90 * 1000:8.1f} ms   (n={self.n})"


def ratio(ours: float, baseline: float) -> float:
    return ours / baseline if baseline else float("nan")


# -- results (what run_all.py collects) ------------------------------------------------------------


@dataclass
class Row:
    """One line of the final table. `better` says which direction wins: "lower" or "higher"."""

    metric: str
    ours: float
    baseline: float | None
    unit: str
    goal: str = ""
    met: bool | None = None
    better: str = "lower"

    @property
    def ratio(self) -> float | None:
        if self.baseline is None or not self.baseline:
            return None
        return self.ours / self.baseline


@dataclass
class Report:
    name: str
    rows: list[Row] = field(default_factory=list)
    details: dict[str, Any] = field(default_factory=dict)

    def add(self, row: Row) -> Row:
        self.rows.append(row)
        return row

    def write(self, path: str | None) -> None:
        if not path:
            return
        data = {
            "name": self.name,
            "machine": machine_note(),
            "rows": [asdict(r) | {"ratio": r.ratio} for r in self.rows],
            "details": self.details,
        }
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(json.dumps(data, indent=2, default=str))


def common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--json", help="also write the rows of the summary table to this file")


# -- the baseline's gateway and the fake upstream (one child process) -------------------------------


def _sidecar_main(ready: Any, stop: Any) -> None:
    import structlog

    structlog.configure(
        processors=[structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")),  # noqa: SIM115
    )
    from tests.fakes.fake_openai import FakeOpenAI
    from tests.fakes.gateway_harness import GatewayHarness, make_catalog
    from tests.support.agents import prompt_as_shell

    with FakeOpenAI(prompt_as_shell()) as upstream, GatewayHarness(make_catalog(upstream.base_url)) as harness:
        _, echo_token = harness.add_agent("echo", token_budget=10**9)
        _, fake_token = harness.add_agent("fake", token_budget=10**9)
        ready.put((upstream.base_url, str(harness.socket_dir), echo_token, fake_token))
        stop.wait()


class Sidecar:
    """A child process with the fake OpenAI upstream (used by both sides) and a standalone model
    gateway whose socket the baseline's `docker run` containers get mounted, as agents do."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._stop = ctx.Event()
        self._ready = ctx.Queue()
        self._proc = ctx.Process(target=_sidecar_main, args=(self._ready, self._stop), daemon=True)
        self.upstream_url = self.socket_dir = self.echo_token = self.fake_token = ""

    def __enter__(self) -> Sidecar:
        self._proc.start()
        self.upstream_url, self.socket_dir, self.echo_token, self.fake_token = self._ready.get(timeout=90)
        return self

    def __exit__(self, *_exc: object) -> None:
        self._stop.set()
        self._proc.join(timeout=20)
        if self._proc.is_alive():
            self._proc.terminate()
        cleanup_baseline()

    def docker_run(
        self,
        *,
        shell: str | None = None,
        detach: bool = False,
        rm: bool = True,
        network_none: bool = True,
        extra: Sequence[str] = (),
    ) -> list[str]:
        """`docker run` of the agent agentfactory would run: the echo model, or (with `shell`) the model
        whose first answer is a `shell` tool call running `shell`."""
        return [
            "docker",
            "run",
            *(["--rm"] if rm else []),
            *(["-d"] if detach else []),
            *(["--network", "none"] if network_none else []),
            "--label",
            f"{BENCH_LABEL}={RUN_ID}",
            *extra,
            *(f"--env={k}={v}" for k, v in self.env(shell=shell).items()),
            "-v",
            f"{self.socket_dir}:{GATEWAY_MOUNT}:ro",
            IMAGE,
        ]

    def env(self, *, shell: str | None) -> dict[str, str]:
        return runtime_env(
            model="fake" if shell is not None else "echo",
            prompt=shell if shell is not None else "hi",
            tools=["shell"] if shell is not None else [],
            token=self.fake_token if shell is not None else self.echo_token,
        )


def runtime_env(*, model: str, prompt: str, tools: list[str], token: str) -> dict[str, str]:
    """The environment the launcher gives an agent container (agentfactory.runtime.launcher._spec)."""
    from agentfactory.catalog import load_catalog

    catalog = load_catalog(ROOT / "catalog.json")
    spec = {
        "agent_id": "ag_bench" + RUN_ID,
        "model": model,
        "prompt": prompt,
        "tools": [t.model_dump() for tid in tools if (t := catalog.tool(tid)) is not None],
        "max_steps": catalog.limits.max_steps,
        "tool_timeout_seconds": catalog.limits.tool_timeout_seconds,
        "tool_output_limit": TOOL_OUTPUT_LIMIT,
    }
    return {
        "AGENTFACTORY_SPEC": json.dumps(spec),
        "AGENTFACTORY_GATEWAY_SOCKET": f"{GATEWAY_MOUNT}/gateway.sock",
        "AGENTFACTORY_GATEWAY_TOKEN": token,
    }


def cleanup_baseline() -> None:
    """Remove every container this benchmark run started itself (label io.agentfactory.bench)."""
    ids = subprocess.run(
        ["docker", "ps", "-aq", "--filter", f"label={BENCH_LABEL}={RUN_ID}"],
        capture_output=True,
        text=True,
        check=False,
    ).stdout.split()
    if ids:
        subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False)


# -- agentfactory under test -----------------------------------------------------------------------


class BenchServer:
    """`agentfactory serve` in its own process, SQLite file, gateway socket and port (tests' ServerProcess),
    with a catalog that adds the model `sh` (its first answer runs the prompt with the `shell` tool)."""

    def __init__(self, sidecar: Sidecar, *, env: dict[str, str] | None = None, limits: dict[str, Any] | None = None):
        from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV

        self.sidecar = sidecar
        # AF_UNIX paths are limited to ~107 bytes: a short directory.
        self.dir = Path(tempfile.mkdtemp(prefix="afb-", dir="/tmp"))
        self._env = {
            UPSTREAM_KEY_ENV: UPSTREAM_KEY,
            "AGENTFACTORY_REAPER_INTERVAL_SECONDS": "2",  # the production default, not the tests' 1 s
            **(env or {}),
        }
        self._limits = limits
        self.srv: Any = None

    def __enter__(self) -> BenchServer:
        from tests.support.agents import write_catalog
        from tests.support.server import ServerProcess

        upstream = SimpleNamespace(base_url=self.sidecar.upstream_url)  # write_catalog reads only this
        catalog = write_catalog(self.dir / "catalog.json", upstream, limits=self._limits)  # type: ignore[arg-type]
        self.srv = ServerProcess(self.dir, catalog=catalog, env=self._env).start()
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.srv is not None:
            self.srv.stop()
            self.srv.cleanup_containers()
        shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def url(self) -> str:
        return str(self.srv.url)

    @property
    def pid(self) -> int:
        return int(self.srv.proc.pid)

    @property
    def admin_key(self) -> str:
        return str(self.srv.admin_key)

    def client(self, key: str | None = None, timeout: float = 60) -> Any:
        return self.srv.client(key, timeout=timeout)

    def create_key(self, name: str = "bench") -> str:
        """A non-admin key with quotas far above what a benchmark asks for."""
        with self.client() as c:
            r = c.post(
                "/keys",
                json={"name": name, "max_concurrent_agents": 100_000, "max_requests_per_minute": 1_000_000},
            )
            r.raise_for_status()
            return str(r.json()["key"])


def agent_body(*, shell: str | None = None, ttl: int = 600) -> dict[str, Any]:
    """POST /agents body of the same agent `Sidecar.docker_run` runs."""
    if shell is None:
        return {"model": "echo", "prompt": "hi", "ttl_seconds": ttl}
    return {"model": "sh", "tools": ["shell"], "prompt": shell, "ttl_seconds": ttl}


def create_agent(client: Any, body: dict[str, Any], *, deadline: float = 120) -> dict[str, Any]:
    """POST /agents, waiting out a 429 (quota/rate) within `deadline` seconds."""
    end = time.monotonic() + deadline
    while True:
        r = client.post("/agents", json=body)
        if r.status_code == 201:
            return dict(r.json())
        if r.status_code == 429 and time.monotonic() < end:
            time.sleep(min(float(r.headers.get("Retry-After", "1")), 2.0))
            continue
        raise RuntimeError(f"POST /agents answered {r.status_code}: {r.text[:300]}")


def sse_events(client: Any, agent_id: str, params: dict[str, Any] | None = None) -> Iterator[tuple[str, str, float]]:
    """(event, data, time received) of an agent's stream, until the server closes it."""
    with client.stream("GET", f"/agents/{agent_id}/stream", params=params or {}) as response:
        response.raise_for_status()
        event, data = "message", []
        for line in response.iter_lines():
            if line == "":
                if data:
                    yield event, "\n".join(data), time.time()
                event, data = "message", []
            elif line.startswith("event:"):
                event = line[6:].strip()
            elif line.startswith("data:"):
                data.append(line[5:].lstrip())


def wait_terminal(client: Any, agent_id: str, timeout: float = 120) -> dict[str, Any]:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        body = client.get(f"/agents/{agent_id}").json()
        if body["status"] in TERMINAL:
            return dict(body)
        time.sleep(0.1)
    raise TimeoutError(f"agent {agent_id} not terminal after {timeout}s")


@contextlib.contextmanager
def timed(label: str) -> Iterator[None]:
    started = time.monotonic()
    yield
    print(f"[bench] {label}: {time.monotonic() - started:.1f} s", file=sys.stderr)


def interleaved(sides: dict[str, Callable[[], T]], *, trials: int, warmup: int) -> dict[str, list[T]]:
    """Run each side once a trial, in an order that rotates from trial to trial (drift on the machine
    hits every side alike); the first `warmup` trials are not kept."""
    results: dict[str, list[T]] = {name: [] for name in sides}
    names = list(sides)
    for i in range(warmup + trials):
        for name in names[i % len(names) :] + names[: i % len(names)]:
            value = sides[name]()
            if i >= warmup:
                results[name].append(value)
    return results


def print_rows(rows: Sequence[Row]) -> None:
    for r in rows:
        base = "-" if r.baseline is None else f"{r.baseline:.4g}"
        rat = "-" if r.ratio is None else f"{r.ratio:.2f}x"
        met = "" if r.met is None else ("  goal met" if r.met else "  goal MISSED")
        print(f"  {r.metric:<48} ours {r.ours:>10.4g} {r.unit:<8} baseline {base:>10} ratio {rat:>7}  {r.goal}{met}")

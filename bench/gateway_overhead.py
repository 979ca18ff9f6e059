"""What the model gateway adds to one model call.

Median over N calls (default 200) of a chat completion sent the way an agent sends it (the runtime's
own Unix-socket HTTP client, one connection per call) through the real `ModelGateway` (token lookup,
budget check, key injection, usage stored in SQLite, metrics, a JSON log line), against the same
request sent straight to the fake OpenAI-compatible upstream over loopback TCP. Calls are
interleaved and their order alternates, so drift on the machine hits both sides alike. The upstream
and the gateway each run in their own process, as they would in production. A third line times the
`echo` model, which the gateway answers itself: its own cost with no upstream at all.

    .venv/bin/python bench/gateway_overhead.py [--calls 200]
"""

from __future__ import annotations

import argparse
import http.client
import importlib.util
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

BODY = {
    "model": "fake",
    "messages": [
        {"role": "system", "content": "You are an agent. " * 20},
        {"role": "user", "content": "Compute 6*7 with the python tool, then answer."},
    ],
}


def serve_upstream(ready: Any, stop: Any) -> None:
    from tests.fakes.fake_openai import FakeOpenAI, python_then_final

    with FakeOpenAI(python_then_final("print(6*7)")) as upstream:
        ready.put(upstream.base_url)
        stop.wait()


def serve_gateway(upstream_url: str, ready: Any, stop: Any) -> None:
    import structlog

    from tests.fakes.gateway_harness import GatewayHarness, make_catalog

    # The control plane logs one JSON line per call: keep that cost, drop the output.
    structlog.configure(
        processors=[structlog.processors.TimeStamper(fmt="iso"), structlog.processors.JSONRenderer()],
        logger_factory=structlog.PrintLoggerFactory(open(os.devnull, "w")),  # noqa: SIM115
    )
    with GatewayHarness(make_catalog(upstream_url)) as harness:
        _, token = harness.add_agent("fake", token_budget=10**9)
        _, echo_token = harness.add_agent("echo", token_budget=10**9)
        ready.put((str(harness.socket_path), token, echo_token))
        stop.wait()


def load_runtime_client() -> Callable[[str, float], http.client.HTTPConnection]:
    spec = importlib.util.spec_from_file_location("runtime_entry", ROOT / "runtime_image" / "runtime_entry.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.unix_http_connection  # type: ignore[no-any-return]


def timed_call(conn: http.client.HTTPConnection, path: str, headers: dict[str, str], model: str = "fake") -> float:
    payload = json.dumps(BODY | {"model": model}).encode()
    started = time.perf_counter()
    conn.request("POST", path, body=payload, headers={"Content-Type": "application/json", **headers})
    response = conn.getresponse()
    data = response.read()
    elapsed = time.perf_counter() - started
    conn.close()
    if response.status != 200 or not json.loads(data).get("choices"):
        raise SystemExit(f"call to {path} failed: HTTP {response.status}: {data[:200]!r}")
    return elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calls", type=int, default=200, help="measured calls per side")
    parser.add_argument("--warmup", type=int, default=20, help="unmeasured calls per side first")
    args = parser.parse_args()

    ctx = mp.get_context("spawn")
    stop, ready = ctx.Event(), ctx.Queue()
    upstream = ctx.Process(target=serve_upstream, args=(ready, stop), daemon=True)
    upstream.start()
    upstream_url = ready.get(timeout=60)
    gateway = ctx.Process(target=serve_gateway, args=(upstream_url, ready, stop), daemon=True)
    gateway.start()
    socket_path, token, echo_token = ready.get(timeout=60)

    unix_connection = load_runtime_client()
    host_port = upstream_url.split("//", 1)[1].split("/", 1)[0]
    host, port = host_port.split(":")

    def via_gateway() -> float:
        conn = unix_connection(socket_path, 30)
        return timed_call(conn, "/v1/chat/completions", {"Authorization": f"Bearer {token}"})

    def echo() -> float:
        conn = unix_connection(socket_path, 30)
        return timed_call(conn, "/v1/chat/completions", {"Authorization": f"Bearer {echo_token}"}, model="echo")

    def direct() -> float:
        conn = http.client.HTTPConnection(host, int(port), timeout=30)
        return timed_call(conn, "/v1/chat/completions", {"Authorization": "Bearer sk-direct"})

    try:
        for _ in range(args.warmup):
            via_gateway()
            direct()
            echo()
        through, straight, alone = [], [], []
        for i in range(args.calls):
            if i % 2:
                through.append(via_gateway())
                straight.append(direct())
            else:
                straight.append(direct())
                through.append(via_gateway())
            alone.append(echo())
    finally:
        stop.set()
        gateway.join(timeout=20)
        upstream.join(timeout=20)

    def ms(values: list[float], q: float) -> float:
        return statistics.quantiles(values, n=100)[int(q) - 1] * 1000 if q != 50 else statistics.median(values) * 1000

    g50, d50 = ms(through, 50), ms(straight, 50)
    print(f"model calls per side: {args.calls} (interleaved, after {args.warmup} warm-up calls)")
    print(f"direct to the fake upstream : median {d50:7.2f} ms   p90 {ms(straight, 90):7.2f} ms")
    print(f"through the model gateway   : median {g50:7.2f} ms   p90 {ms(through, 90):7.2f} ms")
    print(f"gateway overhead per call   : median {g50 - d50:7.2f} ms   ratio {g50 / d50:.2f}x")
    print(f"echo model (gateway alone)  : median {ms(alone, 50):7.2f} ms   p90 {ms(alone, 90):7.2f} ms")


if __name__ == "__main__":
    main()

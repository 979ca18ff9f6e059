"""Observability end to end (issue 7, SPEC §5): /metrics as promtool and a real Prometheus server see it,
the deploy/prometheus files, bounded series, and a control-plane log an operator can grep that never
carries a prompt, agent output or a secret."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI, closed_port_url, slow
from tests.support.server import ROOT, ServerProcess, free_port, wait_process_answers, wait_terminal, wait_until

DEPLOY = ROOT / "deploy" / "prometheus"
SPEC_METRICS = (
    # SPEC §5
    "agentfactory_agents_created_total",
    "agentfactory_agents_finished_total",
    "agentfactory_agents_running",
    "agentfactory_launch_duration_seconds",
    "agentfactory_reaper_expired_total",
    "agentfactory_log_lines_total",
    "agentfactory_log_bytes_total",
    "agentfactory_stream_clients",
    "agentfactory_http_requests_total",
    "agentfactory_http_request_duration_seconds",
    "agentfactory_quota_rejections_total",
    # issue 7, and what the alert rules read
    "agentfactory_agents_oom_killed_total",
    "agentfactory_log_bytes_dropped_total",
    "agentfactory_orphans_reaped_total",
    "agentfactory_gateway_tokens_total",
    "agentfactory_gateway_request_duration_seconds",
    "agentfactory_gateway_requests_total",
    "agentfactory_agents_finished_by_reason_total",
    "agentfactory_reaper_last_pass_timestamp_seconds",
)


def tool(name: str) -> str:
    path = shutil.which(name) or (f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None)
    if path is None:
        pytest.fail(
            f"{name} is missing: run `make setup` (Debian's prometheus package, AGENTFACTORY_WITH_TEST_TOOLS=1)"
        )
    return path


def run_echo_agent(client: httpx.Client, prompt: str = "metrics please", **extra: Any) -> dict[str, Any]:
    created = client.post("/agents", json={"model": "echo", "prompt": prompt, "ttl_seconds": 60, **extra})
    assert created.status_code == 201, created.text
    return wait_terminal(client, created.json()["id"], timeout=90)


def series_of(exposition: str) -> set[str]:
    """Every sample's name and labels in a text exposition (values dropped)."""
    return {line.rsplit(" ", 1)[0] for line in exposition.splitlines() if line and not line.startswith("#")}


# --- the files in deploy/prometheus ------------------------------------------------------------------


def test_deploy_prometheus_files_pass_promtool() -> None:
    promtool = tool("promtool")
    for args in (
        ["check", "config", str(DEPLOY / "prometheus.yml")],
        ["check", "rules", str(DEPLOY / "alerts.yml")],
        ["test", "rules", str(DEPLOY / "alerts_test.yml")],
    ):
        proc = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, check=False)
        assert proc.returncode == 0, f"promtool {' '.join(args)}:\n{proc.stdout}\n{proc.stderr}"


# --- /metrics ----------------------------------------------------------------------------------------


@pytest.mark.docker
def test_metrics_pass_promtool_check_metrics(server: ServerProcess) -> None:
    with server.client() as client:
        assert run_echo_agent(client)["status"] == "succeeded"
        exposition = httpx.get(server.url + "/metrics", timeout=10).text
    proc = subprocess.run(
        [tool("promtool"), "check", "metrics"],
        input=exposition,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert (proc.returncode, proc.stdout + proc.stderr) == (0, "")
    for name in SPEC_METRICS:
        assert f"# TYPE {name} " in exposition, f"{name} is not exported"
    # Failure series exist (at 0) before the first failure, so rate() and alerts see them from the start.
    for status in ("succeeded", "failed", "cancelled", "expired"):
        assert f'agentfactory_agents_finished_total{{status="{status}"}}' in exposition


@pytest.mark.docker
def test_series_stay_bounded_as_agents_come_and_go(server: ServerProcess) -> None:
    """No label carries an agent id, key or prompt: after a warm-up, more agents add no series."""
    with server.client() as client:
        for i in range(2):  # warm-up: every route and status code these calls produce
            agent = run_echo_agent(client, prompt=f"warm-up {i}")
            client.get(f"/agents/{agent['id']}/logs")
            client.get(f"/agents/{agent['id']}/result")
        before = series_of(httpx.get(server.url + "/metrics", timeout=10).text)
        ids = []
        for _ in range(5):
            prompt = f"bounded-{uuid.uuid4().hex}"
            agent = run_echo_agent(client, prompt=prompt)
            ids.append(agent["id"])
            client.get(f"/agents/{agent['id']}/logs")
            client.get(f"/agents/{agent['id']}/result")
        text = httpx.get(server.url + "/metrics", timeout=10).text
    after = series_of(text)
    assert after == before, f"new series: {sorted(after - before)}"
    assert not any(agent_id in text for agent_id in ids)
    assert "bounded-" not in text and "af_admin_" not in text


# --- a real Prometheus server ---------------------------------------------------------------------------


class Prometheus:
    """The Debian package's server on a loopback port, scraping one target every second."""

    def __init__(self, workdir: Path, target: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        workdir.mkdir(parents=True, exist_ok=True)
        self.config = workdir / "prometheus.yml"
        self.config.write_text(
            json.dumps(  # JSON is YAML: no quoting surprises
                {
                    "global": {"scrape_interval": "1s", "evaluation_interval": "1s", "scrape_timeout": "1s"},
                    "rule_files": [str(DEPLOY / "alerts.yml")],
                    "scrape_configs": [{"job_name": "agentfactory", "static_configs": [{"targets": [target]}]}],
                }
            )
        )
        self.storage = workdir / "data"
        self.log_path = workdir / "prometheus.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> Prometheus:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's life
        self.proc = subprocess.Popen(
            [tool("prometheus"), f"--config.file={self.config}", f"--storage.tsdb.path={self.storage}",
             f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn"],
            stdout=log, stderr=log,
        )  # fmt: skip
        wait_process_answers(self.proc, self.url + "/-/ready", self.log_path, timeout=60)
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)

    def query(self, expr: str) -> dict[str, float]:
        """An instant query; each result keyed by its labels (without job/instance)."""
        body = httpx.get(self.url + "/api/v1/query", params={"query": expr}, timeout=5).json()
        assert body["status"] == "success", body
        out: dict[str, float] = {}
        for item in body["data"]["result"]:
            labels = {k: v for k, v in item["metric"].items() if k not in ("__name__", "job", "instance")}
            out[",".join(f"{k}={v}" for k, v in sorted(labels.items()))] = float(item["value"][1])
        return out


@pytest.fixture
def hanging_upstream() -> Iterator[FakeOpenAI]:
    """An OpenAI-compatible upstream that answers only after 10 minutes (or when the test ends)."""
    with FakeOpenAI(slow(600)) as fake:
        yield fake


@pytest.mark.docker
def test_prometheus_scrapes_agent_outcomes(
    make_server: type[ServerProcess], hanging_upstream: FakeOpenAI, tmp_path: Path
) -> None:
    catalog = json.loads((ROOT / "catalog.json").read_text())
    catalog["models"] += [
        {"id": "unreachable", "provider": "openai", "base_url": closed_port_url(), "timeout_seconds": 5,
         "description": "an upstream nothing listens on"},
        {"id": "hanging", "provider": "openai", "base_url": hanging_upstream.base_url, "timeout_seconds": 600,
         "description": "an upstream that never answers in time"},
    ]  # fmt: skip
    catalog_path = tmp_path / "catalog.json"
    catalog_path.write_text(json.dumps(catalog))
    srv = make_server(catalog=catalog_path).start()
    prometheus = Prometheus(tmp_path / "prometheus", f"127.0.0.1:{srv.port}").start()
    try:
        wait_until(lambda: prometheus.query('up{job="agentfactory"}') == {"": 1.0}, timeout=30, what="target up")
        with srv.client() as client:
            requests = {
                "succeeded": {"model": "echo", "prompt": "this one succeeds", "ttl_seconds": 60},
                "failed": {"model": "unreachable", "prompt": "this one fails", "ttl_seconds": 60},
                "expired": {"model": "hanging", "prompt": "this one expires", "ttl_seconds": 2},
            }
            ids = {}
            for expected, body in requests.items():
                created = client.post("/agents", json=body)
                assert created.status_code == 201, created.text
                ids[expected] = created.json()["id"]
            outcomes = {expected: wait_terminal(client, aid, timeout=90) for expected, aid in ids.items()}
        for expected, agent in outcomes.items():
            assert agent["status"] == expected, agent

        # One snapshot, polled: under load a scrape can miss its 1 s timeout and mark series stale for a moment.
        want = {
            "agentfactory_agents_finished_total": {
                "status=succeeded": 1.0, "status=failed": 1.0, "status=expired": 1.0, "status=cancelled": 0.0,
            },
            "agentfactory_launch_duration_seconds_count": {"": 3.0},
            "agentfactory_reaper_expired_total": {"": 1.0},
            "agentfactory_agents_running": {"": 0.0},
            'agentfactory_agents_created_total{model=~"echo|unreachable|hanging"}': {
                "model=echo": 1.0, "model=unreachable": 1.0, "model=hanging": 1.0,
            },
        }  # fmt: skip

        seen: dict[str, dict[str, float]] = {}

        def snapshot_matches() -> bool:
            seen.update({expr: prometheus.query(expr) for expr in want})
            return seen == want

        try:
            wait_until(snapshot_matches, timeout=30, interval=0.5, what="Prometheus to answer")
        except AssertionError as exc:
            raise AssertionError(f"{exc}: wanted {want}, last answer {seen}") from None

        # The alert rules load and evaluate against the real series without errors.
        def rules_healthy() -> list[tuple[str, str]] | None:
            groups = httpx.get(prometheus.url + "/api/v1/rules", timeout=5).json()["data"]["groups"]
            rules = [(r["name"], r["health"]) for g in groups for r in g["rules"]]
            return rules if rules and all(health == "ok" for _, health in rules) else None

        wait_until(rules_healthy, timeout=30, interval=0.5, what="alert rules evaluated with health ok")
        firing = httpx.get(prometheus.url + "/api/v1/alerts", timeout=5).json()["data"]["alerts"]
        assert not [a for a in firing if a["labels"]["alertname"] == "AgentfactoryReaperNotRunning"], firing
    finally:
        prometheus.stop()


# --- the control plane's own log -----------------------------------------------------------------------


@pytest.mark.docker
def test_log_is_json_with_request_ids_and_never_carries_prompt_or_secret(server: ServerProcess) -> None:
    prompt = f"distinctive-prompt-{uuid.uuid4().hex}"
    secret = f"distinctive-secret-{uuid.uuid4().hex}"
    with server.client() as client:
        created = client.post(
            "/agents",
            json={"model": "echo", "prompt": prompt, "ttl_seconds": 60, "secrets": {"GH_TOKEN": secret},
                  "env": {"PLAIN": "value"}, "metadata": {"case": "log-hygiene"}},
        )  # fmt: skip
        assert created.status_code == 201, created.text
        request_id = created.headers["x-request-id"]
        agent = wait_terminal(client, created.json()["id"], timeout=90)
        assert agent["status"] == "succeeded", agent
        # Read the output every way a caller can, so that any leak on those paths would show.
        page = client.get(f"/agents/{agent['id']}/logs").json()
        assert any(prompt in line["text"] for line in page["lines"])
        client.get(f"/agents/{agent['id']}/result")
        client.get(f"/agents/{agent['id']}/stream", params={"tail": 10})
        client.get("/agents/ag_doesnotexist")  # an error path too

    def logged_finish() -> bool:
        return any(f'"agent_id": "{agent["id"]}"' in line and "agent_finished" in line for line in server.log_lines())

    wait_until(logged_finish, timeout=10, what="agent_finished in the server log")
    raw = server.log_path.read_text()
    assert prompt not in raw
    assert secret not in raw
    records = []
    for line in raw.splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            pytest.fail(f"a log line is not JSON: {line!r}")
    assert all(isinstance(r, dict) and {"event", "level", "timestamp"} <= r.keys() for r in records)
    requests = [r for r in records if r["event"] == "http_request"]
    assert requests and all(re.fullmatch(r"req_\w+", r.get("request_id", "")) for r in requests)
    # The id returned to the caller finds the request's lines, and those of what it caused.
    mine = [r for r in records if r.get("request_id") == request_id]
    assert {"http_request", "agent_created"} <= {r["event"] for r in mine}, mine
    lifecycle = {r["event"] for r in records if r.get("agent_id") == agent["id"]}
    assert {"agent_created", "agent_started", "agent_finished"} <= lifecycle, lifecycle

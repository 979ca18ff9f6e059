"""A real control-plane process on a loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
# Set by tests/conftest.py when AGENTFACTORY_TEST_DATABASE=postgres selects PostgreSQL: every
# ServerProcess then gets a fresh database on it instead of a SQLite file.
POSTGRES: Any = None


# For tests that open the SQLite file itself: skipped in the PostgreSQL pass.
sqlite_only = pytest.mark.skipif(
    os.environ.get("AGENTFACTORY_TEST_DATABASE") == "postgres", reason="reads the SQLite database file itself"
)


def database_url(sqlite_file: Path) -> str:
    """The database of one control plane under test: a fresh PostgreSQL database when the run
    selected PostgreSQL, else the SQLite file `sqlite_file`."""
    return str(POSTGRES.new_database()) if POSTGRES is not None else f"sqlite:///{sqlite_file}"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until(predicate: Any, *, timeout: float, interval: float = 0.05, what: str = "condition") -> Any:
    """Poll `predicate` until it returns a truthy value; fail after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def wait_process_answers(proc: subprocess.Popen[bytes], url: str, log_path: Path, *, timeout: float) -> None:
    """Wait until `url` answers 200, failing at once (with the log's tail) if the process exits."""

    def answers() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"{proc.args!r} exited with {proc.returncode}: {log_path.read_text()[-3000:]}")
        try:
            return httpx.get(url, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    wait_until(answers, timeout=timeout, what=url)


class ServerProcess:
    """`agentfactory serve` as a child process with its own DB, socket dir, port and instance label."""

    def __init__(self, workdir: Path, *, catalog: Path | None = None, env: dict[str, str] | None = None):
        self.workdir = workdir
        database = database_url(workdir / "agentfactory.db")
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.admin_key = "af_admin_" + uuid.uuid4().hex
        self.instance = "test-" + uuid.uuid4().hex[:8]
        self.log_path = workdir / "server.log"
        self.env = {
            **os.environ,
            "AGENTFACTORY_DATABASE_URL": database,
            "AGENTFACTORY_CATALOG": str(catalog or ROOT / "catalog.json"),
            "AGENTFACTORY_ADMIN_KEY": self.admin_key,
            "AGENTFACTORY_HOST": "127.0.0.1",
            "AGENTFACTORY_PORT": str(self.port),
            "AGENTFACTORY_GATEWAY_SOCKET_DIR": str(workdir / "gw"),
            "AGENTFACTORY_INSTANCE_ID": self.instance,
            "AGENTFACTORY_REAPER_INTERVAL_SECONDS": "1",
            **(env or {}),
        }
        if not self.env["AGENTFACTORY_DATABASE_URL"].startswith("sqlite"):
            # The blob store's default off SQLite is ./agentfactory-files, the repository's: keep it in
            # the work dir, where SQLite's default (<db>.files) puts it.
            self.env.setdefault("AGENTFACTORY_FILES_DIR", str(workdir / "agentfactory.db.files"))
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 90) -> ServerProcess:
        log = open(self.log_path, "ab")  # noqa: SIM115 - kept open for the child's life
        code = "from agentfactory.settings import Settings; from agentfactory.server import serve; serve(Settings())"
        self.proc = subprocess.Popen([sys.executable, "-c", code], env=self.env, stdout=log, stderr=log, cwd=ROOT)
        wait_process_answers(self.proc, self.url + "/health", self.log_path, timeout=timeout)
        return self

    def kill(self) -> None:
        """kill -9: no shutdown hooks run."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.kill()

    def client(self, key: str | None = None, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def log_lines(self) -> list[str]:
        return self.log_path.read_text(errors="replace").splitlines()

    def cleanup_containers(self) -> None:
        """Remove every container this instance labelled (tests leave nothing behind), on the
        engine the server runs agents on (its DOCKER_HOST)."""
        ids = self.containers()
        if ids:
            subprocess.run(["docker", "rm", "-f", *ids], capture_output=True, check=False, env=self._docker_env())

    def containers(self) -> list[str]:
        out = subprocess.run(
            ["docker", "ps", "-aq", "--filter", f"label=io.agentfactory.instance={self.instance}"],
            capture_output=True, text=True, check=False, env=self._docker_env(),
        ).stdout  # fmt: skip
        return out.split()

    def _docker_env(self) -> dict[str, str]:
        """The test's environment with the server's engine (its DOCKER_HOST), not the server's PATH: a
        test may give the server a PATH without docker (or iptables) on purpose."""
        env = {k: v for k, v in os.environ.items() if k != "DOCKER_HOST"}
        if "DOCKER_HOST" in self.env:
            env["DOCKER_HOST"] = self.env["DOCKER_HOST"]
        return env


def wait_terminal(client: httpx.Client, agent_id: str, timeout: float = 30) -> dict[str, Any]:
    terminal = {"succeeded", "failed", "cancelled", "expired"}

    def done() -> dict[str, Any] | None:
        body: dict[str, Any] = client.get(f"/agents/{agent_id}").json()
        return body if body["status"] in terminal else None

    result: dict[str, Any] = wait_until(done, timeout=timeout, interval=0.1, what=f"agent {agent_id} terminal")
    return result


def all_log_lines(client: httpx.Client, agent_id: str, limit: int = 5000) -> list[dict[str, Any]]:
    lines: list[dict[str, Any]] = []
    cursor = "0"
    while True:
        page = client.get(f"/agents/{agent_id}/logs", params={"cursor": cursor, "limit": limit}).json()
        lines.extend(page["lines"])
        if page["complete"] or not page["lines"]:
            return lines
        cursor = page["next_cursor"]

"""`agentfactory run --follow` end to end: the console script against a real server process and Docker.

The `sh` model (a fake OpenAI upstream) runs the prompt as one shell command inside the agent's container,
so a test decides exactly what the agent prints and how it ends.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import AGENTFACTORY
from tests.fakes.fake_openai import FakeOpenAI
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, prompt_as_shell, write_catalog
from tests.support.server import ServerProcess, wait_until

pytestmark = pytest.mark.docker


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[ServerProcess]:
    workdir = tmp_path_factory.mktemp("cli-e2e")
    with FakeOpenAI(prompt_as_shell()) as fake:
        down = {
            "id": "down",
            "provider": "openai",
            "base_url": "http://127.0.0.1:9/v1",
            "api_key_env": UPSTREAM_KEY_ENV,
        }
        catalog = write_catalog(workdir / "catalog.json", fake, extra_models=[down])
        srv = ServerProcess(workdir, catalog=catalog, env={UPSTREAM_KEY_ENV: UPSTREAM_KEY}).start()
        try:
            yield srv
        finally:
            srv.stop()
            srv.cleanup_containers()


def _env(server: ServerProcess, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFACTORY_")}
    return env | {"AGENTFACTORY_URL": server.url, "AGENTFACTORY_API_KEY": server.admin_key} | extra


def _run(server: ServerProcess, *args: str, timeout: float = 120, **env: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([AGENTFACTORY, *args], capture_output=True, text=True, timeout=timeout,
                          env=_env(server, **env), check=False)  # fmt: skip


def _numbered(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("n ")]


def test_thousand_lines_in_order_and_exit_0(server: ServerProcess) -> None:
    proc = _run(server, "run", "--model", "sh", "--tool", "shell", "--ttl", "2m", "--follow",
                'for i in $(seq 1 1000); do echo "n $i"; done')  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert _numbered(proc.stdout) == [f"n {i}" for i in range(1, 1001)]
    assert proc.stderr == ""  # not a terminal: nothing decorative


def test_failed_agent_exits_with_its_own_code(server: ServerProcess) -> None:
    proc = _run(server, "run", "--model", "down", "--follow", "anything")
    final = json.loads(_run(server, "ls", "--limit", "1", "--json").stdout)["items"][0]
    assert final["status"] == "failed" and final["exit_code"] not in (None, 0)
    assert proc.returncode == final["exit_code"]


def test_expired_agent_exits_124(server: ServerProcess) -> None:
    proc = _run(server, "run", "--model", "sh", "--tool", "shell", "--ttl", "3", "--follow", "echo started; sleep 60")
    assert proc.returncode == 124, proc.stderr
    assert "started" in proc.stdout


def test_ctrl_c_cancels_and_exits_130(server: ServerProcess) -> None:
    proc = subprocess.Popen(
        [AGENTFACTORY, "run", "--model", "sh", "--tool", "shell", "--follow", "echo started; sleep 60"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(server),
        # Ctrl-C's default disposition even when this run was started in a shell's background.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 60
        while "started" not in (proc.stdout.readline() or ""):
            assert time.monotonic() < deadline and proc.poll() is None
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130
    final = json.loads(_run(server, "ls", "--limit", "1", "--json").stdout)["items"][0]
    assert final["status"] == "cancelled"


def test_server_restart_while_following_loses_and_repeats_nothing(server: ServerProcess, tmp_path: Path) -> None:
    out_path = tmp_path / "out.txt"
    with out_path.open("w") as out:
        proc = subprocess.Popen(
            [AGENTFACTORY, "run", "--model", "sh", "--tool", "shell", "--ttl", "5m", "--follow",
             'for i in $(seq 1 400); do echo "n $i"; sleep 0.02; done'],
            stdout=out, stderr=subprocess.PIPE, text=True, env=_env(server),
        )  # fmt: skip
        try:
            wait_until(lambda: len(_numbered(out_path.read_text())) > 50, timeout=60, what="first lines")
            server.stop()
            time.sleep(1)
            server.start()
            try:
                _, err = proc.communicate(timeout=120)
            except subprocess.TimeoutExpired:
                agent = json.loads(_run(server, "ls", "--limit", "1", "--json").stdout)["items"][0]
                log = "\n".join(line for line in server.log_lines()[-200:] if "recover" in line or "error" in line)
                pytest.fail(f"the CLI did not finish; agent {agent['status']}; server errors:\n{log}")
        finally:
            proc.kill()
    assert proc.returncode == 0, err
    assert _numbered(out_path.read_text()) == [f"n {i}" for i in range(1, 401)]


def test_wrong_key_is_one_line(server: ServerProcess) -> None:
    proc = _run(server, "status", "ag_x", "--json", AGENTFACTORY_API_KEY="af_wrong")
    assert proc.returncode == 77 and proc.stdout == ""
    assert proc.stderr.startswith("error: E_AUTH: ") and proc.stderr.count("\n") == 1

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.standin import API_KEY, StandIn

AGENTFACTORY = str(Path(sys.executable).parent / "agentfactory")


@pytest.fixture
def standin() -> Iterator[StandIn]:
    server = StandIn()
    server.start()
    try:
        yield server
    finally:
        server.stop()


def cli_env(standin: StandIn, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFACTORY_")}
    # Each test starts many interpreters: let them share compiled bytecode, kept outside the repo.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPYCACHEPREFIX"] = str(Path(tempfile.gettempdir()) / "agentfactory-tests-pycache")
    return env | {"AGENTFACTORY_URL": standin.url, "AGENTFACTORY_API_KEY": API_KEY, "COLUMNS": "200"} | extra


def run_cli(
    standin: StandIn, *args: str, stdin: str | None = None, timeout: float = 30, **env: str
) -> subprocess.CompletedProcess[str]:
    """Runs the installed console script as a CI job would: a subprocess configured by env vars."""
    return subprocess.run(
        [AGENTFACTORY, *args], input=stdin, capture_output=True, text=True, timeout=timeout,
        env=cli_env(standin, **env), check=False,
    )  # fmt: skip

"""`pip install ./` in a fresh venv is the client alone (SPEC §15): no FastAPI, SQLAlchemy or docker-py,
yet docs/sdk.md's examples and the CLI work against a live server; the server commands name the extra.

Needs PyPI (the five light dependencies are fetched into the new venv) and the Docker Engine (the
server launches real agents)."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.clients.docs_examples import ROOT, python_blocks, run_block
from tests.support.server import ServerProcess

pytestmark = [pytest.mark.docker, pytest.mark.slow]
SERVER_PACKAGES = {"fastapi", "starlette", "uvicorn", "sqlalchemy", "alembic", "docker", "psycopg", "aiohttp",
                   "structlog", "prometheus-client", "sse-starlette", "pydantic-settings", "mcp"}  # fmt: skip


@pytest.fixture(scope="module")
def client_venv(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    venv = tmp_path_factory.mktemp("client-venv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "--no-input"]
    proc = subprocess.run([*pip, "install", "-q", str(ROOT)], capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    yield venv


def installed(venv: Path) -> set[str]:
    out = subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
                         capture_output=True, text=True, timeout=60, check=True).stdout  # fmt: skip
    return {p["name"].lower().replace("_", "-") for p in json.loads(out)}


def test_the_install_pulls_none_of_the_server(client_venv: Path) -> None:
    packages = installed(client_venv)
    assert {"agentfactory", "httpx", "pydantic", "typer", "rich"} <= packages
    assert not packages & SERVER_PACKAGES, sorted(packages & SERVER_PACKAGES)


@pytest.mark.parametrize("index", range(len(python_blocks(ROOT / "docs" / "sdk.md"))))
def test_the_sdk_examples_run_from_the_client_install(
    client_venv: Path, server: ServerProcess, tmp_path: Path, index: int
) -> None:
    block = python_blocks(ROOT / "docs" / "sdk.md")[index]
    python = str(client_venv / "bin" / "python")
    proc = run_block(python, block, url=server.url, api_key=server.admin_key, cwd=tmp_path)
    assert proc.returncode == 0, f"example {index + 1}:\n{block}\n{proc.stdout}\n{proc.stderr}"


def test_the_cli_works_and_serve_names_the_extra(client_venv: Path, server: ServerProcess, tmp_path: Path) -> None:
    cli = str(client_venv / "bin" / "agentfactory")
    env = {"PATH": "/usr/bin:/bin", "HOME": str(tmp_path), "AGENTFACTORY_URL": server.url,
           "AGENTFACTORY_API_KEY": server.admin_key}  # fmt: skip
    run = subprocess.run([cli, "run", "-m", "echo", "--follow", "hello from the light install"], env=env,
                         capture_output=True, text=True, timeout=120, check=False)  # fmt: skip
    assert run.returncode == 0 and "hello from the light install" in run.stdout, run.stderr
    serve = subprocess.run([cli, "serve"], env=env, capture_output=True, text=True, timeout=60, check=False)
    assert serve.returncode == 78
    assert "pip install 'agentfactory[server]'" in serve.stderr and "Traceback" not in serve.stderr

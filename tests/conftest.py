"""Shared fixtures: a real server process (per module) against the real Docker Engine.

Every test that needs the engine carries `pytest.mark.docker`, so `pytest -m "not docker"` runs on a
machine without one. A test that reaches `docker_engine` (itself or through `server`, `make_server`,
`shell_server`...) without the marker errors at once, engine or not (`pytest_runtest_setup` below);
tests/test_markers.py checks the tests that call docker-py or the docker CLI themselves.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess

ENGINE_FIXTURE = "docker_engine"


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Before any fixture runs: an unmarked test that needs the engine fails now, with the fix in the
    message, rather than being collected into `-m "not docker"` and failing (or waiting) on the engine."""
    if ENGINE_FIXTURE in getattr(item, "fixturenames", ()) and item.get_closest_marker("docker") is None:
        pytest.fail(
            f"{item.nodeid} needs the Docker Engine (through the {ENGINE_FIXTURE} fixture) but is not marked: "
            "add `pytestmark = pytest.mark.docker` to its module (or @pytest.mark.docker to the test)",
            pytrace=False,
        )


def _docker_answer() -> str | None:
    """None when the engine answers `docker version` within 30 s, else why not (never hangs)."""
    try:
        done = subprocess.run(["docker", "version"], capture_output=True, text=True, check=False, timeout=30)
    except FileNotFoundError:
        return "no `docker` CLI on PATH"
    except subprocess.TimeoutExpired:
        return "`docker version` did not answer within 30 s"
    return None if done.returncode == 0 else (done.stderr.strip().splitlines() or ["`docker version` failed"])[-1]


@pytest.fixture(scope="session")
def docker_engine() -> None:
    why = _docker_answer()
    if why is not None:
        host = os.environ.get("DOCKER_HOST", "the default socket")
        pytest.fail(f"no Docker Engine answers at {host} ({why}): run `make up` (scripts/setup.sh) first")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, docker_engine: None) -> Iterator[ServerProcess]:
    srv = ServerProcess(tmp_path_factory.mktemp("server")).start()
    try:
        yield srv
    finally:
        srv.stop()
        srv.cleanup_containers()


@pytest.fixture
def make_server(tmp_path: Path, docker_engine: None) -> Iterator[type[ServerProcess]]:
    """Build servers with custom catalogs/env inside a test; all are stopped afterwards."""
    made: list[ServerProcess] = []

    class Factory(ServerProcess):
        def __init__(self, **kwargs):  # type: ignore[no-untyped-def]
            workdir = kwargs.pop("workdir", None) or tmp_path / f"srv{len(made)}"
            workdir.mkdir(parents=True, exist_ok=True)
            super().__init__(workdir, **kwargs)
            made.append(self)

    yield Factory
    for srv in made:
        srv.stop()
        srv.cleanup_containers()

"""Shared fixtures: a real server process (per module) against the real Docker Engine."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.server import ServerProcess


def _docker_ok() -> bool:
    return subprocess.run(["docker", "version"], capture_output=True, check=False).returncode == 0


@pytest.fixture(scope="session")
def docker_engine() -> None:
    if not _docker_ok():
        pytest.fail("no Docker Engine answers: run `make up` (scripts/setup.sh) first")


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

"""Shared fixtures: a real server process (per module) against the real Docker Engine."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support import server as server_support
from tests.support.postgres import LocalPostgres
from tests.support.server import ServerProcess

# `AGENTFACTORY_TEST_DATABASE=postgres` runs every server under test on PostgreSQL (a cluster
# of the run's own, Debian's binaries); the default is a SQLite file per server.
DATABASE = os.environ.get("AGENTFACTORY_TEST_DATABASE", "sqlite")


@pytest.fixture(scope="session")
def postgres() -> Iterator[LocalPostgres]:
    """The run's PostgreSQL cluster (started once, whatever the database selection)."""
    if server_support.POSTGRES is not None:
        yield server_support.POSTGRES
        return
    pg = LocalPostgres().start()
    try:
        yield pg
    finally:
        pg.stop()


@pytest.fixture(scope="session", autouse=True)
def _database_selection(request: pytest.FixtureRequest) -> Iterator[None]:
    if DATABASE != "postgres":
        yield
        return
    server_support.POSTGRES = request.getfixturevalue("postgres")
    try:
        yield
    finally:
        server_support.POSTGRES = None


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

"""A real server whose `sh` model runs the prompt as a shell command inside the agent container."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, prompt_as_shell, write_catalog
from tests.support.server import ServerProcess
from tests.support.swarm_engine import PrivateSwarm


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(prompt_as_shell()) as fake:
        yield fake


@pytest.fixture(scope="module")
def shell_server(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI, docker_engine: None
) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("shell-server")
    catalog = write_catalog(work / "catalog.json", upstream)
    srv = ServerProcess(work, catalog=catalog, env={UPSTREAM_KEY_ENV: UPSTREAM_KEY}).start()
    try:
        yield srv
    finally:
        srv.stop()
        srv.cleanup_containers()


@pytest.fixture(scope="session")
def swarm(docker_engine: None) -> Iterator[PrivateSwarm]:
    """A private single-node Docker Swarm (tests/support/swarm_engine.py), shared by the swarm modules:
    its start, which loads the runtime image into it, is the costly part."""
    engine = PrivateSwarm().start()
    try:
        yield engine
    finally:
        engine.destroy()

"""The agents' bridge as the Docker backend makes it: no traffic between agents, and an old bridge
(made before that rule) replaced once nothing uses it."""

from __future__ import annotations

import secrets
from collections.abc import Iterator

import docker
import pytest

from agentfactory.backends.docker import ICC_OPTION, DockerBackend

pytestmark = pytest.mark.docker
IMAGE = "agentfactory-runtime:latest"


@pytest.fixture
def api(docker_engine: None) -> Iterator[docker.APIClient]:
    client = docker.APIClient(version="auto")
    yield client
    client.close()


@pytest.fixture
def name(api: docker.APIClient) -> Iterator[str]:
    net = f"af-test-net-{secrets.token_hex(4)}"
    yield net
    for n in api.networks(names=[net]):
        for cid in api.inspect_network(n["Id"]).get("Containers") or {}:
            api.remove_container(cid, force=True)
        api.remove_network(n["Id"])


def icc(api: docker.APIClient, name: str) -> str | None:
    (net,) = [n for n in api.networks(names=[name]) if n["Name"] == name]
    return (net.get("Options") or {}).get(ICC_OPTION)


def test_made_with_inter_container_traffic_off(api: docker.APIClient, name: str) -> None:
    backend = DockerBackend(instance="test", network_name=name)
    backend._ensure_network(api, name)
    backend._ensure_network(api, name)  # idempotent
    assert icc(api, name) == "false"


def test_an_old_bridge_is_replaced_when_unused_and_kept_while_in_use(api: docker.APIClient, name: str) -> None:
    backend = DockerBackend(instance="test", network_name=name)
    api.create_network(name, driver="bridge")
    cid = api.create_container(IMAGE, entrypoint=["sleep", "30"], host_config=api.create_host_config(network_mode=name))
    api.start(cid)
    try:
        backend._ensure_network(api, name)  # in use: kept as it is (a warning is logged)
        assert icc(api, name) is None
    finally:
        api.remove_container(cid, force=True)
    backend._ensure_network(api, name)
    assert icc(api, name) == "false"

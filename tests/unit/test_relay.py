"""The gateway's relay door and the node relay, in one process over loopback (no Docker): a connection
on the relay's Unix socket reaches the gateway's socket through TLS and the secret; anything that
comes to the door without them reaches nothing. The swarm test (tests/integration/test_swarm_relay.py)
runs the same relay as a global service."""

from __future__ import annotations

import asyncio
import contextlib
import socket
import ssl
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest
import structlog

from agentfactory.app import build_backend
from agentfactory.backends.base import AgentSpec
from agentfactory.backends.swarm_spec import build_service, relay_volume
from agentfactory.gateway.relay_door import RelayCredentials, RelayDoor, split_address
from agentfactory.observability.metrics import Metrics
from agentfactory.relay import GREETING, NodeRelay
from agentfactory.settings import Settings


async def echo_gateway(path: Path) -> asyncio.AbstractServer:
    """A stand-in for the gateway's socket: answers each line with `got <line>`."""

    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while line := await reader.readline():
            writer.write(b"got " + line)
            await writer.drain()
        writer.close()

    return await asyncio.start_unix_server(serve, path=str(path))


def counted(metrics: Metrics, outcome: str) -> float:
    return metrics.gateway_relay_connections.labels(outcome)._value.get()  # type: ignore[attr-defined,no-any-return]


Relayed = tuple[RelayDoor, NodeRelay, Metrics, RelayCredentials]


@contextlib.asynccontextmanager
async def relayed(tmp_path: Path) -> AsyncIterator[Relayed]:
    gateway = await echo_gateway(tmp_path / "gateway.sock")
    metrics = Metrics()
    door = RelayDoor(
        gateway_socket=tmp_path / "gateway.sock",
        listen="127.0.0.1:0",
        metrics=metrics,
        logger=structlog.get_logger("test"),
    )
    credentials = RelayCredentials.generate(["127.0.0.1"])
    await door.start(credentials)
    node = NodeRelay(
        socket_path=tmp_path / "node" / "gateway.sock",
        host="127.0.0.1",
        port=door.port,
        cert=credentials.cert_pem.decode(),
        secret=credentials.secret,
    )
    await node.start()
    try:
        yield door, node, metrics, credentials
    finally:
        await node.close()
        await door.stop()
        gateway.close()


async def ask(open_connection: Callable[[], object], line: bytes) -> bytes:
    reader, writer = await open_connection()  # type: ignore[misc]
    writer.write(line)
    await writer.drain()
    try:
        async with asyncio.timeout(10):
            return await reader.readline()  # type: ignore[no-any-return]
    except (ConnectionError, ssl.SSLError):
        return b""
    finally:
        writer.close()


def test_a_connection_on_the_relay_socket_reaches_the_gateway(tmp_path: Path) -> None:
    asyncio.run(a_connection_on_the_relay_socket_reaches_the_gateway(tmp_path))


async def a_connection_on_the_relay_socket_reaches_the_gateway(tmp_path: Path) -> None:
    async with relayed(tmp_path) as (_door, node, metrics, _):
        assert (node.socket_path.stat().st_mode & 0o777) == 0o666  # agents (uid 10001) may connect
        answers = await asyncio.gather(
            *(ask(lambda: asyncio.open_unix_connection(str(node.socket_path)), b"hello %d\n" % i) for i in range(5))
        )
        assert answers == [b"got hello %d\n" % i for i in range(5)]
        assert counted(metrics, "accepted") == 5 and counted(metrics, "refused") == 0


def test_the_door_serves_nothing_without_tls_and_the_secret(tmp_path: Path) -> None:
    asyncio.run(the_door_serves_nothing_without_tls_and_the_secret(tmp_path))


async def the_door_serves_nothing_without_tls_and_the_secret(tmp_path: Path) -> None:
    async with relayed(tmp_path) as (door, _, metrics, credentials):
        tls = ssl.create_default_context(cadata=credentials.cert_pem.decode())

        def dial(**kw: object) -> Callable[[], object]:
            return lambda: asyncio.open_connection("127.0.0.1", door.port, **kw)

        assert await ask(dial(), b"hello\n") == b""  # plain TCP: no TLS handshake, closed
        assert await ask(dial(ssl=tls, server_hostname="127.0.0.1"), b"hello\n") == b""  # TLS, no secret
        wrong = GREETING + b"x" * len(credentials.secret) + b"\n"
        assert await ask(dial(ssl=tls, server_hostname="127.0.0.1"), wrong + b"hello\n") == b""
        right = GREETING + credentials.secret + b"\n"
        assert await ask(dial(ssl=tls, server_hostname="127.0.0.1"), right + b"hello\n") == b"got hello\n"
        assert counted(metrics, "refused") == 2 and counted(metrics, "accepted") == 1


def test_a_relay_trusts_only_the_door_it_was_given(tmp_path: Path) -> None:
    asyncio.run(a_relay_trusts_only_the_door_it_was_given(tmp_path))


async def a_relay_trusts_only_the_door_it_was_given(tmp_path: Path) -> None:
    async with relayed(tmp_path) as (door, _, _, _):
        other = RelayCredentials.generate(["127.0.0.1"])  # an impostor's certificate: the relay refuses it
        node = NodeRelay(
            socket_path=tmp_path / "other" / "gateway.sock",
            host="127.0.0.1",
            port=door.port,
            cert=other.cert_pem.decode(),
            secret=other.secret,
        )
        await node.start()
        try:
            assert await ask(lambda: asyncio.open_unix_connection(str(node.socket_path)), b"hello\n") == b""
        finally:
            await node.close()


def test_the_door_closes_with_its_connections(tmp_path: Path) -> None:
    asyncio.run(the_door_closes(tmp_path))


async def the_door_closes(tmp_path: Path) -> None:
    metrics = Metrics()
    door = RelayDoor(
        gateway_socket=tmp_path / "none.sock", listen="127.0.0.1:0", metrics=metrics, logger=structlog.get_logger()
    )
    await door.start(RelayCredentials.generate(["127.0.0.1"]))
    port = door.port
    await door.stop()
    with pytest.raises(OSError), socket.create_connection(("127.0.0.1", port), timeout=5):
        pass


def test_agents_mount_their_nodes_relay_volume_when_the_relay_is_on() -> None:
    spec = AgentSpec(
        agent_id="ag_x", key_id="k", image="img", env={}, memory_mb=64, cpus=1, pids=64, scratch_mb=16,
        max_log_bytes=1 << 20, gateway_socket_dir=Path("/run/af/gw"), instance="i1",
    )  # fmt: skip
    mounts = {
        m["Target"]: m
        for m in build_service(spec, stop_grace_seconds=1, relay="i1")["TaskTemplate"]["ContainerSpec"]["Mounts"]
    }
    gateway = mounts["/run/agentfactory"]
    assert gateway["Type"] == "volume" and gateway["Source"] == relay_volume("i1") and gateway["ReadOnly"]
    assert gateway["VolumeOptions"]["NoCopy"]
    assert "/run/af/gw" not in str(mounts)  # the control plane's own socket directory is not mounted


@pytest.mark.parametrize("bad", ["8001", "host:", ":8001", "host:99999", "host:x", "host:-1"])
def test_addresses_are_host_and_port(bad: str) -> None:
    assert split_address("10.0.0.1:8001") == ("10.0.0.1", 8001) and split_address("[::1]:80") == ("::1", 80)
    with pytest.raises(ValueError, match="host:port"):
        split_address(bad)


def test_the_relay_is_refused_without_the_swarm_backend() -> None:
    settings = Settings(admin_key="af_admin_" + "x" * 32, swarm_relay=True, backend="docker")
    with pytest.raises(ValueError, match="AGENTFACTORY_SWARM_RELAY is for AGENTFACTORY_BACKEND=swarm"):
        build_backend(settings)

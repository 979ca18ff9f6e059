"""The gateway's door for the node relays (docs/swarm.md, `AGENTFACTORY_SWARM_RELAY`): a TCP listener
that only the relay service's tasks get through, each connection piped to the gateway's own Unix
socket, where it is one more connection like an agent's on this host (the guard's bounds, the token
checked, the provider key added by the gateway and never sent out).

- encrypted: TLS with a certificate generated at every start (`RelayCredentials`), handed to the
  relays as a swarm secret and pinned there (they trust nothing else);
- authenticated: a connection must open, inside TLS, with the relay secret (also generated at every
  start, also a swarm secret), else it is closed unserved: nothing reaches the gateway.

`GatewayRelay` is what the gateway seat starts and stops with the gateway: new credentials, this
door, then the relay service on the nodes (`RelayNodes`, the swarm backend's `swarm_relay`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import hmac
import ipaddress
import secrets
import ssl
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from structlog.typing import FilteringBoundLogger

from agentfactory.observability.metrics import Metrics
from agentfactory.relay import CHUNK, GREETING, splice

GREETING_SECONDS = 5.0  # TLS handshake and greeting, each
CERT_DAYS = 365  # new credentials at every start: long enough for any one run


@dataclass(frozen=True)
class RelayCredentials:
    secret: bytes
    cert_pem: bytes
    key_pem: bytes

    @classmethod
    def generate(cls, names: list[str]) -> RelayCredentials:
        """A new secret, and a self-signed certificate (P-256) for `names` (addresses or host names
        the relays dial). `cryptography` comes with the server extra (through mcp's pyjwt[crypto])."""
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        key = ec.generate_private_key(ec.SECP256R1())
        alt: list[x509.GeneralName] = []
        for name in dict.fromkeys(names):
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(name)))
            except ValueError:
                alt.append(x509.DNSName(name))
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "agentfactory gateway relay door")])
        now = datetime.datetime.now(datetime.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CERT_DAYS))
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .sign(key, hashes.SHA256())
        )
        return cls(
            secret=secrets.token_urlsafe(32).encode(),
            cert_pem=cert.public_bytes(serialization.Encoding.PEM),
            key_pem=key.private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            ),
        )

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        with tempfile.TemporaryDirectory(prefix="af-relay-") as tmp:  # 0700; the key never stays on disk
            cert, key = Path(tmp, "cert.pem"), Path(tmp, "key.pem")
            cert.write_bytes(self.cert_pem)
            key.touch(0o600)
            key.write_bytes(self.key_pem)
            ctx.load_cert_chain(cert, key)
        return ctx


def split_address(address: str) -> tuple[str, int]:
    """`host:port` (`[v6]:port`) as (host, port); ValueError saying what is wrong."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"{address!r} is not host:port")
    return host.strip("[]"), int(port)


class RelayDoor:
    """The TLS listener; `start` binds it, `stop` closes it and every connection through it."""

    def __init__(
        self,
        *,
        gateway_socket: Path,
        listen: str,
        metrics: Metrics,
        logger: FilteringBoundLogger,
    ) -> None:
        self.gateway_socket = gateway_socket
        self.listen = listen
        self._metrics = metrics
        self._log = logger
        self._expected = b""
        self._server: asyncio.AbstractServer | None = None
        self._open: set[asyncio.Task[None]] = set()
        self._last_refusal_log = 0.0
        self.port = 0  # the port bound (the listen port, or the kernel's pick for port 0)

    async def start(self, credentials: RelayCredentials) -> None:
        host, port = split_address(self.listen)
        self._expected = GREETING + credentials.secret + b"\n"
        self._server = await asyncio.start_server(
            self._handle,
            host,
            port,
            ssl=credentials.server_context(),
            ssl_handshake_timeout=GREETING_SECONDS,
            limit=CHUNK,
        )
        self.port = self._server.sockets[0].getsockname()[1]
        self._log.info("gateway_relay_door_open", listen=f"{host}:{self.port}")

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._open):
            task.cancel()
        if self._open:
            await asyncio.wait(self._open, timeout=5)
        await server.wait_closed()
        self._log.info("gateway_relay_door_closed", listen=self.listen)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._open.add(task)
        try:
            await self._serve(reader, writer)
        except asyncio.CancelledError:
            writer.close()
        finally:
            self._open.discard(task)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        want = self._expected
        try:
            async with asyncio.timeout(GREETING_SECONDS):
                greeting = await reader.readuntil(b"\n")  # the first line: anything else is refused at once
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ssl.SSLError):
            greeting = b""
        if not hmac.compare_digest(greeting, want):
            self._refused(writer)
            return
        try:
            gateway = await asyncio.open_unix_connection(str(self.gateway_socket), limit=CHUNK)
        except OSError as exc:
            self._log.warning("gateway_relay_no_gateway", socket=str(self.gateway_socket), error=repr(exc))
            writer.close()
            return
        self._metrics.gateway_relay_connections.labels("accepted").inc()
        await splice((reader, writer), gateway)

    def _refused(self, writer: asyncio.StreamWriter) -> None:
        self._metrics.gateway_relay_connections.labels("refused").inc()
        now = asyncio.get_running_loop().time()
        if now - self._last_refusal_log >= 1.0:  # one line a second says it, whatever the rate
            self._last_refusal_log = now
            peer = writer.get_extra_info("peername")
            self._log.warning("gateway_relay_refused", peer=str(peer), reason="no relay secret")
        writer.close()


class RelayNodes(Protocol):
    """The relay's tasks on the nodes (the swarm backend's `SwarmRelayService`)."""

    async def host(self) -> str:
        """The address the nodes reach the control plane on (the manager's swarm address)."""
        ...

    async def start(self, *, connect: str, cert_pem: bytes, secret: bytes) -> None: ...

    async def stop(self) -> None: ...


class GatewayRelay:
    """The door and the nodes' relay together: started after the gateway, stopped before it."""

    def __init__(self, door: RelayDoor, nodes: RelayNodes, *, address: str | None) -> None:
        self.door = door
        self.nodes = nodes
        self.address = address  # host:port the relays dial; default the manager's swarm address

    async def start(self) -> None:
        host = split_address(self.address)[0] if self.address else await self.nodes.host()
        credentials = RelayCredentials.generate([host])
        await self.door.start(credentials)
        connect = self.address or (f"[{host}]:{self.door.port}" if ":" in host else f"{host}:{self.door.port}")
        try:
            await self.nodes.start(connect=connect, cert_pem=credentials.cert_pem, secret=credentials.secret)
        except BaseException:
            await self.door.stop()
            raise

    async def stop(self) -> None:
        try:
            await self.nodes.stop()
        finally:
            with contextlib.suppress(Exception):
                await self.door.stop()

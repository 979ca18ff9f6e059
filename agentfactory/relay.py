"""The node-local relay of the model gateway (docs/swarm.md, `AGENTFACTORY_SWARM_RELAY`): the process
of the control plane's global swarm service, one task per node.

It listens on a Unix socket (`AF_RELAY_SOCKET`, in a node-local volume that the node's agents mount
read-only where they expect the gateway) and pipes each connection to the control plane's relay door
(`AF_RELAY_CONNECT`, host:port) over TLS, checking the door's certificate against the one the control
plane gave it (`AF_RELAY_CERT`, a swarm secret: pinned, nothing else trusted), and opening each
connection with the relay secret (`AF_RELAY_SECRET`, a swarm secret). It adds nothing to what goes
through: agents' tokens are checked by the gateway as on one host, and it never sees a provider key.

Standard library only, no agentfactory import: it runs as `python3 <this file>` in the runtime image,
its source handed over as a swarm config, so the relay on every node is the control plane's own version.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import ssl
import sys
from pathlib import Path

GREETING = b"AFRELAY1 "  # then the secret and a newline: the first bytes inside the TLS stream
CHUNK = 64 * 1024
CONNECT_SECONDS = 10.0


def client_context(cert: str) -> ssl.SSLContext:
    """TLS that trusts the control plane's certificate alone (and checks the name the relay dials)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(cadata=cert)
    return ctx


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Copy until end of stream, then pass the end on: a half-close where the transport has one (a Unix
    socket), else a close (TLS here has no half-close: an HTTP/1.1 client never half-closes, and a
    connection its agent left must not hold one of the gateway's connections until its idle timeout)."""
    try:
        while data := await reader.read(CHUNK):
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            writer.write_eof()
        else:
            writer.close()
    except (ConnectionError, OSError, ssl.SSLError):
        writer.close()


async def splice(
    a: tuple[asyncio.StreamReader, asyncio.StreamWriter], b: tuple[asyncio.StreamReader, asyncio.StreamWriter]
) -> None:
    """Both directions until both ended (or one broke), then both closed."""
    try:
        await asyncio.gather(pipe(a[0], b[1]), pipe(b[0], a[1]))
    finally:
        for _, writer in (a, b):
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


class NodeRelay:
    def __init__(self, *, socket_path: Path, host: str, port: int, cert: str, secret: bytes) -> None:
        self.socket_path = socket_path
        self.host, self.port = host, port
        self.context = client_context(cert)
        self.secret = secret
        self.server: asyncio.AbstractServer | None = None

    async def start(self) -> None:
        self.socket_path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()  # a stale socket of an earlier task on this node
        self.server = await asyncio.start_unix_server(self.handle, path=str(self.socket_path), limit=CHUNK)
        os.chmod(self.socket_path, 0o666)  # agents run as uid 10001; the directory is read-only to them

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with asyncio.timeout(CONNECT_SECONDS):
                up_reader, up_writer = await asyncio.open_connection(
                    self.host, self.port, ssl=self.context, server_hostname=self.host, limit=CHUNK
                )
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            print(f"relay: cannot reach the control plane at {self.host}:{self.port}: {exc!r}", flush=True)
            writer.close()
            return
        up_writer.write(GREETING + self.secret + b"\n")
        await splice((reader, writer), (up_reader, up_writer))

    async def close(self) -> None:
        """Stop listening. The socket file stays: a relay of the next start may have bound the path
        already (a new service's task can start before the old one stops), and it removes a stale one."""
        if self.server is not None:
            self.server.close()


async def main() -> int:
    env = os.environ
    host, _, port = env["AF_RELAY_CONNECT"].rpartition(":")
    relay = NodeRelay(
        socket_path=Path(env["AF_RELAY_SOCKET"]),
        host=host.strip("[]"),
        port=int(port),
        cert=Path(env["AF_RELAY_CERT"]).read_text(),
        secret=Path(env["AF_RELAY_SECRET"]).read_bytes().strip(),
    )
    await relay.start()
    print(f"relay: {relay.socket_path} -> {host}:{port}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    await relay.close()
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))

"""The output of a Docker container as the log pump reads it (`OutputSource` of base.py): the attach
stream of a launch, or `docker logs --follow` from the start after a restart; both demultiplex
Docker's 8-byte frame headers into (stream, bytes) chunks."""

from __future__ import annotations

import contextlib
import select
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors

from agentfactory.backends.base import STDERR, STDOUT

# How long the end of an output stream waits for the container's exit to be confirmed: the stream
# of a container that exits closes a moment before the engine records the exit.
ENDED_WAIT_SECONDS = 3


def exit_confirmed(api: docker.APIClient, container_id: str) -> Callable[[], bool]:
    """`OutputSource.ended` of one container: its exit confirmed by the engine. False when the
    engine does not answer (it went away: the stream was cut) or the container still runs (the
    engine restarted with live-restore and dropped our stream)."""

    def ended() -> bool:
        try:
            api.wait(container_id, timeout=ENDED_WAIT_SECONDS)
            return True
        except docker.errors.NotFound:
            return True  # removed: its output is over (the watcher finds it missing)
        except Exception:
            return False

    return ended


class AttachOutput:
    """Docker's multiplexed attach stream (8-byte frame headers), read in large chunks.

    Consecutive frames of one stream are merged before they are handed on: a flood of one-line
    writes costs one Python object per socket read, not one per line.
    """

    def __init__(self, sock: socket.socket, ended: Callable[[], bool]):
        self._sock = sock
        self._closed = threading.Event()
        self.ended = ended

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        buf = bytearray()
        while True:
            try:
                data = self._sock.recv(1 << 18)
            except OSError:
                if self._closed.is_set():
                    return
                raise
            if not data:
                return
            buf += data
            pos, n = 0, len(buf)
            merged: list[tuple[int, bytearray]] = []
            while n - pos >= 8:
                size = int.from_bytes(buf[pos + 4 : pos + 8], "big")
                if n - pos - 8 < size:
                    break
                stream = STDERR if buf[pos] == 2 else STDOUT
                payload = buf[pos + 8 : pos + 8 + size]
                if merged and merged[-1][0] == stream:
                    merged[-1][1].extend(payload)
                else:
                    merged.append((stream, bytearray(payload)))
                pos += 8 + size
            del buf[:pos]
            for stream, payload in merged:
                yield stream, bytes(payload)

    def send(self, data: bytes) -> None:
        """Write to the container's stdin (a warm sandbox's assignment, SPEC §10)."""
        self._sock.sendall(data)

    def quiet(self) -> bool:
        """Nothing to read, and not at its end: what a warm sandbox's stream is before its claim
        (its runtime prints nothing). Not so once its container exited or the engine cut it."""
        readable, _, _ = select.select([self._sock], [], [], 0)
        return not readable

    def close(self) -> None:
        self._closed.set()
        with contextlib.suppress(OSError):
            self._sock.shutdown(socket.SHUT_RDWR)
        self._sock.close()


class LogsOutput:
    """`docker logs --follow` of a container from its start, demultiplexed frame by frame
    (restart recovery). docker-py's own `logs()` drops which stream a frame came from."""

    def __init__(self, response: Any, ended: Callable[[], bool]):
        self._response = response
        self.ended = ended

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        raw = self._response.raw
        while True:
            header = raw.read(8)
            if len(header) < 8:
                return
            size = int.from_bytes(header[4:8], "big")
            payload = raw.read(size) if size else b""
            if size and not payload:
                return
            yield (STDERR if header[0] == 2 else STDOUT), payload

    def close(self) -> None:
        self._response.close()

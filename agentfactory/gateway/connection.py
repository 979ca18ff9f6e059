"""One connection on the gateway's socket, as its guard (`guard.py`) sees it: the protocol that holds
its reads until the guard grants them and screens its first request head, the guard's bookkeeping
of it, and the canned refusals written to it without an HTTP parser ever being built."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from agentfactory.gateway.guard import ConnectionGuard

MAX_HEAD_BYTES = 16 * 1024
# Gateway tokens are 43 characters; anything much longer is not one (and is not hashed).
MAX_TOKEN_CHARS = 256


def canned(status: str, code: str, message: str, retry_after: str | None = "1") -> bytes:
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    retry = f"Retry-After: {retry_after}\r\n" if retry_after else ""
    head = (
        f"HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
        f"{retry}Connection: close\r\n\r\n"
    )
    return head.encode() + body


FULL = canned("503 Service Unavailable", "E_CAPACITY", "the model gateway has too many open connections; retry")


class ConnState:
    __slots__ = ("digest", "opened", "protocol", "screened", "slot", "transport")

    def __init__(self, protocol: TrackedConnection, opened: float) -> None:
        self.protocol = protocol
        self.opened = opened
        self.transport: asyncio.Transport | None = None
        self.digest: str | None = None
        self.screened = False  # its first request passed the screen; the handler need not check again
        self.slot = False  # ... and holds one of its token's calls in flight, for the handler to take


@dataclass(frozen=True)
class Refusal:
    status: int
    code: str
    message: str
    retry_after: str | None = None

    def canned(self) -> bytes:
        return canned(f"{self.status} {HTTPStatus(self.status).phrase}", self.code, self.message, self.retry_after)


class TrackedConnection(asyncio.Protocol):
    """One connection: tells the guard when it opens and closes, feeds what it reads to the HTTP
    parser only when the guard grants a read this turn (else holds it, reading paused), and builds
    aiohttp's protocol only once its first request head passed the guard's screen."""

    def __init__(self, guard: ConnectionGuard, factory: Callable[[], asyncio.Protocol]) -> None:
        self._guard = guard
        self._factory = factory
        self._inner: asyncio.Protocol | None = None
        self._transport: asyncio.Transport | None = None
        self._held: list[bytes] = []
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)
        self._guard.opened(self, transport)

    def data_received(self, data: bytes) -> None:
        if self._held or not self._guard.may_read(self):
            self._held.append(data)
            if len(self._held) == 1 and self._transport is not None:
                self._transport.pause_reading()
            return
        self._feed(data)

    def _feed(self, data: bytes) -> None:
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._inner is None:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0 and len(self._head) <= MAX_HEAD_BYTES:
                return  # the head is not complete yet
            if end >= 0:
                refusal = self._guard.screen(self, self._head[:end])
                if refusal is not None:
                    self._head = b""
                    transport.write(refusal)
                    transport.close()
                    return
            data, self._head = self._head, b""
            self._inner = self._factory()
            self._inner.connection_made(transport)
        self._inner.data_received(data)

    def release(self) -> None:
        """Feed what was held (the guard granted this turn) and read on, unless aiohttp paused reading."""
        held, self._held = self._held, []
        for data in held:
            self._feed(data)
        transport = self._transport
        # aiohttp pauses reading itself while a request body waits unread (its flow control).
        paused_by_parser = getattr(self._inner, "_reading_paused", False)
        if transport is not None and not transport.is_closing() and not paused_by_parser:
            transport.resume_reading()

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._inner is not None else None

    def pause_writing(self) -> None:
        if self._inner is not None:
            self._inner.pause_writing()

    def resume_writing(self) -> None:
        if self._inner is not None:
            self._inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        self._held = []
        self._guard.closed(self)
        inner, self._inner, self._transport = self._inner, None, None
        if inner is not None:
            inner.connection_lost(exc)
        # No cycle left through this protocol: a flood's connections are freed by reference counting
        # as they close, not by the cyclic GC's long collections.


def parse_head(head: bytes) -> tuple[bytes, bytes, int | None, bytes | None]:
    """(method, path, Content-Length, bearer token) of a request head; what cannot be read is None."""
    lines = head.split(b"\r\n")
    parts = lines[0].split(b" ")
    method = parts[0] if parts else b""
    path = parts[1].split(b"?", 1)[0] if len(parts) > 1 else b""
    length: int | None = None
    token: bytes | None = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            value = value.strip()
            length = int(value) if value.isdigit() and len(value) < 20 else None
        elif name == b"authorization":
            scheme, _, credential = value.strip().partition(b" ")
            credential = credential.strip()
            if scheme.lower() == b"bearer" and 0 < len(credential) <= MAX_TOKEN_CHARS:
                token = credential
    return method, path, length, token

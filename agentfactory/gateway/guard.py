"""The gateway's own accept loop: it bounds the connections agents may hold on the shared socket.

Over a Unix socket every agent looks the same until a request's head names its token, so:
- at most `max_connections` are open, all agents together. Past it, the oldest connection that has
  not yet sent a request is closed to make room (a flood of idle connections only evicts itself:
  an honest agent sends its request as soon as it connects); if every open connection carries a
  request, the new one gets a canned 503 and is closed, without an HTTP parser ever being built;
- a connection that sends no complete request within `header_timeout_seconds` is closed;
- a connection's first request head is screened here, before any HTTP machinery is built for it:
  a body over the cap (by its Content-Length), or a token past its connections, calls in flight or
  calls per second, gets a canned refusal and the connection is closed. A flood costs the gateway
  a few microseconds a request; the requests that pass carry their admission to the handler, and
  later requests on a kept-alive connection are checked there (`admit`), with the same rules;
- at most ACCEPTS_PER_TICK connections are accepted, and READS_PER_TICK reads parsed, per turn of
  the event loop (connections past that wait their turn, in order, with reading paused): a storm of
  connections or bodies is served in slices between the API's requests, never in one long stall.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import hashlib
import math
import os
import socket
from collections import OrderedDict, deque
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any, cast

from structlog.typing import FilteringBoundLogger

from agentfactory.gateway.connection import FULL, ConnState, Refusal, TrackedConnection, parse_head
from agentfactory.gateway.limits import GatewayLimits, TokenState
from agentfactory.observability.metrics import Metrics

ACCEPTS_PER_TICK = 8
CALL_PATHS = (b"/v1/chat/completions", b"/chat/completions")
# New agents' first requests come at most this fast; made-up tokens past it are refused unlooked-up.
UNKNOWN_TOKENS_PER_SECOND = 50.0
UNKNOWN_TOKENS_BURST = 100
# Refusals screened before the token names an agent have no model to label them with.
UNKNOWN_MODEL = "unknown"
# Reads handed to the HTTP parser per turn, all connections together: twice the accepts, so the
# queue of connections waiting for a read drains faster than a storm can fill it.
READS_PER_TICK = 16
LISTEN_BACKLOG = 1024
# When the process runs out of file descriptors, accepting pauses this long (as asyncio does).
ACCEPT_RETRY_SECONDS = 1.0
SWEEP_SECONDS = 1.0


class ConnectionGuard:
    """Listens on the gateway's socket and owns the bookkeeping of every connection and token."""

    def __init__(
        self,
        *,
        limits: GatewayLimits,
        protocol_factory: Callable[[], asyncio.Protocol],
        metrics: Metrics,
        logger: FilteringBoundLogger,
    ) -> None:
        self.limits = limits
        self._factory = protocol_factory
        self._metrics = metrics
        self._log = logger
        self._listener: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._open: dict[TrackedConnection, ConnState] = {}
        self._anonymous: OrderedDict[TrackedConnection, ConnState] = OrderedDict()
        self._tokens: dict[str, TokenState] = {}
        self._quiet = TokenState(limits.call_burst_per_agent, 0.0)  # logs refusals that name no token
        # Lookups of tokens the gateway has not seen yet, all together (see `screen`).
        self._lookup_limits = replace(limits, calls_per_second_per_agent=UNKNOWN_TOKENS_PER_SECOND,
                                      call_burst_per_agent=UNKNOWN_TOKENS_BURST)  # fmt: skip
        self._lookups = TokenState(UNKNOWN_TOKENS_BURST, 0.0)
        self._waiting: deque[TrackedConnection] = deque()
        self._reads_left = READS_PER_TICK
        self._tick_due = False
        self._sweeper: asyncio.TimerHandle | None = None
        self._paused: asyncio.TimerHandle | None = None
        self.max_connections = limits.max_connections

    # -- listening ---------------------------------------------------------------------------------

    def listen(self, path: Path) -> None:
        self._loop = asyncio.get_running_loop()
        self.max_connections = _fit_to_fd_limit(self.limits.max_connections, self._log)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(str(path))
            os.chmod(path, 0o666)
            sock.listen(LISTEN_BACKLOG)
            sock.setblocking(False)
        except BaseException:
            sock.close()
            raise
        self._listener = sock
        self._loop.add_reader(sock.fileno(), self._accept)
        self._sweeper = self._loop.call_later(SWEEP_SECONDS, self._sweep)

    def close(self) -> None:
        """Stop listening and close every connection. Safe to call twice."""
        for handle in (self._sweeper, self._paused):
            if handle is not None:
                handle.cancel()
        self._sweeper = self._paused = None
        listener, self._listener = self._listener, None
        if listener is not None and self._loop is not None:
            self._loop.remove_reader(listener.fileno())
            listener.close()
        for conn in list(self._open.values()):
            if conn.transport is not None:
                conn.transport.abort()

    @property
    def open_connections(self) -> int:
        return len(self._open)

    def _accept(self) -> None:
        assert self._listener is not None and self._loop is not None
        for _ in range(ACCEPTS_PER_TICK):
            try:
                sock, _ = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._log.warning("gateway_accept_out_of_resources", error=exc.strerror)
                    self._loop.remove_reader(self._listener.fileno())
                    self._paused = self._loop.call_later(ACCEPT_RETRY_SECONDS, self._resume_accepting)
                    return
                raise
            if len(self._open) >= self.max_connections and not self._evict_one():
                self._refuse(sock)
                continue
            sock.setblocking(False)
            protocol = TrackedConnection(self, self._factory)
            conn = ConnState(protocol, self._loop.time())
            self._open[protocol] = conn
            self._anonymous[protocol] = conn
            self._loop.create_task(self._connect(sock, protocol))

    async def _connect(self, sock: socket.socket, protocol: TrackedConnection) -> None:
        assert self._loop is not None
        try:
            await self._loop.connect_accepted_socket(lambda: protocol, sock)
        except OSError:
            self._forget(protocol)
            sock.close()

    def _resume_accepting(self) -> None:
        self._paused = None
        if self._listener is not None and self._loop is not None:
            self._loop.add_reader(self._listener.fileno(), self._accept)

    def _refuse(self, sock: socket.socket) -> None:
        self._metrics.gateway_connections_refused.inc()
        with contextlib.suppress(OSError):
            sock.setblocking(False)
            sock.send(FULL)
            # Closing a Unix socket with unread data resets the peer before it reads the answer:
            # take what request it already sent (a little, no more).
            for _ in range(4):
                if not sock.recv(65536):
                    break
        sock.close()

    def _evict_one(self) -> bool:
        """Close the oldest connection that has not sent a request; False if there is none."""
        if not self._anonymous:
            return False
        protocol, conn = self._anonymous.popitem(last=False)
        self._forget(protocol)
        self._metrics.gateway_connections_refused.inc()
        if conn.transport is not None:
            conn.transport.abort()
        return True

    # -- bookkeeping -------------------------------------------------------------------------------

    def opened(self, protocol: TrackedConnection, base: asyncio.BaseTransport) -> None:
        # uvloop's transports are not subclasses of asyncio's: a cast, not an isinstance check.
        transport = cast(asyncio.Transport, base)
        conn = self._open.get(protocol)
        if conn is None:  # evicted before its transport existed
            transport.abort()
            return
        conn.transport = transport

    def closed(self, protocol: TrackedConnection) -> None:
        self._forget(protocol)

    def may_read(self, protocol: TrackedConnection) -> bool:
        """Grant a read now, or queue the connection for a later turn (False)."""
        self._schedule_tick()
        if self._reads_left > 0 and not self._waiting:
            self._reads_left -= 1
            return True
        self._waiting.append(protocol)
        return False

    def _schedule_tick(self) -> None:
        if not self._tick_due and self._loop is not None:
            self._tick_due = True
            self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        """A new turn: a new allowance of reads, first to the connections waiting, in order."""
        self._tick_due = False
        self._reads_left = READS_PER_TICK
        while self._waiting and self._reads_left > 0:
            protocol = self._waiting.popleft()
            if protocol in self._open:
                self._reads_left -= 1
                protocol.release()
        if self._waiting:
            self._schedule_tick()

    def _forget(self, protocol: TrackedConnection) -> None:
        conn = self._open.pop(protocol, None)
        self._anonymous.pop(protocol, None)
        if conn is not None and conn.digest is not None:
            state = self._tokens.get(conn.digest)
            if state is not None:
                state.connections -= 1
                if conn.slot:  # screened, then closed before its handler took the call's slot
                    state.in_flight -= 1
                    conn.slot = False

    def state(self, digest: str) -> TokenState:
        state = self._tokens.get(digest)
        if state is None:
            assert self._loop is not None
            state = self._tokens[digest] = TokenState(self.limits.call_burst_per_agent, self._loop.time())
        return state

    def _attribute(self, conn: ConnState, digest: str) -> TokenState:
        """Count the connection against the token its request names."""
        state = self.state(digest)
        if conn.digest != digest:
            self._anonymous.pop(conn.protocol, None)
            if conn.digest is not None:
                self.state(conn.digest).connections -= 1
            conn.digest = digest
            state.connections += 1
        return state

    def check(self, conn: ConnState | None, digest: str, *, call: bool) -> Refusal | None:
        """The per-token limits for one request; `call`: a model call (counts against calls in flight)."""
        limits = self.limits
        state = self._attribute(conn, digest) if conn is not None else self.state(digest)
        if state.connections > limits.max_connections_per_agent:
            return Refusal(
                429,
                "E_RATE_LIMIT",
                f"this agent holds more than {limits.max_connections_per_agent} connections to the gateway",
                "1",
            )
        if call and state.in_flight >= limits.max_concurrent_calls_per_agent:
            return Refusal(
                429,
                "E_RATE_LIMIT",
                f"this agent already has {state.in_flight} model calls in flight "
                f"(at most {limits.max_concurrent_calls_per_agent})",
                "1",
            )
        assert self._loop is not None
        wait = state.take(limits, self._loop.time())
        if wait:
            return Refusal(
                429,
                "E_RATE_LIMIT",
                f"this agent is over {limits.calls_per_second_per_agent:g} gateway requests per second",
                str(math.ceil(wait)),
            )
        return None

    def admit(self, transport: Any, digest: str, *, call: bool) -> tuple[TokenState, bool, Refusal | None]:
        """For the handler: (token state, whether the request already holds a call slot, refusal).

        A connection's first request was checked by the screen; later ones are checked here."""
        protocol = transport.get_protocol() if transport is not None else None
        conn = self._open.get(protocol) if isinstance(protocol, TrackedConnection) else None
        if conn is not None and conn.screened and conn.digest == digest:
            conn.screened = False
            slot, conn.slot = conn.slot, False
            return self.state(digest), slot, None
        return self.state(digest), False, self.check(conn, digest, call=call)

    def screen(self, protocol: TrackedConnection, head: bytes) -> bytes | None:
        """A connection's first request head: a canned refusal, or None to hand it to aiohttp."""
        conn = self._open.get(protocol)
        if conn is None:
            return None
        method, path, length, token = parse_head(head)
        if length is not None and length > self.limits.max_body_bytes:
            too_large = Refusal(
                413,
                "E_TOO_LARGE",
                f"request body of {length} bytes is over the gateway's limit of {self.limits.max_body_bytes} bytes",
            )
            return self._refuse_request(None, too_large, "bad_request")
        if token is None:
            return None  # /health, or a 401 the handler words
        digest = hashlib.sha256(token).hexdigest()
        call = method == b"POST" and path in CALL_PATHS
        known = self._tokens.get(digest)
        if known is not None and known.ended is not None:
            return self._refuse_request(known, Refusal(401, "E_AUTH", known.ended), "auth")
        if known is None or known.budget_left is None:
            # A token not seen yet costs a store lookup: a flood of made-up tokens gets a bounded number.
            assert self._loop is not None
            wait = self._lookups.take(self._lookup_limits, self._loop.time())
            if wait:
                busy = Refusal(429, "E_RATE_LIMIT", "too many unknown gateway tokens; retry", str(math.ceil(wait)))
                return self._refuse_request(None, busy, "rate_limited")
        elif call and length is not None and self.limits.prompt_tokens_bound(length) >= known.budget_left:
            spent = Refusal(
                429,
                "E_BUDGET",
                f"token budget spent: this call's {length}-byte body alone needs more than the "
                f"{known.budget_left} tokens left",
            )
            return self._refuse_request(known, spent, "budget")
        refusal = self.check(conn, digest, call=call)
        if refusal is not None:
            return self._refuse_request(self.state(digest), refusal, "rate_limited")
        conn.screened = True
        if call:
            self.state(digest).in_flight += 1
            conn.slot = True
        return None

    def _refuse_request(self, state: TokenState | None, refusal: Refusal, outcome: str) -> bytes:
        assert self._loop is not None
        self._metrics.gateway_refused(UNKNOWN_MODEL, outcome, state.key_id if state is not None else None)
        suppressed = (state or self._quiet).should_log(self._loop.time())
        if suppressed is not None:
            self._log.info(
                "gateway_refused",
                outcome=outcome,
                status=refusal.status,
                screened=True,
                **({"not_logged_since": suppressed} if suppressed else {}),
            )
        return refusal.canned()

    def _sweep(self) -> None:
        """Close connections that sent no request in time; forget tokens with nothing left."""
        assert self._loop is not None
        now = self._loop.time()
        deadline = now - self.limits.header_timeout_seconds
        while self._anonymous:
            protocol, conn = next(iter(self._anonymous.items()))
            if conn.opened > deadline:
                break
            self._anonymous.popitem(last=False)
            self._forget(protocol)
            if conn.transport is not None:
                conn.transport.abort()
        for digest in [d for d, s in self._tokens.items() if s.idle(self.limits, now)]:
            del self._tokens[digest]
        self._metrics.gateway_connections.set(len(self._open))
        self._sweeper = self._loop.call_later(SWEEP_SECONDS, self._sweep)


def _fit_to_fd_limit(wanted: int, log: FilteringBoundLogger) -> int:
    """Raise the soft open-file limit toward the hard one so the cap fits, with room for the rest of
    the control plane (API clients, the store, the engine); lower the cap if it still does not."""
    import resource

    room = 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted + room:
        target = wanted + room if hard == resource.RLIM_INFINITY else min(hard, wanted + room)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if soft != resource.RLIM_INFINITY and soft < wanted + room:
        fitted = max(8, soft - room)
        log.warning("gateway_connection_cap_lowered", wanted=wanted, cap=fitted, nofile=soft)
        return fitted
    return wanted

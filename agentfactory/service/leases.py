"""How many streams and waits each key holds on this replica, and ending them when it is revoked.

A stream (SSE, WebSocket) or an MCP wait holds a lease for its life: at most the key's
`max_streams` at once, past which a new one is refused (429 E_RATE_LIMIT, Retry-After). Each one
holds no more than its own bounded buffers (SPEC §14); this bounds how many one key holds.
Revoking a key cancels what its leases run, at once.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager

import anyio

from agentfactory.errors import AuthError, RateLimitError
from agentfactory.observability.metrics import Metrics
from agentfactory.service.auth import Caller

STREAM_RETRY_AFTER_SECONDS = 5


class StreamLease:
    """One stream or wait a key holds on this replica, until `release()`. Revoking the key cancels
    what runs under `cancel_on_revoke()`."""

    def __init__(self, leases: StreamLeases, key_id: str, session: str | None = None):
        self.key_id = key_id
        self.session = session
        self.revoked = False
        self._leases = leases
        self._cancels: list[Callable[[], None]] = []

    @contextmanager
    def cancel_on_revoke(self) -> Iterator[anyio.CancelScope]:
        """A cancel scope that revoking the key cancels; `scope.cancelled_caught` tells after."""
        with anyio.CancelScope() as scope:
            self._cancels.append(scope.cancel)
            if self.revoked:
                scope.cancel()
            yield scope

    def revoke(self) -> None:
        self.revoked = True
        for cancel in self._cancels:
            cancel()

    def release(self) -> None:
        self._leases.release(self)


class StreamLeases:
    """The leases each key holds on this replica. Owned by the event loop."""

    def __init__(self, metrics: Metrics | None = None) -> None:
        self._held: dict[str, set[StreamLease]] = {}
        self._metrics = metrics

    def acquire(self, caller: Caller) -> StreamLease:
        held = self._held.setdefault(caller.key_id, set())
        if len(held) >= caller.max_streams:
            if self._metrics is not None:
                self._metrics.quota_rejected("streams", caller.key_id)
            raise RateLimitError(
                f"this key already holds {len(held)} streams and waits (max_streams {caller.max_streams}); "
                "close one or retry later",
                retry_after=STREAM_RETRY_AFTER_SECONDS,
            )
        lease = StreamLease(self, caller.key_id, caller.session)
        held.add(lease)
        if self._metrics is not None:
            self._metrics.stream_leases.inc()
        return lease

    def release(self, lease: StreamLease) -> None:
        held = self._held.get(lease.key_id)
        if held is not None and lease in held:
            held.discard(lease)
            if not held:
                del self._held[lease.key_id]
            if self._metrics is not None:
                self._metrics.stream_leases.dec()

    def held(self, key_id: str) -> int:
        return len(self._held.get(key_id, ()))

    def revoke(self, key_id: str) -> None:
        """The key was revoked: end every stream and wait it holds, now."""
        for lease in list(self._held.get(key_id, ())):
            lease.revoke()

    def end_session(self, session: str) -> None:
        """A dashboard session signed out: end the streams it opened, now (not the key's others)."""
        for held in list(self._held.values()):
            for lease in list(held):
                if lease.session == session:
                    lease.revoke()

    @contextmanager
    def hold(self, caller: Caller) -> Iterator[StreamLease]:
        """Hold a lease for the block (a wait); AuthError if the key is revoked meanwhile."""
        lease = self.acquire(caller)
        try:
            with lease.cancel_on_revoke() as scope:
                yield lease
            if scope.cancelled_caught:
                raise AuthError("this API key was revoked")
        finally:
            lease.release()

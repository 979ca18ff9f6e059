"""API keys and the caller they identify: creation, verification, per-key rate and stream limits."""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import anyio
from sqlalchemy.orm import Session

from agentfactory.errors import AuthError, RateLimitError
from agentfactory.store import queries
from agentfactory.store.tables import ApiKeyRow

BOOTSTRAP_ID = "key_admin"
BOOTSTRAP_MAX_STREAMS = 10_000
STREAM_RETRY_AFTER_SECONDS = 5


@dataclass(frozen=True)
class Caller:
    """The key a request acts as; every route filters by `key_id` unless `admin`."""

    key_id: str
    name: str
    admin: bool
    models: tuple[str, ...]
    tools: tuple[str, ...]
    max_concurrent_agents: int
    max_requests_per_minute: int
    max_ttl_seconds: int
    max_streams: int

    @classmethod
    def from_row(cls, row: ApiKeyRow) -> Caller:
        return cls(
            key_id=row.id,
            name=row.name,
            admin=row.admin,
            models=tuple(row.models),
            tools=tuple(row.tools),
            max_concurrent_agents=row.max_concurrent_agents,
            max_requests_per_minute=row.max_requests_per_minute,
            max_ttl_seconds=row.max_ttl_seconds,
            max_streams=row.max_streams,
        )


def new_key() -> str:
    return "af_" + secrets.token_urlsafe(32)


def new_id(prefix: str, nbytes: int = 15) -> str:
    """A random id (base32, lower case): unguessable, URL-safe."""
    import base64

    return prefix + base64.b32encode(secrets.token_bytes(nbytes)).decode().lower().rstrip("=")


def ensure_bootstrap_admin(*, session: Session, admin_key: str | None) -> None:
    """Keep the row of the bootstrap admin key in step with AGENTFACTORY_ADMIN_KEY."""
    row = queries.get_api_key(session=session, key_id=BOOTSTRAP_ID)
    if not admin_key:
        if row is not None and row.revoked_at is None:
            row.revoked_at = time.time()
        return
    digest = queries.hash_api_key(admin_key)
    if row is None:
        session.add(
            ApiKeyRow(
                id=BOOTSTRAP_ID,
                name="bootstrap admin",
                key_hash=digest,
                prefix=admin_key[:9],
                admin=True,
                models=[],
                tools=[],
                max_concurrent_agents=1000,
                max_requests_per_minute=100_000,
                max_ttl_seconds=10**9,
                max_streams=BOOTSTRAP_MAX_STREAMS,
                created_at=time.time(),
            )
        )
    else:
        row.key_hash, row.prefix, row.revoked_at = digest, admin_key[:9], None
        row.max_streams = BOOTSTRAP_MAX_STREAMS


def authenticate(*, session: Session, authorization: str | None) -> Caller:
    """The caller of a `Authorization: Bearer <key>` header, or AuthError."""
    if not authorization:
        raise AuthError("missing Authorization: Bearer <api key>")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthError("the Authorization header must be 'Bearer <api key>'")
    digest = queries.hash_api_key(key.strip())
    row = queries.get_api_key_by_hash(session=session, key_hash=digest)
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        raise AuthError("unknown API key")
    if row.revoked_at is not None:
        raise AuthError("this API key was revoked")
    return Caller.from_row(row)


class AuthCache:
    """Recently verified keys, so that a flood of requests (a key over its rate, say) costs no
    database round trip each. Revoking a key clears it here at once; another replica sees the
    revocation within `ttl` seconds."""

    def __init__(self, ttl: float = 5.0, max_entries: int = 10_000):
        self._ttl = ttl
        self._max = max_entries
        self._entries: dict[str, tuple[Caller, float]] = {}
        self._lock = threading.Lock()

    def get(self, authorization: str | None) -> Caller | None:
        if not authorization:
            return None
        hit = self._entries.get(authorization)
        if hit is None or hit[1] < time.monotonic():
            return None
        return hit[0]

    def put(self, authorization: str, caller: Caller) -> None:
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[authorization] = (caller, time.monotonic() + self._ttl)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


class RateLimiter:
    """Token bucket per key: capacity = the key's per-minute rate, refilled continuously."""

    def __init__(self) -> None:
        self._clock = time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    def take(self, key_id: str, per_minute: int) -> int | None:
        """None when admitted, else the seconds to wait before the next request would be."""
        rate = per_minute / 60.0
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.get(key_id, (float(per_minute), now))
            tokens = min(float(per_minute), tokens + (now - last) * rate)
            if tokens >= 1:
                self._buckets[key_id] = (tokens - 1, now)
                return None
            self._buckets[key_id] = (tokens, now)
            return max(1, math.ceil((1 - tokens) / rate))


class StreamLease:
    """One stream or wait a key holds on this replica, until `release()`. Revoking the key cancels
    what runs under `cancel_on_revoke()`."""

    def __init__(self, leases: StreamLeases, key_id: str):
        self.key_id = key_id
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
    """The concurrent streams and waits of each key on this replica: at most the key's
    `max_streams`, past which a new one is refused (429 E_RATE_LIMIT, Retry-After). A stream
    holds no more than its own buffers (SPEC §14); this bounds how many one key holds. Owned by
    the event loop."""

    def __init__(self, on_refused: Callable[[], None] | None = None) -> None:
        self._held: dict[str, set[StreamLease]] = {}
        self._on_refused = on_refused

    def acquire(self, caller: Caller) -> StreamLease:
        held = self._held.setdefault(caller.key_id, set())
        if len(held) >= caller.max_streams:
            if self._on_refused is not None:
                self._on_refused()
            raise RateLimitError(
                f"this key already holds {len(held)} streams and waits (max_streams {caller.max_streams}); "
                "close one or retry later",
                retry_after=STREAM_RETRY_AFTER_SECONDS,
            )
        lease = StreamLease(self, caller.key_id)
        held.add(lease)
        return lease

    def release(self, lease: StreamLease) -> None:
        held = self._held.get(lease.key_id)
        if held is not None:
            held.discard(lease)
            if not held:
                del self._held[lease.key_id]

    def held(self, key_id: str) -> int:
        return len(self._held.get(key_id, ()))

    def revoke(self, key_id: str) -> None:
        """The key was revoked: end every stream and wait it holds, now."""
        for lease in list(self._held.get(key_id, ())):
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

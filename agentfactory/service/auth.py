"""Who is calling: API keys, the `Caller` they identify, their verification and per-key rate limit."""

from __future__ import annotations

import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass

from agentfactory.errors import AuthError
from agentfactory.store import Store, queries
from agentfactory.store.tables import ApiKeyRow

BOOTSTRAP_ID = "key_admin"
MIN_ADMIN_KEY_CHARS = 24


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


def check_admin_key(admin_key: str | None) -> None:
    """Refuse a bootstrap admin key too short to stand as a secret (ValueError, said at start-up)."""
    if admin_key and len(admin_key) < MIN_ADMIN_KEY_CHARS:
        raise ValueError(
            f"AGENTFACTORY_ADMIN_KEY is {len(admin_key)} characters long; it must have at least "
            f"{MIN_ADMIN_KEY_CHARS} (make one with: python3 -c 'import secrets; print(secrets.token_urlsafe(32))')"
        )


def ensure_bootstrap_admin(*, store: Store, admin_key: str | None) -> None:
    """Keep the row of the bootstrap admin key in step with AGENTFACTORY_ADMIN_KEY. Its `prefix` is
    empty: the operator chose this key, and none of its characters is shown by GET /keys."""
    store.call(queries.sync_bootstrap_admin, key_id=BOOTSTRAP_ID, key=admin_key, now=time.time())


async def authenticate(*, store: Store, authorization: str | None) -> Caller:
    """The caller of a `Authorization: Bearer <key>` header, or AuthError."""
    if not authorization:
        raise AuthError("missing Authorization: Bearer <api key>")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthError("the Authorization header must be 'Bearer <api key>'")
    digest = queries.hash_api_key(key.strip())
    row = await store.run(queries.get_api_key_by_hash, key_hash=digest)
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

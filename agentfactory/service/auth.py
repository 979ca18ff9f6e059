"""Who is calling: API keys, the `Caller` they identify, their verification and per-key rate limit."""

from __future__ import annotations

import abc
import hashlib
import hmac
import math
import secrets
import threading
import time
from dataclasses import dataclass, replace

from agentfactory.errors import AuthError, ForbiddenError
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
    session: str | None = None  # a dashboard session's token hash, when the caller came by cookie

    @classmethod
    def from_row(cls, row: ApiKeyRow, session: str | None = None) -> Caller:
        return cls(
            session=session,
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


SESSION_COOKIE = "af_session"
CSRF_HEADER = "x-csrf-token"
SESSION_SECONDS = 12 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})


@dataclass(frozen=True)
class UiSession:
    """A dashboard sign-in: who it acts as and the CSRF token every state change must carry."""

    caller: Caller
    csrf: str


def _session_hash(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


async def sign_in(*, store: Store, api_key: str) -> tuple[str, UiSession]:
    """Open a dashboard session with an API key (AuthError if the key is unknown or revoked):
    (the session token for the cookie, the session). Only the token's hash and the key's id are
    stored; the key itself is neither stored nor sent back."""
    caller = await authenticate(store=store, authorization=f"Bearer {api_key.strip()}")
    token = secrets.token_urlsafe(32)
    csrf = secrets.token_urlsafe(24)
    now = time.time()
    digest = _session_hash(token)
    await store.run(
        queries.insert_ui_session,
        token_hash=digest,
        key_id=caller.key_id,
        csrf=csrf,
        now=now,
        expires_at=now + SESSION_SECONDS,
    )
    return token, UiSession(caller=replace(caller, session=digest), csrf=csrf)


async def session_of(*, store: Store, token: str | None) -> UiSession | None:
    """The live session of a cookie's token, or None (unknown, expired, signed out, key revoked)."""
    if not token or len(token) > 128:
        return None
    digest = _session_hash(token)
    found = await store.run(queries.get_ui_session, token_hash=digest, now=time.time())
    if found is None:
        return None
    row, key = found
    if key.revoked_at is not None:
        return None
    return UiSession(caller=Caller.from_row(key, session=digest), csrf=row.csrf)


async def sign_out(*, store: Store, token: str | None) -> str | None:
    """End the session (idempotent); its hash, to end the streams it holds."""
    if not token or len(token) > 128:
        return None
    digest = _session_hash(token)
    await store.run(queries.delete_ui_session, token_hash=digest)
    return digest


def check_csrf(session: UiSession, method: str, token: str | None) -> None:
    """A state change by a session must carry its CSRF token (header or form field): ForbiddenError."""
    if method.upper() in SAFE_METHODS:
        return
    if not token or not hmac.compare_digest(token.encode(), session.csrf.encode()):
        raise ForbiddenError("a state change from the dashboard needs its CSRF token")


async def authenticate_request(
    *, store: Store, authorization: str | None, session_token: str | None, method: str, csrf: str | None
) -> Caller:
    """The caller of an API request: its Bearer key, else a dashboard session cookie (whose state
    changes need the CSRF header). AuthError when neither identifies anyone."""
    if authorization or not session_token:
        return await authenticate(store=store, authorization=authorization)
    session = await session_of(store=store, token=session_token)
    if session is None:
        raise AuthError("the dashboard session ended; sign in again")
    check_csrf(session, method, csrf)
    return session.caller


async def authenticate(*, store: Store, authorization: str | None) -> Caller:
    """The caller of a `Authorization: Bearer <key>` header, or AuthError."""
    if not authorization:
        raise AuthError("missing Authorization: Bearer <api key>")
    scheme, _, key = authorization.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        raise AuthError("the Authorization header must be 'Bearer <api key>'")
    digest = queries.hash_api_key(key.strip())
    point = store.pg_point  # one round trip on PostgreSQL (store/pgpoint.py)
    if point is not None:
        row = await point.get_api_key_by_hash(key_hash=digest)
    else:
        row = await store.run(queries.get_api_key_by_hash, key_hash=digest)
    if row is None or not hmac.compare_digest(row.key_hash, digest):
        raise AuthError("unknown API key")
    if row.revoked_at is not None:
        raise AuthError("this API key was revoked")
    return Caller.from_row(row)


class AuthCache:
    """Recently verified keys, so that a flood of requests (a key over its rate, say) costs no
    database round trip each. Revoking a key clears it here at once and, on PostgreSQL, on every
    replica through the bus; in any case another replica sees the revocation within `ttl` seconds
    (SPEC §13: within 1 s)."""

    def __init__(self, ttl: float = 0.5, max_entries: int = 10_000):
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


LEASES_KEPT = 1000  # past this many keys' leases, the expired ones are forgotten


class RateLimiter(abc.ABC):
    """Token bucket per key: capacity = the key's per-minute rate, refilled continuously."""

    @abc.abstractmethod
    async def take(self, key_id: str, per_minute: int) -> int | None:
        """None when admitted, else the seconds to wait before the next request would be."""


class SharedRateLimiter(RateLimiter):
    """The buckets in the database (PostgreSQL), each taken under its row lock with the
    database's clock: exact however many replicas share the key's traffic.

    A key with a high rate would cost a round trip per request: a replica takes the tokens of up to
    LEASE_SECONDS of the key's rate at once (one token when that rounds to less) and spends them
    itself for at most that long; what it has not spent by then is dropped. Every admitted request
    spent a token of the shared bucket, so the keys' rates are never exceeded; a replica's unspent
    tokens (at most LEASE_SECONDS of the rate) are what the others may miss."""

    LEASE_SECONDS = 0.05

    def __init__(self, store: Store) -> None:
        self._store = store
        self._clock = time.monotonic
        self._leases: dict[tuple[str, int], tuple[int, float]] = {}  # (key, rate) -> (tokens, until)

    async def take(self, key_id: str, per_minute: int) -> int | None:
        lease = (key_id, per_minute)
        left, until = self._leases.get(lease, (0, 0.0))
        if left > 0 and self._clock() < until:
            self._leases[lease] = (left - 1, until)
            return None
        point = self._store.pg_point
        if point is not None:  # one round trip; a key's first request creates its bucket below
            want = max(1, math.floor(per_minute / 60.0 * self.LEASE_SECONDS))
            taken = await point.take_rate_tokens(key_id=key_id, per_minute=per_minute, want=want)
            if taken is not None:
                granted, tokens = taken
                if granted == 0:
                    return max(1, math.ceil((1 - tokens) / (per_minute / 60.0)))
                if granted > 1:  # with what is left of a lease taken meanwhile by another request
                    now = self._clock()
                    left, until = self._leases.get(lease, (0, 0.0))
                    self._leases[lease] = ((left if until > now else 0) + granted - 1, now + self.LEASE_SECONDS)
                if len(self._leases) > LEASES_KEPT:
                    self._forget_expired()
                return None
        return await self._store.run(queries.take_rate_token, key_id=key_id, per_minute=per_minute)

    def _forget_expired(self) -> None:
        now = self._clock()
        for lease in [k for k, (_, until) in self._leases.items() if until <= now]:
            del self._leases[lease]


class LocalRateLimiter(RateLimiter):
    """The buckets in this process (SQLite: one replica)."""

    def __init__(self) -> None:
        self._clock = time.monotonic
        self._buckets: dict[str, tuple[float, float]] = {}
        self._lock = threading.Lock()

    async def take(self, key_id: str, per_minute: int) -> int | None:
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

"""The control plane's own secret key and what is derived from it.

32 random bytes, made at the first start and kept in the database, so that every replica and every
restart derives the same values:
- an agent's gateway token, HMAC(key, agent id): capture masks it in the agent's output, also after
  a restart, when nothing but its hash is stored;
- a request's fingerprint for idempotency, HMAC(key, request): kept for a day beside the agent, it
  tells nothing about the secrets in the request to whoever reads it without the key.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import secrets
import time
from typing import Any

from sqlalchemy.exc import IntegrityError

from agentfactory.store import queries
from agentfactory.store.engine import Store

KEY_NAME = "server"


class ServerKey:
    """Built empty with the services; `load` (the app's lifespan, once the schema is migrated) reads
    or makes the stored key. Deriving before that is a bug and raises."""

    def __init__(self, key: bytes | None = None):
        self._key = key

    def load(self, store: Store) -> None:
        """Read the stored key, made on first use (when replicas start together, the first insert wins)."""
        stored = store.call(queries.get_server_key, name=KEY_NAME)
        if stored is None:
            try:
                stored = secrets.token_hex(32)
                store.call(queries.add_server_key, name=KEY_NAME, secret=stored, created_at=time.time())
            except IntegrityError:
                stored = store.call(queries.get_server_key, name=KEY_NAME)
        assert stored is not None
        self._key = bytes.fromhex(stored)

    def _mac(self, purpose: bytes, message: bytes) -> bytes:
        if self._key is None:
            raise RuntimeError("the server key is not loaded yet (the app's lifespan loads it)")
        return hmac.new(self._key, purpose + b"\x00" + message, hashlib.sha256).digest()

    def gateway_token(self, agent_id: str) -> str:
        """The bearer token an agent presents to the model gateway (43 URL-safe characters)."""
        return base64.urlsafe_b64encode(self._mac(b"gateway-token", agent_id.encode())).decode().rstrip("=")

    def request_hash(self, request: dict[str, Any]) -> str:
        """A keyed fingerprint of a request body (64 hex digits)."""
        body = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return self._mac(b"request", body.encode("utf-8", "surrogatepass")).hex()

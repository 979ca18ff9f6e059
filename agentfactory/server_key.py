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

from agentfactory.store import Store, queries

KEY_NAME = "server"


class ServerKey:
    def __init__(self, key: bytes):
        if len(key) < 32:
            raise ValueError("the server key must be at least 32 bytes")
        self._key = key

    def _mac(self, purpose: bytes, message: bytes) -> bytes:
        return hmac.new(self._key, purpose + b"\x00" + message, hashlib.sha256).digest()

    def gateway_token(self, agent_id: str) -> str:
        """The bearer token an agent presents to the model gateway (43 URL-safe characters)."""
        return base64.urlsafe_b64encode(self._mac(b"gateway-token", agent_id.encode())).decode().rstrip("=")

    def request_hash(self, request: dict[str, Any]) -> str:
        """A keyed fingerprint of a request body (64 hex digits)."""
        body = json.dumps(request, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
        return self._mac(b"request", body.encode("utf-8", "surrogatepass")).hex()


def load_server_key(store: Store) -> ServerKey:
    """The stored key, made on first use (when replicas start together, the first insert wins)."""
    with store.session() as s:
        stored = queries.get_server_key(session=s, name=KEY_NAME)
    if stored is None:
        try:
            with store.session() as s:
                stored = secrets.token_hex(32)
                queries.add_server_key(session=s, name=KEY_NAME, secret=stored, created_at=time.time())
        except IntegrityError:
            with store.session() as s:
                stored = queries.get_server_key(session=s, name=KEY_NAME)
    assert stored is not None
    return ServerKey(bytes.fromhex(stored))

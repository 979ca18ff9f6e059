"""Signing and verifying webhook deliveries (the Standard Webhooks convention, standardwebhooks.com).

The receiving side needs only this module (the standard library, no server dependency):

    from agentfactory.webhooks import verify, WebhookVerificationError

    try:
        event = verify(request.headers, request_body_bytes, "whsec_...")
    except WebhookVerificationError:
        return 400
    # event == {"type": "agent.finished", "id": 42, "created_at": "...", "agent": {...}}
    # deliveries are at-least-once: skip an event whose id (the webhook-id header) you have seen.

A delivery carries `webhook-id` (the event id, the same on every retry), `webhook-timestamp` (Unix
seconds of this attempt) and `webhook-signature`: `v1,` + base64 of HMAC-SHA256 over
`"{id}.{timestamp}.{body}"`, keyed with the base64-decoded part of the `whsec_` secret.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
from collections.abc import Mapping
from typing import Any

SECRET_PREFIX = "whsec_"
DEFAULT_TOLERANCE_SECONDS = 300


class WebhookVerificationError(Exception):
    """The delivery is not authentic: a header is missing, the timestamp is too old or too new,
    or no signature matches."""


def _key(secret: str) -> bytes:
    raw = secret[len(SECRET_PREFIX) :] if secret.startswith(SECRET_PREFIX) else secret
    try:
        return base64.b64decode(raw + "=" * (-len(raw) % 4), validate=True)
    except ValueError:
        raise WebhookVerificationError("the secret is not whsec_ followed by base64") from None


def sign(*, secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value of `body` (`v1,<base64 HMAC-SHA256>`)."""
    signed = f"{msg_id}.{timestamp}.".encode() + body
    digest = hmac.new(_key(secret), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def verify(
    headers: Mapping[str, str],
    body: bytes | str,
    secret: str,
    *,
    tolerance: float = DEFAULT_TOLERANCE_SECONDS,
    now: float | None = None,
) -> Any:
    """Check a delivery's signature and timestamp; the parsed event, or WebhookVerificationError.
    `headers` may be any mapping (header names are matched case-insensitively)."""
    lower = {k.lower(): v for k, v in headers.items()}
    msg_id, stamp, signatures = (lower.get(h) for h in ("webhook-id", "webhook-timestamp", "webhook-signature"))
    if not msg_id or not stamp or not signatures:
        raise WebhookVerificationError("missing webhook-id, webhook-timestamp or webhook-signature")
    try:
        timestamp = int(stamp)
    except ValueError:
        raise WebhookVerificationError("webhook-timestamp is not an integer") from None
    current = time.time() if now is None else now
    if abs(current - timestamp) > tolerance:
        raise WebhookVerificationError("webhook-timestamp is outside the tolerance (a replay, or a skewed clock)")
    data = body.encode() if isinstance(body, str) else body
    expected = sign(secret=secret, msg_id=msg_id, timestamp=timestamp, body=data)
    for candidate in signatures.split():
        if hmac.compare_digest(candidate.encode(), expected.encode()):
            return json.loads(data)
    raise WebhookVerificationError("no webhook-signature matches")

"""Our signature is the Standard Webhooks one: the reference package verifies what we sign, and our
client-side `verify` accepts what it signs and refuses what was tampered with."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime

import pytest
import standardwebhooks

from agentfactory.service.webhooks import new_secret
from agentfactory.webhooks import WebhookVerificationError, sign, verify

BODY = json.dumps({"type": "agent.finished", "id": 7, "created_at": "x", "agent": {"id": "ag_1"}}).encode()


def signed_headers(secret: str, msg_id: str = "7", stamp: int | None = None, body: bytes = BODY) -> dict[str, str]:
    stamp = int(time.time()) if stamp is None else stamp
    return {
        "webhook-id": msg_id,
        "webhook-timestamp": str(stamp),
        "webhook-signature": sign(secret=secret, msg_id=msg_id, timestamp=stamp, body=body),
    }


def test_the_reference_package_verifies_our_signature() -> None:
    secret = new_secret()
    assert secret.startswith("whsec_")
    payload = standardwebhooks.Webhook(secret).verify(BODY, signed_headers(secret))
    assert payload["id"] == 7


def test_our_verify_accepts_the_reference_signature_among_several() -> None:
    secret = new_secret()
    now = datetime.now(UTC)
    reference = standardwebhooks.Webhook(secret).sign("7", now, BODY.decode())
    other = sign(secret=new_secret(), msg_id="7", timestamp=int(now.timestamp()), body=BODY)
    headers = {
        "Webhook-Id": "7",
        "Webhook-Timestamp": str(int(now.timestamp())),
        "Webhook-Signature": f"{other} {reference}",
    }
    assert verify(headers, BODY, secret)["agent"] == {"id": "ag_1"}


@pytest.mark.parametrize(
    "tamper",
    [
        lambda h, b: (h, b.replace(b"ag_1", b"ag_2")),
        lambda h, b: ({**h, "webhook-id": "8"}, b),
        lambda h, b: ({**h, "webhook-timestamp": str(int(h["webhook-timestamp"]) + 1)}, b),
        lambda h, b: ({k: v for k, v in h.items() if k != "webhook-signature"}, b),
    ],
    ids=["body", "id", "timestamp", "missing-signature"],
)
def test_a_tampered_delivery_is_refused(tamper) -> None:  # type: ignore[no-untyped-def]
    secret = new_secret()
    headers, body = tamper(signed_headers(secret), BODY)
    with pytest.raises(WebhookVerificationError):
        verify(headers, body, secret)
    with pytest.raises(standardwebhooks.WebhookVerificationError):
        standardwebhooks.Webhook(secret).verify(body, headers)


def test_a_replay_outside_the_tolerance_is_refused() -> None:
    secret = new_secret()
    old = int(time.time()) - 600
    with pytest.raises(WebhookVerificationError, match="tolerance"):
        verify(signed_headers(secret, stamp=old), BODY, secret)
    assert verify(signed_headers(secret, stamp=old), BODY, secret, now=old + 10)["id"] == 7


def test_the_wrong_secret_is_refused() -> None:
    with pytest.raises(WebhookVerificationError, match="no webhook-signature matches"):
        verify(signed_headers(new_secret()), BODY, new_secret())

"""The retry and circuit policy of webhook deliveries, as a pure function."""

from __future__ import annotations

import pytest

from agentfactory.runtime.webhooks import decide
from agentfactory.settings import Settings
from agentfactory.vocabulary import DeliveryStatus

DELAYS = (5.0, 30.0, 120.0)


def step(ok: bool, retry_index: int, failures: int, jitter: float = 0.0):  # type: ignore[no-untyped-def]
    return decide(ok=ok, now=1000.0, retry_index=retry_index, consecutive_failures=failures, delays=DELAYS,
                  circuit_failures=3, cooldown=60.0, jitter=lambda: jitter)  # fmt: skip


def test_failures_follow_the_schedule_then_the_delivery_is_dead() -> None:
    d1 = step(False, 0, 0)
    assert (d1.status, d1.retry_index, d1.next_attempt_at) == (DeliveryStatus.FAILED, 1, 1005.0)
    d2 = step(False, 1, 0, jitter=0.2)
    assert (d2.status, d2.next_attempt_at) == (DeliveryStatus.FAILED, pytest.approx(1036.0))
    assert step(False, 3, 0).status == DeliveryStatus.DEAD


def test_the_circuit_opens_at_the_threshold_and_a_success_closes_it() -> None:
    assert step(False, 0, 1).circuit_open_until is None
    opened = step(False, 0, 2)
    assert (opened.consecutive_failures, opened.circuit_open_until) == (3, 1060.0)
    closed = step(True, 2, 7)
    assert (closed.status, closed.consecutive_failures, closed.circuit_open_until) == (
        DeliveryStatus.SUCCEEDED,
        0,
        None,
    )


def test_the_default_schedule_spans_about_a_day_and_a_bad_one_is_refused() -> None:
    total = sum(Settings().webhook_retry_delays)
    assert 20 * 3600 < total < 26 * 3600
    assert Settings(webhook_retry_schedule="0.2, 0.5,1").webhook_retry_delays == (0.2, 0.5, 1.0)
    with pytest.raises(ValueError):
        Settings(webhook_retry_schedule="5,soon")
    with pytest.raises(ValueError):
        Settings(webhook_retry_schedule="5,-1")

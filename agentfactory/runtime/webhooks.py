"""Webhook delivery: a dispatcher that fans the event log out to webhooks, and a deliverer that sends.

Both are loops over the database (the truth), so delivery survives restarts and works with several
replicas:

- `WebhookDispatcher` reads the events after a stored cursor and, in one transaction, makes one
  `pending` delivery per (event, matching webhook) and moves the cursor (a compare-and-set: a
  replica that lost the race makes nothing). Woken by the hub when this replica appends an event;
  its interval is the fallback for events other replicas append.
- `WebhookDeliverer` leases webhooks that have due deliveries (one sender per webhook, across
  replicas) and sends each one's due deliveries in event order, one request in flight per webhook,
  `concurrency` webhooks at once, on its own `httpx.AsyncClient`: nothing here ever blocks the API
  or capture. Attempts are recorded with their consequences in batches (see `_send_all`).

Ordering: a webhook's deliveries are attempted in event order, one at a time; a failed one is
retried on its schedule while later events go on (one bad event cannot hold an endpoint for a
day). Receivers that need order sort by the event id. The circuit breaker pauses a webhook after
`circuit_failures` failed attempts in a row; after the cool-down one probe decides.
"""

from __future__ import annotations

import asyncio
import json
import random
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import httpx
import structlog

from agentfactory import __version__
from agentfactory.observability.metrics import Metrics
from agentfactory.runtime.loops import Loop
from agentfactory.runtime.outbound import UnsafeURL, pin
from agentfactory.schemas import event_json
from agentfactory.settings import Settings
from agentfactory.store import Store, queries
from agentfactory.store.tables import DeliveryRow, EventRow, WebhookRow
from agentfactory.vocabulary import DeliveryStatus
from agentfactory.webhooks import sign

log = structlog.get_logger("agentfactory.webhooks")
DISPATCH_SETTLE_SECONDS = 0.1
DISPATCH_BATCH = 500
DELIVERY_BATCH = 50  # deliveries one lease sends before the webhook is offered again
LEASE_MARGIN_SECONDS = 5.0
MAX_RESPONSE_BYTES = 65_536  # read (and dropped) of an answer, so the connection can be reused
JITTER = 0.2
HEALTH_INTERVAL_SECONDS = 1.0
FLUSH_EVERY = 20  # attempts recorded per transaction, at most
FLUSH_SECONDS = 1.0  # and at least this often (it renews the lease: keep well under the margin)


def agent_metadata(agent: str) -> dict[str, Any]:
    """The metadata of an agent's stored wire JSON."""
    meta = json.loads(agent).get("metadata")
    return meta if isinstance(meta, dict) else {}


@dataclass(frozen=True)
class Decision:
    """What one attempt's result means for the delivery and its webhook."""

    status: DeliveryStatus
    retry_index: int
    next_attempt_at: float
    consecutive_failures: int
    circuit_open_until: float | None


def decide(
    *,
    ok: bool,
    now: float,
    retry_index: int,
    consecutive_failures: int,
    delays: tuple[float, ...],
    circuit_failures: int,
    cooldown: float,
    jitter: Callable[[], float] = lambda: random.uniform(0, JITTER),
) -> Decision:
    """The retry and circuit policy, pure: a success closes the circuit; a failure schedules the
    next retry (its delay plus up to 20 % jitter) or, out of retries, makes the delivery dead, and
    opens the circuit at `circuit_failures` failures in a row."""
    if ok:
        return Decision(DeliveryStatus.SUCCEEDED, retry_index, now, 0, None)
    failures = consecutive_failures + 1
    circuit = now + cooldown if failures >= circuit_failures else None
    if retry_index >= len(delays):
        return Decision(DeliveryStatus.DEAD, retry_index, now, failures, circuit)
    delay = delays[retry_index] * (1 + jitter())
    return Decision(DeliveryStatus.FAILED, retry_index + 1, now + delay, failures, circuit)


@dataclass(frozen=True)
class Attempt:
    http_status: int | None
    error: str | None
    duration: float

    @property
    def ok(self) -> bool:
        return self.http_status is not None and 200 <= self.http_status < 300


class WebhookDispatcher(Loop):
    """Fans new events out to the webhooks that want them (see the module's docstring)."""

    name = "webhook-dispatcher"

    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        settings: Settings,
        on_deliveries: Callable[[], None],
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ):
        # Every agent's start and end pokes it: a burst of them is fanned out in one transaction.
        super().__init__(interval=interval, settle=DISPATCH_SETTLE_SECONDS)
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.on_deliveries = on_deliveries
        self.clock = clock
        self._health_at = 0.0

    async def run_once(self) -> None:
        while True:
            try:
                read, made = await self.store.run(
                    queries.dispatch_events, now=self.clock(), agent_metadata=agent_metadata, limit=DISPATCH_BATCH
                )
            except queries.CursorMoved:
                continue  # another replica fanned these out; read on from its position
            if made:
                self.on_deliveries()
            if read < DISPATCH_BATCH:
                break
        await self.refresh_health()

    async def refresh_health(self, force: bool = False) -> None:
        """The dead-letter and open-circuit gauges, from the database (the whole cluster's)."""
        now = time.monotonic()
        if not force and now - self._health_at < HEALTH_INTERVAL_SECONDS:
            return
        self._health_at = now
        dead, tripped = await self.store.run(
            queries.webhook_health, circuit_failures=self.settings.webhook_circuit_failures
        )
        self.metrics.webhook_dead_letters.set(dead)
        self.metrics.webhook_circuits_open.set(tripped)


class WebhookDeliverer(Loop):
    """Sends due deliveries (see the module's docstring). `open()` before `run`, `close()` after."""

    name = "webhook-deliverer"

    def __init__(
        self,
        *,
        store: Store,
        metrics: Metrics,
        settings: Settings,
        interval: float = 1.0,
        clock: Callable[[], float] = time.time,
    ):
        super().__init__(interval=interval)
        self.store = store
        self.metrics = metrics
        self.settings = settings
        self.clock = clock
        self.timeout = settings.webhook_timeout_seconds
        self.delays = settings.webhook_retry_delays
        self._client: httpx.AsyncClient | None = None
        self._sending: set[asyncio.Task[None]] = set()

    def open(self) -> None:
        n = self.settings.webhook_concurrency
        self._client = httpx.AsyncClient(
            timeout=httpx.Timeout(self.timeout),
            limits=httpx.Limits(max_connections=2 * n, max_keepalive_connections=n),
            follow_redirects=False,  # a redirect could lead anywhere, past the address check
            trust_env=False,  # no proxy: the request goes to the address that was checked
        )

    async def close(self, timeout: float = 10.0) -> None:
        """Let requests in flight finish (up to `timeout`), then drop the rest: an attempt that was
        not recorded is made again after the restart (at least once)."""
        if self._sending:
            _done, pending = await asyncio.wait(set(self._sending), timeout=timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=1)
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    async def run_once(self) -> None:
        free = self.settings.webhook_concurrency - len(self._sending)
        now = self.clock()
        if free > 0:
            token = secrets.token_hex(8)
            claims = await self.store.run(
                queries.claim_webhook_deliveries,
                now=now,
                lease_until=now + self.timeout + LEASE_MARGIN_SECONDS,
                token=token,
                max_webhooks=free,
                batch=DELIVERY_BATCH,
                circuit_failures=self.settings.webhook_circuit_failures,
            )
            for hook, items in claims:
                task = asyncio.get_running_loop().create_task(self._send_all(hook, items, token))
                self._sending.add(task)
                task.add_done_callback(self._sent)
        due = await self.store.run(queries.next_webhook_due)
        if due is not None:
            self.wake_in = due - self.clock()

    def _sent(self, task: asyncio.Task[None]) -> None:
        self._sending.discard(task)
        self.poke()  # the webhook may have more, or a slot is free for another

    async def _send_all(self, hook: WebhookRow, items: list[tuple[DeliveryRow, EventRow]], token: str) -> None:
        """Send the leased webhook's deliveries one after the other, in event order. Attempts are
        recorded in batches (every FLUSH_EVERY attempts or FLUSH_SECONDS, which also renews the
        lease, and at the end, which releases it): one transaction per attempt would make the
        database the pace of a fast endpoint. An attempt made but not yet recorded when the
        process dies is made again after the restart: at least once."""
        threshold = self.settings.webhook_circuit_failures
        failures, circuit = hook.consecutive_failures, hook.circuit_open_until
        pending: list[tuple[queries.AttemptRecord, DeliveryRow, EventRow, Attempt, Decision]] = []
        flushed_at = time.monotonic()
        released = False

        async def flush(release: bool) -> bool:
            nonlocal pending, flushed_at
            held = await self.store.run(
                queries.record_delivery_attempts,
                webhook_id=hook.id,
                token=token,
                attempts=[p[0] for p in pending],
                consecutive_failures=failures,
                circuit_open_until=circuit,
                lease_until=None if release else self.clock() + self.timeout + LEASE_MARGIN_SECONDS,
            )
            for _record, delivery, event, attempt, decision in pending:
                self._observe(hook, delivery, event, attempt, decision)
            pending, flushed_at = [], time.monotonic()
            return held

        try:
            for delivery, event in items:
                attempt = await self.attempt(hook, event)
                at = self.clock()
                d = decide(
                    ok=attempt.ok,
                    now=at,
                    retry_index=delivery.retry_index,
                    consecutive_failures=failures,
                    delays=self.delays,
                    circuit_failures=threshold,
                    cooldown=self.settings.webhook_circuit_cooldown_seconds,
                )
                record = queries.AttemptRecord(
                    delivery_id=delivery.id,
                    at=at - attempt.duration,
                    duration=attempt.duration,
                    http_status=attempt.http_status,
                    error=attempt.error,
                    status=d.status,
                    retry_index=d.retry_index,
                    next_attempt_at=d.next_attempt_at,
                )
                pending.append((record, delivery, event, attempt, d))
                opened = d.circuit_open_until is not None
                if opened and failures < threshold:
                    self.metrics.webhook_circuits_opened.inc()
                    log.warning("webhook_circuit_opened", webhook_id=hook.id, failures=d.consecutive_failures)
                failures, circuit = d.consecutive_failures, d.circuit_open_until
                if opened:
                    break  # the circuit is open: the rest waits for the cool-down
                due = len(pending) >= FLUSH_EVERY or time.monotonic() - flushed_at >= FLUSH_SECONDS
                if due and not await flush(release=False):
                    released = True  # the lease was lost: another worker has the webhook
                    break
            if not released:
                await flush(release=True)
                released = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("webhook_send_failed", webhook_id=hook.id)
        finally:
            if not released:
                try:
                    await self.store.run(queries.release_webhook, webhook_id=hook.id, token=token)
                except Exception as exc:  # the lease runs out by itself
                    log.warning("webhook_release_failed", webhook_id=hook.id, error=repr(exc))

    def _observe(self, hook: WebhookRow, delivery: DeliveryRow, event: EventRow, a: Attempt, d: Decision) -> None:
        outcome = {DeliveryStatus.SUCCEEDED: "succeeded", DeliveryStatus.DEAD: "dead"}.get(d.status, "failed")
        self.metrics.webhook_deliveries.labels(outcome=outcome).inc()
        self.metrics.webhook_delivery_duration.observe(a.duration)
        fields: dict[str, Any] = {
            "webhook_id": hook.id,
            "delivery_id": delivery.id,
            "event_id": event.id,
            "event_type": event.type,
            "agent_id": event.agent_id,
            "attempt": delivery.attempts + 1,
            "status_code": a.http_status,
            "error": a.error,
            "duration_ms": round(a.duration * 1000, 1),
            "outcome": outcome,
        }
        if d.status == DeliveryStatus.FAILED:
            fields["retry_in_seconds"] = round(d.next_attempt_at - self.clock(), 3)
        (log.info if outcome == "succeeded" else log.warning)("webhook_delivery", **fields)

    async def attempt(self, hook: WebhookRow, event: EventRow) -> Attempt:
        """POST the event to the webhook, signed; never raises for the endpoint's faults."""
        assert self._client is not None, "open() was not called"
        body = event_json(
            event_id=event.id, event_type=event.type, created_at=event.created_at, agent=event.agent
        ).encode()
        started = time.monotonic()

        def done(status: int | None, error: str | None) -> Attempt:
            return Attempt(http_status=status, error=error, duration=time.monotonic() - started)

        try:
            async with asyncio.timeout(self.timeout):
                target = await pin(hook.url, allow_private=self.settings.webhook_allow_private, timeout=self.timeout)
                stamp = int(time.time())
                msg_id = str(event.id)
                headers = {
                    "host": target.host_header,
                    "content-type": "application/json",
                    "user-agent": f"agentfactory-webhooks/{__version__}",
                    "webhook-id": msg_id,
                    "webhook-timestamp": str(stamp),
                    "webhook-signature": sign(secret=hook.secret, msg_id=msg_id, timestamp=stamp, body=body),
                }
                extensions = {"sni_hostname": target.sni_hostname} if target.sni_hostname else None
                async with self._client.stream(
                    "POST", target.url, content=body, headers=headers, extensions=extensions
                ) as resp:
                    read = 0
                    async for chunk in resp.aiter_raw():
                        read += len(chunk)
                        if read >= MAX_RESPONSE_BYTES:
                            break
                    return done(resp.status_code, None)
        except UnsafeURL as exc:
            return done(None, f"refused: {exc}")
        except TimeoutError:
            return done(None, f"timeout after {self.timeout:g} s")
        except httpx.HTTPError as exc:
            return done(None, f"{type(exc).__name__}: {exc}"[:200])

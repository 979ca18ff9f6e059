"""What the dashboard (SPEC §12) shows beyond the API's own use cases: usage per key over time and
the fleet at a glance. Read-only; the pages call the agent and key use cases for the rest."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

from agentfactory.schemas import CapacityOut, ReplicasOut
from agentfactory.service.auth import Caller
from agentfactory.service.context import Services
from agentfactory.service.system import capacity, readiness, replicas
from agentfactory.store import queries

DAY = 86_400
HOUR = 3_600


@dataclass
class KeyUsage:
    """One key's series over the same buckets (oldest first)."""

    key_id: str
    name: str
    agents: list[int]
    failures: list[int]
    tokens: list[int]
    rejections: list[int]  # requests refused by a quota (every reason)
    reasons: dict[str, int] = field(default_factory=dict)  # the period's refusals by reason

    @property
    def totals(self) -> tuple[int, int, int, int]:
        return sum(self.agents), sum(self.failures), sum(self.tokens), sum(self.rejections)


@dataclass
class UsageChart:
    bucket_seconds: int
    buckets: list[float]  # bucket start times (epoch seconds), oldest first
    keys: list[KeyUsage] = field(default_factory=list)


async def usage(svc: Services, *, days: int, now: float | None = None) -> UsageChart:
    """Agents created, failures, model tokens and quota refusals per key and bucket (an hour over up
    to two days, else a day) over the last `days` days, every key of the period (admin). Refusals
    are every replica's: this one's tally is added to the database first, the others' within a
    few seconds of them (`runtime/rejections.py`)."""
    now = time.time() if now is None else now
    bucket = HOUR if days <= 2 else DAY
    first = int((now - days * DAY) // bucket) * bucket
    buckets = [float(b) for b in range(first, int(now) + 1, bucket)]
    index = {int(b): i for i, b in enumerate(buckets)}
    await svc.rejections.run_once()
    rows = await svc.store.run(queries.usage_by_key, since=float(first), bucket_seconds=bucket)
    refused = await svc.store.run(queries.quota_rejections_by_key, since=float(first), bucket_seconds=bucket)
    names = {k.id: k.name for k in await svc.store.run(queries.list_api_keys)}
    per_key: dict[str, KeyUsage] = {}

    def of(key_id: str) -> KeyUsage:
        if key_id not in per_key:
            n = len(buckets)
            per_key[key_id] = KeyUsage(key_id, names.get(key_id, key_id), [0] * n, [0] * n, [0] * n, [0] * n)
        return per_key[key_id]

    for key_id, start, agents, failures, tokens in rows:
        i = index.get(start)
        if i is not None:
            series = of(key_id)
            series.agents[i], series.failures[i], series.tokens[i] = agents, failures, tokens
    for key_id, start, reason, n in refused:
        i = index.get(start)
        if i is not None:
            series = of(key_id)
            series.rejections[i] += n
            series.reasons[reason] = series.reasons.get(reason, 0) + n
    return UsageChart(bucket_seconds=bucket, buckets=buckets, keys=sorted(per_key.values(), key=lambda k: k.name))


@dataclass
class Fleet:
    checks: dict[str, str]
    active: dict[str, int]  # status → agents (pending, starting, running)
    max_ttl_seconds: int
    max_concurrent_per_key: int | None
    capacity: CapacityOut  # the cluster's slots and queue (SPEC §10); per key for an admin
    replicas: ReplicasOut  # every live replica, and the cluster's capacity with every warm pool


async def fleet(svc: Services, caller: Caller) -> Fleet:
    """The control plane now: its dependencies, what runs (every key's, for an admin), its limits."""
    active = await svc.store.run(queries.count_agents_by_status, key_id=None if caller.admin else caller.key_id)
    return Fleet(
        checks=await readiness(svc),
        active=active,
        max_ttl_seconds=svc.catalog.limits.max_ttl_seconds,
        max_concurrent_per_key=None if caller.admin else caller.max_concurrent_agents,
        capacity=await capacity(svc, caller),
        replicas=await replicas(svc),
    )

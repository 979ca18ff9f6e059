"""What the control plane says about itself: readiness, the catalog and the capacity."""

from __future__ import annotations

import asyncio
from typing import Any

from agentfactory.schemas import CapacityOut, ReplicaOut, ReplicasOut, WarmPool, iso
from agentfactory.service import queue
from agentfactory.service.auth import Caller
from agentfactory.service.context import Services
from agentfactory.store import queries

CHECK_TIMEOUT_SECONDS = 5


async def readiness(svc: Services) -> dict[str, str]:
    """{"database": "ok" | "down: ...", "engine": ...}: whether each dependency answers now, and
    the database also whether it can write (the log writer's last commit did not fail for want of
    room or connection, and a SQLite file system has room to grow)."""
    checks: dict[str, str] = {}
    try:
        await asyncio.wait_for(asyncio.to_thread(svc.store.ping), CHECK_TIMEOUT_SECONDS)
        cannot_write = svc.pump.store_error or svc.store.space_problem()
        checks["database"] = f"down: cannot write: {cannot_write}" if cannot_write else "ok"
    except Exception as exc:
        checks["database"] = f"down: {type(exc).__name__}"
    try:
        await asyncio.wait_for(svc.backend.ping(), CHECK_TIMEOUT_SECONDS)
        checks["engine"] = "ok"
    except Exception as exc:
        checks["engine"] = f"down: {type(exc).__name__}"
    if svc.replica.leasing:
        checks["lease"] = svc.replica.lease_state()
    return checks


def replica(svc: Services) -> dict[str, Any]:
    """This replica as `/ready` tells it: its id, its lease, the replicas it sees live."""
    rep = svc.replica
    now = rep.clock()
    return {
        "id": rep.id,
        "lease": rep.lease_state() if rep.leasing else "not leasing (loops off)",
        "live_replicas": len(rep.live(now)),
        "engine_id": rep.engine_id,
        "database_clock_offset_seconds": round(rep.offset, 3),
    }


async def capacity(svc: Services, caller: Caller) -> CapacityOut:
    """The cluster's slots: how many, how many held, how many agents wait (SPEC §10)."""
    return await queue.capacity_view(svc.queue, svc.store, admin=caller.admin)


async def replicas(svc: Services) -> ReplicasOut:
    """Every live replica (its lease renewed within lease_seconds by the database's clock), the
    agents each owns, and the cluster's capacity: slots and queue are the database's (shared), the
    warm pool is every live replica's summed (this one's now, the others' at their last heartbeat)."""
    rep = svc.replica
    _now, rows = await svc.store.run(queries.list_live_replicas, lease_seconds=rep.lease_seconds)
    owned = await svc.store.run(queries.count_agents_by_owner)
    cap = await queue.capacity_view(svc.queue, svc.store, admin=False)
    items = []
    for r in rows:
        warm = None if r.warm_target is None else WarmPool(idle=r.warm_idle or 0, target=r.warm_target)
        if r.id == rep.id:
            warm = WarmPool(idle=svc.pool.idle, target=svc.pool.size) if svc.pool is not None else None
        started, beat = iso(r.started_at) or "", iso(r.heartbeat_at) or ""
        item = ReplicaOut(id=r.id, host=r.host, pid=r.pid, url=r.url, engine_id=r.engine_id, started_at=started,
                          heartbeat_at=beat, agents=owned.get(r.id, 0), warm=warm, current=r.id == rep.id)  # fmt: skip
        items.append(item)
    live = {r.id for r in items}
    cap.warm = WarmPool(
        idle=sum(r.warm.idle for r in items if r.warm), target=sum(r.warm.target for r in items if r.warm)
    )
    return ReplicasOut(
        replicas=items,
        unowned_agents=sum(n for owner, n in owned.items() if owner not in live),
        lease_seconds=rep.lease_seconds,
        capacity=cap,
    )


def catalog(svc: Services) -> dict[str, Any]:
    return svc.catalog.model_dump(mode="json")

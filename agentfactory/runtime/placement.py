"""An agent the cluster cannot place (SPEC §10, §13): back to the queue rather than failed.

On a swarm, Swarm's scheduler may find no node for an agent's task: every node lacks the memory it
reserves, or the labels its catalog constraints ask for. That is the cluster being full, not the
agent being wrong, so an agent that asked to wait (`queue_timeout_seconds`) goes back to the queue
with the cluster's reason in `error`, is tried again after the backend's `retry_after` (its slot
meanwhile free for agents the cluster can place), and ends `expired`/`queue_timeout` if no node took
it by its queue deadline. An agent that asked not to wait fails its launch with the same reason.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import structlog

from agentfactory.errors import AgentFactoryError, NotPlacedError
from agentfactory.runtime.masking import mask_text
from agentfactory.store import queries
from agentfactory.store.tables import TERMINAL, AgentRow

if TYPE_CHECKING:
    from agentfactory.runtime.launcher import Launcher

log = structlog.get_logger("agentfactory.launcher")
DEFAULT_RETRY_SECONDS = 5


async def launch_refused(launcher: Launcher, row: AgentRow, exc: AgentFactoryError, masked: list[str]) -> None:
    """The backend refused the launch (it removed what it created): back to the queue when the
    cluster could not place it and the agent may wait, else `failed`/`launch_failed` with its words."""
    why = mask_text(exc.message, masked)  # the engine's words may quote the agent's environment
    if not isinstance(exc, NotPlacedError):
        await launcher.fail_launch(row.pk, row.id, why)
        return
    now = launcher.clock()
    retry_at = now + (exc.retry_after or DEFAULT_RETRY_SECONDS)
    requeued = await launcher.store.run(
        queries.requeue_unplaced,
        pk=row.pk,
        owner=launcher.replica_id,
        error=f"waiting for a node: {why}",
        retry_at=retry_at,
        at=now,
        document=launcher.agent_document,
    )
    if requeued:
        log.info("agent_requeued_unplaced", agent_id=row.id, why=why, retry_in=round(retry_at - now, 1))
        launcher.hub.bump_events()  # `agent.queued` is in the log; the queue's dispatcher wakes
        launcher.hub.bump(row.pk)
        return
    fresh = await launcher.load(row.pk)
    if fresh is None or fresh.status in TERMINAL:  # cancelled while it was being placed
        return
    await launcher.fail_launch(
        row.pk, row.id, f"{why} (an agent with queue_timeout_seconds waits in the queue for a node instead)"
    )

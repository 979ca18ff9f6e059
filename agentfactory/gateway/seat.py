"""One model gateway socket for every replica on a machine (SPEC §13: replicas on one machine need
no setting but the port).

The replica that holds an exclusive `flock` on `<socket>.lock` serves the socket; the others wait
for the lock. The kernel drops the lock when its holder dies (even by kill -9), and a waiting
replica takes over within `retry` seconds: it removes the dead socket and binds its own. Agents
keep working across the switch: the runtime in the container retries an unreachable gateway for
30 s, and every replica's gateway reads the same database (tokens, budgets).
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
from pathlib import Path

import structlog

from agentfactory.gateway.relay_door import GatewayRelay
from agentfactory.gateway.server import ModelGateway

log = structlog.get_logger("agentfactory.gateway")


class GatewaySeat:
    """`relay` (a swarm's node relay, relay_door.py) is started with the gateway and stopped before it:
    the replica that serves the socket is the one the node relays reach."""

    def __init__(self, gateway: ModelGateway, *, retry: float = 0.5, relay: GatewayRelay | None = None):
        self.gateway = gateway
        self.relay = relay
        self.lock_path = Path(str(gateway.socket_path) + ".lock")
        self.retry = retry
        self._fd: int | None = None
        self.serving = False

    def _try_lock(self) -> bool:
        self.lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._fd = fd
        return True

    async def take(self) -> bool:
        """Serve the socket now if no other replica here does; True when this one serves it."""
        if self.serving:
            return True
        if not await asyncio.to_thread(self._try_lock):
            return False
        try:
            await self.gateway.start()
            if self.relay is not None:
                try:
                    await self.relay.start()
                except BaseException:
                    await self.gateway.stop()
                    raise
        except BaseException:
            self._unlock()
            raise
        self.serving = True
        log.info("gateway_seat_taken", socket=str(self.gateway.socket_path), pid=os.getpid())
        return True

    async def run(self, stop: asyncio.Event) -> None:
        """Wait for the seat (another replica here serves the socket) and take it when it frees."""
        while not self.serving and not stop.is_set():
            try:
                if await self.take():
                    return
            except Exception as exc:
                log.warning("gateway_seat_failed", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), timeout=self.retry)

    async def release(self) -> None:
        if self.serving:
            if self.relay is not None:
                try:
                    await self.relay.stop()
                except Exception as exc:  # the next start sweeps what is left
                    log.warning("gateway_relay_stop_failed", error=repr(exc))
            await self.gateway.stop()
            self.serving = False
        self._unlock()

    def _unlock(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

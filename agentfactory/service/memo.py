"""A single-flight, generation-keyed memo: a hundred followers woken together read a row once."""

from __future__ import annotations

import asyncio
import json
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from agentfactory.service.views import agent_out
from agentfactory.store.tables import AgentRow

T = TypeVar("T")
FOLLOWED_AGENTS_BYTES = 8 * 1024 * 1024


class GenerationMemo(Generic[T]):
    """One value per key, reloaded (single-flight) when the hub generation moves on or it is older
    than `max_age`: a hundred followers woken together read the agent's row once. Bounded to
    `max_keys` values and, with `sizeof`, to `max_bytes` of them."""

    def __init__(
        self,
        max_age: float = 1.0,
        max_keys: int = 1024,
        max_bytes: int | None = None,
        sizeof: Callable[[T], int] | None = None,
    ):
        self._values: OrderedDict[object, tuple[int, float, T]] = OrderedDict()
        self._sizes: dict[object, int] = {}
        self._bytes = 0
        self._locks: dict[object, asyncio.Lock] = {}
        self._max_age, self._max_keys, self._max_bytes = max_age, max_keys, max_bytes
        self._sizeof = sizeof

    @property
    def nbytes(self) -> int:
        return self._bytes

    def __len__(self) -> int:
        return len(self._values)

    def _fresh(self, key: object, generation: int) -> tuple[int, float, T] | None:
        hit = self._values.get(key)
        if hit is not None and hit[0] >= generation and time.monotonic() - hit[1] < self._max_age:
            return hit
        return None

    def _keep(self, key: object, hit: tuple[int, float, T]) -> None:
        self._bytes -= self._sizes.pop(key, 0)
        self._values[key] = hit
        self._values.move_to_end(key)
        if self._sizeof is not None:
            self._sizes[key] = self._sizeof(hit[2])
            self._bytes += self._sizes[key]
        while len(self._values) > self._max_keys or (
            self._max_bytes is not None and self._bytes > self._max_bytes and len(self._values) > 1
        ):
            old, _ = self._values.popitem(last=False)
            self._bytes -= self._sizes.pop(old, 0)
            self._locks.pop(old, None)

    async def get(self, key: object, generation: int, load: Callable[[], Awaitable[T]]) -> T:
        hit = self._fresh(key, generation)
        if hit is None:
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                hit = self._fresh(key, generation)
                if hit is None:
                    started = time.monotonic()
                    hit = (generation, started, await load())
                    self._keep(key, hit)
        return hit[2]


@dataclass(frozen=True)
class FollowedAgent:
    """What a follower needs of its agent: the status, and the agent document (JSON) that `status`
    and `end` events carry, made once for every follower. Not the row: that holds the prompt, the
    env and the secrets, up to megabytes, which a thousand followed agents would keep in memory."""

    status: str
    json: str

    def queue_position(self) -> int | None:
        """A queued agent's place in the queue (from its document), else None."""
        if self.status != "queued":
            return None
        position = json.loads(self.json).get("queue_position")
        return position if isinstance(position, int) else None

    @classmethod
    def of(cls, row: AgentRow | None) -> FollowedAgent | None:
        return None if row is None else cls(row.status, agent_out(row).model_dump_json())


def followed_agent_memo() -> GenerationMemo[FollowedAgent | None]:
    return GenerationMemo(max_bytes=FOLLOWED_AGENTS_BYTES, sizeof=lambda a: 64 + (len(a.json) if a is not None else 0))

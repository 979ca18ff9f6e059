"""A single-flight, generation-keyed memo: a hundred followers woken together read a row once."""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class GenerationMemo(Generic[T]):
    """One value per key, reloaded (single-flight) when the hub generation moves on or it is older
    than `max_age`: a hundred followers woken together read the agent's row once."""

    def __init__(self, max_age: float = 1.0, max_keys: int = 1024):
        self._values: OrderedDict[object, tuple[int, float, T]] = OrderedDict()
        self._locks: dict[object, asyncio.Lock] = {}
        self._max_age, self._max_keys = max_age, max_keys

    def _fresh(self, key: object, generation: int) -> tuple[int, float, T] | None:
        hit = self._values.get(key)
        if hit is not None and hit[0] >= generation and time.monotonic() - hit[1] < self._max_age:
            return hit
        return None

    async def get(self, key: object, generation: int, load: Callable[[], Awaitable[T]]) -> T:
        hit = self._fresh(key, generation)
        if hit is None:
            lock = self._locks.setdefault(key, asyncio.Lock())
            async with lock:
                hit = self._fresh(key, generation)
                if hit is None:
                    started = time.monotonic()
                    hit = (generation, started, await load())
                    self._values[key] = hit
                    self._values.move_to_end(key)
                    while len(self._values) > self._max_keys:
                        old, _ = self._values.popitem(last=False)
                        self._locks.pop(old, None)
        return hit[2]

"""Each key's quota refusals, tallied in memory per hour and reason until the store takes them.

A refusal costs a dict increment under a lock (refusals are counted on the event loop and in the
store's worker threads); `runtime/rejections.py` adds the tally to the database every few seconds,
so a flood of refused requests never becomes a flood of write transactions. The tally is bounded:
past `MAX_ENTRIES` distinct (hour, key, reason) entries, new ones are only counted as lost.
"""

from __future__ import annotations

import threading
import time

HOUR = 3600
MAX_ENTRIES = 10_000


class RejectionTally:
    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._lock = threading.Lock()
        self._counts: dict[tuple[int, str, str], int] = {}
        self.max_entries = max_entries
        self.lost = 0  # refusals not kept: the tally was full (the store was down for long)

    def note(self, key_id: str, reason: str, n: int = 1, *, now: float | None = None) -> None:
        at = int((time.time() if now is None else now) // HOUR) * HOUR
        entry = (at, key_id, reason)
        with self._lock:
            if entry in self._counts:
                self._counts[entry] += n
            elif len(self._counts) < self.max_entries:
                self._counts[entry] = n
            else:
                self.lost += n

    def take(self) -> dict[tuple[int, str, str], int]:
        """Everything tallied since the last take (the caller gives it back if it cannot store it)."""
        with self._lock:
            counts, self._counts = self._counts, {}
        return counts

    def give_back(self, counts: dict[tuple[int, str, str], int]) -> None:
        for (at, key_id, reason), n in counts.items():
            self.note(key_id, reason, n, now=at)

    def __len__(self) -> int:
        return len(self._counts)

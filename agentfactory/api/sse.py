"""SSE framing of log lines, with a cache of formatted blocks shared by every stream client.

Lines never change once stored, so a full block of them is formatted once and sliced for each
client: a hundred followers of one agent cost one JSON encoding per line, not a hundred.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Callable

from agentfactory.schemas import iso
from agentfactory.store.tables import STDERR, STDOUT

STREAM_NAMES = {STDOUT: "stdout", STDERR: "stderr"}
BLOCK = 1000

Row = tuple[int, float, int, str]


class Timestamps:
    """ISO capture times; lines of one read share a time, so the last conversion is cached."""

    def __init__(self) -> None:
        self._last: tuple[float, str] = (-1.0, "")

    def __call__(self, ts: float) -> str:
        if ts != self._last[0]:
            self._last = (ts, iso(ts) or "")
        return self._last[1]


def sse(event: str, data: str, event_id: int | None = None) -> str:
    head = f"event: {event}\n" + (f"id: {event_id}\n" if event_id is not None else "")
    return head + "data: " + data + "\n\n"


def format_lines(rows: list[Row]) -> tuple[bytes, list[int]]:
    """The `log` events of rows, and the byte offset where each row's event starts."""
    ts = Timestamps()
    parts: list[bytes] = []
    offsets: list[int] = []
    pos = 0
    for seq, t, s, text in rows:
        data = json.dumps({"seq": seq, "ts": ts(t), "stream": STREAM_NAMES[s], "text": text})
        chunk = sse("log", data, seq).encode()
        offsets.append(pos)
        parts.append(chunk)
        pos += len(chunk)
    return b"".join(parts), offsets


class BlockCache:
    """LRU of formatted full blocks, keyed by (agent id, block number)."""

    def __init__(self, max_blocks: int = 128):
        self._blocks: OrderedDict[tuple[str, int], tuple[bytes, list[int]]] = OrderedDict()
        self._max = max_blocks

    async def events_after(self, agent_id: str, cursor: int, read: Callable[[int, int], object]) -> tuple[bytes, int]:
        """Formatted events after `cursor` (up to the end of its block) and the new cursor.

        `read(after, limit)` is an awaitable store read returning rows.
        """
        block_no = cursor // BLOCK
        key = (agent_id, block_no)
        hit = self._blocks.get(key)
        if hit is None:
            rows: list[Row] = await read(block_no * BLOCK, BLOCK)  # type: ignore[misc]
            if len(rows) == BLOCK:
                hit = format_lines(rows)
                self._blocks[key] = hit
                if len(self._blocks) > self._max:
                    self._blocks.popitem(last=False)
            else:
                rows = [r for r in rows if r[0] > cursor]
                if not rows:
                    return b"", cursor
                data, _ = format_lines(rows)
                return data, rows[-1][0]
        else:
            self._blocks.move_to_end(key)
        data, offsets = hit
        return data[offsets[cursor - block_no * BLOCK] :], (block_no + 1) * BLOCK

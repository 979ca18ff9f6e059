"""SSE framing of log lines, with a cache of formatted blocks shared by every stream client.

Lines never change once stored, so a full block of them is formatted once and sliced for each
client: a hundred followers of one agent cost one JSON encoding per line, not a hundred.
"""

from __future__ import annotations

import json
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

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


@dataclass
class _Block:
    """Formatted events of one block of BLOCK seqs, grown as lines arrive (lines never change)."""

    base: int
    last_seq: int
    data: bytearray = field(default_factory=bytearray)
    offsets: list[int] = field(default_factory=list)

    def extend(self, rows: list[Row]) -> None:
        rows = [r for r in rows if r[0] > self.last_seq]
        if not rows:
            return
        data, offsets = format_lines(rows)
        start = len(self.data)
        self.offsets.extend(start + o for o in offsets)
        self.data += data
        self.last_seq = rows[-1][0]

    @property
    def complete(self) -> bool:
        return self.last_seq >= self.base + BLOCK


class BlockCache:
    """LRU of formatted blocks keyed by (agent id, block number), shared by every stream client:
    the live edge too, so a hundred followers of a running agent format each line once."""

    def __init__(self, max_blocks: int = 128):
        self._blocks: OrderedDict[tuple[str, int], _Block] = OrderedDict()
        self._max = max_blocks

    async def events_after(
        self, agent_id: str, cursor: int, read: Callable[[int, int], Awaitable[list[Row]]]
    ) -> tuple[bytes, int]:
        """Formatted events after `cursor` (up to the end of its block) and the new cursor.
        `read(after, limit)` reads rows from the store."""
        block_no = cursor // BLOCK
        base = block_no * BLOCK
        key = (agent_id, block_no)
        block = self._blocks.get(key)
        if block is None or (not block.complete and block.last_seq <= cursor):
            after = block.last_seq if block is not None else base
            rows = await read(after, base + BLOCK - after)
            block = self._blocks.get(key)  # another client may have grown it meanwhile
            if block is None:
                block = self._blocks[key] = _Block(base=base, last_seq=base)
                if len(self._blocks) > self._max:
                    self._blocks.popitem(last=False)
            block.extend(rows)
        self._blocks.move_to_end(key)
        if block.last_seq <= cursor:
            return b"", cursor
        return bytes(block.data[block.offsets[cursor - base] :]), block.last_seq

import asyncio
import re

from agentfactory.api.sse import BLOCK, BLOCK_BYTES, SEND_BYTES, BlockCache
from agentfactory.service.memo import GenerationMemo

Row = tuple[int, float, int, str]


class Store:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.reads = 0

    def add(self, n: int, width: int = 0) -> None:
        start = len(self.rows)
        self.rows += [(start + i + 1, 1.0, 1, f"line {start + i + 1}".ljust(width, ".")) for i in range(n)]

    async def read(self, after: int, limit: int, max_bytes: int) -> list[Row]:
        self.reads += 1
        await asyncio.sleep(0)  # let the other followers pile up behind this read
        out: list[Row] = []
        total = 0
        for r in self.rows[after:]:
            if len(out) >= limit or (out and total + len(r[3]) > max_bytes):
                break
            out.append(r)
            total += len(r[3])
        return out


async def follow(cache: BlockCache, store: Store, agent: str, cursor: int, end: int) -> tuple[list[int], int]:
    """Every event's seq from cursor to end, as a client takes them, and the largest slice."""
    seqs: list[int] = []
    largest = 0
    while cursor < end:
        data, cursor = await cache.events_after(agent, cursor, 1, store.read)
        assert data, f"nothing after {cursor}"
        largest = max(largest, len(data))
        seqs += [int(x) for x in re.findall(rb"^id: (\d+)$", data, re.M)]
        assert seqs[-1] == cursor
    return seqs, largest


def test_followers_woken_together_share_one_read() -> None:
    async def scenario() -> None:
        store, cache = Store(), BlockCache()
        store.add(10)
        results = await asyncio.gather(*[cache.events_after("a", 0, 1, store.read) for _ in range(100)])
        assert store.reads == 1
        assert {cursor for _, cursor in results} == {10}
        assert all(data.count(b"event: log\n") == 10 for data, _ in results)

        # nothing new at the same generation: no read at all
        assert await cache.events_after("a", 10, 1, store.read) == (b"", 10)
        assert store.reads == 1

        # a new commit bumps the generation: one read for everyone, each gets only the new lines
        store.add(5)
        results = await asyncio.gather(*[cache.events_after("a", 10, 2, store.read) for _ in range(100)])
        assert store.reads == 2
        assert all(data.count(b"event: log\n") == 5 and cursor == 15 for data, cursor in results)

    asyncio.run(scenario())


def test_a_full_block_is_never_read_again_and_the_next_block_follows() -> None:
    async def scenario() -> None:
        store, cache = Store(), BlockCache()
        store.add(BLOCK + 3)
        seqs, largest = await follow(cache, store, "a", 0, BLOCK)
        assert seqs == list(range(1, BLOCK + 1)) and largest <= SEND_BYTES
        data, cursor = await cache.events_after("a", 500, 9, store.read)
        assert data.startswith(b"event: log\nid: 501\n") and cursor > 501
        assert store.reads == 1
        data, cursor = await cache.events_after("a", BLOCK, 9, store.read)
        assert cursor == BLOCK + 3

    asyncio.run(scenario())


def test_a_client_is_handed_a_slice_of_whole_events_at_a_time() -> None:
    async def scenario() -> None:
        store, cache = Store(), BlockCache()
        store.add(10, width=SEND_BYTES * 2)  # each event is bigger than a slice: one at a time
        seqs, largest = await follow(cache, store, "a", 0, 10)
        assert seqs == list(range(1, 11)) and SEND_BYTES * 2 < largest < SEND_BYTES * 3

    asyncio.run(scenario())


def test_long_lines_take_several_blocks_of_bounded_bytes_shared_by_every_client() -> None:
    async def scenario() -> None:
        store, cache = Store(), BlockCache()
        store.add(BLOCK, width=8192)  # 8 MB in one block of seqs
        seqs, _ = await follow(cache, store, "a", 0, BLOCK)
        assert seqs == list(range(1, BLOCK + 1))
        reads = store.reads
        assert 8 <= reads <= 10
        seqs, _ = await follow(cache, store, "a", 0, BLOCK)
        assert seqs == list(range(1, BLOCK + 1)) and store.reads == reads
        data, _cursor = await cache.events_after("a", 700, 1, store.read)  # anywhere: via the chain
        assert data.startswith(b"event: log\nid: 701\n") and store.reads == reads

    asyncio.run(scenario())


def test_the_cache_is_bounded_in_bytes() -> None:
    async def scenario() -> None:
        store, cache = Store(), BlockCache(max_bytes=4 * BLOCK_BYTES)
        store.add(BLOCK, width=4096)
        for agent in range(20):  # twenty agents' blocks of ~1 MB each
            seqs, _ = await follow(cache, store, f"agent-{agent}", 0, BLOCK)
            assert seqs == list(range(1, BLOCK + 1))
            assert cache.nbytes <= 4 * BLOCK_BYTES

    asyncio.run(scenario())


def test_memo_loads_once_per_generation() -> None:
    async def scenario() -> None:
        loads = 0

        async def load() -> int:
            nonlocal loads
            loads += 1
            await asyncio.sleep(0)
            return loads

        memo: GenerationMemo[int] = GenerationMemo()
        assert set(await asyncio.gather(*[memo.get("k", 3, load) for _ in range(50)])) == {1}
        assert await memo.get("k", 3, load) == 1
        assert await memo.get("k", 4, load) == 2

    asyncio.run(scenario())


def test_memo_is_bounded_in_bytes() -> None:
    async def scenario() -> None:
        memo: GenerationMemo[str] = GenerationMemo(max_bytes=10_000, sizeof=len)

        async def big() -> str:
            return "x" * 3000

        for key in range(10):
            await memo.get(key, 1, big)
        assert len(memo) == 3 and memo.nbytes == 9000

    asyncio.run(scenario())

import asyncio

from agentfactory.api.sse import BLOCK, BlockCache
from agentfactory.service.memo import GenerationMemo

Row = tuple[int, float, int, str]


class Store:
    def __init__(self) -> None:
        self.rows: list[Row] = []
        self.reads = 0

    def add(self, n: int) -> None:
        start = len(self.rows)
        self.rows += [(start + i + 1, 1.0, 1, f"line {start + i + 1}") for i in range(n)]

    async def read(self, after: int, limit: int) -> list[Row]:
        self.reads += 1
        await asyncio.sleep(0)  # let the other followers pile up behind this read
        return [r for r in self.rows if r[0] > after][:limit]


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
        data, cursor = await cache.events_after("a", 0, 1, store.read)
        assert cursor == BLOCK and data.count(b"event: log\n") == BLOCK
        data, cursor = await cache.events_after("a", 500, 9, store.read)
        assert cursor == BLOCK and data.startswith(b"event: log\nid: 501\n")
        assert store.reads == 1
        data, cursor = await cache.events_after("a", BLOCK, 9, store.read)
        assert cursor == BLOCK + 3

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

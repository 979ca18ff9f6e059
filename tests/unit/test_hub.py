"""The hub's per-agent generations: a follower re-reads an agent's lines only after new lines and
its row only after a row change, and never misses either."""

from __future__ import annotations

import asyncio

from agentfactory.runtime.hub import Hub


def test_lines_and_row_generations_move_only_with_their_own_changes() -> None:
    async def scenario() -> None:
        hub = Hub()
        hub.bind(asyncio.get_running_loop())
        hub.bump(1)  # both
        lines, row = hub.lines_generation(1), hub.row_generation(1)
        hub.bump(1, row=False)  # a batch of lines
        assert hub.lines_generation(1) > lines and hub.row_generation(1) == row
        lines = hub.lines_generation(1)
        hub.bump(1, lines=False)  # a status change
        assert hub.row_generation(1) > row and hub.lines_generation(1) == lines
        row = hub.row_generation(1)
        for _ in range(5):  # another agent's changes leave agent 1's generations alone
            hub.bump(2)
        assert (hub.lines_generation(1), hub.row_generation(1)) == (lines, row)
        # an agent the hub knows nothing of reads as changed just now: a read too many, never one too few
        assert hub.lines_generation(3) == hub.row_generation(3) == hub.generation
        hub.track(3)  # launched: from now on other agents' changes leave it alone too
        tracked = hub.generation
        hub.bump(2)
        assert hub.lines_generation(3) == hub.row_generation(3) == tracked < hub.generation
        hub.bump(3, row=False)
        hub.track(3)  # tracking again never hides a change
        assert hub.lines_generation(3) == hub.generation

    asyncio.run(scenario())


def test_a_waiter_wakes_at_either_kind_of_change_and_remote_wakes_count_as_both() -> None:
    async def scenario() -> None:
        hub = Hub()
        hub.bind(asyncio.get_running_loop())
        for kind in ({"row": False}, {"lines": False}):
            wake = hub.subscribe(7)
            hub.bump(7, **kind)
            assert await hub.wait(7, 1.0, wake)
        lines, row = hub.lines_generation(7), hub.row_generation(7)
        hub.wake_threadsafe([7])  # another replica's change: which kind is not known
        await asyncio.sleep(0)
        assert hub.lines_generation(7) > lines and hub.row_generation(7) > row

    asyncio.run(scenario())

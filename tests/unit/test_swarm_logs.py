"""ServiceOutput: a follow that breaks off (or is shut when the task ends) and the final whole read hand
on every byte once, per stream, whatever the frame boundaries of each read (pure: fake responses)."""

from __future__ import annotations

import io
import threading
from typing import Any

from agentfactory.backends.base import STDERR, STDOUT
from agentfactory.backends.swarm_logs import ServiceOutput


def framed(*frames: tuple[int, bytes]) -> bytes:
    return b"".join(bytes([s, 0, 0, 0]) + len(p).to_bytes(4, "big") + p for s, p in frames)


class Response:
    def __init__(self, body: bytes):
        self.raw = io.BytesIO(body)

    def close(self) -> None:
        pass


class Sock:
    def shutdown(self, how: int) -> None:
        pass


def test_a_broken_follow_and_the_final_read_hand_on_every_byte_once() -> None:
    # The follow saw part of the output, cut mid-frame; the final read frames it differently.
    follow = framed((1, b"a\nb"), (2, b"e1\n"), (1, b"\nc\n"))[:-2]
    whole = framed((1, b"a\n"), (1, b"b\nc\nd\n"), (2, b"e1\ne2\n"))
    ended = threading.Event()
    calls: list[bool] = []

    def open_logs(follow_: bool) -> tuple[Any, Any]:
        calls.append(follow_)
        if follow_:
            ended.set()  # the task ends while the first stream is read
            return Response(follow), Sock()
        return Response(whole), Sock()

    out = ServiceOutput(open_logs, ended.is_set)
    got: dict[int, bytes] = {STDOUT: b"", STDERR: b""}
    for stream, data in out.chunks():
        got[stream] += data
    assert got == {STDOUT: b"a\nb\nc\nd\n", STDERR: b"e1\ne2\n"}
    # Followed first, read whole once at the end. (The task-watch thread may see the end only after
    # the broken follow was opened again: a second follow then, on a loaded machine.)
    assert calls[0] is True and calls[-1] is False and calls.count(False) == 1, calls

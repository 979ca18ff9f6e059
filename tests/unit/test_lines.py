"""Splitting, masking and bounding captured output."""

import hashlib

from agentfactory.runtime.lines import MAX_LINE_BYTES, Bounded, Chunk, LineSplitter


def texts(chunks: list[Chunk]) -> list[str]:
    return [line for chunk in chunks for line in chunk.text.split("\n")]


def consistent(chunk: Chunk) -> bool:
    return chunk.data == (chunk.text + "\n").encode() and chunk.lines == chunk.data.count(b"\n")


def test_lines_split_across_writes_and_streams() -> None:
    sp = LineSplitter([])
    assert texts(sp.feed(1, b"hel")) == []
    assert texts(sp.feed(2, b"err\n")) == ["err"]
    assert texts(sp.feed(1, b"lo\nwor")) == ["hello"]
    assert texts(sp.flush()) == ["wor"]


def test_one_read_of_many_lines_is_one_chunk() -> None:
    (chunk,) = LineSplitter([]).feed(1, b"a\nbb\n\nccc\nrest")
    assert texts([chunk]) == ["a", "bb", "", "ccc"]
    assert chunk.lines == chunk.raw_complete == 4 and consistent(chunk)


def test_secret_split_across_two_writes_is_masked() -> None:
    sp = LineSplitter(["s3cr3t-value"])
    assert sp.feed(1, b"token=s3cr") == []
    (chunk,) = sp.feed(1, b"3t-value ok\nand s3cr3t-value again\n")
    assert texts([chunk]) == ["token=*** ok", "and *** again"]
    assert chunk.nbytes == len("token=*** ok\nand *** again\n") and consistent(chunk)


def test_invalid_utf8_is_replaced() -> None:
    (chunk,) = LineSplitter([]).feed(1, b"a\xffb\nc\xe2\x82\n")
    assert texts([chunk]) == ["a\ufffdb", "c\ufffd"]
    assert consistent(chunk)


def test_nul_is_replaced_as_no_postgresql_text_holds_it() -> None:
    """/proc/self/environ printed whole: NUL separated. The rest of the output must not be lost."""
    (chunk,) = LineSplitter([]).feed(1, b"A=1\x00B=2\x00\nnext\n")
    assert texts([chunk]) == ["A=1\ufffdB=2\ufffd", "next"]
    assert consistent(chunk)


def test_a_very_long_line_is_cut_without_splitting_utf8() -> None:
    data = b"short\n" + ("é" * MAX_LINE_BYTES).encode() + b"\nafter\n"
    chunks = LineSplitter([]).feed(1, data)
    assert texts(chunks)[0] == "short" and texts(chunks)[-1] == "after"
    assert "".join(texts(chunks)[1:-1]) == "é" * MAX_LINE_BYTES
    assert [c.raw_complete for c in chunks] == [1, 0, 1, 1]
    assert all(consistent(c) and len(c.data) <= MAX_LINE_BYTES + 1 for c in chunks)


def test_head_drop_and_skip_cut_at_line_boundaries() -> None:
    (chunk,) = LineSplitter([]).feed(1, b"aa\nbb\ncc\n")
    head, rest = chunk.head(7)
    assert head is not None and rest is not None
    assert (texts([head]), texts([rest])) == (["aa", "bb"], ["cc"])
    assert chunk.head(2) == (None, chunk)
    assert chunk.drop(1) == (1, 3, chunk.skip_lines(1))
    lines, nbytes, rest = chunk.drop(4)
    assert (lines, nbytes) == (2, 6) and rest is not None and texts([rest]) == ["cc"]
    assert chunk.drop(100) == (3, 9, None)
    assert chunk.skip_lines(3) is None and chunk.skip_lines(0) is chunk


def test_bounded_keeps_head_and_tail_with_one_marker() -> None:
    sp, b = LineSplitter([]), Bounded(max_bytes=100)
    kept = b.admit(sp.feed(1, b"".join(f"{i:03d}\n".encode() for i in range(100))))
    rest = list(b.finish())
    all_texts = texts(kept) + texts(rest)
    assert all_texts[:12] == [f"{i:03d}" for i in range(12)]
    assert "dropped" in all_texts[12]
    assert all_texts[13:] == [f"{i:03d}" for i in range(88, 100)]
    assert sum(c.nbytes for c in kept + rest) <= 100 + len(all_texts[12]) + 1


def test_bounded_over_many_reads_counts_every_dropped_line() -> None:
    sp, b = LineSplitter([]), Bounded(max_bytes=10_000)
    kept: list[Chunk] = []
    all_data = b""
    for start in range(0, 100_000, 700):
        data = b"".join(f"{i:07d}\n".encode() for i in range(start, min(start + 700, 100_000)))
        all_data += data
        kept += b.admit(sp.feed(1, data))
    dropped_lines, dropped_bytes = b.dropped_lines, b.dropped_bytes
    kept += list(b.finish())
    lines = texts(kept)
    marker = next(i for i, t in enumerate(lines) if "dropped" in t)
    head = [int(t) for t in lines[:marker]]
    tail = [int(t) for t in lines[marker + 1 :]]
    assert head == list(range(len(head))) and tail == list(range(100_000 - len(tail), 100_000))
    assert len(head) + dropped_lines + len(tail) == 100_000
    kept_bytes = sum(c.nbytes for c in kept)
    marker_bytes = len(lines[marker]) + 1
    assert dropped_bytes == len(all_data) - (kept_bytes - marker_bytes)
    assert kept_bytes <= 10_000 + marker_bytes
    # the seal's byte form is each chunk's data, in order
    assert (
        hashlib.sha256(b"".join(c.data for c in kept)).hexdigest()
        == hashlib.sha256("".join(t + "\n" for t in lines).encode()).hexdigest()
    )

"""Splitting, masking and bounding captured output."""

from agentfactory.runtime.lines import MAX_LINE_BYTES, Bounded, LineSplitter


def texts(lines):  # type: ignore[no-untyped-def]
    return [line.text for line in lines]


def test_lines_split_across_writes_and_streams() -> None:
    sp = LineSplitter([])
    assert texts(sp.feed(1, b"hel")) == []
    assert texts(sp.feed(2, b"err\n")) == ["err"]
    assert texts(sp.feed(1, b"lo\nwor")) == ["hello"]
    assert texts(sp.flush()) == ["wor"]


def test_secret_split_across_two_writes_is_masked() -> None:
    sp = LineSplitter(["s3cr3t-value"])
    assert sp.feed(1, b"token=s3cr") == []
    (line,) = sp.feed(1, b"3t-value ok\n")
    assert line.text == "token=*** ok"
    assert line.nbytes == len("token=*** ok") + 1


def test_invalid_utf8_is_replaced() -> None:
    (line,) = LineSplitter([]).feed(1, b"a\xffb\n")
    assert line.text == "a\ufffdb"


def test_a_very_long_line_is_chunked_without_splitting_utf8() -> None:
    data = ("é" * MAX_LINE_BYTES).encode() + b"\n"
    lines = LineSplitter([]).feed(1, data)
    assert len(lines) == 2
    assert "".join(texts(lines)) == "é" * MAX_LINE_BYTES
    assert [line.raw_complete for line in lines] == [False, True]


def test_bounded_keeps_head_and_tail_with_one_marker() -> None:
    sp, b = LineSplitter([]), Bounded(max_bytes=100)
    kept = b.admit(sp.feed(1, b"".join(f"{i:03d}\n".encode() for i in range(100))))
    rest = b.finish()
    all_texts = texts(kept) + texts(rest)
    assert all_texts[:12] == [f"{i:03d}" for i in range(12)]
    assert "dropped" in all_texts[12]
    assert all_texts[-10:] == [f"{i:03d}" for i in range(90, 100)]
    assert sum(line.nbytes for line in kept + rest) <= 100 + len(all_texts[12]) + 1

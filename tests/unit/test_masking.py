"""Secrets masked in captured output across reads, the 64 KiB cut and lines (SPEC §14)."""

import json
import random

from agentfactory.runtime.lines import MAX_LINE_BYTES, Chunk, LineSplitter
from agentfactory.runtime.masking import Masker, mask_text, secret_forms

TOKEN = "tok-5Yq2Lr9Xw8Vb3Nc7"
PEM = (
    "-----BEGIN TEST KEY-----\nMIIBOgIBAAJBAKj34GkxFhD90vcNLYLInFEX6Ppy1tPf9Cnzj4p4WGeKLs1Pt8Qu\n-----END TEST KEY-----"
)


def lines_of(chunks: list[Chunk]) -> list[str]:
    return [line for chunk in chunks for line in chunk.text.split("\n")]


def feed_all(sp: LineSplitter, pieces: list[bytes]) -> list[Chunk]:
    out: list[Chunk] = []
    for piece in pieces:
        out.extend(sp.feed(1, piece))
    return out + sp.flush()


def test_a_secret_straddling_the_64k_cut_is_masked() -> None:
    line = b"x" * (MAX_LINE_BYTES - 6) + TOKEN.encode() + b"y" * 100 + b"\n"
    for pieces in (
        [line],
        [line[: MAX_LINE_BYTES - 3], line[MAX_LINE_BYTES - 3 :]],
        [line[:MAX_LINE_BYTES], line[MAX_LINE_BYTES:]],
    ):
        chunks = feed_all(LineSplitter([TOKEN]), pieces)
        assert "".join(lines_of(chunks)) == "x" * (MAX_LINE_BYTES - 6) + "***" + "y" * 100
        assert all(TOKEN[:4] not in c.text[-10:] and TOKEN[-4:] not in c.text[:10] for c in chunks)
        assert sum(c.raw_complete for c in chunks) == 1


def test_a_three_line_secret_printed_a_line_per_read_is_masked_line_for_line() -> None:
    sp = LineSplitter([PEM])
    out = sp.feed(1, b"key follows\n")
    assert lines_of(out) == ["key follows"], "an ordinary line is passed on at once"
    pem_lines = PEM.split("\n")
    assert sp.feed(1, pem_lines[0].encode() + b"\n") == []
    assert sp.feed(1, pem_lines[1].encode() + b"\n") == []
    out = sp.feed(1, pem_lines[2].encode() + b"\ndone\n")
    assert lines_of(out) == ["***", "***", "***", "done"]
    assert sum(c.raw_complete for c in out) == sum(c.lines for c in out) == 4


def test_a_line_that_only_starts_like_a_secret_is_released_when_the_next_line_differs() -> None:
    sp = LineSplitter([PEM])
    assert sp.feed(1, b"-----BEGIN TEST KEY-----\n") == []
    assert lines_of(sp.feed(1, b"not the key\n")) == ["-----BEGIN TEST KEY-----", "not the key"]
    assert sp.feed(1, b"-----BEGIN TEST KEY-----\n") == []
    assert lines_of(sp.flush()) == ["-----BEGIN TEST KEY-----"]


def test_the_other_forms_of_a_secret_are_masked() -> None:
    sp = LineSplitter([PEM + "\n", 'pa"ss\\word'])
    event = json.dumps({"event": "final", "content": f"here: {PEM}\n"}, ensure_ascii=False)
    out = feed_all(sp, [PEM.encode(), b"\n", event.encode() + b"\n", b'pass: "pa\\"ss\\\\word"\n'])
    assert lines_of(out) == ["***", "***", "***", '{"event": "final", "content": "here: ***"}', 'pass: "***"']
    assert "pa" not in mask_text('error: pa"ss\\word', ['pa"ss\\word'])


def test_masking_is_the_same_however_the_output_is_split() -> None:
    rng = random.Random(7)
    secrets = [TOKEN, PEM, "ab12ab12ab12X"]
    words = [TOKEN, PEM, "ab12ab12ab12X", "ab12ab12", "-----BEGIN TEST KEY-----\n", "tok-", "\n", "plain text "]
    for _ in range(200):
        stream = "".join(rng.choice(words) for _ in range(40)).encode()
        cuts = sorted(rng.sample(range(1, len(stream)), 8))
        pieces = [stream[a:b] for a, b in zip([0, *cuts], [*cuts, len(stream)], strict=True)]
        whole = lines_of(feed_all(LineSplitter(secrets), [stream]))
        split = lines_of(feed_all(LineSplitter(secrets), pieces))
        assert split == whole
        assert not any(s in "\n".join(split) for s in secret_forms(secrets))
        assert len(split) == stream.count(b"\n") + (not stream.endswith(b"\n"))


def test_what_is_held_back_stays_below_the_longest_secret() -> None:
    secret = "ab" * 2000 + "Z"
    m = Masker([secret])
    for _ in range(50):
        out = m.feed(b"ab" * 3000 + b"Y")  # near misses: every "ab" could start the secret
        assert secret.encode() not in out
        m.feed(b"ab" * 2000)
        assert m.held_bytes < len(secret)
    assert m.feed(b"Z\n").endswith(b"***\n")


def test_no_secrets_costs_nothing() -> None:
    m = Masker([" ", ""])
    data = b"abc\n"
    assert m.feed(data) is data

"""The checks an uploaded archive passes before it is kept (SPEC §9), and the artifact stream reader."""

from __future__ import annotations

import gzip
import hashlib
import io
import tarfile
from pathlib import Path

import pytest

from agentfactory.runtime.archives import DROPPED_PAX, ArchiveRefused, check_archive, read_artifacts
from agentfactory.store.blobs import LocalBlobs
from tests.support.archives import MIB, gzip_bomb, hostile, info, many_empty_files, tar_of

SCRATCH = 256 * MIB


def check(data: bytes, *, max_entries: int = 100_000) -> tuple[int, int]:
    s = check_archive(io.BytesIO(data), max_unpacked_bytes=SCRATCH, max_entries=max_entries)
    return s.files, s.unpacked_bytes


def test_an_ordinary_archive_passes_tar_and_gzip() -> None:
    raw = tar_of(
        (info("src/a.py"), b"print(1)\n"),
        (info("src", tarfile.DIRTYPE), None),
        (info("link", tarfile.SYMTYPE, "src/a.py"), None),
        (info("src/up", tarfile.SYMTYPE, "../src"), None),
        (info("hard", tarfile.LNKTYPE, "src/a.py"), None),
    )
    assert check(raw) == (1, 9)
    assert check(gzip.compress(raw)) == (1, 9)


@pytest.mark.parametrize("name", sorted(hostile()))
def test_hostile_archives_are_refused_naming_the_entry(name: str) -> None:
    data, entry = hostile()[name]
    with pytest.raises(ArchiveRefused) as refused:
        check(data)
    assert refused.value.code == "E_SCHEMA" and refused.value.status == 422
    assert repr(entry) in refused.value.message, refused.value.message
    assert refused.value.details[0]["entry"] == entry


def test_a_gzip_bomb_is_refused_past_the_scratch_size() -> None:
    bomb = gzip_bomb()
    assert len(bomb) < 2 * MIB
    with pytest.raises(ArchiveRefused, match="unpacks to more than"):
        check(bomb)


def test_too_many_entries_are_refused() -> None:
    data = b"".join(many_empty_files(1_001))
    assert check(data, max_entries=1_001) == (1_001, 0)
    with pytest.raises(ArchiveRefused, match="more than 1000 entries"):
        check(data, max_entries=1_000)


def test_not_an_archive() -> None:
    with pytest.raises(ArchiveRefused, match="not a tar"):
        check(b"hello, this is not a tar archive" * 40)
    with pytest.raises(ArchiveRefused):
        check(b"\x1f\x8b" + b"not really gzip" * 100)
    with pytest.raises(ArchiveRefused):
        check(gzip.compress(b"x" * 5000)[:-20])


def test_artifacts_past_the_bound_are_dropped(tmp_path: Path) -> None:
    dropped = info("out/late.bin")
    dropped.pax_headers = {DROPPED_PAX: "12345"}
    stream = tar_of(
        (info("out/a.bin"), b"a" * 600),
        (info("out/b.bin"), b"b" * 600),
        (info("/abs"), b"x"),
        (dropped, b""),
        (info("out/c.bin"), b"c" * 300),
    )
    blobs = LocalBlobs(tmp_path)
    got = read_artifacts(io.BytesIO(stream), blobs=blobs, key_of=lambda n: f"artifacts/1/{n}", max_bytes=1000)
    assert [(p, n, sha) for p, n, sha, _ in got.kept] == [
        ("out/a.bin", 600, hashlib.sha256(b"a" * 600).hexdigest()),
        ("out/c.bin", 300, hashlib.sha256(b"c" * 300).hexdigest()),
    ]
    assert got.dropped == [("out/b.bin", 600), ("out/late.bin", 12345)]
    assert blobs.open("artifacts/1/1").read() == b"c" * 300
    assert blobs.partials() == []

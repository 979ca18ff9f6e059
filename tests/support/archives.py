"""Hostile and ordinary tar archives, built cheaply (streamed, never a 10 GB file on disk)."""

from __future__ import annotations

import io
import tarfile
import zlib
from collections.abc import Iterator

MIB = 1024 * 1024


def tar_of(*members: tuple[tarfile.TarInfo, bytes | None], fmt: int = tarfile.PAX_FORMAT) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=fmt) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def info(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 0) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.size = kind, linkname, size
    return ti


def declared_only(name: str, size: int) -> bytes:
    """A header that declares `size` bytes (10 GB...) followed by nothing: the check refuses at the header."""
    return info(name, size=size).tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + b"\0" * 1024


def gzip_bomb(members: int = 3, each: int = 100 * MIB) -> bytes:
    """tar.gz of `members` files of zeros: a few hundred KiB that inflate to members x each."""
    gz = zlib.compressobj(9, zlib.DEFLATED, 31)
    out = []
    zeros = b"\0" * MIB
    for i in range(members):
        out.append(gz.compress(info(f"zeros{i}", size=each).tobuf(tarfile.USTAR_FORMAT)))
        for _ in range(each // MIB):
            out.append(gz.compress(zeros))
    out.append(gz.compress(b"\0" * 1024) + gz.flush())
    return b"".join(out)


def many_empty_files(count: int) -> Iterator[bytes]:
    """tar.gz of `count` empty files, streamed in pieces: one header template, its name and checksum patched."""
    template = bytearray(info("f0000000").tobuf(tarfile.USTAR_FORMAT))
    template[148:156] = b"        "
    base = sum(template) - sum(b"f0000000")
    gz = zlib.compressobj(1, zlib.DEFLATED, 31)
    head, tail = bytes(template[8:148]), bytes(template[156:])
    batch: list[bytes] = []
    for i in range(count):
        name = b"f%07d" % i
        batch.append(name + head + b"%06o\0 " % (base + sum(name)) + tail)
        if len(batch) == 20_000:
            yield gz.compress(b"".join(batch))
            batch.clear()
    yield gz.compress(b"".join(batch) + b"\0" * 1024) + gz.flush()


def hostile() -> dict[str, tuple[bytes, str]]:
    """name → (archive, the entry the refusal must name)."""
    return {
        "traversal": (tar_of((info("ok.txt"), b"x"), (info("../evil.txt"), b"x")), "../evil.txt"),
        "absolute": (tar_of((info("/etc/evil.txt"), b"x")), "/etc/evil.txt"),
        "symlink_out": (tar_of((info("passwd", tarfile.SYMTYPE, "/etc/passwd"), None)), "passwd"),
        "symlink_climbs": (tar_of((info("a/up", tarfile.SYMTYPE, "../../etc"), None)), "a/up"),
        "through_symlink": (
            tar_of((info("d", tarfile.SYMTYPE, "."), None), (info("d/x", tarfile.SYMTYPE, ".."), None)),
            "d/x",
        ),
        "hardlink_out": (tar_of((info("shadow", tarfile.LNKTYPE, "../../etc/shadow"), None)), "shadow"),
        "device": (tar_of((info("null", tarfile.CHRTYPE), None)), "null"),
        "fifo": (tar_of((info("pipe", tarfile.FIFOTYPE), None)), "pipe"),
        "sparse_10gb": (declared_only("huge.img", 10 * 1024**3), "huge.img"),
    }

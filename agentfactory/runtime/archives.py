"""Tar archives in and out of agents (SPEC §9): the checks an upload passes before it is kept, and
the reading of the tar stream an agent's runtime sends back with its artifacts.

Both read the archive as a stream (tarfile's `r|*`): never all of it in memory, never seeking, and
the checks stop at the first entry that is refused, naming it. Blocking: run on a thread.
"""

from __future__ import annotations

import hashlib
import io
import posixpath
import tarfile
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, BinaryIO

from agentfactory.errors import SchemaError
from agentfactory.store.blobs import CHUNK, BlobStore

DROPPED_PAX = "agentfactory.dropped"  # the runtime's header-only entry for a file left out (size bound)
MAX_PATH_CHARS = 4096


@dataclass(frozen=True)
class ArchiveSummary:
    files: int
    unpacked_bytes: int


class ArchiveRefused(SchemaError):
    """An upload's entry (or the archive as a whole) is refused; 422 E_SCHEMA naming it."""

    def __init__(self, message: str, entry: str | None = None):
        details = [{"loc": ["body"], "entry": entry, "reason": message}] if entry is not None else None
        super().__init__(f"archive refused: entry {entry!r}: {message}" if entry else f"archive refused: {message}",
                         details=details)  # fmt: skip


def _clean(name: str) -> str | None:
    """The entry's path relative to the workspace, or None when it is absolute or climbs out."""
    if not name or name.startswith("/") or "\x00" in name or len(name) > MAX_PATH_CHARS:
        return None
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if any(p == ".." for p in parts):
        return None
    return "/".join(parts)


class _Inflating(io.RawIOBase):
    """A gzip stream, inflated a bounded piece at a time (tarfile's own gzip reader copies ever larger
    buffers on a highly compressed stream: quadratic on a bomb); `limit` bounds the inflated total."""

    def __init__(self, f: BinaryIO, limit: int):
        self._f = f
        self._z = zlib.decompressobj(31)
        self._pending = b""
        self._limit = limit
        self.inflated = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = len(buffer)
        while True:
            if self._z.eof:
                rest = self._z.unused_data
                if not rest and not self._pending:
                    rest = self._f.read(CHUNK)
                if not rest:
                    return 0
                # Concatenated gzip members (pigz, some tar tools) continue the stream.
                self._z = zlib.decompressobj(31)
                self._pending = self._pending + rest if self._pending else rest
            data = self._pending or self._z.unconsumed_tail or self._f.read(CHUNK)
            self._pending = b""
            if not data:
                out = self._z.flush()
                if not out:
                    return 0
            else:
                out = self._z.decompress(data, n)
            if out:
                self.inflated += len(out)
                if self.inflated > self._limit:
                    raise ArchiveRefused(f"the archive inflates to more than {self._limit} bytes")
                buffer[: len(out)] = out
                return len(out)


def _open_stream(f: BinaryIO, inflated_limit: int) -> tarfile.TarFile:
    head = f.read(2)
    f.seek(0)
    source: Any = io.BufferedReader(_Inflating(f, inflated_limit), CHUNK) if head == b"\x1f\x8b" else f
    # tarfile's default buffer: its stream reader copies the buffer's rest on every header read.
    return tarfile.open(fileobj=source, mode="r|")


def check_archive(f: BinaryIO, *, max_unpacked_bytes: int, max_entries: int) -> ArchiveSummary:
    """Refuse (ArchiveRefused) an archive with an absolute path, a `..` component, a link that leads
    out of it (a symlink whose target resolves outside, a path through a symlink, a hardlink to
    anything but an earlier regular file of the archive), a device, a FIFO, more than `max_entries`
    entries, or more than `max_unpacked_bytes` of file contents (the sizes the headers declare count,
    sparse files at their full size, so a bomb is refused at its header, before it is inflated)."""
    files = entries = unpacked = 0
    symlinks: set[str] = set()
    regular: set[str] = set()
    # Headers (a PAX name, a long link...) add to what a bomb may inflate to, within reason.
    inflated_limit = max_unpacked_bytes + max_entries * 3 * tarfile.BLOCKSIZE + CHUNK
    try:
        archive = _open_stream(f, inflated_limit)
    except (tarfile.TarError, zlib.error, OSError, EOFError) as exc:
        raise ArchiveRefused(f"not a tar or tar.gz archive ({exc})") from None
    try:
        for member in archive:
            entries += 1
            if entries % 1024 == 0:
                archive.members.clear()  # type: ignore[attr-defined]  # a stream's members are not looked back at: bounded memory
            name = member.name
            if entries > max_entries:
                raise ArchiveRefused(f"more than {max_entries} entries", name)
            path = _clean(name)
            if path is None:
                raise ArchiveRefused("absolute paths and '..' components are not allowed", name)
            parents = path.split("/")[:-1]
            for i in range(1, len(parents) + 1):
                if "/".join(parents[:i]) in symlinks:
                    raise ArchiveRefused("a path through a symbolic link of the archive is not allowed", name)
            if member.ischr() or member.isblk():
                raise ArchiveRefused("device files are not allowed", name)
            if member.isfifo():
                raise ArchiveRefused("FIFOs are not allowed", name)
            if member.issym():
                target = member.linkname
                resolved = posixpath.normpath(posixpath.join(posixpath.dirname(path), target)) if target else ""
                if not target or target.startswith("/") or resolved == ".." or resolved.startswith("../"):
                    raise ArchiveRefused(f"symbolic link to {target!r} leads out of the archive", name)
                symlinks.add(path)
            elif member.islnk():
                linked = _clean(member.linkname)
                if linked is None or linked not in regular:
                    raise ArchiveRefused(
                        f"hard link to {member.linkname!r}, which is not an earlier file of the archive", name
                    )
            elif member.isfile():
                unpacked += member.size
                if unpacked > max_unpacked_bytes:
                    raise ArchiveRefused(
                        f"the archive unpacks to more than {max_unpacked_bytes} bytes (the agent's scratch space)",
                        name,
                    )
                files += 1
                regular.add(path)
            elif not member.isdir():
                raise ArchiveRefused(f"entries of type {member.type!r} are not allowed", name)
    except (tarfile.TarError, zlib.error) as exc:
        raise ArchiveRefused(f"the archive is damaged ({exc})") from None
    except (OSError, EOFError) as exc:  # a truncated or corrupt gzip stream
        raise ArchiveRefused(f"the archive is damaged ({type(exc).__name__}: {exc})") from None
    finally:
        archive.close()
    return ArchiveSummary(files=files, unpacked_bytes=unpacked)


@dataclass
class Collected:
    """What one agent's artifact stream held: kept files (path, bytes, sha256, blob key) and dropped
    ones (path, bytes)."""

    kept: list[tuple[str, int, str, str]] = field(default_factory=list)
    dropped: list[tuple[str, int]] = field(default_factory=list)

    @property
    def kept_bytes(self) -> int:
        return sum(k[1] for k in self.kept)


def read_artifacts(
    f: BinaryIO, *, blobs: BlobStore, key_of: Callable[[int], str], max_bytes: int, max_entries: int = 100_000
) -> Collected:
    """Keep the regular files of an agent's artifact tar stream in `blobs` (under `key_of(n)`), in
    order, while their total stays within `max_bytes`; list the rest (and the runtime's header-only
    dropped entries) as dropped. Anything that is not a regular file with a clean relative path is
    skipped. The bytes are hashed as they are copied: never held whole."""
    out = Collected()
    total = 0
    seen: set[str] = set()
    with tarfile.open(fileobj=f, mode="r|") as archive:
        for n, member in enumerate(archive):
            if n >= max_entries:
                break
            path = _clean(member.name)
            if path is None or path in seen or not member.isfile():
                continue
            seen.add(path)
            declared = member.pax_headers.get(DROPPED_PAX)
            if declared is not None:
                out.dropped.append((path, int(declared) if declared.isdigit() else 0))
                continue
            if total + member.size > max_bytes:
                out.dropped.append((path, member.size))
                continue
            source = archive.extractfile(member)
            if source is None:
                continue
            key = key_of(len(out.kept))
            writer = blobs.writer(key)
            digest = hashlib.sha256()
            try:
                while data := source.read(CHUNK):
                    digest.update(data)
                    writer.write(data)
            except BaseException:
                writer.abort()
                raise
            writer.commit()
            total += member.size
            out.kept.append((path, member.size, digest.hexdigest(), key))
    return out

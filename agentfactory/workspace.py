"""Files in and out on the client side (SPEC §9), shared by the CLI and the SDK: a directory tarred
as it is uploaded (without `.git` and what its `.gitignore` files ignore), and artifacts downloaded
and checked against their sha256. Needs only the standard library and `pathspec`."""

from __future__ import annotations

import os
import queue
import subprocess
import tarfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

import pathspec

from agentfactory.client_errors import ClientError

CHUNK = 1 << 20


class ArtifactMismatch(ClientError):
    """A downloaded artifact's bytes do not match its sha256, or its path would leave the download
    directory: nothing the caller should trust."""


def workspace_files(root: Path) -> list[str]:
    """The files of `root` to upload, relative and sorted: what git would track or add (`git
    ls-files --cached --others --exclude-standard`) when `root` is in a git work tree; else every
    file but `.git/` and what the directory's `.gitignore` files ignore (read with git's rules)."""
    try:
        out = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        ).stdout
        names = [n for n in out.decode("utf-8", "surrogateescape").split("\0") if n]
        return sorted(n for n in names if (root / n).is_file() or (root / n).is_symlink())
    except (OSError, subprocess.CalledProcessError):
        pass
    return _walk_ignoring(root)


def _walk_ignoring(root: Path) -> list[str]:
    patterns: list[str] = []  # every .gitignore's lines, rewritten relative to root, outermost first
    found: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root).replace(os.sep, "/")
        base = "" if rel_dir == "." else rel_dir + "/"
        if ".gitignore" in filenames:
            patterns += _rebased(root / base / ".gitignore", base)
        spec = pathspec.GitIgnoreSpec.from_lines(patterns)
        # an ignored directory is not entered: git cannot re-include a file inside one either
        dirnames[:] = sorted(d for d in dirnames if d != ".git" and not spec.match_file(f"{base}{d}/"))
        found += [f"{base}{name}" for name in filenames if not spec.match_file(f"{base}{name}")]
    return sorted(found)


def _rebased(path: Path, base: str) -> list[str]:
    """A `.gitignore` in directory `base` as patterns relative to the root: a pattern without a
    slash (but a trailing one) matches at any depth below `base`, one with a slash from `base`."""
    out = []
    for raw in path.read_text("utf-8", "surrogateescape").splitlines():
        line = raw.rstrip()
        if not line or line.startswith("#"):
            continue
        negate, line = (line.startswith("!"), line[1:] if line.startswith("!") else line)
        anchored = "/" in line.rstrip("/")
        line = line.lstrip("/")
        if base:
            line = f"{base}{line}" if anchored else f"{base}**/{line}"
        elif anchored:
            line = "/" + line
        out.append(("!" if negate else "") + line)
    return out


class _TarSink:
    """A file-like sink for tarfile: each write goes to a bounded queue a generator drains."""

    def __init__(self, q: queue.Queue[bytes | BaseException | None]):
        self._q = q

    def write(self, data: bytes) -> int:
        self._q.put(bytes(data))
        return len(data)


def tar_stream(root: Path, names: list[str], *, sent: Callable[[int], None] | None = None) -> Iterator[bytes]:
    """A tar.gz of `names` under `root`, produced on a thread while it is sent (bounded memory);
    `sent(n)` after each chunk. A file that cannot be read raises OSError."""
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)

    def produce() -> None:
        try:
            sink: Any = _TarSink(q)
            with tarfile.open(fileobj=sink, mode="w|gz", format=tarfile.PAX_FORMAT, bufsize=CHUNK) as tar:
                for name in names:
                    tar.add(root / name, arcname=name, recursive=False)
            q.put(None)
        except BaseException as exc:  # handed to the reader
            q.put(exc)

    threading.Thread(target=produce, name="tar-workspace", daemon=True).start()
    while (item := q.get()) is not None:
        if isinstance(item, BaseException):
            raise OSError(f"cannot read the workspace: {item}") from item
        if sent is not None:
            sent(len(item))
        yield item


class ArtifactSource(Protocol):
    def download_artifact(self, agent_id: str, path: str, dest: Path) -> str: ...


def artifact_dest(dest: Path, path: str) -> Path:
    """Where an artifact goes under `dest`; ArtifactMismatch for a path that would leave it."""
    rel = PurePosixPath(path)
    if rel.is_absolute() or ".." in rel.parts:
        raise ArtifactMismatch(f"artifact path {path!r} leaves the download directory")
    return dest.joinpath(*rel.parts)


def check_artifact(item: dict[str, Any], got: str) -> None:
    if got != item["sha256"]:
        raise ArtifactMismatch(f"artifact {item['path']}: sha256 {got} does not match {item['sha256']}")


def download_artifacts(client: ArtifactSource, agent_id: str, dest: Path, manifest: dict[str, Any]) -> list[str]:
    """Every kept artifact into `dest` with its path, each checked against its sha256; returns notes
    (files dropped over `max_artifact_bytes`). A path leaving `dest` or a mismatch is ArtifactMismatch."""
    for item in manifest.get("items") or []:
        check_artifact(item, client.download_artifact(agent_id, item["path"], artifact_dest(dest, item["path"])))
    return dropped_notes(manifest)


def dropped_notes(manifest: dict[str, Any]) -> list[str]:
    return [
        f"dropped (over max_artifact_bytes): {d['path']} ({d['bytes']} bytes)" for d in manifest.get("dropped") or []
    ]

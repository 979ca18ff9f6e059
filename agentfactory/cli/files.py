"""Files for `run --workspace/--artifact/--download` and `artifacts` (SPEC §9): a directory tarred
as it is uploaded (without .git and what .gitignore ignores), artifacts downloaded and verified."""

from __future__ import annotations

import os
import queue
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path, PurePosixPath
from typing import Any

from agentfactory.cli.options import EXIT_IO, CliError
from agentfactory.client import ApiClient

CHUNK = 1 << 20
EXIT_VERIFY = 65  # EX_DATAERR: an artifact's bytes do not match its sha256


def workspace_files(root: Path) -> list[str]:
    """The files of `root` to upload, relative: what git would track or add (`git ls-files
    --cached --others --exclude-standard`) when `root` is in a git work tree, else every file but
    `.git/`; sorted."""
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
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d != ".git")
        for name in filenames:
            found.append(os.path.relpath(os.path.join(dirpath, name), root))
    return sorted(found)


class _TarSink:
    """A file-like sink for tarfile: each write goes to a bounded queue a generator drains."""

    def __init__(self, q: queue.Queue[bytes | BaseException | None]):
        self._q = q

    def write(self, data: bytes) -> int:
        self._q.put(bytes(data))
        return len(data)


def tar_stream(root: Path, names: list[str], *, progress: bool = False) -> Iterator[bytes]:
    """A tar.gz of `names` under `root`, produced on a thread while it is sent (bounded memory)."""
    q: queue.Queue[bytes | BaseException | None] = queue.Queue(maxsize=16)
    total = sum((root / n).lstat().st_size for n in names)

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
    sent = 0
    while (item := q.get()) is not None:
        if isinstance(item, BaseException):
            raise CliError(f"cannot read the workspace: {item}", EXIT_IO)
        sent += len(item)
        if progress:
            sys.stderr.write(f"\ruploading {len(names)} files ({total / 2**20:.1f} MiB): {sent / 2**20:.1f} MiB sent")
            sys.stderr.flush()
        yield item
    if progress:
        sys.stderr.write("\n")


def upload_workspace(client: ApiClient, root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise CliError(f"--workspace {root}: not a directory", EXIT_IO)
    names = workspace_files(root)
    return client.upload(tar_stream(root, names, progress=sys.stderr.isatty()))


def download_artifacts(client: ApiClient, agent_id: str, dest: Path, manifest: dict[str, Any]) -> list[str]:
    """Every kept artifact into `dest` with its path, each checked against its sha256; returns notes
    (dropped files). A path that would leave `dest` or a mismatch is an error."""
    for item in manifest.get("items") or []:
        rel = PurePosixPath(item["path"])
        if rel.is_absolute() or ".." in rel.parts:
            raise CliError(f"artifact path {item['path']!r} leaves the download directory", EXIT_VERIFY)
        got = client.download_artifact(agent_id, item["path"], dest.joinpath(*rel.parts))
        if got != item["sha256"]:
            raise CliError(f"artifact {item['path']}: sha256 {got} does not match {item['sha256']}", EXIT_VERIFY)
    return [
        f"dropped (over max_artifact_bytes): {d['path']} ({d['bytes']} bytes)" for d in manifest.get("dropped") or []
    ]

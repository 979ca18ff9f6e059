"""Files for `run --workspace/--artifact/--download` and `artifacts` (SPEC §9): the CLI's side of
`agentfactory.workspace` (progress on a terminal, failures as exit codes)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from agentfactory import workspace
from agentfactory.cli.options import EXIT_IO, CliError
from agentfactory.client import ApiClient

EXIT_VERIFY = 65  # EX_DATAERR: an artifact's bytes do not match its sha256


def upload_workspace(client: ApiClient, root: Path) -> dict[str, Any]:
    if not root.is_dir():
        raise CliError(f"--workspace {root}: not a directory", EXIT_IO)
    names = workspace.workspace_files(root)
    progress = None
    if sys.stderr.isatty():
        total = sum((root / n).lstat().st_size for n in names)
        done = [0]

        def progress(n: int) -> None:
            done[0] += n
            sys.stderr.write(
                f"\ruploading {len(names)} files ({total / 2**20:.1f} MiB): {done[0] / 2**20:.1f} MiB sent"
            )
            sys.stderr.flush()

    try:
        return client.upload(workspace.tar_stream(root, names, sent=progress))
    except OSError as exc:
        raise CliError(str(exc), EXIT_IO) from exc
    finally:
        if progress is not None:
            sys.stderr.write("\n")


def download_artifacts(client: ApiClient, agent_id: str, dest: Path, manifest: dict[str, Any]) -> list[str]:
    """Every kept artifact into `dest` with its path, each checked against its sha256; returns notes
    (dropped files). A path that would leave `dest` or a mismatch is an error."""
    try:
        return workspace.download_artifacts(client, agent_id, dest, manifest)
    except workspace.ArtifactMismatch as exc:
        raise CliError(str(exc), EXIT_VERIFY) from exc

"""Print the runtime dependencies pinned in poetry.lock as a pip requirements file with hashes.

The same thing `poetry export --only main` does, without the export plugin: every package of the
`main` group at its locked version, with its environment marker and the hashes of its files, so
`pip wheel --require-hashes -r` fetches exactly what the lock says.

Usage: python scripts/lock_requirements.py [--no-hashes] [poetry.lock] > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path
from typing import Any


def main_marker(package: dict[str, Any]) -> str | None:
    markers = package.get("markers")
    if isinstance(markers, dict):
        return markers.get("main")
    return markers


def lock_requirements(lock: dict[str, Any], *, hashes: bool = True) -> list[str]:
    lines = []
    for package in sorted(lock["package"], key=lambda p: p["name"]):
        if "main" not in package.get("groups", ["main"]):
            continue
        line = f"{package['name']}=={package['version']}"
        marker = main_marker(package)
        if marker:
            line += f" ; {marker}"
        digests = [f["hash"] for f in package.get("files", [])] if hashes else []
        lines.append(" \\\n    ".join([line, *(f"--hash={d}" for d in digests)]))
    return lines


def main() -> None:
    args = sys.argv[1:]
    hashes = "--no-hashes" not in args
    paths = [a for a in args if a != "--no-hashes"]
    path = Path(paths[0] if paths else "poetry.lock")
    lock = tomllib.loads(path.read_text())
    sys.stdout.write(f"# generated from {path.name} by scripts/lock_requirements.py; do not edit\n")
    sys.stdout.write("\n".join(lock_requirements(lock, hashes=hashes)) + "\n")


if __name__ == "__main__":
    main()

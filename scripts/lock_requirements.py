"""Print the runtime dependencies pinned in poetry.lock as a pip requirements file with hashes.

The same thing `poetry export --only main --all-extras` does, without the export plugin: every
package of the `main` group at its locked version, with its environment marker and the hashes of its
files, so `pip wheel --require-hashes -r` fetches exactly what the lock says. The project's extras
(`server`, `postgres`, `mcp`) are all included unless `--extras a,b` names some: a marker's
`extra == "x"` is decided here (pip would read it as false in a requirements file).

Usage: python scripts/lock_requirements.py [--no-hashes] [--extras a,b] [poetry.lock] > requirements.txt
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path
from typing import Any

_EXTRA = re.compile(r"""extra\s*==\s*["']([^"']+)["']""")
# Always true and always false, in words every marker evaluator knows.
_TRUE, _FALSE = 'python_version >= "0"', 'python_version < "0"'


def main_marker(package: dict[str, Any], extras: set[str]) -> str | None:
    markers = package.get("markers")
    marker = markers.get("main") if isinstance(markers, dict) else markers
    if not marker:
        return None
    return _EXTRA.sub(lambda m: _TRUE if m.group(1) in extras else _FALSE, marker)


def lock_requirements(lock: dict[str, Any], *, hashes: bool = True, extras: set[str] | None = None) -> list[str]:
    chosen = set(lock.get("extras", {})) if extras is None else extras
    lines = []
    for package in sorted(lock["package"], key=lambda p: p["name"]):
        if "main" not in package.get("groups", ["main"]):
            continue
        line = f"{package['name']}=={package['version']}"
        marker = main_marker(package, chosen)
        if marker:
            line += f" ; {marker}"
        digests = [f["hash"] for f in package.get("files", [])] if hashes else []
        lines.append(" \\\n    ".join([line, *(f"--hash={d}" for d in digests)]))
    return lines


def main() -> None:
    args = sys.argv[1:]
    hashes = "--no-hashes" not in args
    extras: set[str] | None = None
    if "--extras" in args:
        i = args.index("--extras")
        extras = {e.strip() for e in args[i + 1].split(",") if e.strip()}
        del args[i : i + 2]
    paths = [a for a in args if a != "--no-hashes"]
    path = Path(paths[0] if paths else "poetry.lock")
    lock = tomllib.loads(path.read_text())
    sys.stdout.write(f"# generated from {path.name} by scripts/lock_requirements.py; do not edit\n")
    sys.stdout.write("\n".join(lock_requirements(lock, hashes=hashes, extras=extras)) + "\n")


if __name__ == "__main__":
    main()

"""The shape of the package a newcomer reads (issue 16): one name means one class, and no module is
so long that it holds more than one idea. Read from the source, nothing is imported."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "agentfactory"
MAX_LINES = 400
# Generated or declarative files where length is not a second idea: the migrations.
EXEMPT = ("store/migrations/",)


def modules() -> list[Path]:
    return [p for p in sorted(PACKAGE.rglob("*.py")) if not any(e in p.as_posix() for e in EXEMPT)]


def test_no_two_classes_share_a_name() -> None:
    where: dict[str, list[str]] = defaultdict(list)
    for path in modules():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ClassDef):
                where[node.name].append(str(path.relative_to(PACKAGE)))
    assert {name: paths for name, paths in where.items() if len(paths) > 1} == {}


def test_no_module_is_over_the_line_bound() -> None:
    long = {str(p.relative_to(PACKAGE)): n for p in modules() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert long == {}, f"modules over {MAX_LINES} lines: split them by idea"

"""`run --workspace DIR` and the SDK's `upload(DIR)` send what git would (SPEC §9: the directory
without `.git` and what its `.gitignore` ignores), in a git work tree or not: outside one, the
`.gitignore` files are read with git's rules, checked here against git itself on the same tree."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from agentfactory.workspace import workspace_files

TREE = {
    ".gitignore": "*.log\n/build/\n!keep.log\ncache/\ndocs/*.tmp\n# a comment\n\n",
    "README.md": "",
    "app.log": "",
    "keep.log": "",
    "build/out.bin": "",
    "src/build/generated.py": "",  # /build/ is anchored: this one stays
    "src/main.py": "",
    "src/debug.log": "",
    "src/cache/blob": "",
    "src/.gitignore": "secret.txt\n/local.cfg\n*.py[co]\n!important.pyc\n",
    "src/secret.txt": "",
    "src/deep/secret.txt": "",
    "src/local.cfg": "",
    "src/deep/local.cfg": "",  # /local.cfg is anchored to src/
    "src/x.pyc": "",
    "src/important.pyc": "",
    "docs/a.tmp": "",
    "docs/sub/b.tmp": "",
    "docs/guide.md": "",
    "empty-dir/.gitignore": "*\n",
    "empty-dir/anything": "",
}


def make_tree(root: Path) -> None:
    for rel, text in TREE.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)


def test_outside_a_work_tree_gitignore_files_are_read_as_git_reads_them(tmp_path: Path) -> None:
    plain, repo = tmp_path / "plain", tmp_path / "repo"
    make_tree(plain)
    found = workspace_files(plain)
    assert "app.log" not in found and "keep.log" in found and "build/out.bin" not in found
    assert "src/build/generated.py" in found and "src/deep/local.cfg" in found and "src/local.cfg" not in found
    assert "src/deep/secret.txt" not in found and "src/important.pyc" in found and "src/x.pyc" not in found
    assert "docs/a.tmp" not in found and "docs/sub/b.tmp" in found and "src/cache/blob" not in found
    if shutil.which("git") is None:
        pytest.skip("git is not installed: the comparison with git itself needs it")
    make_tree(repo)
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / ".git" / "HEAD").touch()
    assert workspace_files(repo) == found  # git's own answer for the same tree
    assert not any(name.startswith(".git/") for name in workspace_files(repo))


def test_a_directory_without_gitignore_is_sent_whole_but_dot_git(tmp_path: Path) -> None:
    (tmp_path / ".git").mkdir()
    (tmp_path / ".git" / "config").write_text("")
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "b.txt").write_text("")
    (tmp_path / "c.txt").write_text("")
    assert workspace_files(tmp_path) == ["a/b.txt", "c.txt"]

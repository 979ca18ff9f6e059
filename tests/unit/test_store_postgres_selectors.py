"""The metadata selector and the logs tail as PostgreSQL runs them (`->>`, the same answers as SQLite's
json_each), on a throwaway cluster of this machine's PostgreSQL on a Unix socket (no TCP port)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from agentfactory.store import queries
from agentfactory.store.engine import Store
from agentfactory.store.tables import LogChunkRow


def pg_bin(name: str) -> str | None:
    found = shutil.which(name)
    return found or next(iter(sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"), reverse=True)), None)


@pytest.fixture(scope="module")
def pg_store() -> Iterator[Store]:
    initdb, pg_ctl = pg_bin("initdb"), pg_bin("pg_ctl")
    if initdb is None or pg_ctl is None:
        pytest.skip("no PostgreSQL server binaries (initdb, pg_ctl) on this machine")
    # Not under pytest's tmp dirs: they are private to root, and the cluster's user must reach it.
    base = Path(tempfile.mkdtemp(prefix="af-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses root: run the cluster as the postgres user
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no postgres user to own a cluster")
        shutil.chown(base, "postgres")
        as_user = ["runuser", "-u", "postgres", "--"]
    data, sock = base / "data", base
    subprocess.run([*as_user, initdb, "-D", str(data), "-A", "trust", "-U", "af"], check=True, capture_output=True)
    opts = f"-k {sock} -c listen_addresses='' -p 55433"
    subprocess.run([*as_user, pg_ctl, "-D", str(data), "-o", opts, "-l", str(base / "log"), "-w", "start"],
                   check=True, capture_output=True, timeout=60)  # fmt: skip
    store = Store(f"postgresql+psycopg://af@/postgres?host={sock}&port=55433")
    try:
        store.migrate()
        yield store
    finally:
        store.dispose()
        subprocess.run([*as_user, pg_ctl, "-D", str(data), "-m", "immediate", "stop"], capture_output=True, timeout=60)
        shutil.rmtree(base, ignore_errors=True)


def _agent(store: Store, agent_id: str, metadata: dict[str, Any]) -> int:
    now = time.time()
    values = dict(id=agent_id, key_id="key_t", status="succeeded", model="echo", tools=[], prompt="p", env={},
                  secrets={}, meta=metadata, ttl_seconds=60, token_budget=1, created_at=now,
                  expires_at=now + 60)  # fmt: skip

    def insert(*, session: Any) -> int:
        return queries.insert_agent(session=session, **values).pk

    with store.session() as s:
        pk = insert(session=s)
        s.commit()
    return pk


def test_the_metadata_selector_on_postgresql(pg_store: Store) -> None:
    _agent(pg_store, "ag_a", {"ci_run": "42", "job": "lint"})
    _agent(pg_store, "ag_b", {"ci_run": 42, "flag": True, "ratio": 1.5, "none": None, "a.b": "dotted"})
    _agent(pg_store, "ag_c", {"ci_run": "420"})

    def ids(*pairs: tuple[str, str]) -> list[str]:
        rows = pg_store.call(queries.list_agents, key_id="key_t", status=None, limit=10, before_pk=None, metadata=pairs)
        return [r.id for r in rows]

    assert ids(("ci_run", "42")) == ["ag_b", "ag_a"]
    assert ids(("ci_run", "42"), ("job", "lint")) == ["ag_a"]
    assert (
        ids(("flag", "true")) == ["ag_b"] and ids(("ratio", "1.5")) == ["ag_b"] and ids(("a.b", "dotted")) == ["ag_b"]
    )
    assert ids(("none", "null")) == [] and ids(("none", "")) == [] and ids(("missing", "42")) == []


def test_the_logs_tail_on_postgresql(pg_store: Store) -> None:
    pk = _agent(pg_store, "ag_logs", {})
    with pg_store.session() as s:
        for first in range(1, 1001, 10):  # 100 chunks of 10 lines
            text = "\n".join(f"line {i}" for i in range(first, first + 10))
            s.add(LogChunkRow(agent_pk=pk, first_seq=first, last_seq=first + 9, ts=1.0, stream=1, text=text))
        s.commit()
    rows = pg_store.call(queries.read_last_log_lines, agent_pk=pk, count=15)
    assert [r[0] for r in rows] == list(range(986, 1001)) and rows[-1][3] == "line 1000"
    assert len(pg_store.call(queries.read_last_log_lines, agent_pk=pk, count=5000)) == 1000

"""A PostgreSQL server of the test run's own: Debian's binaries (apt `postgresql`, no registry), a
temporary cluster on a loopback port, run as the `postgres` user (PostgreSQL refuses root).

`LocalPostgres().start()` gives an admin URL; `new_database()` a fresh, empty database per server
under test. fsync is off: a test cluster needs no durability across a machine crash.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

from tests.support.server import free_port, wait_until


def pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if not found:
        raise RuntimeError(
            "no PostgreSQL binaries: apt-get install postgresql (scripts/setup.sh with AGENTFACTORY_WITH_TEST_TOOLS=1)"
        )
    return found[-1]


def as_postgres(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["runuser", "-u", "postgres", "--", *args], capture_output=True, text=True, check=False)


class LocalPostgres:
    def __init__(self) -> None:
        # pytest's own temporary directories are 0700 root: the postgres user could not enter them.
        self.root = Path(tempfile.mkdtemp(prefix="afpg-", dir="/tmp"))
        self.data = self.root / "data"
        self.port = free_port()
        self.admin_url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> LocalPostgres:
        os.chmod(self.root, 0o755)
        shutil.chown(self.root, "postgres", "postgres")
        out = as_postgres(pg_bin("initdb"), "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8")
        if out.returncode != 0:
            raise RuntimeError(f"initdb failed: {out.stderr}")
        options = (
            f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root} -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=400"
        )
        out = as_postgres(
            pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.root / "log"), "-o", options, "-w", "start"
        )
        if out.returncode != 0:
            raise RuntimeError(f"pg_ctl start failed: {out.stderr} {(self.root / 'log').read_text()[-2000:]}")
        wait_until(self._answers, timeout=30, what="postgres answers")
        return self

    def _answers(self) -> bool:
        return as_postgres(pg_bin("pg_isready"), "-h", "127.0.0.1", "-p", str(self.port)).returncode == 0

    def new_database(self, prefix: str = "af") -> str:
        """A fresh database; its SQLAlchemy URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f'CREATE DATABASE "{name}"')
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"

    def stop(self) -> None:
        as_postgres(pg_bin("pg_ctl"), "-D", str(self.data), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.root, ignore_errors=True)

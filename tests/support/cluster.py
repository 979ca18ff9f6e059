"""Several real `agentfactory serve` replicas on one PostgreSQL database, behind a real HAProxy
(Debian's), for the high-availability tests (issue 17, SPEC §13).

The replicas differ only by their port, as SPEC §13 promises: same database, same instance label,
same gateway socket directory (one of them serves the socket; the others take over when it dies).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import uuid
from pathlib import Path
from typing import Any

import httpx

from tests.support.postgres import LocalPostgres
from tests.support.server import ServerProcess, free_port, wait_until

HAPROXY_CFG = """\
global
    maxconn 4096
defaults
    mode http
    timeout connect 2s
    timeout client 1h
    timeout server 1h
    timeout tunnel 1h
    option redispatch
    retries 2
frontend api
    bind 127.0.0.1:{port}
    default_backend replicas
backend replicas
    balance roundrobin
    option httpchk GET /health
    default-server inter 500ms fall 2 rise 1
{servers}
"""


class Cluster:
    def __init__(
        self,
        root: Path,
        postgres: LocalPostgres,
        *,
        replicas: int = 3,
        catalog: Path | None = None,
        env: dict[str, str] | None = None,
        separate_hosts: bool = False,
        shared_files: bool = True,
    ):
        self.root = root
        self.database_url = postgres.new_database("ha")
        self.instance = "ha-" + uuid.uuid4().hex[:8]
        self.admin_key = "af_admin_" + uuid.uuid4().hex
        shared = {
            "AGENTFACTORY_DATABASE_URL": self.database_url,
            "AGENTFACTORY_INSTANCE_ID": self.instance,
            "AGENTFACTORY_ADMIN_KEY": self.admin_key,
            "AGENTFACTORY_GATEWAY_SOCKET_DIR": str(root / "gw"),
            **(env or {}),
        }
        if shared_files:  # one directory (the database blob store stages writes there); else each its own
            shared["AGENTFACTORY_FILES_DIR"] = str(root / "files")
        self.replicas: list[ServerProcess] = []
        for i in range(replicas):
            work = root / f"r{i}"
            work.mkdir(parents=True, exist_ok=True)
            host = {"AGENTFACTORY_REPLICA_HOST": f"machine-{i}"} if separate_hosts else {}
            files = {} if shared_files else {"AGENTFACTORY_FILES_DIR": str(work / "files")}
            srv = ServerProcess(work, catalog=catalog, env={**shared, **host, **files})
            srv.admin_key, srv.instance = self.admin_key, self.instance
            self.replicas.append(srv)
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.haproxy: subprocess.Popen[bytes] | None = None

    def start(self) -> Cluster:
        for srv in self.replicas:
            srv.start()
        servers = "\n".join(f"    server r{i} 127.0.0.1:{s.port} check" for i, s in enumerate(self.replicas))
        cfg = self.root / "haproxy.cfg"
        cfg.write_text(HAPROXY_CFG.format(port=self.port, servers=servers))
        log = open(self.root / "haproxy.log", "ab")  # noqa: SIM115 - kept open for the child's life
        self.haproxy = subprocess.Popen(
            [shutil.which("haproxy") or "haproxy", "-f", str(cfg), "-db"], stdout=log, stderr=log
        )
        wait_until(self._lb_answers, timeout=30, what="haproxy answers")
        return self

    def _lb_answers(self) -> bool:
        try:
            return httpx.get(self.url + "/health", timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    def client(self, key: str | None = None, timeout: float = 30) -> httpx.Client:
        headers = {"Authorization": f"Bearer {key or self.admin_key}"}
        return httpx.Client(base_url=self.url, headers=headers, timeout=timeout)

    def stop(self) -> None:
        if self.haproxy is not None and self.haproxy.poll() is None:
            self.haproxy.send_signal(signal.SIGTERM)
            self.haproxy.wait(10)
        for srv in self.replicas:
            srv.stop()
        for srv in self.replicas[:1]:
            srv.cleanup_containers()

    def ready(self, srv: ServerProcess) -> dict[str, Any]:
        return httpx.get(srv.url + "/ready", timeout=5).json()  # type: ignore[no-any-return]

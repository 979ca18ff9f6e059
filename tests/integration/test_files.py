"""Files in and out (SPEC §9) end to end: a real server, real containers, the `sh` model running
the prompt as a shell command in the agent's workspace.

The blob store is the server's default: files on SQLite, the database on PostgreSQL (`make test-pg`
runs this file again there); AGENTFACTORY_FILES_STORE=db in the test's environment puts SQLite's
blobs in the database too."""

from __future__ import annotations

import hashlib
import io
import os
import subprocess
import sys
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.fakes.fake_openai import FakeOpenAI
from tests.integration.test_memory_bounds import RSS_BOUND_MB, PeakRss, rss_mb
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, write_catalog
from tests.support.archives import MIB, gzip_bomb, hostile, many_empty_files
from tests.support.db import rows
from tests.support.server import ServerProcess, all_log_lines, wait_terminal, wait_until
from tests.support.sse import iter_events

pytestmark = pytest.mark.docker
MAX_ARTIFACT_BYTES = 64 * MIB
MAX_ENTRIES = 20_000  # the default is 100,000; tarfile reads ~10k headers a second on a busy CI machine


@pytest.fixture(scope="module")
def srv(tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI, docker_engine: None) -> Iterator[ServerProcess]:
    work = tmp_path_factory.mktemp("files-server")
    catalog = write_catalog(work / "catalog.json", upstream, limits={"max_artifact_bytes": MAX_ARTIFACT_BYTES})
    server = ServerProcess(
        work,
        catalog=catalog,
        env={
            UPSTREAM_KEY_ENV: UPSTREAM_KEY,
            "AGENTFACTORY_ARTIFACT_GRACE_SECONDS": "10",
            "AGENTFACTORY_MAX_UPLOAD_ENTRIES": str(MAX_ENTRIES),
        },
    ).start()
    try:
        yield server
    finally:
        server.stop()
        server.cleanup_containers()


def blob_dir(server: ServerProcess) -> Path:
    return server.workdir / "agentfactory.db.files"


def files_in_db(server: ServerProcess) -> bool:
    store = server.env.get("AGENTFACTORY_FILES_STORE", "auto")
    return store == "db" or (store == "auto" and not server.env["AGENTFACTORY_DATABASE_URL"].startswith("sqlite"))


def stored_uploads(server: ServerProcess) -> set[str]:
    """The uploads the server's blob store holds (files, or `blobs` rows)."""
    if files_in_db(server):
        found = rows(server.env["AGENTFACTORY_DATABASE_URL"], "SELECT key FROM blobs WHERE key >= 'uploads/'")
        return {k for (k,) in found if k.startswith("uploads/")}
    uploads = blob_dir(server) / "uploads"
    return {p.name for p in uploads.iterdir()} if uploads.exists() else set()


def staged(server: ServerProcess) -> list[Path]:
    """Writes being staged or left behind (the local store's, or the database store's staging)."""
    return [p for p in (blob_dir(server) / ".tmp").rglob("*") if p.is_file()]


def new_key(server: ServerProcess) -> str:
    with server.client() as admin:
        r = admin.post("/keys", json={"name": "files-" + os.urandom(3).hex()})
        assert r.status_code == 201, r.text
        return str(r.json()["key"])


def launch(client: httpx.Client, command: str, **body: Any) -> dict[str, Any]:
    r = client.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": command, **body})
    assert r.status_code == 201, r.text
    return dict(r.json())


def stdout_text(client: httpx.Client, agent_id: str) -> str:
    return "\n".join(line["text"] for line in all_log_lines(client, agent_id))


def workspace_tree(root: Path, files: int, total: int) -> dict[str, bytes]:
    """`files` files of random bytes, `total` bytes in all, in nested directories."""
    each = total // files
    tree = {}
    for i in range(files):
        rel = f"src/d{i % 50:02d}/sub{i % 7}/file{i:05d}.bin"
        data = os.urandom(each)
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
        tree[rel] = data
    return tree


def tar_dir(root: Path) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(root, arcname=".")
    return buf.getvalue()


def test_a_50_mib_workspace_round_trips_and_100_artifacts_come_back(srv: ServerProcess, tmp_path: Path) -> None:
    tree = workspace_tree(tmp_path / "ws", 5000, 50 * MIB)
    body = tar_dir(tmp_path / "ws")
    with srv.client(new_key(srv), timeout=120) as c:
        up = c.post("/uploads", content=body, headers={"Content-Type": "application/x-tar"})
        assert up.status_code == 201, up.text
        upload = up.json()
        assert upload["id"].startswith("up_") and upload["files"] == 5000
        assert upload["bytes"] == len(body) and upload["sha256"] == hashlib.sha256(body).hexdigest()
        listing = "".join(f"{hashlib.sha256(tree[p]).hexdigest()}  ./{p}\n" for p in sorted(tree))
        expected = hashlib.sha256(listing.encode()).hexdigest()
        command = (
            "pwd; stat -c 'owner=%u' src/d00/sub0/file00000.bin; "
            "find . -type f | LC_ALL=C sort | xargs sha256sum | sha256sum; "
            "mkdir -p out/deep && for i in $(seq 1 100); do head -c $((i * 97)) /dev/urandom > out/deep/a$i.txt; done; "
            "echo not-wanted > skip.txt"
        )
        agent = launch(c, command, workspace=upload["id"], artifacts=["out/**"], ttl_seconds=120)
        done = wait_terminal(c, agent["id"], timeout=120)
        text = stdout_text(c, agent["id"])
        assert done["status"] == "succeeded", (done, text[-2000:])
        assert "/scratch/workspace" in text and "owner=10001" in text
        assert expected in text, text[-2000:]
        manifest = c.get(f"/agents/{agent['id']}/artifacts").json()
        assert manifest["complete"] is True and manifest["dropped"] == []
        assert sorted(i["path"] for i in manifest["items"]) == sorted(f"out/deep/a{i}.txt" for i in range(1, 101))
        got: dict[str, bytes] = {}
        for item in manifest["items"]:
            r = c.get(f"/agents/{agent['id']}/artifacts/{item['path']}")
            assert r.status_code == 200 and r.headers["etag"] == f'"{item["sha256"]}"'
            assert hashlib.sha256(r.content).hexdigest() == item["sha256"] and len(r.content) == item["bytes"]
            got[item["path"]] = r.content
        ranged = c.get(f"/agents/{agent['id']}/artifacts/out/deep/a100.txt", headers={"Range": "bytes=10-19"})
        assert ranged.status_code == 206 and ranged.content == got["out/deep/a100.txt"][10:20]
        assert ranged.headers["content-range"] == "bytes 10-19/9700"
        tgz = c.get(f"/agents/{agent['id']}/artifacts.tar.gz")
        assert tgz.status_code == 200
        with tarfile.open(fileobj=io.BytesIO(tgz.content), mode="r:gz") as tar:
            members = {m.name: tar.extractfile(m).read() for m in tar if m.isfile()}  # type: ignore[union-attr]
        assert members == got
        result = c.get(f"/agents/{agent['id']}/result").json()
        assert len(result["artifacts"]["items"]) == 100
    metrics = httpx.get(srv.url + "/metrics").text
    assert "agentfactory_upload_bytes_total" in metrics and "agentfactory_artifact_bytes_total" in metrics


def test_artifacts_survive_ttl_expiry_and_delete(srv: ServerProcess) -> None:
    command = "mkdir -p out && echo partial > out/partial.txt && echo written && sleep 600"
    with srv.client(new_key(srv)) as c:
        expiring = launch(c, command, artifacts=["out/*.txt"], ttl_seconds=300)
        deleted = launch(c, command, artifacts=["out/*.txt"], ttl_seconds=300)
        for agent in (expiring, deleted):
            wait_until(lambda a=agent: "written" in stdout_text(c, a["id"]), timeout=60, what="the file written")
        # The TTL runs out one second from now, while the agent sleeps.
        assert c.post(f"/agents/{expiring['id']}/ttl", json={"ttl_seconds": 1}).status_code == 200
        assert c.delete(f"/agents/{deleted['id']}").status_code in (200, 202)
        for agent, status in ((expiring, "expired"), (deleted, "cancelled")):
            done = wait_terminal(c, agent["id"], timeout=60)
            assert done["status"] == status, done
            manifest = c.get(f"/agents/{agent['id']}/artifacts").json()
            assert [i["path"] for i in manifest["items"]] == ["out/partial.txt"], manifest
            body = c.get(f"/agents/{agent['id']}/artifacts/out/partial.txt")
            assert body.content == b"partial\n"
            # The event log tells a follower the artifacts are ready, right after the agent finished.
            params = {"agent_id": agent["id"], "after": 0, "follow": "false"}
            with c.stream("GET", "/events", params=params) as r:
                types = [ev.event for ev in iter_events(r)]
            assert types == ["agent.started", "agent.finished", "agent.artifacts_ready"], types


def test_artifacts_past_the_bound_are_listed_as_dropped(srv: ServerProcess) -> None:
    # 4 files of 32 MiB: twice the catalog's 64 MiB bound.
    command = "mkdir -p big && for i in 1 2 3 4; do head -c 33554432 /dev/urandom > big/f$i.bin; done"
    assert srv.proc is not None
    before = rss_mb(srv.proc.pid)
    with srv.client(new_key(srv), timeout=60) as c, PeakRss(srv.proc.pid) as rss:
        agent = launch(c, command, artifacts=["big/*"])
        assert wait_terminal(c, agent["id"], timeout=90)["status"] == "succeeded"
        manifest = c.get(f"/agents/{agent['id']}/artifacts").json()
        assert [i["path"] for i in manifest["items"]] == ["big/f1.bin", "big/f2.bin"]
        assert manifest["dropped"] == [
            {"path": "big/f3.bin", "bytes": 32 * MIB},
            {"path": "big/f4.bin", "bytes": 32 * MIB},
        ]
        for item in manifest["items"]:  # served back a chunk at a time
            with c.stream("GET", f"/agents/{agent['id']}/artifacts/{item['path']}") as r:
                digest = hashlib.sha256()
                for data in r.iter_bytes():
                    digest.update(data)
            assert digest.hexdigest() == item["sha256"]
    # Neither the 128 MiB written nor the 64 MiB kept is ever held whole (README, "Memory bounds"): the
    # server grows by what its threads' allocations keep (~25 MB on PostgreSQL), far below the bound.
    print(f"2 x max_artifact_bytes: server RSS {before:.0f} MB before, {rss.peak:.0f} MB at its peak")
    assert rss.peak < RSS_BOUND_MB and rss.peak - before < MAX_ARTIFACT_BYTES / MIB * 3 / 4, (before, rss.peak)
    metrics = httpx.get(srv.url + "/metrics").text
    assert "agentfactory_artifacts_dropped_total 2.0" in metrics


def test_hostile_archives_are_refused_and_leave_nothing(srv: ServerProcess) -> None:
    cases = {name: (data, entry) for name, (data, entry) in hostile().items()}
    cases["gzip_bomb"] = (gzip_bomb(), "zeros2")
    before = stored_uploads(srv)
    with srv.client(new_key(srv), timeout=120) as c:
        for name, (data, entry) in cases.items():
            r = c.post("/uploads", content=data)
            assert r.status_code == 422, (name, r.text)
            err = r.json()["error"]
            assert err["code"] == "E_SCHEMA" and repr(entry) in err["message"], (name, err)
        # A million empty files, streamed (chunked): refused at the entry bound.
        r = c.post("/uploads", content=many_empty_files(1_000_000))
        assert r.status_code == 422 and f"more than {MAX_ENTRIES} entries" in r.json()["error"]["message"], r.text
    assert stored_uploads(srv) == before
    assert staged(srv) == []


def test_another_keys_upload_and_artifacts(srv: ServerProcess) -> None:
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w:gz") as tar:
        ti = tarfile.TarInfo("hello.txt")
        ti.size = 5
        tar.addfile(ti, io.BytesIO(b"hello"))
    with srv.client(new_key(srv)) as alice, srv.client(new_key(srv)) as bob:
        up = alice.post("/uploads", content=data.getvalue(), headers={"Content-Type": "application/gzip"})
        assert up.status_code == 201, up.text
        r = bob.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": "ls", "workspace": up.json()["id"]})
        assert r.status_code == 422 and r.json()["error"]["code"] == "E_SCHEMA"
        agent = launch(alice, "cat hello.txt > out.txt", workspace=up.json()["id"], artifacts=["out.txt"])
        assert wait_terminal(alice, agent["id"], timeout=60)["status"] == "succeeded"
        assert alice.get(f"/agents/{agent['id']}/artifacts/out.txt").content == b"hello"
        for path in ("/artifacts", "/artifacts/out.txt", "/artifacts.tar.gz"):
            r = bob.get(f"/agents/{agent['id']}{path}")
            assert r.status_code == 404 and r.json()["error"]["code"] == "E_NOT_FOUND", (path, r.text)


def test_cli_workspace_artifact_download(srv: ServerProcess, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    (repo / "src").mkdir(parents=True)
    (repo / "src" / "main.py").write_text("print('hi')\n")
    (repo / "build.log").write_text("ignored\n")
    (repo / ".gitignore").write_text("*.log\n")
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTFACTORY_")}
    env |= {"AGENTFACTORY_URL": srv.url, "AGENTFACTORY_API_KEY": new_key(srv)}
    out = tmp_path / "out"
    command = "ls -a > review/listing.txt 2>/dev/null || (mkdir review && ls -a . src > review/listing.txt)"
    proc = subprocess.run(
        [sys.executable, "-m", "agentfactory", "run", "-m", "sh", "-t", "shell", "--workspace", str(repo),
         "--artifact", "review/*.txt", "--download", str(out), command],
        capture_output=True, text=True, timeout=120, env=env, check=False,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-2000:]
    listing = (out / "review" / "listing.txt").read_text()
    assert "main.py" in listing and ".gitignore" in listing
    assert "build.log" not in listing and ".git\n" not in listing

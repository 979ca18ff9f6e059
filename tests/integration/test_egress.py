"""Issue 19 item 1 (SPEC §14): an agent with a network reaches the public internet only.

From inside network agents (the `sh` model runs the prompt with the shell tool; `FETCH` prompts use
browser_server), every attack of the issue is tried: the host on its bridge address and its other
addresses (a port this test listens on), a Docker API on TCP 2375/2376 and the Docker socket, another
agent, a cloud-metadata host, a private-range host, UDP and IPv6 to the host; a "public" host must be
reachable and DNS must resolve through a public resolver. No test packet leaves this machine: every
target is the host itself or a host of `tests/fakes/internet.py`'s namespace (see there).

The same probe runs first in a plain container on the same bridge as today's main leaves it (ICC off,
no egress rules): the attacks must succeed there, so the test proves it can see them.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import secrets
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from agentfactory.backends import egress
from tests.fakes.fake_openai import FakeOpenAI, completion, tool_call, tool_messages
from tests.fakes.internet import METADATA, PRIVATE, PUBLIC, SetupFailed, StandInInternet
from tests.support.agents import UPSTREAM_KEY, UPSTREAM_KEY_ENV, write_catalog
from tests.support.server import ServerProcess, all_log_lines, free_port, wait_terminal, wait_until

pytestmark = pytest.mark.docker

RUNTIMES = ("runc", "runsc")
IMAGE = os.environ.get("AGENTFACTORY_RUNTIME_IMAGE", "agentfactory-runtime:latest")  # what the servers run
PEER_PORT = 8080
NET_TOOLS = ["shell", "browser_server"]
INTERNET_PORT = 8080
DOCKER_API_PORTS = (2375, 2376)

PROBE = r"""python3 - '{config}' <<'EOF'
import errno, json, os, socket, stat, sys
cfg = json.loads(sys.argv[1])
def why(e):
    if isinstance(e, socket.timeout):
        return "timeout"
    return errno.errorcode.get(e.errno, type(e).__name__) if e.errno else type(e).__name__
def say(name, result):
    print("PROBE %s=%s" % (name, result), flush=True)
for name, host, port in cfg["tcp"]:
    try:
        socket.create_connection((host, port), timeout=3).close()
        say(name, "connected")
    except OSError as e:
        say(name, why(e))
for name, host, port in cfg["udp"]:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(2)
    try:
        s.sendto(b"ping", (host, port))
        s.recvfrom(64)
        say(name, "reply")
    except socket.timeout:
        say(name, "no reply")
    except OSError as e:
        say(name, why(e))
for name, addr, port in cfg["v6"]:
    try:
        info = socket.getaddrinfo(addr + "%eth0", port, socket.AF_INET6, socket.SOCK_STREAM)[0]
        s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
        s.settimeout(3)
        s.connect(info[4])
        say(name, "connected")
    except OSError as e:
        say(name, why(e))
for host in cfg["dns"]:
    try:
        say("dns " + host, ",".join(sorted({a[4][0] for a in socket.getaddrinfo(host, 80, socket.AF_INET)})))
    except OSError as e:
        say("dns " + host, "failed")
found = []
for root, dirs, files in os.walk("/"):
    if root == "/":
        dirs[:] = [d for d in dirs if d not in ("proc", "sys")]
    for f in files:
        p = os.path.join(root, f)
        try:
            if stat.S_ISSOCK(os.lstat(p).st_mode):
                found.append(p)
        except OSError:
            pass
say("unix sockets", ",".join(sorted(found)) or "none")
docker_socket = any(os.path.exists(p) for p in ("/var/run/docker.sock", "/run/docker.sock"))
say("docker.sock", "present" if docker_socket else "absent")
if "/run/agentfactory/gateway.sock" in found:
    s = socket.socket(socket.AF_UNIX)
    s.settimeout(3)
    s.connect("/run/agentfactory/gateway.sock")
    s.sendall(b"GET /version HTTP/1.0\r\nHost: docker\r\n\r\n")
    answer = s.recv(65536)
    status = answer.split(b"\r\n")[0].decode()
    say("gateway socket speaks Docker API", "yes" if b"ApiVersion" in answer else "no (" + status + ")")
EOF"""


def docker(*args: str, check: bool = True) -> str:
    done = subprocess.run(["docker", *args], capture_output=True, text=True, check=False, timeout=120)
    if check and done.returncode != 0:
        raise AssertionError(f"docker {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout.strip()


def ip_json(*args: str) -> list[dict[str, Any]]:
    out = subprocess.run(["ip", "-j", *args], capture_output=True, text=True, check=True).stdout
    return json.loads(out or "[]")  # type: ignore[no-any-return]


def shell_or_fetch() -> Any:
    """The `sh` model: `FETCH url...` calls browser_server once per URL, any other prompt runs as a shell command."""

    def respond(body: Any) -> dict[str, Any]:
        if tool_messages(body):
            return completion("done", usage=(5, 1))
        prompt = next(m["content"] for m in body["messages"] if m.get("role") == "user")
        if prompt.startswith("FETCH "):
            calls = [tool_call("browser_server", {"url": url}) for url in prompt.split()[1:]]
        else:
            calls = [tool_call("shell", {"command": prompt})]
        return completion(None, calls, usage=(5, 1))

    return respond


class HostListener:
    """TCP (IPv4 and IPv6) and UDP echo on this host, on all addresses: who connected, by source."""

    def __init__(self, tcp_ports: list[int], udp_host: str, udp_port: int):
        self.peers: list[tuple[str, int, str]] = []  # (kind, port, source address)
        self._socks: list[socket.socket] = []
        self.tcp_ports: list[int] = []
        for port in tcp_ports:
            for family, any_addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                s = socket.socket(family, socket.SOCK_STREAM)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                if family == socket.AF_INET6:
                    s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                try:
                    s.bind((any_addr, port))
                except OSError:  # something else listens there: still probed, just not counted
                    s.close()
                    continue
                s.listen(64)
                self._socks.append(s)
                self.tcp_ports.append(port)
                threading.Thread(target=self._accept, args=(s, port), daemon=True).start()
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind((udp_host, udp_port))
        self._socks.append(u)
        threading.Thread(target=self._echo, args=(u, udp_port), daemon=True).start()

    def _accept(self, s: socket.socket, port: int) -> None:
        with contextlib.suppress(OSError):
            while True:
                conn, peer = s.accept()
                self.peers.append(("tcp", port, peer[0]))
                conn.close()

    def _echo(self, u: socket.socket, port: int) -> None:
        with contextlib.suppress(OSError):
            while True:
                data, peer = u.recvfrom(64)
                if not peer:  # closed
                    return
                self.peers.append(("udp", port, peer[0]))
                u.sendto(data, peer)

    def from_subnet(self, subnet: str) -> list[tuple[str, int, str]]:
        net = ipaddress.ip_network(subnet)
        return [p for p in self.peers if ipaddress.ip_address(p[2].removeprefix("::ffff:")) in net]

    def close(self) -> None:
        for s in self._socks:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()


@dataclass
class Lab:
    network: str
    subnet: str
    gateway: str
    bridge: str
    host_port: int
    host: HostListener
    internet: StandInInternet
    baseline: dict[str, str] = field(default_factory=dict)
    servers: dict[str, ServerProcess] = field(default_factory=dict)

    def probe_config(self, peer_ip: str | None) -> str:
        ours = (a["local"] for i in ip_json("-4", "addr") for a in i.get("addr_info", []))
        addresses = sorted({a for a in ours if not a.startswith("127.")})
        tcp: list[tuple[str, str, int]] = [("host bridge gateway", self.gateway, self.host_port)]
        tcp += [(f"host {a}", a, self.host_port) for a in addresses if a != self.gateway]
        tcp += [(f"docker api {a}:{p}", a, p) for a in (self.gateway, *addresses) for p in DOCKER_API_PORTS]
        if peer_ip:
            tcp.append(("another agent", peer_ip, INTERNET_PORT))
        tcp += [("metadata", METADATA, INTERNET_PORT), ("private", PRIVATE, INTERNET_PORT)]
        tcp += [("public", PUBLIC, INTERNET_PORT)]
        udp = [("udp host bridge gateway", self.gateway, self.host_port), ("udp metadata", METADATA, INTERNET_PORT)]
        udp.append(("udp public", PUBLIC, INTERNET_PORT))
        link_local = [a["local"] for i in ip_json("-6", "addr", "show", "dev", self.bridge) for a in i["addr_info"]]
        v6 = [("ipv6 host bridge link-local", a, self.host_port) for a in link_local]
        return json.dumps({"tcp": tcp, "udp": udp, "v6": v6, "dns": ["public.test"]})


def results(lines: list[str]) -> dict[str, str]:
    pairs = (line.removeprefix("PROBE ").split("=", 1) for line in lines if line.startswith("PROBE "))
    return {k: v for k, v in pairs}


@pytest.fixture(scope="module")
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI(shell_or_fetch()) as fake:
        yield fake


@pytest.fixture(scope="module")
def lab(docker_engine: None) -> Iterator[Lab]:
    """The agents' network as today's main makes it (ICC off, no egress rules), this host's
    listeners, the stand-in internet; then the baseline probe from a plain container on it."""
    name = f"af-egress-{secrets.token_hex(3)}"
    docker("network", "create", "--driver", "bridge", "--label", "io.agentfactory.managed=true",
           "-o", "com.docker.network.bridge.enable_icc=false", name)  # fmt: skip
    with contextlib.ExitStack() as undo:
        undo.callback(docker, "network", "rm", name, check=False)
        undo.callback(egress.remove, name)
        net = json.loads(docker("network", "inspect", name))[0]
        cfg = net["IPAM"]["Config"][0]
        bridge = f"br-{net['Id'][:12]}"
        host_port = free_port()
        host = HostListener([host_port, *DOCKER_API_PORTS], cfg["Gateway"], host_port)
        undo.callback(host.close)
        try:
            internet = undo.enter_context(StandInInternet(subnet=cfg["Subnet"], bridge=bridge, port=INTERNET_PORT))
        except SetupFailed as exc:
            pytest.skip(f"cannot build the stand-in internet, so nothing is probed: {exc}")
        lab = Lab(name, cfg["Subnet"], cfg["Gateway"], bridge, host_port, host, internet)
        plain = ("--network", name, "--user", "10001:10001", "--cap-drop", "ALL")
        serve = ("--entrypoint", "python3", IMAGE, "-m", "http.server", str(PEER_PORT))
        peer = docker("run", "-d", "--rm", *plain, *serve)
        undo.callback(docker, "rm", "-f", peer, check=False)
        peer_ip = docker("inspect", "--format", f'{{{{(index .NetworkSettings.Networks "{name}").IPAddress}}}}', peer)
        wait_until(lambda: serves(peer_ip), timeout=30, what="the baseline peer serving")
        probe = PROBE.replace("{config}", lab.probe_config(peer_ip))
        out = docker("run", "--rm", *plain, "--dns", PUBLIC, "--entrypoint", "sh", IMAGE, "-c", probe)
        lab.baseline = results(out.splitlines())
        docker("rm", "-f", peer, check=False)
        yield lab


@pytest.fixture(scope="module")
def servers(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeOpenAI, lab: Lab
) -> Iterator[dict[str, ServerProcess]]:
    """A server per available runtime, its agents on the lab's network, resolving through the stand-in's DNS."""
    registered = json.loads(docker("info", "--format", "{{json .Runtimes}}"))
    runtimes = ["runc", *(["runsc"] if "runsc" in registered else [])]
    started: dict[str, ServerProcess] = {}
    try:
        for rt in runtimes:
            work = tmp_path_factory.mktemp(f"egress-{rt}")
            env = {
                UPSTREAM_KEY_ENV: UPSTREAM_KEY,
                "AGENTFACTORY_AGENT_NETWORK": lab.network,
                "AGENTFACTORY_AGENT_DNS": json.dumps([PUBLIC]),
            }
            if rt != "runc":
                env["AGENTFACTORY_CONTAINER_RUNTIME"] = rt
            started[rt] = ServerProcess(work, catalog=write_catalog(work / "catalog.json", upstream), env=env).start()
        yield started
    finally:
        for srv in started.values():
            srv.stop()
            srv.cleanup_containers()


def serves(ip: str) -> bool:
    try:
        return httpx.get(f"http://{ip}:{PEER_PORT}/", timeout=2).status_code == 200
    except httpx.HTTPError:
        return False


def start(c: httpx.Client, prompt: str) -> dict[str, Any]:
    r = c.post("/agents", json={"model": "sh", "tools": NET_TOOLS, "prompt": prompt})
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def texts(c: httpx.Client, agent_id: str) -> list[str]:
    return [line["text"] for line in all_log_lines(c, agent_id)]


REFUSED = {  # attack -> what today's main gives (the baseline must show it, or the lab proves nothing)
    "host bridge gateway": "connected",
    "metadata": "connected",
    "private": "connected",
    "udp host bridge gateway": "reply",
    "udp metadata": "reply",
}


def test_the_server_installs_the_egress_policy_at_start(servers: dict[str, ServerProcess], lab: Lab) -> None:
    net = json.loads(docker("network", "inspect", lab.network))[0]
    bridge = egress.Bridge(network=lab.network, interface=lab.bridge, subnets=(lab.subnet,))
    assert net["Options"]["com.docker.network.bridge.enable_icc"] == "false"
    assert (
        egress.verify(egress.build_policy(bridge, host_networks=egress.host_networks(), ipv6=egress.kernel_has_ipv6()))
        == []
    )


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_a_network_agent_reaches_the_public_internet_only(
    servers: dict[str, ServerProcess], lab: Lab, runtime: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if runtime not in servers:
        pytest.skip(f"{runtime} is not registered with Docker (AGENTFACTORY_WITH_RUNSC=1 bash scripts/setup.sh)")
    srv = servers[runtime]
    before = {h: lab.internet.reached("TCP", h) for h in (METADATA, PRIVATE, PUBLIC)}
    host_before = len(lab.host.from_subnet(lab.subnet))
    with srv.client() as c:
        peer = start(c, f"timeout 120 python3 -m http.server {PEER_PORT} --bind 0.0.0.0")
        try:
            if peer["status"] != "running":
                agent = wait_terminal(c, peer["id"], timeout=60)
                assert runtime == "runsc" and agent["reason"] == "launch_failed", agent
                # This host's runsc cannot start gVisor's netstack: the agent is refused, never run unfiltered.
                print(f"{runtime}: network agent not started: {agent['error']}")
                return
            ip_of = f'{{{{(index .NetworkSettings.Networks "{lab.network}").IPAddress}}}}'
            peer_ip = docker("inspect", "--format", ip_of, f"agentfactory-{peer['id']}")
            wait_until(lambda: serves(peer_ip), timeout=30, what="the peer agent serving (this host may reach it)")
            prober = wait_terminal(c, start(c, PROBE.replace("{config}", lab.probe_config(peer_ip)))["id"], timeout=120)
            got = results(texts(c, prober["id"]))
        finally:
            c.delete(f"/agents/{peer['id']}")
    with capsys.disabled():
        print(f"\n{runtime}: {'attack':40} | {'main (no egress rules)':22} | with the egress policy")
        for name in dict.fromkeys([*lab.baseline, *got]):
            print(f"{runtime}: {name:40} | {lab.baseline.get(name, '-'):22} | {got.get(name, '-')}")
    assert prober["status"] == "succeeded", prober
    for name, on_main in REFUSED.items():
        assert lab.baseline[name] == on_main, f"the lab does not reproduce {name!r} on main: {lab.baseline[name]}"
    tcp = [k for k in got if k.startswith(("host ", "docker api ", "another agent", "metadata", "private"))]
    assert len(tcp) >= 8 and "another agent" in tcp
    for name in tcp:
        assert got[name] != "connected", (name, got[name])
    assert got["public"] == "connected" and got["udp public"] == "reply"
    assert got["udp host bridge gateway"] == "no reply" and got["udp metadata"] == "no reply"
    assert all(got[k] != "connected" for k in got if k.startswith("ipv6 "))
    assert got["dns public.test"] == PUBLIC  # through the public resolver the agent was given
    assert got["docker.sock"] == "absent"
    assert got["unix sockets"] == "/run/agentfactory/gateway.sock"
    assert got["gateway socket speaks Docker API"].startswith("no")
    # What the targets saw: nothing from the agent but on the public host.
    assert lab.internet.reached("TCP", METADATA) == before[METADATA]
    assert lab.internet.reached("TCP", PRIVATE) == before[PRIVATE]
    assert lab.internet.reached("TCP", PUBLIC) > before[PUBLIC]
    assert len(lab.host.from_subnet(lab.subnet)) == host_before, lab.host.from_subnet(lab.subnet)


@pytest.mark.parametrize("runtime", RUNTIMES)
def test_an_agent_without_a_network_tool_reaches_nothing(
    servers: dict[str, ServerProcess], lab: Lab, runtime: str
) -> None:
    if runtime not in servers:
        pytest.skip(f"{runtime} is not registered with Docker")
    script = f"""python3 - <<'EOF'
import socket
try:
    socket.create_connection(("{PUBLIC}", {INTERNET_PORT}), timeout=3)
    print("TCP connected")
except OSError as e:
    print("TCP", e)
print("IFACES", sorted(n for _, n in socket.if_nameindex()))
EOF"""
    with servers[runtime].client() as c:
        r = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": script})
        assert r.status_code == 201, r.text
        agent = wait_terminal(c, r.json()["id"], timeout=90)
        lines = texts(c, agent["id"])
    print(f"{runtime}: shell only -> {[x for x in lines if x.startswith(('TCP', 'IFACES'))]}")
    assert agent["status"] == "succeeded", (agent, lines[-5:])
    assert "IFACES ['lo']" in lines
    assert any(x.startswith("TCP ") and x != "TCP connected" for x in lines), lines


def test_browser_server_fetches_public_pages_and_refuses_the_rest(
    servers: dict[str, ServerProcess], lab: Lab, upstream: FakeOpenAI
) -> None:
    base = f"http://{PUBLIC}:{INTERNET_PORT}"
    urls = {
        f"{base}/page": "-> 200 text/html",
        f"http://public.test:{INTERNET_PORT}/page": "-> 200 text/html",
        f"http://{METADATA}:{INTERNET_PORT}/latest/meta-data/": "-> refused: 169.254.169.254 is not a public",
        f"http://metadata.test:{INTERNET_PORT}/": "-> refused: metadata.test resolves to 169.254.169.254",
        f"{base}/redirect": "-> refused: 169.254.169.254 is not a public",
        f"http://{PRIVATE}:{INTERNET_PORT}/": "-> refused: 10.250.0.1 is not a public",
        f"http://{lab.gateway}:{lab.host_port}/": f"-> refused: {lab.gateway} is not a public",
    }
    metadata_before = lab.internet.reached("TCP", METADATA)
    with servers["runc"].client() as c:
        agent = wait_terminal(c, start(c, "FETCH " + " ".join(urls))["id"], timeout=90)
        lines = texts(c, agent["id"])
    assert agent["status"] == "succeeded", (agent, lines[-5:])
    for url, want in urls.items():
        (summary,) = [line for line in lines if line.startswith(f"GET {url} ")]
        print(summary)
        assert summary.startswith(f"GET {url} {want}"), summary
    page = next(
        m["content"]
        for seen in upstream.seen
        for m in tool_messages(seen.body)
        if m["content"].startswith(f"GET {base}/page -> 200")
    )
    assert page.endswith("Hello\nworld & co") and "var x" not in page  # the page's text is what the model gets
    assert lab.internet.reached("TCP", METADATA) == metadata_before
    assert "DNS metadata.test" in " ".join(f"DNS {q}" for q in lab.internet.queries())


def test_without_iptables_network_tools_are_refused_and_other_agents_run(
    make_server: type[ServerProcess], upstream: FakeOpenAI, tmp_path: Path
) -> None:
    name = f"af-egress-noipt-{secrets.token_hex(3)}"
    env = {"PATH": str(tmp_path / "empty"), UPSTREAM_KEY_ENV: UPSTREAM_KEY, "AGENTFACTORY_AGENT_NETWORK": name}
    try:
        srv = make_server(catalog=write_catalog(tmp_path / "catalog.json", upstream), env=env).start()
        with srv.client() as c:
            refused = c.post("/agents", json={"model": "sh", "tools": NET_TOOLS, "prompt": "echo hi"})
            plain = c.post("/agents", json={"model": "sh", "tools": ["shell"], "prompt": "echo still here"})
            assert plain.status_code == 201, plain.text
            done = wait_terminal(c, plain.json()["id"], timeout=60)
            listed = c.get("/agents").json()["items"]
        log = "\n".join(srv.log_lines())
    finally:
        docker("network", "rm", name, check=False)
    assert refused.status_code == 422, refused.text
    error = refused.json()["error"]
    print(f"no iptables: POST /agents with browser_server -> {refused.status_code} {error}")
    assert error["code"] == "E_CATALOG" and "iptables is not installed" in error["message"]
    assert error["details"][0]["refused"] == ["browser_server"]
    assert [a["id"] for a in listed] == [plain.json()["id"]]  # nothing stored for the refused request
    assert done["status"] == "succeeded" and "still here" in texts_of(srv, done["id"])
    assert "network_tools_refused" in log  # said at start, before anyone asked


def texts_of(srv: ServerProcess, agent_id: str) -> list[str]:
    with srv.client() as c:
        return texts(c, agent_id)

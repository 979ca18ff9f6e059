"""A stand-in internet on this machine, so egress tests never send a packet anywhere else.

`StandInInternet` makes a network namespace of the test's own holding three hosts, a cloud-metadata
look-alike (169.254.169.254), a private-range host (10.250.0.1) and a "public" host (198.51.100.10,
which also answers DNS), joined to the host by a veth pair and reached ONLY by the agents of one
Docker network: an `ip rule` sends what comes from that network's bridge and subnet to a routing
table of its own whose one route leads into the namespace. The host's own traffic and every other network are
untouched. A guard chain in FORWARD and OUTPUT drops anything from that subnet, or to a stand-in
address, that would leave through any interface but the veth and the agents' bridge, and the
namespace has no route out: if routing were wrong, a probe would die on this machine, never reach a
real address. Everything is verified before
the first probe (`ip route get` from the subnet for each target) and removed afterwards, also on failure.

Run as a module (`python -m tests.fakes.internet PORT`) inside the namespace, it is the hosts' server:
HTTP on PORT of each address (`/page`, `/redirect` to the metadata host), UDP echo on PORT, DNS on
198.51.100.10:53 (`public.test`, `private.test`, `metadata.test`); every connection, datagram and
query is printed as one line, which the test reads to see who was reached.
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import secrets
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

METADATA, PRIVATE, PUBLIC = "169.254.169.254", "10.250.0.1", "198.51.100.10"
HOSTS = (METADATA, PRIVATE, PUBLIC)
NAMES = {"public.test": PUBLIC, "private.test": PRIVATE, "metadata.test": METADATA}
PAGE = b"<html><head><title>t</title><script>var x;</script></head><body><h1>Hello</h1><p>world &amp; co</p>"
ROOT = Path(__file__).resolve().parents[2]


class SetupFailed(Exception):
    """The stand-in internet could not be made or verified: the test must skip, never probe."""


def _ip(*args: str) -> str:
    done = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise SetupFailed(f"ip {' '.join(args)}: {done.stderr.strip()}")
    return done.stdout


def _iptables(*args: str) -> None:
    done = subprocess.run(["iptables", "-w", *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        raise SetupFailed(f"iptables {' '.join(args)}: {done.stderr.strip()}")


class StandInInternet:
    """The namespace, its hosts and the policy route from `subnet` (the agents' network on `bridge`)."""

    def __init__(self, *, subnet: str, bridge: str, port: int):
        tag = secrets.token_hex(3)
        self.subnet, self.bridge, self.port = subnet, bridge, port
        self.netns, self.veth, self.peer = f"af-inet-{tag}", f"afi{tag}h", f"afi{tag}n"
        self.guard = f"AF-TEST-GUARD-{tag}"
        k = secrets.randbelow(250)
        self.host_side, self.ns_side = f"10.249.{k}.1", f"10.249.{k}.2"
        self.table = 10_000 + secrets.randbelow(20_000)  # rule priority too: before main (32766)
        self.lines: list[str] = []
        self._server: subprocess.Popen[str] | None = None
        self._undo: list[Callable[[], object]] = []

    def __enter__(self) -> StandInInternet:
        try:
            self._up()
            self.verify()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def _up(self) -> None:
        _ip("netns", "add", self.netns)
        self._undo.append(lambda: _ip("netns", "del", self.netns))
        _ip("link", "add", self.veth, "type", "veth", "peer", "name", self.peer, "netns", self.netns)
        self._undo.append(lambda: _ip("link", "del", self.veth))
        _ip("addr", "add", f"{self.host_side}/30", "dev", self.veth)
        _ip("link", "set", self.veth, "up")
        ns = ("-n", self.netns)
        _ip(*ns, "addr", "add", f"{self.ns_side}/30", "dev", self.peer)
        _ip(*ns, "link", "set", self.peer, "up")
        _ip(*ns, "link", "set", "lo", "up")
        for host in HOSTS:
            _ip(*ns, "addr", "add", f"{host}/32", "dev", "lo")
        # The guard first: nothing from the agents' subnet, and nothing to a stand-in address, leaves
        # this machine, whatever the routing says (it only matters if the routing below were wrong).
        _iptables("-N", self.guard)
        self._undo.append(lambda: (_iptables("-F", self.guard), _iptables("-X", self.guard)))
        _iptables("-A", self.guard, "-o", self.veth, "-j", "RETURN")
        _iptables("-A", self.guard, "-o", self.bridge, "-j", "RETURN")
        for match in (("-s", self.subnet), *(("-d", host) for host in HOSTS)):
            _iptables("-A", self.guard, *match, "-j", "DROP")
        for hook in ("FORWARD", "OUTPUT"):
            _iptables("-I", hook, "1", "-j", self.guard)
            self._undo.append(lambda hook=hook: _iptables("-D", hook, "-j", self.guard))  # type: ignore[misc]
        table = str(self.table)
        _ip("route", "add", "default", "via", self.ns_side, "dev", self.veth, "table", table)
        self._undo.append(lambda: _ip("route", "flush", "table", table))
        # Forwarded from the bridge only: the host's own packets to its agents (source: the bridge's
        # address, inside the subnet) keep their ordinary route.
        _ip("rule", "add", "from", self.subnet, "iif", self.bridge, "lookup", table, "priority", table)
        self._undo.append(lambda: _ip("rule", "del", "priority", table))
        argv = ["ip", "netns", "exec", self.netns, sys.executable, "-u", "-m", "tests.fakes.internet", str(self.port)]
        self._server = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self._undo.append(self._stop_server)
        ready = threading.Event()
        threading.Thread(target=self._read, args=(self._server, ready), daemon=True).start()
        if not ready.wait(20):
            raise SetupFailed(f"the stand-in hosts did not start: {self.lines[-5:]}")

    def _read(self, proc: subprocess.Popen[str], ready: threading.Event) -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            self.lines.append(line.rstrip("\n"))
            if line.startswith("READY"):
                ready.set()

    def _stop_server(self) -> None:
        if self._server is not None:
            self._server.kill()
            self._server.wait(10)

    def verify(self) -> None:
        """Each target, as a packet from the agents' subnet would be routed, goes into the namespace;
        the guard stands; the hosts answer inside the namespace."""
        source = str(next(iter(ipaddress.ip_network(self.subnet).hosts())) + 100)
        for host in HOSTS:
            (route,) = json.loads(_ip("-j", "route", "get", host, "from", source, "iif", self.bridge))
            if route.get("dev") != self.veth or route.get("gateway") != self.ns_side:
                raise SetupFailed(f"{host} from {source} is routed {route}, not into the stand-in namespace")
        _iptables("-C", "FORWARD", "-j", self.guard)
        _iptables("-C", "OUTPUT", "-j", self.guard)
        if self._server is None or self._server.poll() is not None:
            raise SetupFailed("the stand-in hosts are not running")

    def close(self) -> None:
        errors = []
        while self._undo:
            try:
                self._undo.pop()()
            except (SetupFailed, OSError, subprocess.SubprocessError) as exc:
                errors.append(str(exc))
        if errors:
            raise SetupFailed("could not fully remove the stand-in internet: " + "; ".join(errors))

    def reached(self, kind: str, host: str) -> int:
        """How many TCP connections / UDP datagrams (`kind`) reached `host` so far."""
        return sum(1 for line in self.lines if line.startswith(f"{kind} {host} "))

    def queries(self) -> list[str]:
        return [line.split()[1] for line in self.lines if line.startswith("DNS ")]


# -- the hosts' server, run inside the namespace ---------------------------------------------------


def _dns_answer(query: bytes) -> tuple[str, bytes]:
    i, labels = 12, []
    while query[i]:
        labels.append(query[i + 1 : i + 1 + query[i]].decode("ascii", "replace"))
        i += 1 + query[i]
    name, qtype, question = ".".join(labels).lower(), int.from_bytes(query[i + 1 : i + 3], "big"), query[12 : i + 5]
    address = NAMES.get(name)
    if address and qtype == 1:  # A
        record = b"\xc0\x0c\x00\x01\x00\x01\x00\x00\x00\x3c\x00\x04" + socket.inet_aton(address)
        return name, query[:2] + b"\x81\x80\x00\x01\x00\x01\x00\x00\x00\x00" + question + record
    rcode = 0 if address else 3  # known name, other type: no data; unknown: NXDOMAIN
    return name, query[:2] + bytes([0x81, 0x80 | rcode]) + b"\x00\x01\x00\x00\x00\x00\x00\x00" + question


def serve(port: int) -> None:
    lock = threading.Lock()

    def say(line: str) -> None:
        with lock:
            print(line, flush=True)

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            if self.path == "/redirect":
                self.send_response(302)
                self.send_header("Location", f"http://{METADATA}:{port}/page")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            body = PAGE if self.path == "/page" else f"hello from {self.server.server_address[0]}\n".encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html; charset=utf-8" if self.path == "/page" else "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_args: Any) -> None:
            pass

    class Server(ThreadingHTTPServer):
        def verify_request(self, request: Any, client_address: Any) -> bool:
            say(f"TCP {self.server_address[0]} {client_address[0]}")
            return True

    def echo(sock: socket.socket, host: str) -> None:
        while True:
            data, peer = sock.recvfrom(2048)
            say(f"UDP {host} {peer[0]}")
            sock.sendto(data, peer)

    def dns(sock: socket.socket) -> None:
        while True:
            query, peer = sock.recvfrom(4096)
            with contextlib.suppress(IndexError):
                name, answer = _dns_answer(query)
                say(f"DNS {name} {peer[0]}")
                sock.sendto(answer, peer)

    for host in HOSTS:
        http = Server((host, port), Handler)
        threading.Thread(target=http.serve_forever, daemon=True).start()
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        udp.bind((host, port))
        threading.Thread(target=echo, args=(udp, host), daemon=True).start()
    resolver = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    resolver.bind((PUBLIC, 53))
    threading.Thread(target=dns, args=(resolver,), daemon=True).start()
    say("READY")
    threading.Event().wait()


if __name__ == "__main__":
    serve(int(sys.argv[1]))

"""agentfactory agent runtime: the model <-> tools loop that runs inside every agent container.

Stdlib only (the image has nothing but Debian's python3). At start, before anything else, it asks the
model gateway for its spec (`GET /v1/agent/spec` with its token): the prompt may be far larger than
one environment string may be (128 KiB on Linux). The environment holds only:

  AGENTFACTORY_GATEWAY_SOCKET the model gateway's Unix socket (default /run/agentfactory/gateway.sock)
  AGENTFACTORY_GATEWAY_TOKEN  this agent's gateway token
  AGENTFACTORY_SCRATCH        where tools run (default: the working directory, /scratch in the image)
  AGENTFACTORY_SPEC           optional, for running the runtime by hand: the spec itself, not fetched
  AGENTFACTORY_WARM           "1" in a warm sandbox (SPEC §10): the runtime first waits for its
                              assignment, one JSON line {"env": {...}} on stdin (the agent's env,
                              secrets and gateway token, written by the control plane at claim time),
                              puts it in its environment, and then starts as above. It prints nothing
                              before; stdin is /dev/null after, as in a cold agent.

The spec is JSON: agent_id, model, prompt, tools [{id, description, network}], max_steps,
tool_timeout_seconds, tool_output_limit (bytes the model gets back from one tool call); optional:
model_timeout_seconds (300, bound on one model call), gateway_retry_seconds (30, how long an
unreachable gateway is retried), system_prompt.

Stdout carries one JSON event per line (start, model_turn, tool_call, tool_result, final, usage) and,
between them, the raw output lines of the tools, written as they are produced.

Exit codes: 0 final answer; 1 runtime bug; 2 bad spec (or the gateway refused the token); 3 token
budget spent; 4 step bound reached without a final answer; 5 model (or gateway) unreachable or
upstream error; 143 terminated. On a non-zero exit
the reason is one line on stderr.
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

# http.client, urllib and html.parser (with the email package under them) cost ~80 ms to import
# here: they are imported where they are first used, so the `start` event is out before that.

DEFAULT_SOCKET = "/run/agentfactory/gateway.sock"
WARM_ENV = "AGENTFACTORY_WARM"
EXIT_OK, EXIT_BUG, EXIT_SPEC, EXIT_BUDGET, EXIT_STEPS, EXIT_MODEL = 0, 1, 2, 3, 4, 5
# An upstream failure the gateway reports (502/503, upstream rate limit) is retried this often.
UPSTREAM_RETRY_DELAYS = (0.5, 1.0, 2.0)
RETRY_STATUSES = (502, 503)
# The gateway's own "slow down" answers (its per-agent limits, a connection cap): retried too.
RETRY_CODES = ("E_UPSTREAM_RATE_LIMIT", "E_RATE_LIMIT", "E_CAPACITY")
SPEC_PATH = "/v1/agent/spec"
SPEC_RETRY_SECONDS = 30.0
MAX_LINE_BYTES = 64 * 1024
MAX_FETCH_BYTES = 2 * 1024 * 1024
# browser_server never connects to these: what the host's packet filter refuses anyway (the real
# guard; agentfactory/backends/egress.py DENIED_IPV4, a unit test keeps the two equal). Checked here
# too so a fetch of the host or of cloud metadata gets a plain answer, redirects and DNS included.
DENIED_IPV4 = (
    "0.0.0.0/8",
    "10.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "169.254.0.0/16",
    "172.16.0.0/12",
    "192.0.0.0/24",
    "192.168.0.0/16",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
)
SYSTEM_PROMPT = (
    "You are an autonomous agent running in a sandboxed Linux container. Your working directory is "
    "{scratch}; it is the only writable place. Use the tools you are given to do the task, then "
    "answer with your final result as plain text (no tool call)."
)

TOOL_PARAMETERS = {
    "python": (
        "code",
        "Python 3 source code. It runs as a script in a fresh interpreter; print() what you want to see.",
        "Run Python code in the sandbox and return its output and exit code.",
    ),
    "shell": (
        "command",
        "A command line for /bin/sh.",
        "Run a shell command in the sandbox and return its output and exit code.",
    ),
    "browser_server": ("url", "An http:// or https:// URL.", "Fetch a web page and return its text."),
}


class Fatal(Exception):
    """The loop cannot go on: exit with this code and this one-line reason."""

    def __init__(self, exit_code: int, reason: str):
        super().__init__(reason)
        self.exit_code = exit_code
        self.reason = reason


# --- output -----------------------------------------------------------------------------------

_out_lock = threading.Lock()


def emit(event: str, **fields: object) -> None:
    line = json.dumps({"event": event, **fields}, ensure_ascii=False, default=str)
    raw_line(line.encode("utf-8", "replace") + b"\n")


def raw_line(data: bytes) -> None:
    raw_write(data if data.endswith(b"\n") else data + b"\n")


def raw_write(data: bytes) -> None:
    with _out_lock:
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()


# --- spec -------------------------------------------------------------------------------------


def load_spec(environ: dict[str, str]) -> dict:
    """The agent's spec: from the gateway (or from AGENTFACTORY_SPEC when run by hand), checked."""
    token = environ.get("AGENTFACTORY_GATEWAY_TOKEN", "")
    if not token:
        raise Fatal(EXIT_SPEC, "bad spec: AGENTFACTORY_GATEWAY_TOKEN is not set")
    socket_path = environ.get("AGENTFACTORY_GATEWAY_SOCKET") or DEFAULT_SOCKET
    raw = environ.get("AGENTFACTORY_SPEC")
    source = "AGENTFACTORY_SPEC"
    if not raw:
        raw, source = fetch_spec(socket_path, token, SPEC_RETRY_SECONDS), "the gateway's spec"
    try:
        spec = json.loads(raw)
    except ValueError as exc:
        raise Fatal(EXIT_SPEC, f"bad spec: {source} is not valid JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise Fatal(EXIT_SPEC, f"bad spec: {source} must be a JSON object")

    def field(name: str, kind: type | tuple[type, ...], default: object = None, minimum: float | None = None):
        value = spec.get(name, default)
        if value is None or isinstance(value, bool) or not isinstance(value, kind):
            raise Fatal(EXIT_SPEC, f"bad spec: field {name!r} is missing or has the wrong type")
        if minimum is not None and value < minimum:
            raise Fatal(EXIT_SPEC, f"bad spec: field {name!r} must be at least {minimum}")
        return value

    tools = field("tools", list, [])
    for tool in tools:
        if not isinstance(tool, dict) or not isinstance(tool.get("id"), str):
            raise Fatal(EXIT_SPEC, "bad spec: every tool must be an object with a string 'id'")
    model = field("model", str)
    if not model:
        raise Fatal(EXIT_SPEC, "bad spec: field 'model' is empty")
    loaded = {
        "agent_id": field("agent_id", str, ""),
        "model": model,
        "prompt": field("prompt", str),
        "tools": tools,
        "max_steps": field("max_steps", int, 32, 1),
        "tool_timeout_seconds": field("tool_timeout_seconds", (int, float), 300, 0.1),
        "tool_output_limit": field("tool_output_limit", int, 16384, 256),
        "model_timeout_seconds": field("model_timeout_seconds", (int, float), 300, 1),
        "gateway_retry_seconds": field("gateway_retry_seconds", (int, float), 30, 0),
        "system_prompt": field("system_prompt", str, SYSTEM_PROMPT),
        "socket": socket_path,
        "token": token,
        "scratch": environ.get("AGENTFACTORY_SCRATCH") or os.getcwd(),
        "files": spec.get("files") if isinstance(spec.get("files"), dict) else None,
    }
    return loaded


def fetch_spec(socket_path: str, token: str, retry_seconds: float) -> bytes:
    """GET the spec over the gateway socket: plain HTTP/1.0 on a raw socket (http.client costs ~80 ms
    to import and the `start` event waits for this). An unreachable or busy gateway is retried."""
    deadline = time.monotonic() + retry_seconds
    backoff = 0.25
    request = (f"GET {SPEC_PATH} HTTP/1.0\r\nHost: gateway\r\nAuthorization: Bearer {token}\r\n\r\n").encode()
    while True:
        try:
            status, headers, body = _raw_get(socket_path, request, timeout=30.0)
        except OSError as exc:
            status, headers, body = 0, {}, _describe(exc).encode()
        if status == 200:
            return body
        code, message = _error_of(body) if status else ("unreachable", body.decode())
        if status in (401, 403, 404):
            raise Fatal(EXIT_SPEC, f"bad spec: the gateway refused to give it (HTTP {status} {code}): {message}")
        wait = max(_seconds(headers.get("retry-after")) or 0, backoff) if status else backoff
        backoff = min(backoff * 2, 4.0)
        if time.monotonic() + wait > deadline:
            detail = f"HTTP {status} {code}: {message}" if status else message
            raise Fatal(EXIT_MODEL, f"could not get the spec from the gateway {socket_path}: {detail}")
        time.sleep(wait)


def _raw_get(path: str, request: bytes, timeout: float) -> tuple[int, dict[str, str], bytes]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        sock.connect(path)
        sock.sendall(request)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    finally:
        sock.close()
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not (parts[1].isascii() and parts[1].isdigit()):
        raise ConnectionError(f"not an HTTP answer: {lines[0][:80]!r}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(parts[1]), headers, body


# --- the model, through the gateway -----------------------------------------------------------


def unix_http_connection(path: str, timeout: float):  # -> http.client.HTTPConnection
    """http.client over the gateway's Unix socket (the container has no network to reach it by)."""
    import http.client

    class UnixHTTPConnection(http.client.HTTPConnection):
        def connect(self) -> None:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.settimeout(self.timeout)
            try:
                sock.connect(path)
            except OSError:
                sock.close()
                raise
            self.sock = sock

    return UnixHTTPConnection("gateway", timeout=timeout)


class Gateway:
    """Chat completions through the model gateway, with bounded retries of transient failures."""

    def __init__(self, spec: dict):
        self.model = spec["model"]
        self.socket_path = spec["socket"]
        self.token = spec["token"]
        self.timeout = float(spec["model_timeout_seconds"])
        self.retry_seconds = float(spec["gateway_retry_seconds"])

    def chat(self, messages: list, tools: list) -> dict:
        import http.client

        body = {"model": self.model, "messages": messages}
        if tools:
            body["tools"] = tools
        payload = json.dumps(body).encode()
        connect_deadline = time.monotonic() + self.retry_seconds
        backoff, upstream_retries = 0.25, 0
        while True:
            try:
                status, raw, retry_after = self._post(payload)
            except TimeoutError:
                raise Fatal(
                    EXIT_MODEL, f"model {self.model!r}: no answer from the gateway within {self.timeout:g} s"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                # The gateway is down (e.g. the control plane restarting): wait for it, within bounds.
                failure = f"model {self.model!r} unreachable: gateway {self.socket_path}: {_describe(exc)}"
                wait, backoff = backoff, min(backoff * 2, 4.0)
                if time.monotonic() + wait > connect_deadline:
                    raise Fatal(EXIT_MODEL, failure) from None
                time.sleep(wait)
                continue
            if status == 200:
                return self._answer(raw)
            code, message = _error_of(raw)
            if status == 429 and code == "E_BUDGET":
                raise Fatal(EXIT_BUDGET, f"token budget spent: {message}")
            named = message if repr(self.model) in message else f"model {self.model!r}: {message}"
            failure = f"{named} (gateway: HTTP {status} {code})"
            retriable = status in RETRY_STATUSES or code in RETRY_CODES
            if not retriable or upstream_retries == len(UPSTREAM_RETRY_DELAYS):
                raise Fatal(EXIT_MODEL, failure)
            time.sleep(min(max(_seconds(retry_after) or 0, UPSTREAM_RETRY_DELAYS[upstream_retries]), 10.0))
            upstream_retries += 1

    def _post(self, payload: bytes) -> tuple[int, bytes, str | None]:
        conn = unix_http_connection(self.socket_path, self.timeout)
        try:
            conn.request(
                "POST",
                "/v1/chat/completions",
                body=payload,
                headers={"Authorization": f"Bearer {self.token}", "Content-Type": "application/json"},
            )
            response = conn.getresponse()
            return response.status, response.read(), response.getheader("Retry-After")
        finally:
            conn.close()

    def _answer(self, raw: bytes) -> dict:
        try:
            answer = json.loads(raw)
            message = answer["choices"][0]["message"]
        except (ValueError, KeyError, IndexError, TypeError):
            raise Fatal(EXIT_MODEL, f"model {self.model!r}: the answer is not a chat completion") from None
        if not isinstance(message, dict):
            raise Fatal(EXIT_MODEL, f"model {self.model!r}: the answer carries no message")
        return answer


def _describe(exc: BaseException) -> str:
    if isinstance(exc, FileNotFoundError):
        return "the socket does not exist"
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _error_of(raw: bytes) -> tuple[str, str]:
    try:
        err = json.loads(raw)["error"]
        return str(err.get("code", "E_UNKNOWN")), str(err.get("message", ""))
    except (ValueError, KeyError, TypeError, AttributeError):
        return "E_UNKNOWN", raw[:200].decode("utf-8", "replace")


def _seconds(value: str | None) -> float | None:
    try:
        return float(value) if value else None
    except ValueError:
        return None


# --- tools ------------------------------------------------------------------------------------


class Collected:
    """A tool's output as the model will see it: the head and the tail within `limit` bytes."""

    def __init__(self, limit: int):
        self.limit, self.tail_keep = limit, limit // 2
        self.head = bytearray()
        self.tail: collections.deque[bytes] = collections.deque()
        self.tail_bytes = self.total = self.dropped = 0
        self.lock = threading.Lock()

    def add(self, data: bytes) -> None:
        with self.lock:
            self.total += len(data)
            room = self.limit - len(self.head)
            if room > 0:
                self.head += data[:room]
                data = data[room:]
            if data:
                self.tail.append(data)
                self.tail_bytes += len(data)
                while self.tail and self.tail_bytes - len(self.tail[0]) >= self.tail_keep:
                    self.tail_bytes -= len(self.tail[0])
                    self.dropped += len(self.tail.popleft())

    @property
    def truncated(self) -> bool:
        return self.total > self.limit

    def text(self) -> str:
        with self.lock:
            if not self.truncated:
                return bytes(self.head).decode("utf-8", "replace")
            joined = b"".join(self.tail)
            end = (bytes(self.head) + joined if not self.dropped else joined)[-self.tail_keep :]
            start = bytes(self.head[: self.limit - self.tail_keep])
            omitted = self.total - len(start) - len(end)
        marker = f"\n[... {omitted} bytes of output omitted ...]\n".encode()
        return (start + marker + end).decode("utf-8", "replace")


class ToolRunner:
    """Runs the built-in tools; a process's output goes to stdout line by line as it is produced."""

    def __init__(self, spec: dict):
        self.scratch = spec["scratch"]
        self.timeout = float(spec["tool_timeout_seconds"])
        self.limit = spec["tool_output_limit"]
        self.env = {k: v for k, v in os.environ.items() if k not in ("AGENTFACTORY_SPEC", "AGENTFACTORY_GATEWAY_TOKEN")}
        self.current: subprocess.Popen | None = None

    def run(self, name: str, args: dict) -> dict:
        """Returns exit_code, truncated, timed_out, and `content`: what the model gets back."""
        key = TOOL_PARAMETERS[name][0]
        value = args.get(key)
        if not isinstance(value, str):
            return _tool_error(f"the {name} tool needs a string argument {key!r}")
        if name == "python":
            return self._python(value)
        if name == "shell":
            return self._process(["/bin/sh", "-c", value])
        return self._fetch(value)

    def _python(self, code: str) -> dict:
        try:
            fd, path = tempfile.mkstemp(prefix=".agentfactory-tool-", suffix=".py", dir=self.scratch)
        except OSError:
            return self._process([sys.executable, "-u", "-c", code])
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(code)
            return self._process([sys.executable, "-u", path])
        finally:
            os.unlink(path)

    def _process(self, argv: list[str]) -> dict:
        collected = Collected(self.limit)
        # SIGTERM waits until `current` is set, so its handler always finds the tool to kill.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        try:
            proc = subprocess.Popen(
                argv,
                cwd=self.scratch,
                env=self.env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
            self.current = proc
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        pump = threading.Thread(target=_pump, args=(proc.stdout, collected), daemon=True)
        pump.start()
        timed_out = False
        try:
            proc.wait(timeout=self.timeout)
        except subprocess.TimeoutExpired:
            timed_out = True
        finally:
            # The tool call ends with its process: what it left running in the background goes too.
            kill_group(proc.pid)
            proc.wait()
            self.current = None
        pump.join(timeout=5)
        reap_orphans()
        exit_code = proc.returncode
        status = f"exit code: {exit_code}"
        if timed_out:
            status += f" (killed: the tool call ran longer than {self.timeout:g} s)"
        return {
            "exit_code": exit_code,
            "timed_out": timed_out,
            "truncated": collected.truncated,
            "bytes": collected.total,
            "content": f"{status}\noutput:\n{collected.text()}",
        }

    def _fetch(self, url: str) -> dict:
        import urllib.parse

        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            return _tool_error("browser_server fetches http:// and https:// URLs only")
        result: dict = {}
        worker = threading.Thread(target=_fetch_into, args=(url, self.timeout, result), daemon=True)
        worker.start()
        # DNS lookups ignore socket timeouts: bound the whole fetch from outside.
        worker.join(self.timeout + 1)
        if worker.is_alive():
            raw_line(f"GET {url} -> timed out after {self.timeout:g} s".encode())
            return {**_tool_error(f"fetching {url} took longer than {self.timeout:g} s"), "timed_out": True}
        raw_line(result["summary"].encode("utf-8", "replace"))
        collected = Collected(self.limit)
        collected.add(result["text"].encode("utf-8", "replace"))
        return {
            "exit_code": result["exit_code"],
            "timed_out": False,
            "truncated": collected.truncated,
            "bytes": collected.total,
            "content": f"{result['summary']}\n\n{collected.text()}",
        }


def _tool_error(message: str) -> dict:
    return {
        "exit_code": None,
        "timed_out": False,
        "truncated": False,
        "bytes": 0,
        "content": f"error: {message}",
    }


def _pump(stream, collected: Collected) -> None:
    """Relay a tool's output as it comes: each read's complete lines in one write (a flood costs a
    write per pipe read, not per line); a partial line waits for its end, bounded at MAX_LINE_BYTES."""
    fd, pending = stream.fileno(), b""
    while True:
        chunk = os.read(fd, MAX_LINE_BYTES)
        if not chunk:
            break
        data = pending + chunk
        cut = data.rfind(b"\n") + 1
        if cut == 0 and len(data) >= MAX_LINE_BYTES:
            cut = len(data)
        pending = data[cut:]
        if cut:
            collected.add(data[:cut])
            raw_write(data[:cut])
    if pending:
        collected.add(pending)
        raw_line(pending)
    stream.close()


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGKILL)


def reap_orphans() -> None:
    """As PID 1 of the container we inherit the orphans of tool processes; collect them."""
    if os.getpid() != 1:
        return
    try:
        while os.waitpid(-1, os.WNOHANG)[0] > 0:
            pass
    except ChildProcessError:
        pass


def html_text(page: str) -> str:
    """The visible text of an HTML page, one line per block."""
    import html.parser

    class TextOf(html.parser.HTMLParser):
        SKIP = {"script", "style", "noscript", "template", "svg", "head"}
        BLOCK = {"p", "div", "br", "li", "tr", "h1", "h2", "h3", "h4", "h5", "h6", "section", "article", "pre"}

        def __init__(self) -> None:
            super().__init__(convert_charrefs=True)
            self.parts: list[str] = []
            self.skipping = 0

        def handle_starttag(self, tag: str, attrs: list) -> None:
            if tag in self.SKIP:
                self.skipping += 1
            elif tag in self.BLOCK:
                self.parts.append("\n")

        def handle_endtag(self, tag: str) -> None:
            if tag in self.SKIP and self.skipping:
                self.skipping -= 1
            elif tag in self.BLOCK:
                self.parts.append("\n")

        def handle_data(self, data: str) -> None:
            if not self.skipping:
                self.parts.append(data)

    parser = TextOf()
    parser.feed(page)
    parser.close()
    lines = (" ".join(line.split()) for line in "".join(parser.parts).splitlines())
    return "\n".join(line for line in lines if line)


class NonPublicAddress(OSError):
    """browser_server refuses a host that resolves to an address outside the public internet."""


def is_public_address(address: str) -> bool:
    """Whether browser_server may connect to `address` (IPv4 or IPv6, as getaddrinfo gives it)."""
    import ipaddress

    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address):
        embedded = ip.ipv4_mapped
        if embedded is None and ip in ipaddress.IPv6Network("64:ff9b::/96"):  # NAT64
            embedded = ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF)
        if embedded is None:
            return ip.is_global
        ip = embedded
    return not any(ip in ipaddress.IPv4Network(net) for net in DENIED_IPV4)


def connect_public(address: tuple[str, int], timeout: object = None, source_address: object = None) -> socket.socket:
    """socket.create_connection that resolves once, refuses the host when any of its addresses is not
    public (NonPublicAddress), and connects to the very addresses it checked (no second lookup for
    a rebinding DNS to answer differently)."""
    host, port = address
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    for *_, sockaddr in infos:
        if not is_public_address(sockaddr[0]):
            where = host if sockaddr[0] == host else f"{host} resolves to {sockaddr[0]}, which"
            raise NonPublicAddress(f"{where} is not a public internet address")
    last: OSError = OSError(f"{host} has no address")
    for family, kind, proto, _, sockaddr in infos:
        sock = socket.socket(family, kind, proto)
        try:
            if isinstance(timeout, (int, float)):
                sock.settimeout(timeout)
            if source_address:
                sock.bind(source_address)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            sock.close()
            last = exc
    raise last


def public_opener():
    """urllib's opener whose HTTP(S) connections go through connect_public (every redirect too), and
    no proxy from the environment (its own lookup would skip the check)."""
    import http.client
    import urllib.request

    class PublicHTTP(http.client.HTTPConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = connect_public

    class PublicHTTPS(http.client.HTTPSConnection):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            self._create_connection = connect_public

    class HTTPHandler(urllib.request.HTTPHandler):
        def http_open(self, req):
            return self.do_open(PublicHTTP, req)

    class HTTPSHandler(urllib.request.HTTPSHandler):
        def https_open(self, req):
            return self.do_open(PublicHTTPS, req, context=self._context)

    return urllib.request.build_opener(urllib.request.ProxyHandler({}), HTTPHandler, HTTPSHandler)


def _fetch_into(url: str, timeout: float, result: dict) -> None:
    import http.client
    import urllib.error
    import urllib.request

    request = urllib.request.Request(url, headers={"User-Agent": "agentfactory-browser/1.0"})
    deadline = time.monotonic() + timeout
    try:
        with public_opener().open(request, timeout=timeout) as response:
            status, headers = response.status, response.headers
            body = bytearray()
            while len(body) < MAX_FETCH_BYTES and time.monotonic() < deadline:
                chunk = response.read(64 * 1024)
                if not chunk:
                    break
                body += chunk
    except urllib.error.HTTPError as exc:
        status, headers, body = exc.code, exc.headers, bytearray(exc.read(MAX_FETCH_BYTES))
    except (OSError, ValueError, http.client.HTTPException) as exc:
        reason = exc.reason if isinstance(exc, urllib.error.URLError) else exc  # urllib wraps what connect raised
        outcome = f"refused: {reason}" if isinstance(reason, NonPublicAddress) else f"failed: {_describe(exc)}"
        result.update(summary=f"GET {url} -> {outcome}", text="", exit_code=1)
        return
    kind = headers.get_content_type() if headers else "application/octet-stream"
    text = bytes(body).decode(headers.get_content_charset() or "utf-8", "replace") if headers else ""
    if kind in ("text/html", "application/xhtml+xml"):
        text = html_text(text)
    elif not (kind.startswith("text/") or kind.endswith(("json", "xml"))):
        text = f"(binary content: {kind}, {len(body)} bytes)"
    result.update(
        summary=f"GET {url} -> {status} {kind} ({len(body)} bytes)",
        text=text,
        exit_code=0 if status < 400 else 1,
    )


def function_definitions(tools: list[dict]) -> tuple[list[dict], list[str]]:
    """The spec's tools as OpenAI function definitions, and the ids this runtime cannot run."""
    definitions, missing = [], []
    for tool in tools:
        tool_id = tool["id"]
        if tool_id not in TOOL_PARAMETERS:
            missing.append(tool_id)
            continue
        key, key_doc, default_doc = TOOL_PARAMETERS[tool_id]
        definitions.append(
            {
                "type": "function",
                "function": {
                    "name": tool_id,
                    "description": tool.get("description") or default_doc,
                    "parameters": {
                        "type": "object",
                        "properties": {key: {"type": "string", "description": key_doc}},
                        "required": [key],
                    },
                },
            }
        )
    return definitions, missing


# --- the loop ---------------------------------------------------------------------------------


class Usage:
    def __init__(self) -> None:
        self.prompt = self.completion = self.calls = 0

    def add(self, answer: dict) -> tuple[int, int]:
        usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
        p, c = usage.get("prompt_tokens"), usage.get("completion_tokens")
        p, c = (p if isinstance(p, int) else 0), (c if isinstance(c, int) else 0)
        self.prompt, self.completion, self.calls = self.prompt + p, self.completion + c, self.calls + 1
        return p, c

    def emit(self) -> None:
        emit("usage", prompt_tokens=self.prompt, completion_tokens=self.completion, model_calls=self.calls)


def run_agent(spec: dict, usage: Usage, runner: ToolRunner) -> str:
    """The model <-> tools loop; returns the final answer or raises Fatal."""
    definitions, missing = function_definitions(spec["tools"])
    if missing:
        sys.stderr.write(f"warning: this runtime has no implementation of tool(s) {', '.join(missing)}\n")
    offered = {d["function"]["name"] for d in definitions}
    emit(
        "start",
        agent_id=spec["agent_id"],
        model=spec["model"],
        tools=sorted(offered),
        max_steps=spec["max_steps"],
        prompt_chars=len(spec["prompt"]),
        prompt_sha256=hashlib.sha256(spec["prompt"].encode("utf-8", "surrogatepass")).hexdigest(),
    )
    gateway = Gateway(spec)
    messages: list[dict] = [
        {"role": "system", "content": spec["system_prompt"].replace("{scratch}", spec["scratch"])},
        {"role": "user", "content": spec["prompt"]},
    ]
    for step in range(1, spec["max_steps"] + 1):
        answer = gateway.chat(messages, definitions)
        prompt_tokens, completion_tokens = usage.add(answer)
        choice = answer["choices"][0]
        message = choice["message"]
        calls = [c for c in message.get("tool_calls") or [] if isinstance(c, dict)]
        names = [str((c.get("function") or {}).get("name")) for c in calls]
        emit(
            "model_turn",
            step=step,
            finish_reason=choice.get("finish_reason"),
            content=message.get("content"),
            tool_calls=names,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
        )
        if not calls:
            content = message.get("content")
            return content if isinstance(content, str) else json.dumps(content)
        if step == spec["max_steps"]:
            break
        messages.append({"role": "assistant", "content": message.get("content"), "tool_calls": calls})
        for call in calls:
            messages.append(run_call(call, offered, runner, step))
    raise Fatal(EXIT_STEPS, f"step bound reached: {spec['max_steps']} model turns without a final answer")


def run_call(call: dict, offered: set[str], runner: ToolRunner, step: int) -> dict:
    function = call.get("function") or {}
    name, raw_args = function.get("name"), function.get("arguments") or "{}"
    try:
        args = json.loads(raw_args) if isinstance(raw_args, str) else raw_args
    except ValueError:
        args = None
    emit("tool_call", step=step, id=call.get("id"), tool=name, arguments=args if args is not None else raw_args)
    started = time.monotonic()
    if name not in offered:
        result = _tool_error(f"unknown tool {name!r}; the tools are: {', '.join(sorted(offered)) or 'none'}")
    elif not isinstance(args, dict):
        result = _tool_error("the arguments must be a JSON object")
    else:
        result = runner.run(name, args)
    emit(
        "tool_result",
        step=step,
        id=call.get("id"),
        tool=name,
        exit_code=result["exit_code"],
        timed_out=result["timed_out"],
        truncated=result["truncated"],
        bytes=result["bytes"],
        duration_ms=round((time.monotonic() - started) * 1000),
    )
    return {"role": "tool", "tool_call_id": call.get("id") or "", "content": result["content"]}


# --- files in and out (SPEC §9) ---------------------------------------------------------------

WORKSPACE = "/scratch/workspace"
WORKSPACE_PATH = "/v1/agent/workspace"
ARTIFACTS_PATH = "/v1/agent/artifacts"
DROPPED_PAX = "agentfactory.dropped"  # a header-only tar entry: a file left out for the size bound
COLLECT_CHUNK = 1 << 20


def glob_regex(pattern: str):  # -> re.Pattern
    """`**` any path (slashes too), `*` and `?` within one path component; relative to the workspace."""
    import re

    out, i = [], 0
    while i < len(pattern):
        c = pattern[i]
        if pattern.startswith("**/", i):
            out.append("(?:.*/)?")
            i += 3
            continue
        if pattern.startswith("**", i):
            out.append(".*")
            i += 2
            continue
        out.append("[^/]*" if c == "*" else "[^/]" if c == "?" else re.escape(c))
        i += 1
    return re.compile("".join(out) + r"\Z", re.S)


def fetch_workspace(spec: dict, directory: str) -> None:
    """Stream the workspace archive from the gateway and unpack it (the server checked every entry):
    with GNU tar when the image has it (about twice as fast as tarfile on thousands of files)."""
    import shutil

    conn = unix_http_connection(spec["socket"], 120.0)
    conn.request("GET", WORKSPACE_PATH, headers={"Authorization": f"Bearer {spec['token']}"})
    response = conn.getresponse()
    if response.status != 200:
        code, message = _error_of(response.read(65536))
        raise Fatal(EXIT_SPEC, f"could not get the workspace (HTTP {response.status} {code}): {message}")
    head = response.read(COLLECT_CHUNK)
    tar = shutil.which("tar")
    if tar is None:
        _untar_python(head, response, directory)
    else:
        argv = [tar, "-x", "-f", "-", "-C", directory, "--no-same-owner"]
        if head[:2] == b"\x1f\x8b":
            argv.insert(2, "-z")
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            data = head
            while data:
                proc.stdin.write(data)
                data = response.read(COLLECT_CHUNK)
        except BrokenPipeError:
            pass
        finally:
            with contextlib.suppress(BrokenPipeError):
                proc.stdin.close()
        err = proc.stderr.read().decode("utf-8", "replace").strip()
        if proc.wait() != 0:
            raise Fatal(EXIT_SPEC, f"could not unpack the workspace: {err[-300:]}")
    conn.close()


def _untar_python(head: bytes, response, directory: str) -> None:
    import io
    import tarfile

    class Joined(io.RawIOBase):
        def __init__(self) -> None:
            self.first = head

        def readable(self) -> bool:
            return True

        def readinto(self, buffer) -> int:
            n = len(buffer)
            if self.first:
                data, self.first = self.first[:n], self.first[n:]
            else:
                data = response.read(n)
            buffer[: len(data)] = data
            return len(data)

    with tarfile.open(fileobj=io.BufferedReader(Joined()), mode="r|*") as archive:
        for member in archive:
            if member.isfile() or member.isdir() or member.issym() or member.islnk():
                archive.extract(member, directory, set_attrs=not member.issym())


class _Chunked:
    """A file-like writer that sends what it is given as HTTP/1.1 chunks."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def write(self, data: bytes) -> int:
        if data:
            self.conn.send(b"%x\r\n" % len(data) + bytes(data) + b"\r\n")
        return len(data)


def collect_artifacts(spec: dict, files: dict, directory: str) -> None:
    """Send the workspace's regular files that match the globs to the gateway as one streamed tar;
    past max_artifact_bytes a file goes as a header-only entry naming its size (dropped)."""
    import tarfile

    patterns = [glob_regex(g) for g in files.get("artifacts") or [] if isinstance(g, str)]
    bound = int(files.get("max_artifact_bytes") or 0)
    found: list[tuple[str, str, int]] = []
    for root, dirs, names in os.walk(directory):
        dirs.sort()
        for name in sorted(names):
            full = os.path.join(root, name)
            rel = os.path.relpath(full, directory)
            try:
                st = os.lstat(full)
            except OSError:
                continue
            if stat_is_regular(st.st_mode) and any(p.match(rel) for p in patterns):
                found.append((rel, full, st.st_size))
    conn = unix_http_connection(spec["socket"], 120.0)
    conn.putrequest("PUT", ARTIFACTS_PATH)
    conn.putheader("Authorization", f"Bearer {spec['token']}")
    conn.putheader("Content-Type", "application/x-tar")
    conn.putheader("Transfer-Encoding", "chunked")
    conn.endheaders()
    total = 0
    with tarfile.open(fileobj=_Chunked(conn), mode="w|", format=tarfile.PAX_FORMAT, bufsize=COLLECT_CHUNK) as out:
        for rel, full, size in found:
            info = tarfile.TarInfo(rel)
            if total + size > bound:
                info.size, info.pax_headers = 0, {DROPPED_PAX: str(size)}
                out.addfile(info)
                continue
            try:
                f = open(full, "rb")  # noqa: SIM115
            except OSError:
                continue
            with f:
                st = os.fstat(f.fileno())
                if not stat_is_regular(st.st_mode) or st.st_size != size:
                    continue
                info.size, info.mode, info.mtime = size, st.st_mode & 0o777, int(st.st_mtime)
                out.addfile(info, f)
                total += size
    conn.send(b"0\r\n\r\n")
    response = conn.getresponse()
    body = response.read(65536)
    if response.status != 200:
        code, message = _error_of(body)
        sys.stderr.write(f"artifacts not kept (HTTP {response.status} {code}): {message}\n")
    conn.close()


def stat_is_regular(mode: int) -> bool:
    import stat

    return stat.S_ISREG(mode)


def supervise(spec: dict, files: dict) -> int:
    """Run the agent in a child process; when it ends, for whatever reason (exit, crash, SIGTERM from
    a TTL expiry or a DELETE), send the artifacts, then exit with the agent's code."""
    me = os.getpid()
    stopping = []

    def on_term(signum: int, _frame: object) -> None:
        if os.getpid() != me:  # the child, before it installed its own handler
            os._exit(128 + signum)
        stopping.append(signum)
        if child > 0:
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)

    child = -1
    signal.signal(signal.SIGTERM, on_term)
    child = os.fork()
    if child == 0:
        code = EXIT_BUG
        try:
            code = run_main(spec)
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    while True:
        try:
            _pid, status = os.waitpid(child, 0)
            break
        except ChildProcessError:
            status = 0
            break
    code = os.waitstatus_to_exitcode(status)
    if code < 0:
        code = 128 - code
    try:
        collect_artifacts(spec, files, WORKSPACE)
    except Exception as exc:  # the agent's end is what it is; say why nothing came back
        sys.stderr.write(f"artifacts not collected: {_describe(exc)}\n")
    return code


def await_assignment() -> None:
    """A warm sandbox's wait for its agent: read the assignment line from stdin and take its
    environment. Stdin ending first means the control plane went away (a claim it could not finish
    then fails its agent: never a silent success)."""
    data = bytearray()
    while not data.endswith(b"\n"):
        chunk = os.read(0, 1 << 16)
        if not chunk:
            raise Fatal(EXIT_SPEC, "bad spec: no assignment came (the control plane went away)")
        data += chunk
    try:
        env = json.loads(bytes(data))["env"]
        if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
            raise ValueError("env must map names to strings")
    except (ValueError, KeyError, TypeError) as exc:
        raise Fatal(EXIT_SPEC, f"bad assignment on stdin: {exc}") from None
    del os.environ[WARM_ENV]
    os.environ.update(env)
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)


def main() -> int:
    try:
        if os.environ.get(WARM_ENV) == "1":
            await_assignment()
        spec = load_spec(dict(os.environ))
        files = spec.get("files")
        if files:
            os.makedirs(WORKSPACE, exist_ok=True)
            if files.get("workspace"):
                fetch_workspace(spec, WORKSPACE)
            spec["scratch"] = WORKSPACE
            os.chdir(WORKSPACE)
    except Fatal as fatal:
        sys.stderr.write(fatal.reason.replace("\n", " ") + "\n")
        return fatal.exit_code
    if files and files.get("artifacts"):
        return supervise(spec, files)
    return run_main(spec)


def run_main(spec: dict) -> int:
    usage = Usage()
    started = False
    runner: ToolRunner | None = None

    def terminate(signum: int, _frame: object) -> None:
        if runner is not None and runner.current is not None:
            kill_group(runner.current.pid)
        sys.stderr.write(f"terminated by signal {signum}\n")
        sys.stderr.flush()
        os._exit(128 + signum)

    signal.signal(signal.SIGTERM, terminate)
    try:
        runner = ToolRunner(spec)
        started = True
        final = run_agent(spec, usage, runner)
    except Fatal as fatal:
        if started:
            usage.emit()
        sys.stderr.write(fatal.reason.replace("\n", " ") + "\n")
        return fatal.exit_code
    emit("final", content=final)
    usage.emit()
    return EXIT_OK


if __name__ == "__main__":
    sys.exit(main())

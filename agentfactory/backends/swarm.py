"""SwarmBackend: the contract of base.py over Docker Swarm services (SPEC §13, docs/swarm.md).

Each agent is a service with one task that is never restarted, named after the agent's id and
labelled like the docker backend's containers. `swarm_spec` decides the service body; this sends it.

Capture: a service's log stream (`/services/{id}/logs`) gives the task's output from its first line
(the engine keeps it in the task's json-file log, never rotated within max_log_bytes), but a
following stream does not end when the task does. `ServiceOutput` follows it while the task runs and,
once the task has ended, reads the whole log once more without following and hands on only the bytes
it has not handed on yet (counted per stream): nothing is lost at the end, nothing repeated. Restart
recovery reads the same source from the start; the log pump skips what it stored before.
"""

from __future__ import annotations

import contextlib
import http.client
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import docker
import docker.errors
import requests
import structlog
import urllib3.exceptions

from agentfactory.backends.base import (
    LABEL_AGENT,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    LABEL_PREFIX,
    STDERR,
    STDOUT,
    AgentSpec,
    ContainerState,
    ContainerStatus,
    Launched,
    ManagedContainer,
    OutputSource,
    ResourceUsage,
)
from agentfactory.backends.docker import DockerBackend, LaunchError
from agentfactory.backends.swarm_spec import build_service, scratch_volume, service_name
from agentfactory.errors import NetworkPolicyError

log = structlog.get_logger("agentfactory.swarm")

LABEL_PROBE = LABEL_PREFIX + "probe"
POLL_SECONDS = 0.05  # launch: how often the task's state is read until it runs
WATCH_SECONDS = 0.25  # capture: how often a running task's state is read to see its end
_PLACING = {"new", "allocated", "pending"}
_STARTING = {"assigned", "accepted", "preparing", "ready", "starting"}
PROBE_SCRIPT = "grep NoNewPrivs /proc/self/status; for i in $(ls /sys/class/net); do echo if:$i; done"
_ENDED = {"complete", "failed", "shutdown", "rejected", "orphaned", "remove"}


class SwarmRefused(ValueError):
    """The engine is not a swarm this backend may run agents on (the server refuses to start)."""


def _task_of(tasks: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The service's task: one, since it has one replica and no restart (the newest, to be sure)."""
    return max(tasks, key=lambda t: t.get("CreatedAt", ""), default=None)


def _task_state(task: dict[str, Any] | None) -> str:
    return (task or {}).get("Status", {}).get("State", "new")


class ServiceOutput:
    """A service's output from its task's first line to its last, as `OutputSource` chunks."""

    def __init__(self, open_logs: Callable[[bool], Any], ended: Callable[[], bool]):
        self._open_logs = open_logs  # follow: bool -> (the streaming response, its socket)
        self._ended = ended  # whether the task has ended (or the service is gone)
        self._closed = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._response: Any = None

    def _shut(self) -> None:
        with self._lock:
            response = self._response
        if response is None:
            return
        response, sock = response
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)

    def _watch(self) -> None:
        while not self._closed.is_set() and not self._done.is_set():
            try:
                if self._ended():
                    self._done.set()
                    self._shut()
                    return
            except Exception as exc:  # the engine hiccups: keep following, try again
                log.debug("swarm_task_watch_failed", error=type(exc).__name__)
            self._closed.wait(WATCH_SECONDS)

    def chunks(self) -> Iterator[tuple[int, bytes]]:
        consumed = {STDOUT: 0, STDERR: 0}
        threading.Thread(target=self._watch, name="swarm-task-watch", daemon=True).start()
        while not self._closed.is_set():
            follow = not self._done.is_set()
            opened = self._open_logs(follow)
            with self._lock:
                self._response = opened
            if follow and self._done.is_set():  # the task ended while the stream was being opened
                self._shut()
            response = opened[0]
            seen = {STDOUT: 0, STDERR: 0}
            raw = response.raw
            try:
                while True:
                    header = raw.read(8)
                    if len(header) < 8:
                        break
                    size = int.from_bytes(header[4:8], "big")
                    payload = raw.read(size) if size else b""
                    if len(payload) < size:
                        break
                    stream = STDERR if header[0] == 2 else STDOUT
                    start = seen[stream]
                    seen[stream] += size
                    if seen[stream] <= consumed[stream]:
                        continue
                    cut = max(0, consumed[stream] - start)
                    consumed[stream] = seen[stream]
                    yield stream, payload[cut:]
            except (OSError, requests.RequestException, urllib3.exceptions.HTTPError, http.client.HTTPException):
                if not follow:
                    raise  # the final read broke: the launcher records the capture as incomplete
                # else the socket was shut under us (the task ended, or close()), or the stream broke
                # off: read again (below)
            finally:
                with contextlib.suppress(Exception):
                    response.close()
            if not follow:
                return  # the whole log after the task's end: nothing more will come
            if not self._done.is_set() and not self._closed.is_set():
                self._closed.wait(WATCH_SECONDS)  # the stream broke off early: follow again

    def close(self) -> None:
        self._closed.set()
        self._shut()


class SwarmBackend(DockerBackend):
    """Agents as one-task Swarm services on the swarm the (DOCKER_HOST's) engine manages."""

    def __init__(
        self,
        *,
        instance: str,
        network_name: str = "agentfactory-agents",
        stop_grace_seconds: float = 3.0,
        placement_timeout: float = 10.0,
        timeout: int = 20,
        workers: int = 32,
    ):
        super().__init__(instance=instance, network_name=network_name, timeout=timeout, workers=workers)
        self.stop_grace_seconds = stop_grace_seconds
        self.placement_timeout = placement_timeout
        self._node_id: str | None = None

    # -- start-up check ----------------------------------------------------------------------------

    def verify(self, image: str, timeout: float = 60.0) -> None:
        """Refuse (SwarmRefused) an engine that is no swarm manager, or whose tasks would run without
        no-new-privileges or with a network when they asked for none: the service API (1.41) has no
        per-service setting for either, so the daemon-wide ones are required (docs/swarm.md). Checked
        by running a probe service of the runtime image and reading what it sees from inside."""
        try:
            api = self._client()
            info = api.info()
        except (requests.RequestException, docker.errors.DockerException, ConnectionError) as exc:
            raise SwarmRefused(
                f"AGENTFACTORY_BACKEND=swarm: cannot check the swarm, the engine does not answer ({type(exc).__name__})"
            ) from exc
        swarm = info.get("Swarm") or {}
        if swarm.get("LocalNodeState") != "active":
            raise SwarmRefused(
                "AGENTFACTORY_BACKEND=swarm needs an engine in swarm mode, and this one is not "
                "(run `docker swarm init`, or `make up-swarm`)"
            )
        if not swarm.get("ControlAvailable"):
            raise SwarmRefused("AGENTFACTORY_BACKEND=swarm needs a swarm manager; this engine is a worker node")
        self._node_id = swarm.get("NodeID")
        seen = self._probe(api, image, timeout)
        if "NoNewPrivs:\t1" not in seen:
            raise SwarmRefused(
                "the swarm runs tasks without no-new-privileges: Docker's service API (1.41) has no per-service "
                'setting, so it must be daemon-wide: set "no-new-privileges": true in /etc/docker/daemon.json '
                "on every node and restart dockerd (docs/swarm.md)"
            )
        interfaces = sorted(line.split(":", 1)[1] for line in seen.splitlines() if line.startswith("if:"))
        if interfaces != ["lo"]:
            raise SwarmRefused(
                f"a swarm task without a network has interfaces {', '.join(interfaces) or 'none'} on this engine, "
                "not only lo: a service cannot join the `none` network, so agents without a network tool need "
                'the default bridge off daemon-wide: set "bridge": "none" in /etc/docker/daemon.json on every node '
                "and restart dockerd (docs/swarm.md)"
            )

    def _probe(self, api: docker.APIClient, image: str, timeout: float) -> str:
        name = f"agentfactory-probe-{self.instance}"
        labels = {LABEL_PROBE: self.instance}
        body = {
            "Name": name,
            "Labels": labels,
            "TaskTemplate": {
                "ContainerSpec": {
                    "Image": self._image_ref(api, image),
                    "Labels": labels,
                    "Command": ["/bin/sh", "-c", PROBE_SCRIPT],
                    "User": "10001:10001",
                    "ReadOnly": True,
                    "CapabilityDrop": ["ALL"],
                },
                "RestartPolicy": {"Condition": "none", "MaxAttempts": 0},
            },
            "Mode": {"Replicated": {"Replicas": 1}},
        }
        self._remove_service(api, name)
        try:
            sid = self._create(api, body)
            deadline = time.monotonic() + timeout
            while True:
                task = _task_of(api.tasks(filters={"service": sid}))
                state = _task_state(task)
                if state in _ENDED:
                    break
                if time.monotonic() > deadline:
                    err = (task or {}).get("Status", {}).get("Err") or state
                    raise SwarmRefused(f"the swarm's probe task did not finish within {timeout:.0f}s: {err}")
                time.sleep(POLL_SECONDS * 2)
            if state != "complete":
                err = (task or {}).get("Status", {}).get("Err") or state
                raise SwarmRefused(f"the swarm could not run the runtime image {image!r}: {err}")
            response = api._get(api._url("/services/{0}/logs", sid), params={"stdout": 1, "stderr": 1})  # type: ignore[attr-defined]
            api._raise_for_status(response)  # type: ignore[attr-defined]
            return b"".join(_frames(response.content)).decode(errors="replace")
        finally:
            self._remove_service(api, name)

    # -- plumbing ----------------------------------------------------------------------------------

    @staticmethod
    def _image_ref(api: docker.APIClient, image: str) -> str:
        """The image by its local ID, so that no node tries a registry first (Swarm pulls any tag
        before it runs it; an ID it never pulls): workers hold the image as `docker load` put it
        there (the same ID). A digest reference (repo@sha256:...) is left for nodes to pull."""
        if "@" in image:
            return image
        try:
            return str(api.inspect_image(image)["Id"])
        except docker.errors.NotFound:
            return image  # let the task say the image is missing

    @staticmethod
    def _create(api: docker.APIClient, body: dict[str, Any]) -> str:
        response = api._post_json(api._url("/services/create"), data=body)  # type: ignore[attr-defined]
        api._raise_for_status(response)  # type: ignore[attr-defined]
        return str(response.json()["ID"])

    @staticmethod
    def _remove_service(api: docker.APIClient, name: str) -> bool:
        try:
            api.remove_service(name)
            return True
        except docker.errors.NotFound:
            return False

    @staticmethod
    def _task(api: docker.APIClient, name: str) -> dict[str, Any] | None:
        return _task_of(api.tasks(filters={"service": name}))

    def _local_node(self, api: docker.APIClient) -> str | None:
        if self._node_id is None:
            self._node_id = (api.info().get("Swarm") or {}).get("NodeID") or None
        return self._node_id

    def _local_container(self, api: docker.APIClient, task: dict[str, Any] | None) -> str | None:
        """The task's container id when it runs on this very engine (a single-node swarm, the manager)."""
        cid = ((task or {}).get("Status") or {}).get("ContainerStatus", {}).get("ContainerID")
        if cid and task is not None and task.get("NodeID") == self._local_node(api):
            return str(cid)
        return None

    # -- verbs -------------------------------------------------------------------------------------

    async def launch(self, spec: AgentSpec) -> Launched:
        return await self._run(lambda api: self._launch_service(api, spec))

    def _launch_service(self, api: docker.APIClient, spec: AgentSpec) -> Launched:
        if spec.runtime:
            raise LaunchError(
                f"the swarm backend cannot choose the OCI runtime {spec.runtime!r} per agent (the service API has "
                "no such setting): make it the nodes' default-runtime in daemon.json and drop it from the catalog"
            )
        if spec.network:
            raise NetworkPolicyError("the swarm backend does not run agents with a network yet")
        body = build_service(spec, stop_grace_seconds=self.stop_grace_seconds)
        body["TaskTemplate"]["ContainerSpec"]["Image"] = self._image_ref(api, spec.image)
        name = service_name(spec.agent_id)
        try:
            sid = self._create(api, body)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise LaunchError(f"the swarm refused to create the agent's service: {exc.explanation}") from exc
            self._remove_service(api, name)  # a crashed launch's service: it is ours, replace it
            try:
                sid = self._create(api, body)
            except docker.errors.APIError as again:
                raise LaunchError(f"the swarm refused to create the agent's service: {again.explanation}") from again
        try:
            self._wait_placed(api, sid)
        except BaseException:
            self._remove_service(api, sid)
            raise
        return Launched(container_id=sid, output=self._output(api, sid))

    def _wait_placed(self, api: docker.APIClient, sid: str) -> None:
        """Until Swarm has given the task to a node (and it starts), or LaunchError with Swarm's reason
        when it cannot place it (constraints no node meets, resources no node has) within the timeout."""
        deadline = time.monotonic() + self.placement_timeout
        while True:
            task = _task_of(api.tasks(filters={"service": sid}))
            state = _task_state(task)
            status = (task or {}).get("Status") or {}
            if state == "rejected" or (state == "failed" and not status.get("ContainerStatus", {}).get("ContainerID")):
                raise LaunchError(f"the swarm could not start the agent: {status.get('Err') or state}")
            if state not in _PLACING:
                return
            if time.monotonic() > deadline:
                why = status.get("Err") or status.get("Message") or state
                raise LaunchError(
                    f"the swarm could not place the agent within {self.placement_timeout:.0f}s: {why}",
                    details=[{"swarm_state": state, "swarm_error": why}],
                )
            time.sleep(POLL_SECONDS)

    def _output(self, api: docker.APIClient, sid: str) -> ServiceOutput:
        def open_logs(follow: bool) -> Any:
            params = {"stdout": 1, "stderr": 1, "follow": int(follow), "timestamps": 0, "tail": "all"}
            response = api._get(api._url("/services/{0}/logs", sid), params=params, stream=True)  # type: ignore[attr-defined]
            sock = api._get_raw_response_socket(response)  # type: ignore[attr-defined]  # raises on error status
            api._disable_socket_timeout(sock)  # type: ignore[attr-defined]
            return response, getattr(sock, "_sock", sock)  # the socket under docker-py's SocketIO

        def ended() -> bool:
            try:
                return _task_state(self._task(api, sid)) in _ENDED
            except docker.errors.NotFound:
                return True

        return ServiceOutput(open_logs, ended)

    async def logs(self, agent_id: str) -> OutputSource:
        return await self._run(lambda api: self._output(api, service_name(agent_id)))

    async def status(self, agent_id: str) -> ContainerStatus:
        return await self._run(lambda api: self._service_status(api, service_name(agent_id)))

    def _service_status(self, api: docker.APIClient, name: str) -> ContainerStatus:
        try:
            task = self._task(api, name)
        except docker.errors.NotFound:
            return ContainerStatus(ContainerState.MISSING)
        state = _task_state(task)
        status = (task or {}).get("Status") or {}
        if state == "running":
            return ContainerStatus(ContainerState.RUNNING)
        if state not in _ENDED:
            return ContainerStatus(ContainerState.CREATED)
        exit_code = status.get("ContainerStatus", {}).get("ExitCode")
        oom = False
        cid = self._local_container(api, task)
        if cid is not None:  # the task's container is here: the engine says whether it died of memory
            with contextlib.suppress(docker.errors.NotFound):
                oom = bool(api.inspect_container(cid)["State"].get("OOMKilled"))
        message = status.get("Err") or ""
        return ContainerStatus(ContainerState.EXITED, exit_code=exit_code, oom_killed=oom, message=message)

    async def wait(self, agent_id: str, timeout: float) -> ContainerStatus:
        name = service_name(agent_id)

        def wait(api: docker.APIClient) -> ContainerStatus:
            deadline = time.monotonic() + timeout
            while True:
                st = self._service_status(api, name)
                if st.state in (ContainerState.EXITED, ContainerState.MISSING) or time.monotonic() > deadline:
                    return st
                time.sleep(WATCH_SECONDS)

        return await self._run(wait)

    async def stop(self, agent_id: str, grace_seconds: float) -> None:
        name = service_name(agent_id)

        def stop(api: docker.APIClient) -> None:
            try:
                task = self._task(api, name)
            except docker.errors.NotFound:
                return
            if _task_state(task) in _ENDED:
                return
            cid = self._local_container(api, task)
            if grace_seconds <= 0 and cid is not None:
                # No grace (a TTL ran out) and the task runs here: SIGKILL now, not after the service's grace.
                with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                    api.kill(cid)
                    return
            self._scale_to_zero(api, name)

        await self._run(stop)

    @staticmethod
    def _scale_to_zero(api: docker.APIClient, name: str) -> None:
        """Swarm's own stop: no replica wanted, so the task gets SIGTERM and, after the service's
        grace, SIGKILL; the service (and its log) stays until `remove`."""
        for _ in range(5):
            try:
                current = api.inspect_service(name)
            except docker.errors.NotFound:
                return
            spec = current["Spec"]
            spec["Mode"] = {"Replicated": {"Replicas": 0}}
            url = api._url("/services/{0}/update", current["ID"])  # type: ignore[attr-defined]
            response = api._post_json(url, data=spec, params={"version": current["Version"]["Index"]})  # type: ignore[attr-defined]
            if response.status_code == 404:
                return
            if response.status_code < 400:
                return
            if "out of sequence" not in response.text:  # someone else updated it meanwhile: read again
                api._raise_for_status(response)  # type: ignore[attr-defined]

    async def remove(self, agent_id: str) -> None:
        def remove(api: docker.APIClient) -> None:
            self._remove_service(api, service_name(agent_id))
            self._remove_scratch_later(api, agent_id)

        await self._run(remove)

    def _remove_scratch_later(self, api: docker.APIClient, agent_id: str) -> None:
        """The agent's scratch volume on this engine, once Swarm has removed the task's container
        (asynchronously, after the service). Volumes on other nodes hold nothing once their task
        stopped (tmpfs) and are swept by `list_managed` where the engine is local."""

        def attempt() -> None:
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline:
                try:
                    api.remove_volume(scratch_volume(agent_id))
                    return
                except docker.errors.NotFound:
                    return
                except (docker.errors.APIError, requests.RequestException):
                    time.sleep(0.5)

        threading.Thread(target=attempt, name="swarm-scratch-rm", daemon=True).start()

    async def list_managed(self) -> list[ManagedContainer]:
        def list_managed(api: docker.APIClient) -> list[ManagedContainer]:
            filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.instance}"]}
            services = api.services(filters=filters)
            found = [
                ManagedContainer(
                    container_id=s["ID"],
                    agent_id=(s["Spec"].get("Labels") or {}).get(LABEL_AGENT, ""),
                    state=ContainerState.RUNNING,
                )
                for s in services
            ]
            self._sweep_volumes(api, {m.agent_id for m in found}, filters)
            return found

        return await self._run(list_managed)

    @staticmethod
    def _sweep_volumes(api: docker.APIClient, live: set[str], filters: dict[str, list[str]]) -> None:
        for volume in (api.volumes(filters=filters) or {}).get("Volumes") or []:
            agent = (volume.get("Labels") or {}).get(LABEL_AGENT)
            if agent and agent not in live:
                with contextlib.suppress(docker.errors.APIError):
                    api.remove_volume(volume["Name"])

    async def usage(self, agent_id: str) -> ResourceUsage:
        def usage(api: docker.APIClient) -> ResourceUsage:
            try:
                cid = self._local_container(api, self._task(api, service_name(agent_id)))
                if cid is None:
                    return ResourceUsage()  # on another node: its engine is not ours to ask
                stats = api.stats(cid, stream=False, one_shot=True)
            except docker.errors.NotFound:
                return ResourceUsage()
            mem = stats.get("memory_stats") or {}
            cpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
            peak = mem.get("max_usage") or mem.get("usage")
            return ResourceUsage(peak_memory_bytes=int(peak) if peak else None, cpu_seconds=cpu / 1e9 if cpu else None)

        return await self._run(usage)

    async def prepare_network(self, network: str) -> None:
        raise NetworkPolicyError(
            "the swarm backend does not run agents with a network yet (network tools are refused; docs/swarm.md)"
        )


def _frames(data: bytes) -> Iterator[bytes]:
    pos = 0
    while len(data) - pos >= 8:
        size = int.from_bytes(data[pos + 4 : pos + 8], "big")
        yield data[pos + 8 : pos + 8 + size]
        pos += 8 + size


__all__ = ["ServiceOutput", "SwarmBackend", "SwarmRefused"]

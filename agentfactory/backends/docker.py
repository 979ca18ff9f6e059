"""DockerBackend: the contract of base.py over docker-py. Thin I/O: `docker_spec` decides, this sends.

Every blocking SDK call runs in the backend's own thread pool, so the event loop never waits on
Docker and log following (in the log pump's own threads) never starves stop/remove.
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import docker
import docker.errors
import docker.utils
import requests
import structlog
from docker.transport.unixconn import UnixHTTPAdapter

from agentfactory.backends import egress
from agentfactory.backends.base import (
    LABEL_INSTANCE,
    LABEL_MANAGED,
    AgentSpec,
    Backend,
    ContainerState,
    ContainerStatus,
    EngineResources,
    Launched,
    ManagedContainer,
    OutputSource,
    ResourceUsage,
)
from agentfactory.backends.docker_output import AttachOutput, LogsOutput, exit_confirmed
from agentfactory.backends.docker_spec import build_create_args, container_name
from agentfactory.backends.docker_warm import DockerSandboxes, agent_of
from agentfactory.errors import AgentFactoryError, NetworkPolicyError, RuntimeUnavailableError

T = TypeVar("T")
log = structlog.get_logger("agentfactory.docker")
ICC_OPTION = "com.docker.network.bridge.enable_icc"
BRIDGE_NAME_OPTION = "com.docker.network.bridge.name"
EGRESS_RECHECK_SECONDS = 30.0  # a network launch reads the egress rules back when older than this
_STATES = {"created": ContainerState.CREATED, "running": ContainerState.RUNNING}


class LaunchError(AgentFactoryError):
    """The engine answered but refused to run the agent (missing image, bad runtime...)."""

    code, status = "E_LAUNCH", 500


def _unavailable(exc: BaseException) -> RuntimeUnavailableError:
    return RuntimeUnavailableError(f"the container engine is unreachable: {type(exc).__name__}")


def _epoch(value: str | None) -> float | None:
    """Docker's RFC 3339 time (nanoseconds, "Z") as epoch seconds; None for its zero time."""
    if not value or value.startswith("0001-"):
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def bridge_of(net: dict[str, Any]) -> egress.Bridge:
    """The host's side of a Docker network, when it is a bridge on this very host."""
    name = net.get("Name", "?")
    if net.get("Driver") != "bridge":
        raise NetworkPolicyError(f"the agents' network {name!r} is a {net.get('Driver')!r} network, not a bridge")
    interface = (net.get("Options") or {}).get(BRIDGE_NAME_OPTION) or f"br-{net['Id'][:12]}"
    if not egress.bridge_on_this_host(interface):
        raise NetworkPolicyError(
            f"the agents' bridge {interface} is not in the control plane's network namespace (a control plane in a "
            "container needs the host's network; an engine on another machine or a rootless one cannot be "
            "filtered from here)"
        )
    subnets = tuple(c["Subnet"] for c in (net.get("IPAM") or {}).get("Config") or [] if ":" not in c.get("Subnet", ":"))
    return egress.Bridge(network=name, interface=interface, subnets=subnets)


class _OnePoolAdapter(UnixHTTPAdapter):
    """docker-py's Unix socket adapter keys its connection pools by the whole request URL, and keeps
    25 of them: a call on a container's own path (`/containers/ID/start`, `.../wait`) never finds a
    kept-alive connection, opens a new one, and evicts (closes) another path's pool. One socket, one
    pool: every call reuses a connection."""

    def get_connection(self, url: str | bytes, proxies: Any = None) -> Any:
        return super().get_connection("http+docker://localhost", proxies)


def keep_alive(api: docker.APIClient) -> docker.APIClient:
    """`api` with one kept-alive connection pool for its Unix socket (other transports as they are)."""
    adapter = getattr(api, "_custom_adapter", None)
    if type(adapter) is UnixHTTPAdapter:
        one = _OnePoolAdapter(
            "http+unix://" + adapter.socket_path, adapter.timeout, max_pool_size=adapter.max_pool_size
        )
        api.mount("http+docker://", one)
        api._custom_adapter = one  # type: ignore[attr-defined]
        adapter.close()
    return api


class DockerBackend(Backend):
    """Agents as containers on the local (or DOCKER_HOST's) Docker Engine."""

    def __init__(
        self,
        *,
        instance: str,
        network_name: str = "agentfactory-agents",
        timeout: int = 20,
        workers: int = 32,
    ):
        self.instance = instance
        self.network_name = network_name
        self._timeout = timeout
        self._pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="docker")
        self._api: docker.APIClient | None = None
        # Confirms a container's exit on a connection of its own (docker-py's stock pools, one per
        # path): an engine that stops refuses new connections before it stops its containers, so the
        # end of a container it stops is never taken for the agent's own: it is `lost` (test_engine_restart).
        self._confirm_api: docker.APIClient | None = None
        self._api_lock = threading.Lock()
        self._network_lock = threading.Lock()
        self._engine_id: str | None = None
        self._egress_checked: dict[str, tuple[str, float]] = {}  # network name -> (its id, verified at)

    # -- plumbing --------------------------------------------------------------------------------

    def _client(self) -> docker.APIClient:
        with self._api_lock:
            if self._api is None:
                try:
                    params = docker.utils.kwargs_from_env()
                    api = docker.APIClient(version="auto", timeout=self._timeout, max_pool_size=64, **params)
                    self._confirm_api = docker.APIClient(version=api.api_version, timeout=self._timeout, **params)
                    self._api = keep_alive(api)
                except docker.errors.DockerException as exc:
                    raise _unavailable(exc) from exc
            return self._api

    def _exit_confirmed(self, container_id: str) -> Callable[[], bool]:
        self._client()
        assert self._confirm_api is not None
        return exit_confirmed(self._confirm_api, container_id)

    async def _run(self, fn: Callable[[docker.APIClient], T]) -> T:
        def call() -> T:
            try:
                return fn(self._client())
            except (requests.ConnectionError, requests.Timeout, ConnectionError) as exc:
                raise _unavailable(exc) from exc

        return await asyncio.get_running_loop().run_in_executor(self._pool, call)

    # -- verbs -----------------------------------------------------------------------------------

    async def ping(self) -> None:
        def ping(api: docker.APIClient) -> None:
            try:
                api.ping()
            except docker.errors.APIError as exc:
                raise _unavailable(exc) from exc

        await self._run(ping)

    async def engine_id(self) -> str:
        if self._engine_id is None:
            self._engine_id = str(await self._run(lambda api: api.info()["ID"]))
        return self._engine_id

    async def resources(self) -> EngineResources | None:
        def info(api: docker.APIClient) -> EngineResources | None:
            facts = api.info()
            cpus, memory = facts.get("NCPU"), facts.get("MemTotal")
            return EngineResources(cpus=int(cpus), memory_bytes=int(memory)) if cpus and memory else None

        return await self._run(info)

    async def launch(self, spec: AgentSpec) -> Launched:
        return await self._run(lambda api: self._launch(api, spec))

    def _launch(self, api: docker.APIClient, spec: AgentSpec) -> Launched:
        args = build_create_args(spec)
        host_config = api.create_host_config(**args.pop("host_config"))
        args.pop("detach")
        if spec.network:
            self._ensure_network(api, spec.network)
        try:
            created = api.create_container(**args, host_config=host_config)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise LaunchError(f"the engine refused to create the container: {exc.explanation}") from exc
            # A container of this agent survives a crashed launch: it is ours, replace it.
            self._remove(api, container_name(spec.agent_id))
            created = api.create_container(**args, host_config=host_config)
        cid = created["Id"]
        try:
            stdin = int(spec.warm_owner is not None)  # a warm sandbox's assignment comes this way (warm.py)
            raw = api.attach_socket(cid, params={"stdin": stdin, "stdout": 1, "stderr": 1, "stream": 1, "logs": 0})
            sock = getattr(raw, "_sock", raw)
            sock.settimeout(None)
            api.start(cid)
        except BaseException as exc:
            self._remove(api, cid)
            if isinstance(exc, docker.errors.APIError):
                raise LaunchError(f"the engine refused to start the container: {exc.explanation}") from exc
            raise
        return Launched(container_id=cid, output=AttachOutput(sock, self._exit_confirmed(cid)))

    async def prepare_network(self, network: str) -> None:
        await self._run(lambda api: self._ensure_network(api, network))

    def _ensure_network(self, api: docker.APIClient, name: str) -> None:
        """The agents' bridge, ready for an agent: inter-container traffic off, and the egress policy
        of egress.py read back in force (at most EGRESS_RECHECK_SECONDS ago, for this very network:
        a bridge made again has another device and is checked again). NetworkPolicyError otherwise."""
        with self._network_lock:
            net = self._network_locked(api, name)
            checked = self._egress_checked.get(name)
            if checked and checked[0] == net["Id"] and time.monotonic() - checked[1] < EGRESS_RECHECK_SECONDS:
                return
            self._egress_checked.pop(name, None)
            bridge = bridge_of(net)
            policy = egress.build_policy(bridge, host_networks=egress.host_networks(), ipv6=egress.kernel_has_ipv6())
            egress.enforce(policy)
            if checked is None or checked[0] != net["Id"]:
                log.info("agent_network_egress_in_force", network=name, interface=bridge.interface)
            self._egress_checked[name] = (net["Id"], time.monotonic())

    @staticmethod
    def _network_locked(api: docker.APIClient, name: str) -> dict[str, Any]:
        """The network `name` with ICC off, made if missing. One made before that rule (ICC on) is
        replaced when nothing uses it; while something does, it is refused, never used as it is."""
        found = [n for n in api.networks(names=[name]) if n.get("Name") == name]  # the filter matches substrings
        if found and (found[0].get("Options") or {}).get(ICC_OPTION) != "false":
            try:
                api.remove_network(found[0]["Id"])
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                raise NetworkPolicyError(
                    f"the agents' network {name!r} lets agents reach each other (it was made before "
                    f"inter-container traffic was turned off) and cannot be replaced: {exc.explanation}; "
                    f"stop what uses it (docker network inspect {name}) so it can be made again"
                ) from exc
            found = []
        if not found:
            try:
                api.create_network(name, driver="bridge", options={ICC_OPTION: "false"}, labels={LABEL_MANAGED: "true"})
            except docker.errors.APIError as exc:
                if exc.status_code != 409:
                    raise
            found = [n for n in api.networks(names=[name]) if n.get("Name") == name]
            if not found:
                raise NetworkPolicyError(f"the agents' network {name!r} vanished while it was being made")
        net: dict[str, Any] = found[0]
        return net

    async def status(self, agent_id: str) -> ContainerStatus:
        return await self._run(lambda api: self._status(api, container_name(agent_id)))

    @staticmethod
    def _status(api: docker.APIClient, container_id: str) -> ContainerStatus:
        try:
            info = api.inspect_container(container_id)
        except docker.errors.NotFound:
            return ContainerStatus(ContainerState.MISSING)
        state = info["State"]
        return ContainerStatus(
            _STATES.get(state.get("Status", ""), ContainerState.EXITED),
            exit_code=state.get("ExitCode"),
            oom_killed=bool(state.get("OOMKilled")),
            message=state.get("Error") or "",
            runtime=(info.get("HostConfig") or {}).get("Runtime") or None,
            finished_at=_epoch(state.get("FinishedAt")),
        )

    async def wait(self, agent_id: str, timeout: float) -> ContainerStatus:
        container_id = container_name(agent_id)

        def wait(api: docker.APIClient) -> ContainerStatus:
            try:
                api.wait(container_id, timeout=max(1, round(timeout)))
            except docker.errors.NotFound:
                return ContainerStatus(ContainerState.MISSING)
            except requests.exceptions.ReadTimeout:
                pass
            return self._status(api, container_id)

        return await self._run(wait)

    async def stop(self, agent_id: str, grace_seconds: float) -> None:
        container_id = container_name(agent_id)

        def stop(api: docker.APIClient) -> None:
            try:
                api.stop(container_id, timeout=max(0, round(grace_seconds)))
            except docker.errors.NotFound:
                pass
            except docker.errors.APIError as exc:
                if exc.status_code not in (304, 409):
                    raise

        await self._run(stop)

    async def remove(self, agent_id: str) -> None:
        await self._run(lambda api: self._remove(api, container_name(agent_id)))

    @staticmethod
    def _remove(api: docker.APIClient, container_id: str) -> None:
        try:
            api.remove_container(container_id, force=True, v=True)
        except docker.errors.NotFound:
            pass
        except docker.errors.APIError as exc:
            if exc.status_code != 409:  # 409: a removal is already in progress
                raise

    async def logs(self, agent_id: str) -> OutputSource:
        container_id = container_name(agent_id)

        def logs(api: docker.APIClient) -> OutputSource:
            params = {"stdout": 1, "stderr": 1, "follow": 1, "timestamps": 0, "tail": "all"}
            url = api._url("/containers/{0}/logs", container_id)  # type: ignore[attr-defined]
            response = api._get(url, params=params, stream=True)  # type: ignore[attr-defined]
            sock = api._get_raw_response_socket(response)  # type: ignore[attr-defined]  # raises on error status
            api._disable_socket_timeout(sock)  # type: ignore[attr-defined]
            return LogsOutput(response, self._exit_confirmed(container_id))

        return await self._run(logs)

    async def list_managed(self) -> list[ManagedContainer]:
        def list_managed(api: docker.APIClient) -> list[ManagedContainer]:
            filters = {"label": [f"{LABEL_MANAGED}=true", f"{LABEL_INSTANCE}={self.instance}"]}
            return [
                ManagedContainer(
                    container_id=c["Id"],
                    agent_id=agent_id,
                    state=_STATES.get(c.get("State", ""), ContainerState.EXITED),
                )
                for c in api.containers(all=True, filters=filters)
                if (agent_id := agent_of(c))  # an unclaimed warm sandbox is the pool's (docker_warm.py)
            ]

        return await self._run(list_managed)

    async def usage(self, agent_id: str) -> ResourceUsage:
        container_id = container_name(agent_id)

        def usage(api: docker.APIClient) -> ResourceUsage:
            try:
                stats = api.stats(container_id, stream=False, one_shot=True)
            except docker.errors.NotFound:
                return ResourceUsage()
            mem = stats.get("memory_stats") or {}
            cpu = ((stats.get("cpu_stats") or {}).get("cpu_usage") or {}).get("total_usage")
            peak = mem.get("max_usage") or mem.get("usage")
            return ResourceUsage(
                peak_memory_bytes=int(peak) if peak else None,
                cpu_seconds=cpu / 1e9 if cpu else None,
            )

        return await self._run(usage)

    def sandboxes(self) -> DockerSandboxes:
        return DockerSandboxes(self)

    async def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        for api in (self._api, self._confirm_api):
            if api is not None:
                api.close()

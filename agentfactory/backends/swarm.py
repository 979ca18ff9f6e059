"""SwarmBackend: the contract of base.py over Docker Swarm services (SPEC §13, docs/swarm.md).

Each agent is a service with one task that is never restarted, named after the agent's id and
labelled like the docker backend's containers. `swarm_spec` decides the service body; this sends it.
Capture is `swarm_logs.ServiceOutput`; the start-up check `swarm_tasks.verify_swarm`.
"""

from __future__ import annotations

import contextlib
import math
import threading
import time
from typing import Any

import docker
import docker.errors
import requests

from agentfactory.backends.base import (
    LABEL_AGENT,
    LABEL_INSTANCE,
    LABEL_MANAGED,
    AgentSpec,
    ContainerState,
    ContainerStatus,
    EngineResources,
    Launched,
    ManagedContainer,
    OutputSource,
    ResourceUsage,
)
from agentfactory.backends.docker import DockerBackend, LaunchError
from agentfactory.backends.swarm_logs import WATCH_SECONDS, ServiceOutput
from agentfactory.backends.swarm_relay import sweep_relay
from agentfactory.backends.swarm_spec import build_service, scratch_volume, service_name
from agentfactory.backends.swarm_tasks import (
    ENDED,
    PLACING,
    POLL_SECONDS,
    SwarmRefused,
    create_service,
    image_ref,
    remove_service,
    task_of,
    task_state,
    verify_swarm,
)
from agentfactory.errors import NetworkPolicyError, NotPlacedError, RuntimeUnavailableError

NANO_PER_CPU = 1_000_000_000
SLOW_POLL_SECONDS = 0.25  # a task's state, read after its first second of waiting
START_SECONDS = 60.0  # a placed task that does not run after this fails its launch (a stuck image, a node gone)


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
        relay: bool = False,
    ):
        super().__init__(instance=instance, network_name=network_name, timeout=timeout, workers=workers)
        self.relay = relay  # agents reach the gateway through their node's relay (swarm_relay.py)
        self.stop_grace_seconds = stop_grace_seconds
        self.placement_timeout = placement_timeout
        self._node_id: str | None = None

    def verify(self, image: str, timeout: float = 60.0) -> None:
        """Refuse (SwarmRefused) a swarm that would run agents with less than the sandbox (at start-up)."""
        try:
            api = self._client()
        except RuntimeUnavailableError as exc:
            raise SwarmRefused(f"AGENTFACTORY_BACKEND=swarm: cannot check the swarm: {exc.message}") from exc
        self._node_id = verify_swarm(api, image=image, instance=self.instance, timeout=timeout) or None
        if not self.relay:  # a node relay a killed control plane left when it had AGENTFACTORY_SWARM_RELAY on
            sweep_relay(api, self.instance)

    # -- plumbing ----------------------------------------------------------------------------------

    @staticmethod
    def _task(api: docker.APIClient, name: str) -> dict[str, Any] | None:
        return task_of(api.tasks(filters={"service": name}))

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
        relay = self.instance if self.relay else None
        body = build_service(spec, stop_grace_seconds=self.stop_grace_seconds, relay=relay)
        body["TaskTemplate"]["ContainerSpec"]["Image"] = image_ref(api, spec.image)
        name = service_name(spec.agent_id)
        try:
            sid = create_service(api, body)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise LaunchError(f"the swarm refused to create the agent's service: {exc.explanation}") from exc
            remove_service(api, name)  # a crashed launch's service: it is ours, replace it
            try:
                sid = create_service(api, body)
            except docker.errors.APIError as again:
                raise LaunchError(f"the swarm refused to create the agent's service: {again.explanation}") from again
        try:
            self._wait_placed(api, sid)
        except BaseException:
            remove_service(api, sid)
            raise
        return Launched(container_id=sid, output=self._output(api, sid))

    def _wait_placed(self, api: docker.APIClient, sid: str) -> None:
        """Until the task runs (or has already ended), as the docker backend returns once the container
        started: the agent's TTL counts from then. NotPlacedError with Swarm's reason when it cannot
        place the task (constraints no node meets, resources no node has) within the placement
        timeout: the launcher queues an agent that may wait (SPEC §10) and tries it again later.
        LaunchError when a node refuses to start it."""
        began = time.monotonic()
        placing_until = began + self.placement_timeout
        starting_until = placing_until + START_SECONDS
        while True:
            task = task_of(api.tasks(filters={"service": sid}))
            state = task_state(task)
            status = (task or {}).get("Status") or {}
            if state == "rejected" or (state == "failed" and not status.get("ContainerStatus", {}).get("ContainerID")):
                raise LaunchError(f"the swarm could not start the agent: {status.get('Err') or state}")
            if state == "running" or state in ENDED:
                return
            now = time.monotonic()
            if state in PLACING and now > placing_until:
                why = status.get("Err") or status.get("Message") or state
                raise NotPlacedError(
                    f"the swarm could not place the agent within {self.placement_timeout:.0f}s: {why}",
                    details=[{"swarm_state": state, "swarm_error": why}],
                    retry_after=max(1, math.ceil(self.placement_timeout)),
                )
            if now > starting_until:
                raise LaunchError(f"the agent's task did not start within {START_SECONDS:.0f}s (it is {state})")
            # Often at first (a task Swarm can place runs within a second); then gently, as a full swarm
            # may have many agents waiting to be placed at once.
            time.sleep(POLL_SECONDS if now - began < 1.0 else SLOW_POLL_SECONDS)

    def _output(self, api: docker.APIClient, sid: str) -> ServiceOutput:
        def open_logs(follow: bool) -> Any:
            params = {"stdout": 1, "stderr": 1, "follow": int(follow), "timestamps": 0, "tail": "all"}
            response = api._get(api._url("/services/{0}/logs", sid), params=params, stream=True)  # type: ignore[attr-defined]
            sock = api._get_raw_response_socket(response)  # type: ignore[attr-defined]  # raises on error status
            api._disable_socket_timeout(sock)  # type: ignore[attr-defined]
            return response, getattr(sock, "_sock", sock)  # the socket under docker-py's SocketIO

        def ended() -> bool:
            return self._service_status(api, sid).state in (ContainerState.EXITED, ContainerState.MISSING)

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
        if task is None:
            # Scaled to 0 (stopped): Swarm deletes the shut-down task soon after, its exit code with it.
            try:
                mode = api.inspect_service(name)["Spec"].get("Mode") or {}
            except docker.errors.NotFound:
                return ContainerStatus(ContainerState.MISSING)
            if (mode.get("Replicated") or {}).get("Replicas") == 0:
                return ContainerStatus(ContainerState.EXITED, message="stopped (scaled to 0)")
            return ContainerStatus(ContainerState.CREATED)
        state = task_state(task)
        status = task.get("Status") or {}
        if state == "running":
            return ContainerStatus(ContainerState.RUNNING)
        if state not in ENDED:
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
            if task_state(task) in ENDED:
                return
            cid = self._local_container(api, task)
            if cid is not None:
                # The task runs on this engine: stop its container with the caller's grace (0: SIGKILL at
                # once, a TTL ran out), as the docker backend does; Swarm does not restart it (restart none)
                # and keeps the task, its exit code and its log until the service is removed.
                try:
                    api.stop(cid, timeout=max(0, round(grace_seconds)))
                    return
                except docker.errors.NotFound:
                    pass  # removed meanwhile: let Swarm stop what is left
                except docker.errors.APIError as exc:
                    if exc.status_code in (304, 409):
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
            remove_service(api, service_name(agent_id))
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

    async def resources(self) -> EngineResources | None:
        """Every ready, active node of the swarm together (SPEC §10's default capacity counts them)."""

        def resources(api: docker.APIClient) -> EngineResources | None:
            cpus = memory = 0
            for node in api.nodes():
                if (node.get("Status") or {}).get("State") != "ready":
                    continue
                if (node.get("Spec") or {}).get("Availability", "active") != "active":
                    continue
                res = (node.get("Description") or {}).get("Resources") or {}
                cpus += int(res.get("NanoCPUs", 0)) // NANO_PER_CPU
                memory += int(res.get("MemoryBytes", 0))
            return EngineResources(cpus=cpus, memory_bytes=memory) if cpus and memory else None

        return await self._run(resources)

    async def engine_id(self) -> str:
        """The swarm's cluster id: an agent's service runs on whichever node Swarm picks, so every
        replica that reaches a manager of this swarm reaches it (and may adopt it)."""

        def cluster_id(api: docker.APIClient) -> str:
            info = api.info()
            cluster = ((info.get("Swarm") or {}).get("Cluster") or {}).get("ID")
            return f"swarm:{cluster}" if cluster else str(info["ID"])

        if self._engine_id is None:
            self._engine_id = await self._run(cluster_id)
        return self._engine_id

    def sandboxes(self) -> None:  # type: ignore[override]  # the base contract allows None: none here
        """No warm sandboxes on a swarm (yet): the docker backend's are containers of one engine, not
        services Swarm places, so every agent starts cold here (docs/swarm.md)."""
        return None

    async def prepare_network(self, network: str) -> None:
        raise NetworkPolicyError(
            "the swarm backend does not run agents with a network yet (network tools are refused; docs/swarm.md)"
        )


__all__ = ["SwarmBackend", "SwarmRefused"]

"""The Docker runtime: containers through the Docker engine API (the ``docker`` SDK).

Network isolation: rentals run on a dedicated bridge network (default ``openclore``) with
inter-container traffic off (``enable_icc=false``). When ``iptables`` is usable (root), the agent
also installs, idempotently, two chains for that bridge:

- ``OC-F-<bridge>``, jumped to from ``DOCKER-USER`` (forwarded traffic): new connections from
  containers to private, link-local, CGNAT, benchmark and multicast ranges (10/8, 172.16/12,
  192.168/16, 169.254/16, 100.64/10, 198.18/15, 224/4, 0/8) are rejected; replies to renters'
  inbound connections and DNS are let through; the public internet is reachable;
- ``OC-I-<bridge>``, jumped to from ``INPUT``: containers cannot open connections to the host
  itself (any of its addresses: the agent, the host's SSH, a local database…), DNS excepted.

IPv6 is not enabled on the network, so containers have no IPv6 route at all.
"""

from __future__ import annotations

import io
import logging
import shutil
import subprocess
import tarfile
import threading
import time
from pathlib import PurePosixPath
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
from docker.types import DeviceRequest  # type: ignore[import-untyped]

from openclore.agent.runtime import (
    LABEL_AGENT,
    ImageUnavailable,
    LaunchFailed,
    LaunchSpec,
    Observed,
    PortTaken,
    RuntimeProblem,
)

log = logging.getLogger("openclore.agent.docker")

PRIVATE_RANGES = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "169.254.0.0/16",
    "100.64.0.0/10",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "0.0.0.0/8",
]
NETWORK_LABEL = "openclore.network"


class DockerRuntime:
    def __init__(
        self,
        agent_id: str,
        *,
        network: str | None = "openclore",
        isolation: str = "auto",  # auto | on | off
        base_url: str | None = None,
        timeout: float = 120.0,
    ) -> None:
        self.agent_id = agent_id
        self.network = network
        self.isolation = isolation
        try:
            self.client = (
                docker.DockerClient(base_url=base_url, timeout=int(timeout))
                if base_url
                else docker.from_env(timeout=int(timeout))
            )
            self.client.ping()
        except Exception as exc:
            raise RuntimeProblem(f"Docker engine not reachable: {exc}") from exc
        self.bridge: str | None = None
        self._lock = threading.Lock()
        self._onstart_errors: dict[str, str] = {}

    # ------------------------------------------------------------------ setup

    def prepare(self) -> list[str]:
        notes: list[str] = []
        if not self.network:
            notes.append("containers use Docker's default bridge: no network isolation")
            return notes
        net = self._ensure_network(self.network)
        options = net.attrs.get("Options") or {}
        self.bridge = options.get("com.docker.network.bridge.name") or f"br-{net.id[:12]}"
        notes.append(f"network {self.network} (bridge {self.bridge}, inter-container traffic off)")
        if self.isolation == "off":
            notes.append("isolation rules off (--isolation off)")
            return notes
        try:
            notes.extend(apply_isolation(self.bridge))
        except RuntimeProblem as exc:
            if self.isolation == "on":
                raise
            notes.append(f"WARNING: no iptables isolation: {exc}")
        return notes

    def _ensure_network(self, name: str) -> Any:
        try:
            return self.client.networks.get(name)
        except docker.errors.NotFound:
            pass
        bridge = ("oc-" + name)[:15]
        try:
            return self.client.networks.create(
                name,
                driver="bridge",
                options={
                    "com.docker.network.bridge.enable_icc": "false",
                    "com.docker.network.bridge.name": bridge,
                },
                labels={NETWORK_LABEL: "1"},
                check_duplicate=True,
            )
        except docker.errors.APIError as exc:
            if exc.status_code == 409:  # created concurrently
                return self.client.networks.get(name)
            raise RuntimeProblem(f"cannot create network {name}: {exc.explanation}") from exc

    # ------------------------------------------------------------------ queries

    def containers(self) -> list[Observed]:
        try:
            containers = self.client.containers.list(
                all=True, filters={"label": f"{LABEL_AGENT}={self.agent_id}"}
            )
        except docker.errors.DockerException as exc:
            raise RuntimeProblem(f"cannot list containers: {exc}") from exc
        out = [_observed(c.attrs) for c in containers]
        with self._lock:
            for c in out:
                if c.error is None and c.state == "running":
                    c.error = self._onstart_errors.get(c.id)
        return out

    def used_host_ports(self) -> set[int]:
        used: set[int] = set()
        for summary in self.client.api.containers(all=True):
            for port in summary.get("Ports") or []:
                if port.get("PublicPort"):
                    used.add(int(port["PublicPort"]))
        for c in self.containers():
            used.update(c.host_ports.values())
        return used

    def has_image(self, image: str) -> bool:
        try:
            self.client.images.get(image)
            return True
        except docker.errors.ImageNotFound:
            return False
        except docker.errors.APIError:
            return False

    def pull(self, image: str) -> None:
        repository, tag = _split_tag(image)
        try:
            self.client.images.pull(repository, tag=tag)
        except docker.errors.DockerException as exc:
            raise ImageUnavailable(_explain(exc)) from exc

    def logs(self, container_id: str, tail: int) -> str:
        try:
            raw = self.client.api.logs(container_id, tail=tail, stdout=True, stderr=True)
        except Exception:
            return ""
        return bytes(raw).decode("utf-8", "replace")

    # ------------------------------------------------------------------ actions

    def launch(self, spec: LaunchSpec) -> Observed:
        kwargs: dict[str, Any] = {
            "name": spec.name,
            "environment": spec.env,
            "labels": spec.labels,
            "detach": True,
            "init": True,
            "ports": {f"{b.container_port}/tcp": (b.host_ip, b.host_port) for b in spec.ports},
        }
        if self.network:
            kwargs["network"] = self.network
        if spec.entrypoint is not None:
            kwargs["entrypoint"] = spec.entrypoint
        if spec.command is not None:
            kwargs["command"] = spec.command
        if spec.gpus:
            kwargs["device_requests"] = [DeviceRequest(count=-1, capabilities=[["gpu"]])]
        if spec.cpus:
            kwargs["nano_cpus"] = int(spec.cpus * 1e9)
        if spec.memory:
            kwargs["mem_limit"] = spec.memory
        if spec.shm_size:
            kwargs["shm_size"] = spec.shm_size
        try:
            container = self._create(spec.image, kwargs)
        except docker.errors.ImageNotFound as exc:
            raise ImageUnavailable(_explain(exc)) from exc
        except docker.errors.DockerException as exc:
            raise LaunchFailed(f"cannot create the container: {_explain(exc)}") from exc
        try:
            if spec.files:
                container.put_archive("/", _tar(spec.files))
            container.start()
        except docker.errors.DockerException as exc:
            message = _explain(exc)
            self._force_remove(container.id)
            if "port is already allocated" in message or "address already in use" in message:
                raise PortTaken(message) from exc
            raise LaunchFailed(f"cannot start the container: {message}") from exc
        return self._after_start(container.id, spec.onstart)

    def _create(self, image: str, kwargs: dict[str, Any]) -> Any:
        try:
            return self.client.containers.create(image, **kwargs)
        except docker.errors.APIError as exc:
            if exc.status_code != 409:
                raise
            # a stale container of ours holds the name (an interrupted earlier launch)
            self._force_remove(kwargs["name"])
            return self.client.containers.create(image, **kwargs)

    def start(self, container_id: str, onstart: list[str] | None) -> Observed:
        try:
            self.client.api.start(container_id)
        except docker.errors.DockerException as exc:
            raise LaunchFailed(f"cannot start the container: {_explain(exc)}") from exc
        return self._after_start(container_id, onstart)

    def _after_start(self, container_id: str, onstart: list[str] | None) -> Observed:
        observed = _observed(self.client.api.inspect_container(container_id))
        with self._lock:
            self._onstart_errors.pop(container_id, None)
        if onstart:
            # the container runs now; its onstart script is launched alongside (an exec costs
            # ~50 ms) and a failure to launch it shows in the container's error at the next look
            threading.Thread(
                target=self._run_onstart, args=(container_id, onstart), daemon=True
            ).start()
        return observed

    def _run_onstart(self, container_id: str, onstart: list[str]) -> None:
        try:
            self.client.api.exec_start(
                self.client.api.exec_create(container_id, onstart)["Id"], detach=True
            )
        except docker.errors.DockerException as exc:
            with self._lock:
                self._onstart_errors[container_id] = (
                    f"onstart script could not be run: {_explain(exc)}"
                )

    def remove(self, container_id: str, timeout: float) -> None:
        with self._lock:
            self._onstart_errors.pop(container_id, None)
        try:
            self.client.api.stop(container_id, timeout=int(max(0, timeout)))
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as exc:
            log.warning("stop %s: %s", container_id[:12], _explain(exc))
        self._force_remove(container_id)

    def _force_remove(self, container_id: str) -> None:
        for _ in range(3):
            try:
                self.client.api.remove_container(container_id, force=True, v=True)
                return
            except docker.errors.NotFound:
                return
            except docker.errors.APIError as exc:
                if "already in progress" in str(exc):
                    time.sleep(0.2)
                    continue
                raise RuntimeProblem(f"cannot remove {container_id[:12]}: {_explain(exc)}") from exc

    def close(self) -> None:
        self.client.close()


# ----------------------------------------------------------------------------- helpers


def _observed(attrs: dict[str, Any]) -> Observed:
    state = attrs.get("State") or {}
    config = attrs.get("Config") or {}
    host_config = attrs.get("HostConfig") or {}
    ports: dict[str, int] = {}
    for key, bindings in (host_config.get("PortBindings") or {}).items():
        port, _, proto = key.partition("/")
        if proto == "tcp" and bindings and bindings[0].get("HostPort"):
            ports[port] = int(bindings[0]["HostPort"])
    return Observed(
        id=str(attrs.get("Id", "")),
        name=str(attrs.get("Name", "")).lstrip("/"),
        labels=dict(config.get("Labels") or {}),
        state=str(state.get("Status", "unknown")),
        exit_code=state.get("ExitCode"),
        host_ports=ports,
        started_at=str(state.get("StartedAt", "")),
        finished_at=str(state.get("FinishedAt", "")),
        oom_killed=bool(state.get("OOMKilled", False)),
        error=state.get("Error") or None,
    )


def _tar(files: list[Any]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        dirs: set[str] = set()
        for f in files:
            path = PurePosixPath(f.path)
            for parent in reversed(path.parents):
                name = str(parent).lstrip("/")
                if name and name not in dirs:
                    dirs.add(name)
                    info = tarfile.TarInfo(name)
                    info.type = tarfile.DIRTYPE
                    info.mode = 0o700 if name == "root" else 0o755
                    info.mtime = int(time.time())
                    tar.addfile(info)
            info = tarfile.TarInfo(str(path).lstrip("/"))
            info.size = len(f.content)
            info.mode = f.mode
            info.mtime = int(time.time())
            tar.addfile(info, io.BytesIO(f.content))
    return buf.getvalue()


def _split_tag(image: str) -> tuple[str, str]:
    if "@" in image:
        return image, ""
    name, sep, tag = image.rpartition(":")
    if sep and "/" not in tag:
        return name, tag
    return image, "latest"


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()[:1000]


# ----------------------------------------------------------------------------- isolation


def apply_isolation(bridge: str) -> list[str]:
    """Install (or refresh) the iptables chains described in the module docstring."""
    iptables = shutil.which("iptables")
    if iptables is None:
        raise RuntimeProblem("iptables not found")

    def run(*args: str, check: bool = True) -> bool:
        proc = subprocess.run(
            [iptables, "-w", "5", *args], capture_output=True, text=True, timeout=30
        )
        if check and proc.returncode != 0:
            raise RuntimeProblem(f"iptables {' '.join(args)}: {proc.stderr.strip()}")
        return proc.returncode == 0

    fwd, inp = f"OC-F-{bridge}", f"OC-I-{bridge}"
    for chain in (fwd, inp):
        if not run("-n", "-L", chain, check=False):
            run("-N", chain)
        run("-F", chain)
    for chain in (fwd, inp):
        run("-A", chain, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN")
        run("-A", chain, "-p", "udp", "--dport", "53", "-j", "RETURN")
        run("-A", chain, "-p", "tcp", "--dport", "53", "-j", "RETURN")
    for cidr in PRIVATE_RANGES:
        run("-A", fwd, "-d", cidr, "-j", "REJECT")
    run("-A", fwd, "-j", "RETURN")
    run("-A", inp, "-j", "REJECT")
    hook = "DOCKER-USER" if run("-n", "-L", "DOCKER-USER", check=False) else "FORWARD"
    if not run("-C", hook, "-i", bridge, "-j", fwd, check=False):
        run("-I", hook, "1", "-i", bridge, "-j", fwd)
    if not run("-C", "INPUT", "-i", bridge, "-j", inp, check=False):
        run("-I", "INPUT", "1", "-i", bridge, "-j", inp)
    return [
        f"iptables: {bridge} → private/link-local/CGNAT ranges rejected ({hook}), "
        f"{bridge} → host rejected (INPUT); DNS and replies allowed"
    ]

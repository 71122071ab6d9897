"""The Docker runtime: containers through the Docker engine API (the ``docker`` SDK).

Hardening of every rental (:class:`Hardening`, the agent's settings): the capabilities in
``cap_drop`` are dropped from Docker's default set (``NET_RAW``, ``MKNOD``, ``SETFCAP``; see
``docs/host-guide.md`` for why each kept one stays), ``no-new-privileges`` is set, the number of
processes is limited (``pids_limit``), logs are ``json-file`` with rotation (``max-size`` ×
``max-file``), and a disk quota (``storage_opt size``) is set when the host asked for one and the
storage driver supports it (overlay2 only on xfs mounted with ``pquota``; otherwise the agent warns
once and runs rentals without a quota). A rental's own disk size (``disk_gb``, protocol 3) takes
the quota's place under the same condition: where the driver cannot, the agent says so at start
and once when the engine refuses, and the rental runs without a size. Every rental has its own
PID and a private IPC namespace.

Kept work (protocol 3): a stopped rental's container is stopped, not removed
(:meth:`DockerRuntime.stop`); a container is committed into a local image
(:meth:`DockerRuntime.commit`) to carry its files into a new container; images are never removed
by force (an image a container stands on stays until that container is gone). Renters' volumes
are ``local`` volumes labelled as the agent's, with the driver's ``size`` option (a quota, on xfs
with project quotas); where the driver refuses it the volume is made without one and reported as
such (``quota`` false).

Per-GPU rentals (:mod:`openclore.agent.share`): a device request for exactly the rental's GPU
indices (:func:`gpu_request`, only when the agent gives rentals GPUs), its ``cpuset``, and its k/n
of the CPU, memory and disk limits.

Images: before any pull the reference is checked against the registry policy
(:mod:`openclore.agent.images`), and pull errors reach the market in generic terms only.

Network isolation: rentals run on a dedicated bridge network (default ``openclore``) with
inter-container traffic off, and iptables rules keep them from the host and private networks
(:mod:`openclore.agent.runtime.isolation`).
"""

from __future__ import annotations

import io
import logging
import tarfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

import docker  # type: ignore[import-untyped]
import docker.errors  # type: ignore[import-untyped]
from docker.types import DeviceRequest, LogConfig  # type: ignore[import-untyped]

from openclore.agent.images import (
    InvalidReference,
    RegistryPolicy,
    RegistryRefused,
    parse_reference,
)
from openclore.agent.runtime import (
    LABEL_AGENT,
    LABEL_SIZE,
    ImageRefused,
    ImageUnavailable,
    LaunchFailed,
    LaunchSpec,
    Observed,
    PortTaken,
    RuntimeProblem,
    Volume,
)
from openclore.agent.runtime.isolation import (  # re-exported where they were before
    PRIVATE_RANGES as PRIVATE_RANGES,
)
from openclore.agent.runtime.isolation import (
    apply_isolation as apply_isolation,
)
from openclore.agent.runtime.isolation import (
    host_resolvers as host_resolvers,
)
from openclore.agent.runtime.isolation import (
    remove_isolation as remove_isolation,
)
from openclore.agent.share import scaled

log = logging.getLogger("openclore.agent.docker")

NETWORK_LABEL = "openclore.network"

# Of Docker's default capabilities (AUDIT_WRITE CHOWN DAC_OVERRIDE FOWNER FSETID KILL MKNOD
# NET_BIND_SERVICE NET_RAW SETFCAP SETGID SETPCAP SETUID SYS_CHROOT), those a GPU workload, sshd,
# Jupyter, pip and apt do without: raw sockets (packet spoofing on the bridge), device nodes, file
# capabilities. sshd needs SETUID/SETGID/CHOWN/SYS_CHROOT (privilege separation), AUDIT_WRITE
# (distributions' sshd built with audit support refuse logins without it), NET_BIND_SERVICE (22).
DEFAULT_CAP_DROP = ("NET_RAW", "MKNOD", "SETFCAP")
_CAPABILITY_NAMES = """
AUDIT_CONTROL AUDIT_READ AUDIT_WRITE BLOCK_SUSPEND BPF CHECKPOINT_RESTORE CHOWN DAC_OVERRIDE
DAC_READ_SEARCH FOWNER FSETID IPC_LOCK IPC_OWNER KILL LEASE LINUX_IMMUTABLE MAC_ADMIN MAC_OVERRIDE
MKNOD NET_ADMIN NET_BIND_SERVICE NET_BROADCAST NET_RAW PERFMON SETFCAP SETGID SETPCAP SETUID
SYS_ADMIN SYS_BOOT SYS_CHROOT SYS_MODULE SYS_NICE SYS_PACCT SYS_PTRACE SYS_RAWIO SYS_RESOURCE
SYS_TIME SYS_TTY_CONFIG SYSLOG WAKE_ALARM ALL
"""
CAPABILITIES = frozenset(_CAPABILITY_NAMES.split())


@dataclass(frozen=True)
class Hardening:
    """What every rental container is confined by (the agent's settings)."""

    cap_drop: tuple[str, ...] = DEFAULT_CAP_DROP
    no_new_privileges: bool = True
    pids_limit: int | None = 4096  # None or 0: no limit
    log_max_size: str = "50m"  # json-file max-size, per file
    log_max_files: int = 3
    disk_quota: int | None = None  # bytes of writable layer (storage_opt size); None: off

    def container_options(self) -> dict[str, Any]:
        options: dict[str, Any] = {
            "log_config": LogConfig(
                type="json-file",
                config={"max-size": self.log_max_size, "max-file": str(self.log_max_files)},
            )
        }
        if self.cap_drop:
            options["cap_drop"] = list(self.cap_drop)
        if self.no_new_privileges:
            options["security_opt"] = ["no-new-privileges"]
        if self.pids_limit:
            options["pids_limit"] = self.pids_limit
        # its own PID namespace (Docker's default: pid_mode unset) and a private IPC namespace
        # that no other container can join (the engine's default may be "shareable"): rentals
        # on one machine neither see nor signal each other's processes, nor share memory
        options["ipc_mode"] = "private"
        return options


def normalize_capability(name: str) -> str:
    """``net_raw``, ``CAP_NET_RAW`` → ``NET_RAW``; raises ValueError for an unknown name."""
    cap = name.strip().upper()
    cap = cap.removeprefix("CAP_")
    if cap not in CAPABILITIES:
        raise ValueError(f"unknown capability {name!r}")
    return cap


class DockerRuntime:
    def __init__(
        self,
        agent_id: str,
        *,
        network: str | None = "openclore",
        isolation: str = "auto",  # auto | on | off
        base_url: str | None = None,
        timeout: float = 120.0,
        hardening: Hardening | None = None,
        allowed_registries: Sequence[str] = (),
    ) -> None:
        self.agent_id = agent_id
        self.network = network
        self.isolation = isolation
        self.hardening = hardening or Hardening()
        self.registries = RegistryPolicy(allowed_registries)
        self.disk_quota = self.hardening.disk_quota  # set to None when the engine refuses it
        self.disk_sizes = True  # rentals' disk_gb can be set (False once the engine refuses it)
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
        self._isolated = False  # this agent installed the iptables chains
        self._lock = threading.Lock()
        self._onstart_errors: dict[str, str] = {}

    # ------------------------------------------------------------------ setup

    def prepare(self) -> list[str]:
        notes = self._hardening_notes()
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
            notes.extend(apply_isolation(self.bridge, host_resolvers()))
            self._isolated = True
        except RuntimeProblem as exc:
            if self.isolation == "on":
                raise
            notes.append(f"WARNING: no iptables isolation: {exc}")
        return notes

    def _hardening_notes(self) -> list[str]:
        h = self.hardening
        notes = [
            f"containers: capabilities dropped: {', '.join(h.cap_drop) or 'none'}; "
            f"no-new-privileges {'on' if h.no_new_privileges else 'OFF'}; "
            f"pids limit {h.pids_limit or 'none'}; "
            f"logs json-file {h.log_max_size} x {h.log_max_files}"
        ]
        problem = None
        try:
            info = self.client.info()
        except docker.errors.DockerException:
            info = {}
        driver = str(info.get("Driver", ""))
        backing = dict(info.get("DriverStatus") or []).get("Backing Filesystem", "")
        if driver == "overlay2" and backing and backing != "xfs":
            problem = f"overlay2 on {backing} (needs xfs mounted with pquota)"
        if problem is not None:
            self.disk_sizes = False
            notes.append(f"rentals' disk sizes (disk_gb) are not enforced: {problem}")
        if self.disk_quota:
            if problem is not None:
                self.disk_quota = None
                notes.append(f"WARNING: no disk quota for rentals: {problem}")
            else:
                notes.append(
                    f"disk quota {self.disk_quota} bytes per rental ({driver or 'unknown driver'}; "
                    "dropped with a warning if the engine refuses it)"
                )
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
        out: list[Observed] = []
        try:
            listed = self.client.api.containers(
                all=True, filters={"label": f"{LABEL_AGENT}={self.agent_id}"}
            )
            for summary in listed:
                try:
                    attrs = self.client.api.inspect_container(summary["Id"])
                except docker.errors.NotFound:
                    continue  # removed between the listing and now: it is gone, as it should be
                out.append(_observed(attrs))
        except docker.errors.DockerException as exc:
            raise RuntimeProblem(f"cannot list containers: {exc}") from exc
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

    def pull(self, image: str, auth: str | None = None) -> None:
        """Pull ``image`` if the registry policy allows its registry. Errors are generic: the
        engine's own text (which can say whether a host's port is open) goes to the log only."""
        try:
            ref = parse_reference(image)
        except InvalidReference:
            log.warning("refused to pull %r: not a valid image reference", image[:300])
            raise ImageRefused("not a valid image reference") from None
        try:
            self.registries.check(ref)
        except RegistryRefused as exc:
            log.warning("refused to pull %s: %s (%s)", image, exc, exc.detail)
            raise ImageRefused(str(exc)) from None
        try:
            if auth:
                user, _, secret = auth.partition(":")
                # the daemon gets the login for this pull only (not saved in a config file)
                self.client.images.pull(
                    ref.name, tag=ref.pull_tag, auth_config={"username": user, "password": secret}
                )
            else:
                self.client.images.pull(ref.name, tag=ref.pull_tag)
        except docker.errors.DockerException as exc:
            log.warning("pull of %s failed: %s", image, _explain(exc))
            raise ImageUnavailable("pull failed") from None

    def logs(self, container_id: str, tail: int) -> str:
        """The container's output (its main process), then, while it runs, the end of its
        onstart script's log (``/var/log/onstart.log``, where Clore images expect it)."""
        try:
            raw = self.client.api.logs(container_id, tail=tail, stdout=True, stderr=True)
        except Exception:
            return ""
        text = bytes(raw).decode("utf-8", "replace")
        try:
            exec_id = self.client.api.exec_create(
                container_id, ["tail", "-n", str(int(tail)), "/var/log/onstart.log"], stderr=False
            )["Id"]
            onstart = bytes(self.client.api.exec_start(exec_id)).decode("utf-8", "replace")
            if self.client.api.exec_inspect(exec_id).get("ExitCode") == 0 and onstart:
                text = (text + "\n" if text and not text.endswith("\n") else text) + onstart
        except Exception:  # stopped, or no tail in the image: the container's output only
            pass
        return text

    # ------------------------------------------------------------------ actions

    def launch(self, spec: LaunchSpec) -> Observed:
        kwargs = create_options(
            spec, self.hardening, self.network, self.disk_quota, disk_sizes=self.disk_sizes
        )
        try:
            container = self._create(spec.image, kwargs)
        except docker.errors.ImageNotFound as exc:
            log.warning("create from %s: %s", spec.image, _explain(exc))
            raise ImageUnavailable("not on this host") from None
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
        removed = False
        while True:
            try:
                return self.client.containers.create(image, **kwargs)
            except docker.errors.APIError as exc:
                if exc.status_code == 409 and not removed:
                    # a stale container of ours holds the name (an interrupted earlier launch)
                    self._force_remove(kwargs["name"])
                    removed = True
                    continue
                if "storage_opt" in kwargs and _refuses_storage_opt(exc):
                    log.warning(
                        "the engine refuses a disk size (%s): rentals run without one, "
                        "their disk_gb is not enforced",
                        _explain(exc),
                    )
                    self.disk_quota = None
                    self.disk_sizes = False
                    del kwargs["storage_opt"]
                    continue
                raise

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

    def stop(self, container_id: str, timeout: float) -> Observed:
        with self._lock:
            self._onstart_errors.pop(container_id, None)
        try:
            self.client.api.stop(container_id, timeout=int(max(0, timeout)))
            return _observed(self.client.api.inspect_container(container_id))
        except docker.errors.DockerException as exc:
            raise RuntimeProblem(f"cannot stop the container: {_explain(exc)}") from exc

    def restart(self, container_id: str, timeout: float, onstart: list[str] | None) -> Observed:
        try:
            self.client.api.restart(container_id, timeout=int(max(0, timeout)))
        except docker.errors.DockerException as exc:
            raise LaunchFailed(f"cannot restart the container: {_explain(exc)}") from exc
        return self._after_start(container_id, onstart)

    def commit(self, container_id: str, image: str, labels: dict[str, str]) -> str:
        repository, _, tag = image.rpartition(":")
        try:
            # the container's config (env, entrypoint, labels) is kept; ours are added to it
            made = self.client.api.commit(
                container_id, repository=repository, tag=tag, conf={"Labels": labels}
            )
        except docker.errors.DockerException as exc:
            raise RuntimeProblem(f"cannot keep the container's files: {_explain(exc)}") from exc
        return str(made["Id"])

    def image_id(self, image: str) -> str | None:
        try:
            return str(self.client.api.inspect_image(image)["Id"])
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise RuntimeProblem(f"cannot look up image {image}: {_explain(exc)}") from exc

    def image_digest(self, image: str) -> str | None:
        try:
            attrs = self.client.api.inspect_image(image)
        except docker.errors.NotFound:
            return None
        except docker.errors.DockerException as exc:
            raise RuntimeProblem(f"cannot look up image {image}: {_explain(exc)}") from exc
        return image_digest(image, attrs)

    def remove_image(self, image: str) -> None:
        try:
            # never forced: a forced removal would untag an image in use (leaving it behind
            # nameless) or drop one a stopped container still stands on
            self.client.api.remove_image(image, force=False, noprune=False)
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as exc:
            raise RuntimeProblem(f"cannot remove image {image}: {_explain(exc)}") from exc

    def volumes(self) -> list[Volume]:
        try:
            listed = self.client.api.volumes(filters={"label": f"{LABEL_AGENT}={self.agent_id}"})
        except docker.errors.DockerException as exc:
            raise RuntimeProblem(f"cannot list volumes: {_explain(exc)}") from exc
        return [_volume(v) for v in (listed or {}).get("Volumes") or []]

    def create_volume(self, name: str, size_gb: int) -> Volume:
        try:
            found = self.client.api.inspect_volume(name)
        except docker.errors.NotFound:
            found = None
        except docker.errors.DockerException as exc:
            raise RuntimeProblem(f"cannot look up volume {name}: {_explain(exc)}") from exc
        if found is not None:
            if (found.get("Labels") or {}).get(LABEL_AGENT) != self.agent_id:
                raise RuntimeProblem(f"a volume {name} exists that is not this agent's")
            return _volume(found)
        labels = {LABEL_AGENT: self.agent_id, LABEL_SIZE: str(size_gb)}
        try:
            made = self.client.api.create_volume(
                name, driver="local", driver_opts={"size": f"{size_gb}G"}, labels=labels
            )
        except docker.errors.DockerException as exc:
            # the local driver enforces a size only on xfs with project quotas
            log.warning("volume %s made without a size quota: %s", name, _explain(exc))
            try:
                made = self.client.api.create_volume(name, driver="local", labels=labels)
            except docker.errors.DockerException as again:
                raise RuntimeProblem(f"cannot create volume {name}: {_explain(again)}") from again
        return _volume(made)

    def remove_volume(self, name: str) -> None:
        try:
            self.client.api.remove_volume(name)
        except docker.errors.NotFound:
            return
        except docker.errors.DockerException as exc:
            raise RuntimeProblem(f"cannot remove volume {name}: {_explain(exc)}") from exc

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
        """Let go of the engine; remove the isolation rules this agent installed when no rental
        runs on its bridge any more."""
        try:
            if self._isolated and self.bridge and not self._rentals_on_network():
                remove_isolation(self.bridge)
        except Exception as exc:  # never fail a shutdown over a cleanup
            log.warning("isolation rules of %s left in place: %s", self.bridge, exc)
        self.client.close()

    def _rentals_on_network(self) -> bool:
        if not self.network:
            return False
        net = self.client.networks.get(self.network)
        net.reload()
        return bool(net.attrs.get("Containers"))


# ----------------------------------------------------------------------------- helpers


def create_options(
    spec: LaunchSpec,
    hardening: Hardening,
    network: str | None,
    disk_quota: int | None,
    *,
    disk_sizes: bool = True,
) -> dict[str, Any]:
    """The engine's options for creating ``spec``'s container (``containers.create``): its disk
    size is its own ``disk_gb`` (when ``disk_sizes``: the engine can set one), else its part of
    the host's ``disk_quota``."""
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "environment": spec.env,
        "labels": spec.labels,
        "detach": True,
        "init": True,
        "ports": {f"{b.container_port}/tcp": (b.host_ip, b.host_port) for b in spec.ports},
        **hardening.container_options(),
    }
    if spec.disk_gb and disk_sizes:
        kwargs["storage_opt"] = {"size": f"{spec.disk_gb}G"}
    elif disk_quota:
        kwargs["storage_opt"] = {"size": str(scaled(disk_quota, spec.disk_share))}
    if spec.mounts:
        kwargs["volumes"] = {name: {"bind": p, "mode": "rw"} for name, p in spec.mounts.items()}
    if network:
        kwargs["network"] = network
    if spec.entrypoint is not None:
        kwargs["entrypoint"] = spec.entrypoint
    if spec.command is not None:
        kwargs["command"] = spec.command
    if spec.gpus and (request := gpu_request(spec.gpu_ids)) is not None:
        kwargs["device_requests"] = [request]
    if spec.cpuset_cpus:
        kwargs["cpuset_cpus"] = spec.cpuset_cpus
    if spec.cpus:
        kwargs["nano_cpus"] = int(spec.cpus * 1e9)
    if spec.memory:
        kwargs["mem_limit"] = spec.memory
    if spec.shm_size:
        kwargs["shm_size"] = spec.shm_size
    return kwargs


def image_digest(image: str, attrs: dict[str, Any]) -> str | None:
    """The digest an image (``docker image inspect``'s ``attrs``) was pulled by: the RepoDigests
    entry of ``image``'s own repository, else the first one, else the image's id (an image built
    or imported on the host has no repository digest)."""
    digests = [d for d in attrs.get("RepoDigests") or [] if isinstance(d, str) and "@" in d]
    own = _repository(image)
    for digest in digests:
        if own is not None and _repository(digest) == own:
            return digest
    if digests:
        return digests[0]
    found = attrs.get("Id")
    return str(found) if isinstance(found, str) and found else None


def _repository(image: str) -> tuple[str, str] | None:
    """(registry, path) of an image reference, None when it is none (an image id)."""
    try:
        ref = parse_reference(image)
    except InvalidReference:
        return None
    return ref.registry, ref.path


def gpu_request(gpu_ids: list[int] | None) -> DeviceRequest | None:
    """The NVIDIA device request of a rental: every GPU (``None``), exactly these NVML indices,
    or none at all (an empty list). Only the ``gpu`` capability is named, so the driver
    capabilities stay the NVIDIA runtime's default or the image's (compute and utility)."""
    if gpu_ids is None:
        return DeviceRequest(count=-1, capabilities=[["gpu"]])
    if not gpu_ids:
        return None
    return DeviceRequest(device_ids=[str(i) for i in sorted(gpu_ids)], capabilities=[["gpu"]])


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
        mounts={
            str(m["Name"]): str(m.get("Destination", ""))
            for m in attrs.get("Mounts") or []
            if m.get("Type") == "volume" and m.get("Name")
        },
    )


def _volume(attrs: dict[str, Any]) -> Volume:
    size = (attrs.get("Labels") or {}).get(LABEL_SIZE, "")
    return Volume(
        name=str(attrs.get("Name", "")),
        size_gb=int(size) if size.isdigit() else None,
        quota="size" in (attrs.get("Options") or {}),
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


def _refuses_storage_opt(exc: Exception) -> bool:
    text = _explain(exc).lower()
    if any(word in text for word in ("storage-opt", "storage opt", "storageopt")):
        return True
    return "quota" in text and "size" in text


def _explain(exc: Exception) -> str:
    explanation = getattr(exc, "explanation", None)
    return str(explanation or exc).strip()[:1000]

"""The Docker runtime: containers through the Docker engine API (the ``docker`` SDK).

Hardening of every rental (:class:`Hardening`, the agent's settings): the capabilities in
``cap_drop`` are dropped from Docker's default set (``NET_RAW``, ``MKNOD``, ``SETFCAP``; see
``docs/host-guide.md`` for why each kept one stays), ``no-new-privileges`` is set, the number of
processes is limited (``pids_limit``), logs are ``json-file`` with rotation (``max-size`` ×
``max-file``), and a disk quota (``storage_opt size``) is set when the host asked for one and the
storage driver supports it (overlay2 only on xfs mounted with ``pquota``; otherwise the agent warns
once and runs rentals without a quota). Every rental has its own PID and a private IPC namespace.

Per-GPU rentals (:mod:`openclore.agent.share`): a device request for exactly the rental's GPU
indices (:func:`gpu_request`, only when the agent gives rentals GPUs), its ``cpuset``, and its k/n
of the CPU, memory and disk limits.

Images: before any pull the reference is checked against the registry policy
(:mod:`openclore.agent.images`), and pull errors reach the market in generic terms only.

Network isolation: rentals run on a dedicated bridge network (default ``openclore``) with
inter-container traffic off (``enable_icc=false``). When ``iptables`` is usable (root), the agent
also installs, idempotently, two chains for that bridge:

- ``OC-F-<bridge>``, jumped to from ``DOCKER-USER`` (forwarded traffic): new connections from
  containers to private, link-local, CGNAT, benchmark and multicast ranges (10/8, 172.16/12,
  192.168/16, 169.254/16, 100.64/10, 198.18/15, 224/4, 0/8) are rejected; replies to renters'
  inbound connections and DNS to the host's resolvers are let through; the public internet is
  reachable;
- ``OC-I-<bridge>``, jumped to from ``INPUT``: containers cannot open connections to the host
  itself (any of its addresses: the agent, the host's SSH, a local database…).

The DNS exception (port 53, UDP and TCP) in both chains is for the resolvers the host's Docker
daemon forwards containers' queries to (:func:`host_resolvers`: ``dns`` of
``/etc/docker/daemon.json`` and the nameservers of ``/etc/resolv.conf``, or of systemd-resolved's
upstream file when that one only names a loopback stub), not for port 53 of every private address.
Docker's embedded DNS (127.0.0.11 inside the container) sends those queries from the container's
own network namespace, so they cross the bridge like any other packet.

IPv6 is not enabled on the network, so containers have no IPv6 route at all.

When the agent stops (:meth:`DockerRuntime.close`) it removes the chains and their jumps again,
unless rentals still run on the bridge (an agent restarting leaves its rentals running; the rules
stay to protect them until it is back).
"""

from __future__ import annotations

import io
import ipaddress
import json
import logging
import shutil
import subprocess
import tarfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
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
    ImageRefused,
    ImageUnavailable,
    LaunchFailed,
    LaunchSpec,
    Observed,
    PortTaken,
    RuntimeProblem,
)
from openclore.agent.share import scaled

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
DAEMON_JSON = Path("/etc/docker/daemon.json")
RESOLV_CONF = Path("/etc/resolv.conf")
SYSTEMD_RESOLV_CONF = Path("/run/systemd/resolve/resolv.conf")


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
        if self.disk_quota:
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
        kwargs = create_options(spec, self.hardening, self.network, self.disk_quota)
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
                        "the engine refuses a disk quota (%s): rentals run without one",
                        _explain(exc),
                    )
                    self.disk_quota = None
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
    spec: LaunchSpec, hardening: Hardening, network: str | None, disk_quota: int | None
) -> dict[str, Any]:
    """The engine's options for creating ``spec``'s container (``containers.create``)."""
    kwargs: dict[str, Any] = {
        "name": spec.name,
        "environment": spec.env,
        "labels": spec.labels,
        "detach": True,
        "init": True,
        "ports": {f"{b.container_port}/tcp": (b.host_ip, b.host_port) for b in spec.ports},
        **hardening.container_options(),
    }
    if disk_quota:
        kwargs["storage_opt"] = {"size": str(scaled(disk_quota, spec.disk_share))}
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


# ----------------------------------------------------------------------------- isolation


def host_resolvers(
    resolv_conf: Path = RESOLV_CONF,
    systemd_resolv_conf: Path = SYSTEMD_RESOLV_CONF,
    daemon_json: Path = DAEMON_JSON,
) -> list[str]:
    """The IPv4 resolvers containers' DNS queries go to: the daemon's ``dns`` setting and the
    host's nameservers (systemd-resolved's upstream ones when ``/etc/resolv.conf`` only names a
    loopback stub, as Docker does). Loopback addresses are left out (Docker never hands them to
    containers); so are IPv6 ones (the rental network has no IPv6)."""
    found: list[str] = []
    try:
        config = json.loads(daemon_json.read_text())
    except (OSError, ValueError):
        config = None
    if isinstance(config, dict) and isinstance(config.get("dns"), list):
        found.extend(str(x) for x in config["dns"])
    names = _nameservers(resolv_conf)
    if all(_is_loopback(n) for n in names):
        names += _nameservers(systemd_resolv_conf)
    found.extend(names)
    out: list[str] = []
    for text in found:
        try:
            address = ipaddress.ip_address(text.partition("%")[0])
        except ValueError:
            continue
        if address.version == 4 and not address.is_loopback and str(address) not in out:
            out.append(str(address))
    return out


def _nameservers(path: Path) -> list[str]:
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return []
    out = []
    for line in lines:
        fields = line.split()
        if len(fields) >= 2 and fields[0] == "nameserver":
            out.append(fields[1])
    return out


def _is_loopback(text: str) -> bool:
    try:
        return ipaddress.ip_address(text.partition("%")[0]).is_loopback
    except ValueError:
        return False


def _iptables() -> Callable[..., bool]:
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

    return run


def remove_isolation(bridge: str) -> None:
    """Remove what :func:`apply_isolation` installed for ``bridge``: the jumps, then the chains."""
    run = _iptables()
    fwd, inp = f"OC-F-{bridge}", f"OC-I-{bridge}"
    for hook in ("DOCKER-USER", "FORWARD"):
        while run("-C", hook, "-i", bridge, "-j", fwd, check=False):
            run("-D", hook, "-i", bridge, "-j", fwd)
    while run("-C", "INPUT", "-i", bridge, "-j", inp, check=False):
        run("-D", "INPUT", "-i", bridge, "-j", inp)
    for chain in (fwd, inp):
        if run("-n", "-L", chain, check=False):
            run("-F", chain)
            run("-X", chain)


def apply_isolation(bridge: str, resolvers: Iterable[str] = ()) -> list[str]:
    """Install (or refresh) the iptables chains described in the module docstring; DNS (port 53)
    is let through to ``resolvers`` only."""
    resolvers = list(resolvers)
    run = _iptables()
    fwd, inp = f"OC-F-{bridge}", f"OC-I-{bridge}"
    for chain in (fwd, inp):
        if not run("-n", "-L", chain, check=False):
            run("-N", chain)
        run("-F", chain)
    for chain in (fwd, inp):
        run("-A", chain, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN")
        for resolver in resolvers:
            for proto in ("udp", "tcp"):
                run("-A", chain, "-d", resolver, "-p", proto, "--dport", "53", "-j", "RETURN")
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
        f"{bridge} → host rejected (INPUT); replies allowed; DNS allowed to "
        f"{', '.join(resolvers) or 'no private resolver'}"
    ]

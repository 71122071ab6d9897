"""The agent protocol: messages between the market server and a host agent (JSON over WebSocket).

Agent → server, first message: ``hello`` ``{version, agent_id, specs, gpu_array, public_host,
containers: [status…]}``; then ``heartbeat`` ``{}``, ``status`` ``{containers: [status…]}`` (only
what changed) and ``specs`` ``{specs, gpu_array}``.

Server → agent: ``hello`` ``{server_id, name, heartbeat_interval}``, then ``desired``
``{rev, containers: [desired…], volumes: [volume…]}`` whenever the set may have changed: the
complete set of containers this machine must keep (every running order, each on its own GPUs,
else the background job; and, from protocol 3, every stopped order, whose container is kept
stopped with its disk) and of renters' volumes it must keep. A desired container's ``gpus`` (NVML
indices) and ``share`` (k of n GPUs) say which part of the machine it gets; both absent
(``null``) mean the whole machine, as before per-GPU rentals.

Protocol 3 (keeping work, SPEC §8): a desired container may be ``stopped`` (stop it, keep it and
its disk; start it again when that turns false), carry ``restart`` (a number that grows with each
restart the renter asks for: restart the container once for each new number, and report it back
as ``restarted``), ``generation`` (a reset: a new number means a new container from the image),
``mounts`` (volume name → path in the container) and ``disk_gb`` (the disk the rental gets). The
agent reports the volumes it holds in ``hello`` and ``status`` as ``volumes: [{name, ok, quota,
error}]``, always the full list.

A container status may carry ``image_digest``: the repository digest of the image the container
was created from (``repo@sha256:…``), or the image's id (``sha256:…``) for an image that has
none. It needs no new protocol number: an older market ignores the field, an older agent does
not send it.

This module is shared by both sides (the server's ``market`` and ``api``, and the host ``agent``):
it imports nothing heavy and nothing of openclore.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

PROTOCOL_VERSION = 3
# agents from this protocol on keep per-GPU rentals apart (``gpus``/``share``); the market lets a
# server be rented per GPU only when its agent says so in its hello (an older agent would give
# every rental every GPU)
PER_GPU_PROTOCOL = 2
# agents from this protocol on keep a stopped order's container (stop_order, a preempted spot
# order) and hold volumes; an older agent would remove the container, so stopping is refused
KEEP_PROTOCOL = 3

KIND_ORDER = "order"
KIND_BACKGROUND = "background"

# container states as the agent reports them (and my_orders shows them in ``state``)
PULLING = "pulling"
STARTING = "starting"
RUNNING = "running"
RESTARTING = "restarting"  # exited, will be started again after a backoff
CRASH_LOOP = "crash_loop"  # exited again and again; still retried, slowly
ERROR = "error"  # could not be started (bad image, bad settings); retried slowly
STOPPED = "stopped"  # removed because its order ended (or an older market outbid it)
HALTED = "halted"  # stopped on purpose (a stopped order): kept with its disk, started again later

STATES = frozenset({PULLING, STARTING, RUNNING, RESTARTING, CRASH_LOOP, ERROR, STOPPED, HALTED})

CLOSE_UNAUTHORIZED = 4401  # WebSocket close code: unknown or revoked agent credential


@dataclass(frozen=True)
class DesiredContainer:
    """One container the server wants on the machine."""

    key: str  # "order-<id>" or "bg-<server>-<times_updated>": stable identity on the host
    kind: str
    image: str
    command: str = ""
    env: dict[str, str] = field(default_factory=dict)
    ports: dict[str, str] = field(default_factory=dict)  # container port -> "tcp" | "http"
    order_id: int | None = None
    jupyter_token: str | None = None
    ssh_key: str | None = None
    ssh_password: str | None = None
    autossh_entrypoint: bool = False
    # registry credentials ("user:password") for this container's pull only: the server sends
    # them until the agent reports the image pulled; never logged, never part of the spec
    registry_auth: str | None = field(default=None, repr=False)
    # GigaSPOT per-GPU settings applied while the container runs (not part of the spec: a change
    # is applied to the GPUs without a new container)
    gpu_settings: list[dict[str, Any]] = field(default_factory=list)
    # per-GPU rentals (SPEC §8): the NVML indices the container may use, None for every GPU of
    # the machine (a whole-server order, the background job)
    gpus: list[int] | None = None
    # the rental's part of the machine, k of n GPUs (its CPUs, memory and disk follow); None: whole
    share: tuple[int, int] | None = None
    # protocol 3 (keeping work): keep the container stopped with its disk (not part of the spec:
    # stopping and starting keeps the same container)
    stopped: bool = False
    # the renter's restarts so far: restart the container once for each new number (not part of
    # the spec); 0 when none is pending
    restart: int = 0
    # resets so far: a new number means a new container from the image (part of the spec)
    generation: int = 0
    # volume name -> absolute path in the container (part of the spec)
    mounts: dict[str, str] = field(default_factory=dict)
    # the disk the rental gets, in GB (None: the runtime's default); part of the spec
    disk_gb: int | None = None

    def spec_hash(self) -> str:
        """Identifies everything that shapes the container: a change means a new container."""
        shape = asdict(self)
        for name in ("registry_auth", "gpu_settings", "stopped", "restart"):
            shape.pop(name)
        # absent while unused, so that the hash is the one older agents computed (an upgrade
        # does not restart running rentals)
        for name in ("gpus", "share", "disk_gb"):
            if shape[name] is None:
                shape.pop(name)
        for name in ("generation", "mounts"):
            if not shape[name]:
                shape.pop(name)
        raw = json.dumps(shape, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(raw.encode()).hexdigest()[:16]

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> DesiredContainer:
        order_id = data.get("order_id")
        gpus, share = _gpus(data.get("gpus")), _share(data.get("share"))
        if (
            share is not None
            and gpus is not None
            and (len(gpus) != share[0] or gpus[-1] >= share[1])
        ):
            raise ValueError("gpus: k different indices below n of share [k, n]")
        return cls(
            key=str(data["key"]),
            kind=str(data.get("kind", KIND_ORDER)),
            image=str(data["image"]),
            command=str(data.get("command") or ""),
            env={str(k): str(v) for k, v in (data.get("env") or {}).items()},
            ports={str(k): str(v) for k, v in (data.get("ports") or {}).items()},
            order_id=None if order_id is None else int(order_id),
            jupyter_token=data.get("jupyter_token") or None,
            ssh_key=data.get("ssh_key") or None,
            ssh_password=data.get("ssh_password") or None,
            autossh_entrypoint=bool(data.get("autossh_entrypoint", False)),
            registry_auth=data.get("registry_auth") or None,
            gpu_settings=[g for g in (data.get("gpu_settings") or []) if isinstance(g, dict)],
            gpus=gpus,
            share=share,
            stopped=data.get("stopped") is True,
            restart=_count(data.get("restart")),
            generation=_count(data.get("generation")),
            mounts=_mounts(data.get("mounts")),
            disk_gb=None if data.get("disk_gb") is None else _count(data.get("disk_gb")) or None,
        )

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        if self.share is not None:
            wire["share"] = list(self.share)
        return wire


def _count(value: Any) -> int:
    """A non-negative integer field; 0 when absent."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < 2**53:
        raise ValueError("a non-negative integer")
    return value


def _mounts(value: Any) -> dict[str, str]:
    """Volume name -> absolute path in the container."""
    if value is None:
        return {}
    if not isinstance(value, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and v.startswith("/") for k, v in value.items()
    ):
        raise ValueError("mounts: volume name -> absolute path")
    return dict(value)


@dataclass(frozen=True)
class DesiredVolume:
    """A renter's volume the machine must keep (protocol 3)."""

    name: str  # the Docker volume's name, "openclore-vol-<id>"
    size_gb: int

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> DesiredVolume:
        size = _count(data.get("size_gb"))
        if not isinstance(data.get("name"), str) or not data["name"] or size < 1:
            raise ValueError("volume: name and size_gb")
        return cls(name=str(data["name"]), size_gb=size)


@dataclass(frozen=True)
class VolumeStatus:
    """A volume as the agent holds it: ``ok`` (it exists and can be mounted), ``quota`` (its
    size is enforced by the storage driver) and the problem if any."""

    name: str
    ok: bool
    quota: bool = False
    error: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> VolumeStatus:
        error = data.get("error")
        return cls(
            name=str(data["name"])[:128],
            ok=data.get("ok") is True,
            quota=data.get("quota") is True,
            error=None if error is None else str(error)[:1000],
        )


def _gpus(value: Any) -> list[int] | None:
    """NVML indices, ascending and once each; None (every GPU) when absent (an older server)."""
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(i, int) and not isinstance(i, bool) and 0 <= i < 1024 for i in value
    ):
        raise ValueError("gpus: a list of GPU indices")
    return sorted(set(value))


def _share(value: Any) -> tuple[int, int] | None:
    """``[k, n]`` with 1 ≤ k ≤ n; None (the whole machine) when absent."""
    if value is None:
        return None
    if (
        not isinstance(value, list | tuple)
        or len(value) != 2
        or not all(isinstance(i, int) and not isinstance(i, bool) for i in value)
        or not 1 <= value[0] <= value[1]
    ):
        raise ValueError("share: [k, n] with 1 <= k <= n")
    return int(value[0]), int(value[1])


@dataclass(frozen=True)
class ContainerStatus:
    """What actually runs (or failed to) for one desired container, as the agent reports it."""

    key: str
    kind: str
    state: str
    order_id: int | None = None
    error: str | None = None
    tcp_ports: dict[str, int] = field(default_factory=dict)  # container port -> public port
    http_port: str | None = None  # the container port served over HTTP
    http_host_port: int | None = None  # where the host's HTTP proxy reaches it (127.0.0.1)
    container_id: str | None = None
    # GigaSPOT: None (no settings asked), True (applied) or False (refused: gpu_settings_error)
    gpu_settings_applied: bool | None = None
    gpu_settings_error: str | None = None
    # protocol 3: the last ``restart`` number carried out for this container
    restarted: int | None = None
    # the image the container was created from, as the agent pulled it: its repository digest
    # ("repo@sha256:…") or, for an image without one (built or imported on the host), its id
    # ("sha256:…"); None when unknown (an older agent sends none, an older market ignores it)
    image_digest: str | None = None

    def to_wire(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_wire(cls, data: dict[str, Any]) -> ContainerStatus:
        order_id = data.get("order_id")
        http_host_port = data.get("http_host_port")
        return cls(
            key=str(data["key"]),
            kind=str(data.get("kind", KIND_ORDER)),
            state=str(data["state"])[:32],
            order_id=None if order_id is None else int(order_id),
            error=None if data.get("error") is None else str(data["error"])[:4000],
            tcp_ports={str(k): int(v) for k, v in (data.get("tcp_ports") or {}).items()},
            http_port=None if data.get("http_port") is None else str(data["http_port"])[:8],
            http_host_port=None if http_host_port is None else int(http_host_port),
            container_id=data.get("container_id"),
            gpu_settings_applied=data.get("gpu_settings_applied")
            if isinstance(data.get("gpu_settings_applied"), bool)
            else None,
            gpu_settings_error=None
            if data.get("gpu_settings_error") is None
            else str(data["gpu_settings_error"])[:1000],
            restarted=data.get("restarted")
            if isinstance(data.get("restarted"), int) and not isinstance(data["restarted"], bool)
            else None,
            image_digest=data["image_digest"][:300]
            if isinstance(data.get("image_digest"), str) and data["image_digest"]
            else None,
        )


def env_dict(value: Any) -> dict[str, str]:
    """A background job's env as a dict, whichever way it was stored: ``{"K": "V"}``,
    ``["K=V", …]``, ``[["K", "V"], …]`` or ``[{"name"|"key": "K", "value": "V"}, …]``."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    out: dict[str, str] = {}
    for item in value or []:
        if isinstance(item, str) and "=" in item:
            name, _, val = item.partition("=")
            out[name] = val
        elif isinstance(item, list | tuple) and len(item) == 2:
            out[str(item[0])] = str(item[1])
        elif isinstance(item, dict):
            key = item.get("name", item.get("key"))
            if key is not None:
                out[str(key)] = str(item.get("value", ""))
    return out


def desired_rev(
    containers: list[DesiredContainer], volumes: list[DesiredVolume] | None = None
) -> str:
    """Changes whenever what the agent must do changes: a container's spec, its stopped state or
    a new restart, or the volumes."""
    parts = [
        f"{c.key}:{c.spec_hash()}" + (":stopped" if c.stopped else "") + f":{c.restart or ''}"
        for c in containers
    ]
    parts += [f"vol:{v.name}:{v.size_gb}" for v in volumes or ()]
    return hashlib.sha256(",".join(parts).encode()).hexdigest()[:16]

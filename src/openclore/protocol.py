"""The agent protocol: messages between the market server and a host agent (JSON over WebSocket).

Agent → server, first message: ``hello`` ``{version, agent_id, specs, gpu_array, public_host,
containers: [status…]}``; then ``heartbeat`` ``{}``, ``status`` ``{containers: [status…]}`` (only
what changed) and ``specs`` ``{specs, gpu_array}``.

Server → agent: ``hello`` ``{server_id, name, heartbeat_interval}``, then ``desired``
``{rev, containers: [desired…]}`` whenever the set may have changed: the complete set of
containers this machine must run (every running order, each on its own GPUs, else the background
job). A desired container's ``gpus`` (NVML indices) and ``share`` (k of n GPUs) say which part of
the machine it gets; both absent (``null``) mean the whole machine, as before per-GPU rentals.

This module is shared by both sides (the server's ``market`` and ``api``, and the host ``agent``):
it imports nothing heavy and nothing of openclore.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from typing import Any

PROTOCOL_VERSION = 2
# agents from this protocol on keep per-GPU rentals apart (``gpus``/``share``); the market lets a
# server be rented per GPU only when its agent says so in its hello (an older agent would give
# every rental every GPU)
PER_GPU_PROTOCOL = 2

KIND_ORDER = "order"
KIND_BACKGROUND = "background"

# container states as the agent reports them (and my_orders shows them in ``state``)
PULLING = "pulling"
STARTING = "starting"
RUNNING = "running"
RESTARTING = "restarting"  # exited, will be started again after a backoff
CRASH_LOOP = "crash_loop"  # exited again and again; still retried, slowly
ERROR = "error"  # could not be started (bad image, bad settings); retried slowly
STOPPED = "stopped"  # removed because its order ended, was outbid or preempted

STATES = frozenset({PULLING, STARTING, RUNNING, RESTARTING, CRASH_LOOP, ERROR, STOPPED})

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

    def spec_hash(self) -> str:
        """Identifies everything that shapes the container: a change means a new container."""
        shape = asdict(self)
        shape.pop("registry_auth")
        shape.pop("gpu_settings")
        # absent for a whole-machine container, so that its hash is the one agents computed
        # before per-GPU rentals (an upgrade does not restart running rentals)
        for name in ("gpus", "share"):
            if shape[name] is None:
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
        )

    def to_wire(self) -> dict[str, Any]:
        wire = asdict(self)
        if self.share is not None:
            wire["share"] = list(self.share)
        return wire


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


def desired_rev(containers: list[DesiredContainer]) -> str:
    return hashlib.sha256(
        ",".join(f"{c.key}:{c.spec_hash()}" for c in containers).encode()
    ).hexdigest()[:16]

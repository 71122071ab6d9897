"""Host agents' use cases: registration, liveness, specs, container status, the desired set.

An agent is somebody else's machine: everything it sends is checked here, field by field, before
it reaches the database (and from there every user's listing). An agent sees and changes only its
own server: the credential names the server, and every read and write below is filtered by that
server's id. A removed server's agent is no longer recognised.
"""

from __future__ import annotations

import hashlib
import ipaddress
import logging
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from sqlalchemy import ColumnElement, Connection, select, update

from openclore.domain.gpu_settings import check_gpu_limits
from openclore.domain.specs import UNSAFE_TEXT, check_gpu_array, check_specs
from openclore.engine.billing import lock_server, resolve_server, slot_count
from openclore.engine.outbox import ORDER_FAILED, SERVER_ONLINE, emit
from openclore.engine.reliability import came_online
from openclore.market.account_keys import joined_keys
from openclore.market.tunnels import public_ports
from openclore.market.volumes import apply_volume_reports, docker_name
from openclore.protocol import (
    CRASH_LOOP,
    ERROR,
    HALTED,
    KEEP_PROTOCOL,
    KIND_BACKGROUND,
    KIND_ORDER,
    PULLING,
    RUNNING,
    STATES,
    STOPPED,
    ContainerStatus,
    DesiredContainer,
    VolumeStatus,
    env_dict,
)
from openclore.store.schema import orders, servers

log = logging.getLogger("openclore.agents")
FAILED_STATES = frozenset({CRASH_LOOP, ERROR})

AGENT_TOKEN_PREFIX = "oca_"
MAX_STATUSES = 64
MAX_PUBLIC_HOSTS = 8
MAX_ERROR_LENGTH = 1000
_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
    r"(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$"
)

# an image digest renters may be shown: ``[repository@]sha256:<64 hex>`` (a repository as Docker
# writes one: registry host[:port], path components)
_IMAGE_DIGEST = re.compile(r"^(?:[A-Za-z0-9][A-Za-z0-9._:/-]{0,200}@)?sha256:[0-9a-f]{64}$")


class AgentRefused(Exception):
    """Registration refused: ``status`` is the HTTP status, ``error`` the reason's name."""

    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def hash_agent_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def register_agent(conn: Connection, init_token: str) -> dict[str, Any]:
    """Spend an init_token: the server is connected for good; returns the agent's credential."""
    row = conn.execute(
        select(servers)
        .where(servers.c.init_token == init_token, servers.c.removed_at.is_(None))
        .with_for_update()
    ).first()
    if row is None:
        raise AgentRefused(401, "invalid_init_token")
    if row.connected or row.agent_token_hash is not None:
        raise AgentRefused(409, "init_token_already_used")
    token = AGENT_TOKEN_PREFIX + secrets.token_urlsafe(36)
    done = conn.execute(
        update(servers)
        .where(servers.c.id == row.id, servers.c.connected.is_(False))
        # a demo server a real agent joins is simulated no more: its host runs the rentals
        .values(connected=True, agent_token_hash=hash_agent_token(token), simulated=False)
    ).rowcount
    if done != 1:  # a concurrent registration won
        raise AgentRefused(409, "init_token_already_used")
    return {"server_id": row.id, "name": row.name, "agent_token": token}


def authenticate_agent(conn: Connection, token: str | None) -> dict[str, Any] | None:
    """The live server an agent credential belongs to, or None."""
    if not token or len(token) > 256:
        return None
    row = conn.execute(
        select(servers.c.id, servers.c.name).where(
            servers.c.agent_token_hash == hash_agent_token(token),
            servers.c.removed_at.is_(None),
        )
    ).first()
    return None if row is None else {"id": row.id, "name": row.name}


def agent_hello(
    conn: Connection,
    server_id: int,
    hello: dict[str, Any],
    pub_cluster: list[str],
    now: int,
    tunnel: Tunnel | None = None,
) -> bool:
    """The agent is connected: online now (the running order may start), specs as measured.
    Returns False when the server is gone (removed meanwhile)."""
    row = lock_server(conn, server_id)
    if row is None or row["removed_at"] is not None:
        return False
    # only what moved is written: a listed column written moves the listing's version
    values: dict[str, Any] = {"last_seen": now}
    protocol = hello.get("protocol")
    protocol = protocol if isinstance(protocol, int) and not isinstance(protocol, bool) else 1
    if protocol != row["agent_protocol"]:
        values["agent_protocol"] = protocol
    if not row["online"]:
        values.update(online=True, **came_online(row, now))
    specs = valid_specs(server_id, hello.get("specs"))
    if specs is not None and specs != row["specs"]:
        values["specs"] = specs
    gpu_array = check_gpu_array(hello.get("gpu_array"))
    if gpu_array is not None and gpu_array != row["gpu_array"]:
        values["gpu_array"] = gpu_array
    gpu_limits = check_gpu_limits(hello.get("gpu_limits"))
    if gpu_limits is not None and gpu_limits != row["gpu_limits"]:
        values["gpu_limits"] = gpu_limits
    if pub_cluster != row["pub_cluster"]:
        values["pub_cluster"] = pub_cluster
    conn.execute(update(servers).where(servers.c.id == server_id).values(**values))
    if not row["online"]:
        emit(conn, row["owner_id"], SERVER_ONLINE, now, server_id=server_id, name=row["name"])
        resolve_server(conn, server_id, now)
    apply_statuses(
        conn, server_id, parse_statuses(hello.get("containers")), pub_cluster, tunnel, now=now
    )
    reported = parse_volumes(hello.get("volumes"))
    if reported is not None:
        apply_volume_reports(conn, server_id, reported, now)
    return True


def agent_heartbeat(conn: Connection, server_id: int, now: int) -> bool:
    """The agent is alive. Returns False when its server was removed (the agent must go)."""
    live = (servers.c.id == server_id) & servers.c.removed_at.is_(None)
    fresh = conn.execute(
        update(servers).where(live, servers.c.online.is_(True)).values(last_seen=now)
    ).rowcount
    if fresh:
        return True
    # it had been marked offline (heartbeats late): back online, and the market re-resolved
    row = lock_server(conn, server_id)
    if row is None or row["removed_at"] is not None:
        return False
    conn.execute(
        update(servers).where(live).values(last_seen=now, online=True, **came_online(row, now))
    )
    emit(conn, row["owner_id"], SERVER_ONLINE, now, server_id=server_id, name=row["name"])
    resolve_server(conn, server_id, now)
    return True


HEARTBEAT_CHUNK = 512  # ids per statement (SQLite's bound parameters stay well under its cap)


def _padded(ids: list[int]) -> list[int]:
    """``ids`` padded with its last id to a power of two (at least 8): an ``IN`` list of another
    length is another SQL text, which neither SQLAlchemy's nor the driver's statement cache
    holds; a few lengths keep every batch's statement cached."""
    size = 8
    while size < len(ids):
        size *= 2
    return ids + [ids[-1]] * (size - len(ids))


def agent_heartbeats(conn: Connection, server_ids: Iterable[int], now: int) -> list[int]:
    """Many agents are alive (one process's heartbeats of the last moment, written together):
    ``last_seen = now`` for each of those servers that is online and not removed, one statement
    per :data:`HEARTBEAT_CHUNK` ids, in id order (concurrent writers lock rows in one order),
    padded to a few lengths (:func:`_padded`). Returns the ids left out (marked offline
    meanwhile, or removed): each then goes through :func:`agent_heartbeat` in its own
    transaction (back online, or its agent must go)."""
    ids = sorted(set(server_ids))
    fresh: set[int] = set()
    for start in range(0, len(ids), HEARTBEAT_CHUNK):
        chunk = _padded(ids[start : start + HEARTBEAT_CHUNK])
        fresh.update(
            conn.execute(
                update(servers)
                .where(
                    servers.c.id.in_(chunk),
                    servers.c.removed_at.is_(None),
                    servers.c.online.is_(True),
                )
                .values(last_seen=now)
                .returning(servers.c.id)
            ).scalars()
        )
    return [i for i in ids if i not in fresh]


def agent_specs(conn: Connection, server_id: int, message: dict[str, Any]) -> None:
    """New measurements (valid fields only) replace the server's specs and GPU list."""
    values: dict[str, Any] = {}
    specs = valid_specs(server_id, message.get("specs"))
    if specs is not None:
        values["specs"] = specs
    gpu_array = check_gpu_array(message.get("gpu_array"))
    if gpu_array is not None:
        values["gpu_array"] = gpu_array
    gpu_limits = check_gpu_limits(message.get("gpu_limits"))
    if gpu_limits is not None:
        values["gpu_limits"] = gpu_limits
    if values:
        conn.execute(
            update(servers)
            .where(servers.c.id == server_id, servers.c.removed_at.is_(None))
            .values(**values)
        )


def valid_specs(server_id: int, raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    specs, problems = check_specs(raw)
    if problems:
        log.warning("server %s: specs fields dropped: %s", server_id, "; ".join(problems[:8]))
    return specs


@dataclass(frozen=True)
class Tunnel:
    """The agent tunnels through this gateway: renters see its name and its public ports."""

    gateway: str
    port_range: tuple[int, int]


def apply_statuses(
    conn: Connection,
    server_id: int,
    statuses: list[ContainerStatus],
    pub_cluster: list[str],
    tunnel: Tunnel | None = None,
    *,
    now: int | None = None,
) -> None:
    """Write what the agent reports into its own server's orders (others' are ignored). Through
    a gateway, the tcp ports renters see are the gateway's public ports for the order. A
    container that turns to an error state is an ``order.failed`` event for its renter."""
    by_order = {s.order_id: s for s in statuses if s.kind == KIND_ORDER and s.order_id is not None}
    if not by_order:
        return
    rows = conn.execute(
        select(orders).where(orders.c.id.in_(list(by_order)), orders.c.server_id == server_id)
    ).all()
    for row in rows:
        status = by_order[row.id]
        asked = row.ports or {}
        # only the tcp ports the order asked for, published on a real port number
        published = {
            port: public
            for port, public in status.tcp_ports.items()
            if asked.get(port) == "tcp" and 1 <= public <= 65535
        }
        if tunnel is not None and published and status.state != STOPPED:
            on_gateway = public_ports(
                conn, tunnel.gateway, row.id, sorted(map(int, published)), tunnel.port_range
            )
            published = {p: on_gateway[int(p)] for p in published if int(p) in on_gateway}
        values: dict[str, Any] = {
            "runtime_state": status.state,
            "runtime_error": status.error,
            "tcp_ports": [
                f"{port}:{public}"
                for port, public in sorted(published.items(), key=lambda kv: int(kv[0]))
            ]
            if status.state != STOPPED
            else [],
        }
        if status.state == HALTED and not published:
            values.pop("tcp_ports")  # a kept container keeps the ports it had
        if status.restarted is not None and status.restarted > (row.restart_done or 0):
            values["restart_done"] = min(status.restarted, row.restart_requested or 0)
        if status.http_port and asked.get(status.http_port) == "http":
            values["http_port"] = status.http_port
        if status.image_digest is not None:  # kept while a report carries none (an older agent)
            values["image_digest"] = status.image_digest
        if status.state == RUNNING or status.tcp_ports:
            values["pub_cluster"] = pub_cluster
        if status.state not in (PULLING, ERROR) and row.dockerhub_auth is not None:
            values["dockerhub_auth"] = None  # pulled: the credentials are not kept
        if row.oc and status.gpu_settings_applied is not None:
            values["oc_failed"] = not status.gpu_settings_applied
            if status.gpu_settings_error and not status.gpu_settings_applied:
                values["runtime_error"] = values["runtime_error"] or (
                    "GPU settings not applied: " + status.gpu_settings_error
                )
        current = row._mapping
        changed = {k: v for k, v in values.items() if current[k] != v}
        if changed:
            conn.execute(update(orders).where(orders.c.id == row.id).values(**changed))
        if "runtime_state" in changed and status.state in FAILED_STATES and not row.expired:
            emit(
                conn,
                row.user_id,
                ORDER_FAILED,
                int(time.time()) if now is None else now,
                order_id=row.id,
                server_id=server_id,
                state=status.state,
                error=status.error,
            )


def desired_for(conn: Connection, server_id: int) -> list[DesiredContainer] | None:
    """What the machine must run now: every running order (by id), each on the GPUs it holds,
    else the background job. ``None`` when the server was removed: its agent is no longer
    welcome."""
    server = conn.execute(
        select(
            servers.c.removed_at,
            servers.c.gpu_array,
            servers.c.bg_image,
            servers.c.bg_command,
            servers.c.bg_env,
            servers.c.bg_times_updated,
            servers.c.agent_protocol,
        ).where(servers.c.id == server_id)
    ).first()
    if server is None or server.removed_at is not None:
        return None
    keeps = (server.agent_protocol or 0) >= KEEP_PROTOCOL
    kept: ColumnElement[bool] = orders.c.running.is_(True)
    if keeps:  # stopped orders' containers are kept, stopped, with their disk (SPEC §8)
        kept = kept | orders.c.stopped.is_(True)
    live = conn.execute(
        select(orders)
        .where(orders.c.server_id == server_id, kept, orders.c.expired.is_(False))
        .order_by(orders.c.id)
    ).all()
    if live:
        n = slot_count(server.gpu_array)
        return [d for order in live if (d := _order_container(order, n)) is not None]
    if server.bg_image:
        return [
            DesiredContainer(
                key=f"bg-{server_id}-{server.bg_times_updated}",
                kind=KIND_BACKGROUND,
                image=server.bg_image,
                command=server.bg_command or "",
                env=env_dict(server.bg_env),
            )
        ]
    return []


def _order_container(order: Any, n: int) -> DesiredContainer | None:
    """A running order's container. A whole-server order (``gpu_count`` null, or all ``n``
    GPUs) gets the whole machine; a per-GPU order exactly the slots it holds and the share
    ``(k, n)``, or nothing while its slots are not recorded (the allocation records them in the
    transaction that starts it, so this is not expected)."""
    gpus: list[int] | None = None
    share: tuple[int, int] | None = None
    stopped = bool(order.stopped) and not order.running
    if order.gpu_count is not None and order.gpu_count < n:
        if stopped:  # kept as it last ran: its slots are recorded again when it starts
            share = (order.gpu_count, n)
            gpus = sorted({int(i) for i in order.kept_gpus or ()}) or None
            if gpus is None or len(gpus) != order.gpu_count or any(i >= n for i in gpus):
                gpus = list(range(order.gpu_count))
            return _container(order, gpus, share, stopped)
        gpus = sorted({int(i) for i in order.gpus or ()})
        if len(gpus) != order.gpu_count or any(i >= n for i in gpus):
            log.warning("order %s runs without its %s slots recorded", order.id, order.gpu_count)
            return None
        share = (len(gpus), n)
    return _container(order, gpus, share, stopped)


def _container(
    order: Any, gpus: list[int] | None, share: tuple[int, int] | None, stopped: bool
) -> DesiredContainer:
    restart = int(order.restart_requested or 0)
    return DesiredContainer(
        key=f"order-{order.id}",
        kind=KIND_ORDER,
        order_id=order.id,
        image=order.image,
        command=order.command or "",
        env={str(k): str(v) for k, v in (order.env or {}).items()},
        ports={str(k): str(v) for k, v in (order.ports or {}).items()},
        jupyter_token=order.jupyter_token,
        ssh_key=joined_keys(order.ssh_key, order.account_keys),
        ssh_password=order.ssh_password,
        autossh_entrypoint=bool(order.autossh_entrypoint),
        registry_auth=order.dockerhub_auth,
        gpu_settings=list(order.oc or []),
        gpus=gpus,
        share=share,
        stopped=stopped,
        restart=restart if restart > int(order.restart_done or 0) else 0,
        generation=int(order.generation or 0),
        mounts={docker_name(int(v)): p for v, p in (order.mounts or {}).items()},
        disk_gb=order.disk_gb,
    )


def parse_volumes(raw: Any) -> list[VolumeStatus] | None:
    """The volumes an agent reports (the full list), or None when the message has none (an
    agent before protocol 3 says nothing about volumes)."""
    if not isinstance(raw, list):
        return None
    out: list[VolumeStatus] = []
    for item in raw[:MAX_STATUSES]:
        if isinstance(item, dict) and isinstance(item.get("name"), str):
            out.append(VolumeStatus.from_wire(item))
    return out


def parse_statuses(raw: Any) -> list[ContainerStatus]:
    """The container reports of a message; malformed ones are skipped."""
    out: list[ContainerStatus] = []
    if not isinstance(raw, list):
        return out
    for item in raw[:MAX_STATUSES]:
        if isinstance(item, dict):
            try:
                status = _sane(ContainerStatus.from_wire(item))
            except (KeyError, TypeError, ValueError, OverflowError):
                continue
            if status is not None:
                out.append(status)
    return out


def _port(value: Any) -> bool:
    return isinstance(value, str) and value.isdigit() and 1 <= int(value) <= 65535


def _sane(status: ContainerStatus) -> ContainerStatus | None:
    """A report renters may be shown: a known state, ids and ports in range, printable error."""
    if status.state not in STATES or status.kind not in (KIND_ORDER, KIND_BACKGROUND):
        return None
    if status.order_id is not None and not 0 < status.order_id < 2**31:
        return None
    error = status.error
    if error is not None:
        error = UNSAFE_TEXT.sub(" ", error)[:MAX_ERROR_LENGTH]
    return ContainerStatus(
        key=status.key[:128],
        kind=status.kind,
        state=status.state,
        order_id=status.order_id,
        error=error,
        tcp_ports={
            port: public
            for port, public in status.tcp_ports.items()
            if _port(port) and 1 <= public <= 65535
        },
        http_port=status.http_port if _port(status.http_port) else None,
        http_host_port=status.http_host_port,
        container_id=status.container_id if isinstance(status.container_id, str) else None,
        gpu_settings_applied=status.gpu_settings_applied,
        gpu_settings_error=None
        if status.gpu_settings_error is None
        else UNSAFE_TEXT.sub(" ", status.gpu_settings_error)[:MAX_ERROR_LENGTH],
        restarted=status.restarted
        if status.restarted is not None and 0 <= status.restarted < 2**31
        else None,
        image_digest=status.image_digest
        if status.image_digest is not None and _IMAGE_DIGEST.fullmatch(status.image_digest)
        else None,
    )


def valid_public_host(name: Any) -> str | None:
    """A host name or IP address renters can be shown (``pub_cluster``), else None."""
    if not isinstance(name, str):
        return None
    name = name.strip()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        pass
    return name if _HOSTNAME.match(name) else None


def pub_cluster_for(hello: dict[str, Any], default: list[str], peer: str | None) -> list[str]:
    """The agent's configured public host name(s), else the market's setting, else the address
    the agent connects from."""
    reported = hello.get("public_host")
    if isinstance(reported, list):
        names = [h for h in map(valid_public_host, reported[:MAX_PUBLIC_HOSTS]) if h]
        if names:
            return names
    if default:
        return list(default)
    return [peer] if peer else []

"""The access gateway's use cases: which gateway a server's agent tunnels through, the public
ports and URLs of rentals, and what an agent may forward.

A gateway serves a public name (the orders' ``pub_cluster``). The agent keeps one outbound SSH
connection to it and asks for a forward per port of its running order; the gateway accepts a
forward only for a port of a live order on that agent's own server, and opens the public side
(a TCP port from the range, or ``<order>-<port>.<http domain>``) only while the order lives.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import re
import secrets
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update
from sqlalchemy.exc import IntegrityError

from openclore.store.schema import gateways, orders, servers, tunnel_ports

ALIVE_SECONDS = 30  # a gateway whose process has not checked in for this long gets no new agents
FORWARD_HOST = re.compile(r"^order-([1-9][0-9]{0,9})$")
_KEY = re.compile(r"^(ssh-ed25519|ecdsa-sha2-nistp256|ssh-rsa) ([A-Za-z0-9+/=]{16,4096})(?: .*)?$")


@dataclass(frozen=True)
class Route:
    """One port of a live order, as the gateway exposes it."""

    order_id: int
    server_id: int
    container_port: int
    kind: str  # "tcp" | "http"
    public_port: int | None  # tcp only


def forward_host(order_id: int) -> str:
    """The name an agent asks its gateway to forward for one order's ports."""
    return f"order-{order_id}"


def parse_forward_host(name: str) -> int | None:
    match = FORWARD_HOST.match(name)
    return None if match is None else int(match.group(1))


def clean_public_key(raw: Any) -> str | None:
    """``<type> <base64>`` of an OpenSSH public key line, or None if it is not one."""
    if not isinstance(raw, str) or len(raw) > 8192:
        return None
    match = _KEY.match(raw.strip())
    if match is None:
        return None
    with contextlib.suppress(binascii.Error, ValueError):
        base64.b64decode(match.group(2), validate=True)
        return f"{match.group(1)} {match.group(2)}"
    return None


# ----------------------------------------------------------------------------- gateways


def gateway_identity(conn: Connection, name: str) -> tuple[str, str] | None:
    """The stored (private, public) host key of a gateway name."""
    row = conn.execute(
        select(gateways.c.host_key, gateways.c.host_key_public).where(gateways.c.name == name)
    ).first()
    return None if row is None else (row.host_key, row.host_key_public)


def register_gateway(
    conn: Connection,
    name: str,
    ssh_address: str,
    http_url: str | None,
    host_key: str,
    host_key_public: str,
    now: int,
) -> tuple[str, str]:
    """Record (or refresh) a gateway serving ``name``; the first key stored for a name stays
    its identity. Returns the (private, public) host key to serve with."""
    existing = gateway_identity(conn, name)
    if existing is None:
        try:
            with conn.begin_nested():
                conn.execute(
                    insert(gateways).values(
                        name=name,
                        ssh_address=ssh_address,
                        host_key=host_key,
                        host_key_public=host_key_public,
                        http_url=http_url,
                        seen_at=now,
                    )
                )
            return host_key, host_key_public
        except IntegrityError:  # another process registered the name meanwhile
            existing = gateway_identity(conn, name)
            assert existing is not None
    conn.execute(
        update(gateways)
        .where(gateways.c.name == name)
        .values(ssh_address=ssh_address, http_url=http_url, seen_at=now)
    )
    return existing


def gateway_seen(conn: Connection, name: str, now: int) -> None:
    conn.execute(update(gateways).where(gateways.c.name == name).values(seen_at=now))


def assign_gateway(
    conn: Connection, server_id: int, tunnel_key: Any, now: int
) -> dict[str, str] | None:
    """The gateway this server's agent tunnels through (kept while it is alive, else the live
    gateway with the fewest servers), with the agent's key recorded for the gateway to check.
    None when no gateway is alive or the agent sent no valid key: it publishes directly."""
    key = clean_public_key(tunnel_key)
    if key is None:
        conn.execute(
            update(servers).where(servers.c.id == server_id).values(gateway=None, tunnel_key=None)
        )
        return None
    alive = {
        row.name: row
        for row in conn.execute(
            select(gateways).where(gateways.c.seen_at >= now - ALIVE_SECONDS)
        ).all()
    }
    if not alive:
        conn.execute(
            update(servers).where(servers.c.id == server_id).values(gateway=None, tunnel_key=key)
        )
        return None
    current = conn.execute(select(servers.c.gateway).where(servers.c.id == server_id)).scalar()
    if current not in alive:
        counts = conn.execute(
            select(servers.c.gateway, func.count())
            .where(servers.c.gateway.in_(list(alive)), servers.c.removed_at.is_(None))
            .group_by(servers.c.gateway)
        ).all()
        load: dict[str, int] = {str(name): int(n) for name, n in counts}
        current = min(sorted(alive), key=lambda n: load.get(n, 0))
    conn.execute(
        update(servers).where(servers.c.id == server_id).values(gateway=current, tunnel_key=key)
    )
    row = alive[current]
    return {"name": row.name, "ssh": row.ssh_address, "host_key": row.host_key_public}


def agent_key_matches(conn: Connection, server_id: int, gateway: str, key: str) -> bool:
    """Does this key belong to the agent of this live server, assigned to this gateway?"""
    row = conn.execute(
        select(servers.c.tunnel_key).where(
            servers.c.id == server_id,
            servers.c.removed_at.is_(None),
            servers.c.gateway == gateway,
        )
    ).first()
    return (
        row is not None and row.tunnel_key is not None and row.tunnel_key == clean_public_key(key)
    )


HTTP_LABEL_BYTES = 12  # 96 bits: an order's http URLs cannot be guessed or enumerated
HTTP_LABEL = re.compile(r"[0-9a-f]{24}")


def new_http_label() -> str:
    """The random first label of a new order's http URLs (hex: DNS labels are case-blind)."""
    return secrets.token_hex(HTTP_LABEL_BYTES)


def order_by_label(conn: Connection, label: str) -> tuple[int, bool] | None:
    """The live order whose http URLs start with ``label`` and whether it is stopped (its URLs
    are kept while stopped, SPEC §8), or None."""
    if not HTTP_LABEL.fullmatch(label):
        return None
    found = conn.execute(
        select(orders.c.id, orders.c.stopped).where(
            orders.c.http_label == label, orders.c.expired.is_(False)
        )
    ).first()
    return None if found is None else (int(found.id), bool(found.stopped))


def http_urls(conn: Connection) -> dict[str, str]:
    """Gateway name → its URL template for http ports (``{order}``: the order's random label,
    and ``{port}``)."""
    return {
        row.name: row.http_url
        for row in conn.execute(select(gateways.c.name, gateways.c.http_url)).all()
        if row.http_url
    }


def http_pub(
    templates: dict[str, str], pub_cluster: Any, label: str | None, port: Any
) -> str | None:
    """The public URL of an order's http port through its gateway, if it has one."""
    if not port or not label or not isinstance(pub_cluster, list) or not pub_cluster:
        return None
    template = templates.get(str(pub_cluster[0]))
    return None if template is None else template.format(order=label, port=port)


# ----------------------------------------------------------------------------- ports


def _live(order_id: int) -> Any:
    return (orders.c.id == order_id) & orders.c.expired.is_(False)


def public_ports(
    conn: Connection,
    gateway: str,
    order_id: int,
    container_ports: list[int],
    port_range: tuple[int, int],
) -> dict[int, int]:
    """The public port of each of an order's tcp ports on its gateway, allocated the first time
    (the lowest free one in the range) and kept for the order's life. Ports of ended orders are
    freed here, lazily."""
    have = {
        row.container_port: row.public_port
        for row in conn.execute(
            select(tunnel_ports.c.container_port, tunnel_ports.c.public_port).where(
                tunnel_ports.c.order_id == order_id, tunnel_ports.c.gateway == gateway
            )
        ).all()
    }
    missing = [p for p in container_ports if p not in have]
    if not missing:
        return have
    ended = select(orders.c.id).where(orders.c.expired.is_(True))
    conn.execute(
        delete(tunnel_ports).where(
            tunnel_ports.c.gateway == gateway, tunnel_ports.c.order_id.in_(ended)
        )
    )
    lo, hi = port_range
    for container_port in missing:
        for _attempt in range(8):
            taken = set(
                conn.execute(
                    select(tunnel_ports.c.public_port).where(tunnel_ports.c.gateway == gateway)
                ).scalars()
            )
            free = next((p for p in range(lo, hi + 1) if p not in taken), None)
            if free is None:
                break  # the range is full: this port stays unpublished
            try:
                with conn.begin_nested():
                    conn.execute(
                        insert(tunnel_ports).values(
                            gateway=gateway,
                            public_port=free,
                            order_id=order_id,
                            container_port=container_port,
                        )
                    )
                have[container_port] = free
                break
            except IntegrityError:  # taken concurrently: look again
                continue
    return have


def routes(conn: Connection, gateway: str) -> list[Route]:
    """Every port of every live order on this gateway's servers: tcp ports with their public
    port (when allocated), http ports."""
    rows = conn.execute(
        select(orders.c.id, orders.c.server_id, orders.c.ports)
        .join(servers, servers.c.id == orders.c.server_id)
        .where(
            servers.c.gateway == gateway,
            orders.c.expired.is_(False),
            orders.c.running.is_(True),
        )
    ).all()
    if not rows:
        return []
    allocated = {
        (row.order_id, row.container_port): row.public_port
        for row in conn.execute(
            select(tunnel_ports).where(
                tunnel_ports.c.gateway == gateway,
                tunnel_ports.c.order_id.in_([r.id for r in rows]),
            )
        ).all()
    }
    out: list[Route] = []
    for row in rows:
        for port, kind in (row.ports or {}).items():
            if not str(port).isdigit() or kind not in ("tcp", "http"):
                continue
            cport = int(port)
            public = allocated.get((row.id, cport)) if kind == "tcp" else None
            out.append(Route(row.id, row.server_id, cport, kind, public))
    return out


def route(conn: Connection, gateway: str, order_id: int, container_port: int) -> Route | None:
    """One port of a live, running order on this gateway's servers, or None."""
    row = conn.execute(
        select(orders.c.server_id, orders.c.ports)
        .join(servers, servers.c.id == orders.c.server_id)
        .where(_live(order_id), orders.c.running.is_(True), servers.c.gateway == gateway)
    ).first()
    if row is None:
        return None
    kind = (row.ports or {}).get(str(container_port))
    if kind not in ("tcp", "http"):
        return None
    public = None
    if kind == "tcp":
        public = conn.execute(
            select(tunnel_ports.c.public_port).where(
                tunnel_ports.c.gateway == gateway,
                tunnel_ports.c.order_id == order_id,
                tunnel_ports.c.container_port == container_port,
            )
        ).scalar()
    return Route(order_id, row.server_id, container_port, kind, public)

"""The host agents' control channel, under ``/agent/v1`` (apart from the Clore API under ``/v1``).

- ``POST /agent/v1/register`` ``{"init_token": …}`` → ``{"server_id", "name", "agent_token"}``:
  spends the server's 48-character init_token once (``connected`` becomes true for good) and
  issues the agent's own long-lived credential, of which only a SHA-256 hash is stored
  (``servers.agent_token_hash``). A spent token gets HTTP 409, an unknown one 401.
- ``WS /agent/v1/connect`` with ``Authorization: Bearer <agent_token>``: one persistent
  connection per agent (protocol in :mod:`openclore.agent.protocol`).

Why a WebSocket: the server must *push* a new order to the machine in well under a second, and
agents sit behind NAT and firewalls that allow only outbound connections. A WebSocket is one
outbound, authenticated, long-lived TCP (or TLS) connection through which both sides talk at any
time; it passes through ordinary HTTP reverse proxies, needs no extra port, and uvicorn[standard]
serves it already. Long polling would need a request per change and per timeout, and loses the
agent's reports' ordering; server-sent events are one-way; gRPC streams need HTTP/2 end to end.

An agent sees and changes only its own server: the credential names the server, and every read
and write below is filtered by that server's id.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import secrets
from typing import TYPE_CHECKING, Any

from fastapi import FastAPI
from sqlalchemy import Connection, select, update
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response
from starlette.websockets import WebSocket, WebSocketDisconnect

from openclore.agent.protocol import (
    CLOSE_UNAUTHORIZED,
    KIND_BACKGROUND,
    KIND_ORDER,
    PROTOCOL_VERSION,
    RUNNING,
    STOPPED,
    ContainerStatus,
    DesiredContainer,
    desired_rev,
    env_dict,
)
from openclore.api.wire import dumps
from openclore.engine.billing import MARKET_VERSION, lock_server, resolve_server
from openclore.engine.events import subscribe
from openclore.store.db import bump_meta
from openclore.store.schema import orders, servers

if TYPE_CHECKING:
    from openclore.api.app import AppState

log = logging.getLogger("openclore.agent_api")

PREFIX = "/agent/v1"
AGENT_TOKEN_PREFIX = "oca_"
HELLO_TIMEOUT = 15.0
# Safety net under the push: re-read the desired set this often even without a notification
# (covers several SQLite processes, which share no notifications, and any change committed
# without a notification: engine.billing.end_order, used by cancel_order, sends none today).
RESYNC_SQLITE = 3.0
RESYNC_POSTGRES = 5.0
MAX_STATUSES = 64
MAX_SPECS_BYTES = 8192


class AgentRefused(Exception):
    def __init__(self, status: int, error: str) -> None:
        super().__init__(error)
        self.status = status
        self.error = error


def hash_agent_token(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


# ----------------------------------------------------------------------------- use cases


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
        .values(connected=True, agent_token_hash=hash_agent_token(token))
    ).rowcount
    if done != 1:  # a concurrent registration won
        raise AgentRefused(409, "init_token_already_used")
    bump_meta(conn, MARKET_VERSION)
    return {"server_id": row.id, "name": row.name, "agent_token": token}


def authenticate_agent(conn: Connection, token: str | None) -> dict[str, Any] | None:
    if not token:
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
) -> None:
    """The agent is connected: online now (the running order may start), specs as measured."""
    row = lock_server(conn, server_id)
    if row is None:
        return
    values: dict[str, Any] = {"last_seen": now, "online": True}
    listing_changed = not row["online"]
    specs = _valid_specs(hello.get("specs"))
    if specs is not None and specs != row["specs"]:
        values["specs"] = specs
        listing_changed = True
    gpu_array = _valid_gpu_array(hello.get("gpu_array"))
    if gpu_array is not None and gpu_array != row["gpu_array"]:
        values["gpu_array"] = gpu_array
        listing_changed = True
    if pub_cluster != row["pub_cluster"]:
        values["pub_cluster"] = pub_cluster
    conn.execute(update(servers).where(servers.c.id == server_id).values(**values))
    if listing_changed:
        bump_meta(conn, MARKET_VERSION)
    if not row["online"]:
        resolve_server(conn, server_id, now)
    apply_statuses(conn, server_id, _statuses(hello.get("containers")), pub_cluster)


def agent_heartbeat(conn: Connection, server_id: int, now: int) -> None:
    fresh = conn.execute(
        update(servers)
        .where(servers.c.id == server_id, servers.c.online.is_(True))
        .values(last_seen=now)
    ).rowcount
    if fresh:
        return
    # it had been marked offline (heartbeats late): back online, and the market re-resolved
    row = lock_server(conn, server_id)
    if row is None:
        return
    conn.execute(
        update(servers).where(servers.c.id == server_id).values(last_seen=now, online=True)
    )
    bump_meta(conn, MARKET_VERSION)
    resolve_server(conn, server_id, now)


def agent_specs(conn: Connection, server_id: int, message: dict[str, Any]) -> None:
    values: dict[str, Any] = {}
    specs = _valid_specs(message.get("specs"))
    if specs is not None:
        values["specs"] = specs
    gpu_array = _valid_gpu_array(message.get("gpu_array"))
    if gpu_array is not None:
        values["gpu_array"] = gpu_array
    if values:
        conn.execute(update(servers).where(servers.c.id == server_id).values(**values))
        bump_meta(conn, MARKET_VERSION)


def apply_statuses(
    conn: Connection, server_id: int, statuses: list[ContainerStatus], pub_cluster: list[str]
) -> None:
    """Write what the agent reports into its own server's orders (others' are ignored)."""
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
        if status.http_port and asked.get(status.http_port) == "http":
            values["http_port"] = status.http_port
        if status.state == RUNNING or status.tcp_ports:
            values["pub_cluster"] = pub_cluster
        current = row._mapping
        changed = {k: v for k, v in values.items() if current[k] != v}
        if changed:
            conn.execute(update(orders).where(orders.c.id == row.id).values(**changed))


def desired_for(conn: Connection, server_id: int) -> list[DesiredContainer]:
    """What the machine must run now: the running order, else the background job."""
    server = conn.execute(
        select(
            servers.c.removed_at,
            servers.c.bg_image,
            servers.c.bg_command,
            servers.c.bg_env,
            servers.c.bg_times_updated,
        ).where(servers.c.id == server_id)
    ).first()
    if server is None or server.removed_at is not None:
        return []
    order = conn.execute(
        select(orders)
        .where(
            orders.c.server_id == server_id,
            orders.c.running.is_(True),
            orders.c.expired.is_(False),
        )
        .order_by(orders.c.id)
        .limit(1)
    ).first()
    if order is not None:
        return [
            DesiredContainer(
                key=f"order-{order.id}",
                kind=KIND_ORDER,
                order_id=order.id,
                image=order.image,
                command=order.command or "",
                env={str(k): str(v) for k, v in (order.env or {}).items()},
                ports={str(k): str(v) for k, v in (order.ports or {}).items()},
                jupyter_token=order.jupyter_token,
                ssh_key=order.ssh_key,
                ssh_password=order.ssh_password,
                autossh_entrypoint=bool(order.autossh_entrypoint),
            )
        ]
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


def _valid_specs(raw: Any) -> dict[str, Any] | None:
    """Specs as the agent measured them, within reason (they are served in every listing)."""
    if not isinstance(raw, dict) or len(json.dumps(raw)) > MAX_SPECS_BYTES:
        return None
    return raw


def _valid_gpu_array(raw: Any) -> list[str] | None:
    if not isinstance(raw, list) or len(raw) > 64:
        return None
    return [str(g)[:128] for g in raw]


def _statuses(raw: Any) -> list[ContainerStatus]:
    out: list[ContainerStatus] = []
    if not isinstance(raw, list):
        return out
    for item in raw[:MAX_STATUSES]:
        if isinstance(item, dict):
            try:
                out.append(ContainerStatus.from_wire(item))
            except (KeyError, TypeError, ValueError):
                continue
    return out


def _pub_cluster(hello: dict[str, Any], default: list[str], peer: str | None) -> list[str]:
    """The agent's configured public host name(s), else the market's setting, else the address
    the agent connects from."""
    reported = hello.get("public_host")
    if isinstance(reported, list):
        names = [str(h)[:253] for h in reported if str(h).strip()][:8]
        if names:
            return names
    if default:
        return list(default)
    return [peer] if peer else []


def _bearer(ws: WebSocket) -> str | None:
    header = ws.headers.get("authorization", "")
    scheme, _, value = header.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return None


# ----------------------------------------------------------------------------- the routes


def install_agent_api(app: FastAPI, state: AppState) -> None:
    """Mount the agent endpoints on the market's app."""
    settings = state.settings
    db = state.db
    resync = RESYNC_SQLITE if db.is_sqlite else RESYNC_POSTGRES
    # billing of a server stops a grace period after its last heartbeat: beat well within it
    heartbeat_interval = max(1.0, min(5.0, settings.agent_timeout / 4))

    async def register(request: Request) -> Response:
        try:
            body = json.loads(await request.body() or b"{}")
        except ValueError:
            body = None
        token = body.get("init_token") if isinstance(body, dict) else None
        if not isinstance(token, str) or not token:
            return _json(400, {"error": "init_token is required"})
        try:
            result = await run_in_threadpool(state.db_write, lambda c: register_agent(c, token))
        except AgentRefused as exc:
            return _json(exc.status, {"error": exc.error})
        log.info("agent registered for server %s", result["server_id"])
        return _json(200, result)

    async def connect(ws: WebSocket) -> None:
        await ws.accept()

        def _auth() -> dict[str, Any] | None:
            with db.read() as conn:
                return authenticate_agent(conn, _bearer(ws))

        server = await run_in_threadpool(_auth)
        if server is None:
            await ws.close(code=CLOSE_UNAUTHORIZED, reason="unknown agent credential")
            return
        server_id = int(server["id"])
        try:
            hello = json.loads(await asyncio.wait_for(ws.receive_text(), HELLO_TIMEOUT))
        except (TimeoutError, ValueError, WebSocketDisconnect):
            with contextlib.suppress(Exception):
                await ws.close(code=4400, reason="expected a hello")
            return
        if not isinstance(hello, dict) or hello.get("type") != "hello":
            await ws.close(code=4400, reason="expected a hello")
            return

        loop = asyncio.get_running_loop()
        wake = asyncio.Event()

        def _wake() -> None:
            loop.call_soon_threadsafe(wake.set)

        sub = subscribe(db.engine, server_id, _wake)
        try:
            # listen before reading, so that no change committed from here on can be missed
            await run_in_threadpool(sub.wait_ready, 5.0)
            peer = ws.client.host if ws.client else None
            pub_cluster = _pub_cluster(hello, settings.public_hostnames, peer)
            await run_in_threadpool(
                state.db_write,
                lambda c: agent_hello(c, server_id, hello, pub_cluster, state.now()),
            )
            await ws.send_text(
                _text(
                    {
                        "type": "hello",
                        "protocol": PROTOCOL_VERSION,
                        "server_id": server_id,
                        "name": server["name"],
                        "heartbeat_interval": heartbeat_interval,
                    }
                )
            )
            log.info("agent of server %s connected from %s", server_id, peer)
            wake.set()
            tasks = {
                asyncio.create_task(_push(ws, wake, server_id)),
                asyncio.create_task(_receive(ws, server_id, pub_cluster)),
            }
            done, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in pending:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            for task in done:
                exc = task.exception()
                if exc is not None and not isinstance(exc, WebSocketDisconnect | RuntimeError):
                    log.warning("agent channel of server %s ended: %r", server_id, exc)
        finally:
            sub.close()
            log.info("agent of server %s disconnected", server_id)

    async def _push(ws: WebSocket, wake: asyncio.Event, server_id: int) -> None:
        sent: str | None = None
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(wake.wait(), resync)
            wake.clear()

            def _read() -> list[DesiredContainer]:
                with db.read() as conn:
                    return desired_for(conn, server_id)

            desired = await run_in_threadpool(_read)
            rev = desired_rev(desired)
            if rev != sent:
                await ws.send_text(
                    _text(
                        {
                            "type": "desired",
                            "rev": rev,
                            "containers": [c.to_wire() for c in desired],
                        }
                    )
                )
                sent = rev

    async def _receive(ws: WebSocket, server_id: int, pub_cluster: list[str]) -> None:
        while True:
            raw = await ws.receive_text()
            try:
                message = json.loads(raw)
            except ValueError:
                continue
            if not isinstance(message, dict):
                continue
            kind = message.get("type")
            if kind == "heartbeat":
                await run_in_threadpool(
                    state.db_write, lambda c: agent_heartbeat(c, server_id, state.now())
                )
            elif kind == "status":
                statuses = _statuses(message.get("containers"))
                if statuses:
                    await run_in_threadpool(
                        state.db_write,
                        lambda c, s=statuses: apply_statuses(c, server_id, s, pub_cluster),  # type: ignore[misc]
                    )
            elif kind == "specs":
                await run_in_threadpool(
                    state.db_write,
                    lambda c, m=message: agent_specs(c, server_id, m),  # type: ignore[misc]
                )

    app.add_api_route(f"{PREFIX}/register", register, methods=["POST"], include_in_schema=False)
    app.add_api_websocket_route(f"{PREFIX}/connect", connect)


def _text(message: dict[str, Any]) -> str:
    return dumps(message).decode()


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(dumps(body), status_code=status, media_type="application/json")

"""The access gateway: renters reach their rentals' ports here, hosts need no inbound port.

- **Tunnels.** Each host agent keeps one outbound SSH connection to its gateway (``asyncssh``:
  authenticated by the key recorded on its server, encrypted, multiplexed, with keepalives and
  SSH's per-channel flow control). For every port of its running order it asks for a remote
  forward named ``order-<id>``:``<container port>``; the gateway grants it only for a port of a
  live order on that agent's own server.
- **TCP.** Each tcp port of a live order listens on its public port (allocated by the market,
  stable for the order's life); each connection becomes one SSH channel to the agent, which
  connects to the container's port bound on the host's loopback.
- **HTTP(S).** One router port serves every http port as ``<label>-<port>.<http domain>``, where
  the label is the order's 96 random bits (order ids are sequential: URLs made of them could be
  enumerated; old ``<order id>-<port>`` names no longer route): the request's ``Host`` picks the
  rental, then bytes stream both ways (WebSocket upgrades, uploads,
  long responses). Unknown or ended hosts get a 404 page. TLS with a configured certificate, or
  plain HTTP behind Caddy.
- **Limits.** Connection caps per order and in all, and per client address: in all and per
  order, below the per-order cap, so that one address cannot take an order's (or the gateway's)
  connections from the renter. An HTTP connection counts from its accept, while its request head
  is still coming. Idle timeouts, and memory bounded per connection (a read buffer and the SSH
  window): a slow reader slows its own stream only.

Each connection is checked against the database when it opens, so nothing reaches an order's
container once the order has ended; a sync loop opens and closes the public listeners.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any, TypeVar

import asyncssh

from openclore.config import Settings
from openclore.market import tunnels
from openclore.store.db import Database, run_write

log = logging.getLogger("openclore.gateway")

T = TypeVar("T")

CHUNK = 64 * 1024  # read size per direction and connection
CHANNEL_WINDOW = 256 * 1024  # SSH receive window per connection: the most buffered per stream
HEAD_LIMIT = 32 * 1024  # an HTTP request head larger than this is refused
HEAD_TIMEOUT = 15.0
SEEN_EVERY = 10.0  # seconds between the gateway's heartbeats in the database


@dataclass
class Forward:
    """A port an agent offers through its tunnel."""

    agent: AgentConnection
    order_id: int
    container_port: int
    kind: str
    registered: float = field(default_factory=time.monotonic)

    @property
    def key(self) -> tuple[int, int]:
        return self.order_id, self.container_port


class _ForwardListener(asyncssh.SSHListener):
    """What asyncssh keeps for a granted forward; closing it withdraws the forward."""

    def __init__(self, gateway: Gateway, forward: Forward) -> None:
        super().__init__()
        self._gateway = gateway
        self._forward = forward

    def get_port(self) -> int:
        return self._forward.container_port

    def close(self) -> None:
        self._gateway._withdraw(self._forward)

    async def wait_closed(self) -> None:
        return None


class AgentConnection(asyncssh.SSHServer):
    """The SSH server side of one agent's tunnel."""

    def __init__(self, gateway: Gateway) -> None:
        self.gateway = gateway
        self.conn: asyncssh.SSHServerConnection | None = None
        self.server_id: int | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self.conn = conn
        self.gateway.agents.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.gateway.agents.discard(self)
        self.gateway._agent_gone(self)

    def begin_auth(self, username: str) -> bool:
        return True

    def password_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    async def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        if not username.isdigit() or len(username) > 10:
            return False
        server_id = int(username)
        line = key.export_public_key("openssh").decode()
        name = self.gateway.name
        ok = await self.gateway.db_read(
            lambda c: tunnels.agent_key_matches(c, server_id, name, line)
        )
        if ok:
            self.server_id = server_id
        return ok

    async def server_requested(self, listen_host: str, listen_port: int) -> Any:
        order_id = tunnels.parse_forward_host(listen_host)
        if order_id is None or self.server_id is None or not 0 < listen_port < 65536:
            return False
        name = self.gateway.name
        route = await self.gateway.db_read(lambda c: tunnels.route(c, name, order_id, listen_port))
        if route is None or route.server_id != self.server_id:
            log.warning(
                "server %s asked for a forward of %s:%s it does not run; refused",
                self.server_id,
                listen_host,
                listen_port,
            )
            return False
        forward = Forward(self, order_id, listen_port, route.kind)
        return self.gateway._grant(forward)


class Gateway:
    """One gateway name's process side: the SSH endpoint for agents, the public TCP ports and
    the HTTP router. ``start()`` then ``stop()`` on a running event loop."""

    def __init__(
        self,
        db: Database,
        settings: Settings,
        *,
        sync_interval: float = 0.5,
        host_key_factory: Callable[[], asyncssh.SSHKey] | None = None,
    ) -> None:
        self.db = db
        self.settings = settings
        self.name = settings.gateway_name.lower()
        self.bind = settings.gateway_bind
        self.sync_interval = sync_interval
        self.forwards: dict[tuple[int, int], Forward] = {}
        self.agents: set[AgentConnection] = set()
        self.listeners: dict[int, tuple[asyncio.Server, tuple[int, int]]] = {}
        self.open_by_order: Counter[int] = Counter()
        self.open_by_client: Counter[str] = Counter()  # client address -> open connections
        self.open_by_client_order: Counter[tuple[str, int]] = Counter()
        self.open_total = 0
        self.streams: dict[int, set[asyncio.Task[None]]] = {}
        self.ssh_port: int = settings.gateway_ssh_port
        self.http_port: int = settings.gateway_http_port
        self._host_key_factory = host_key_factory or (
            lambda: asyncssh.generate_private_key("ssh-ed25519")
        )
        self._ssh: asyncssh.SSHAcceptor | None = None
        self._http: asyncio.Server | None = None
        self._sync_task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._domain = re.compile(
            r"^([0-9a-f]{24})-([1-9][0-9]{0,4})\." + re.escape(settings.http_domain.lower()) + r"$"
        )

    # ------------------------------------------------------------------ life

    async def start(self) -> None:
        fresh = self._host_key_factory()
        private, _public = await self.db_call(
            lambda c: tunnels.register_gateway(
                c,
                self.name,
                self.settings.gateway_address,
                self.settings.gateway_url_template,
                fresh.export_private_key("openssh").decode(),
                fresh.export_public_key("openssh").decode().strip(),
                int(time.time()),
            )
        )
        host_key = asyncssh.import_private_key(private)
        self._ssh = await asyncssh.create_server(
            lambda: AgentConnection(self),
            self.bind,
            self.ssh_port,
            server_host_keys=[host_key],
            keepalive_interval=30,
            keepalive_count_max=3,
            login_timeout=20,
            allow_pty=False,
            x11_forwarding=False,
            agent_forwarding=False,
            reuse_address=True,
        )
        self.ssh_port = self._ssh.sockets[0].getsockname()[1]
        if self.http_port:
            context = self._tls_context()
            self._http = await asyncio.start_server(
                self._http_client,
                self.bind,
                self.http_port,
                ssl=context,
                limit=HEAD_LIMIT,
                reuse_address=True,
            )
            self.http_port = self._http.sockets[0].getsockname()[1]
        self._sync_task = asyncio.create_task(self._sync_loop())
        log.info(
            "gateway %s: agents on %s:%s, http on %s, tcp ports %s",
            self.name,
            self.bind,
            self.ssh_port,
            self.http_port or "-",
            self.settings.gateway_port_range,
        )

    def _tls_context(self) -> ssl.SSLContext | None:
        cert, key = self.settings.gateway_tls_cert, self.settings.gateway_tls_key
        if not cert:
            return None
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(cert, key)
        return context

    async def stop(self) -> None:
        if self._sync_task is not None:
            self._sync_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._sync_task
        for port in list(self.listeners):
            self._close_listener(port)
        if self._http is not None:
            self._http.close()
        if self._ssh is not None:
            self._ssh.close()
            await self._ssh.wait_closed()
        for agent in list(self.agents):  # the tunnels end with the process: agents reconnect
            if agent.conn is not None:
                agent.conn.close()
        for tasks in list(self.streams.values()):
            for task in list(tasks):
                task.cancel()
        if self._http is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._http.wait_closed(), 2)

    async def db_call(self, fn: Callable[[Any], T]) -> T:
        """A write (the gateway's own row), retried as every write is."""
        return await asyncio.to_thread(run_write, self.db, fn)

    async def db_read(self, fn: Callable[[Any], T]) -> T:
        """A read: a read transaction, never the write lock (SQLite) nor a row lock."""

        def run() -> T:
            with self.db.read() as conn:
                return fn(conn)

        return await asyncio.to_thread(run)

    # ------------------------------------------------------------------ forwards

    def _grant(self, forward: Forward) -> _ForwardListener:
        old = self.forwards.get(forward.key)
        if old is not None and old.agent is not forward.agent:
            log.info("forward %s moves to a new tunnel of server %s", old.key, self.server_of(old))
        self.forwards[forward.key] = forward
        self._wake.set()
        return _ForwardListener(self, forward)

    @staticmethod
    def server_of(forward: Forward) -> int | None:
        return forward.agent.server_id

    def _withdraw(self, forward: Forward) -> None:
        if self.forwards.get(forward.key) is forward:
            del self.forwards[forward.key]
            self._wake.set()

    def _agent_gone(self, agent: AgentConnection) -> None:
        for key, forward in list(self.forwards.items()):
            if forward.agent is agent:
                del self.forwards[key]
        self._wake.set()

    # ------------------------------------------------------------------ sync

    async def _sync_loop(self) -> None:
        seen = 0.0
        while True:
            started = time.monotonic()
            try:
                if started - seen >= SEEN_EVERY:
                    now = int(time.time())
                    name = self.name
                    await self.db_call(partial(tunnels.gateway_seen, name=name, now=now))
                    seen = started
                await self.sync(started)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("gateway sync failed; retrying")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.sync_interval)
            self._wake.clear()

    async def sync(self, started: float | None = None) -> None:
        """Open the public port of every tcp port whose order lives and whose agent offers it;
        close the rest; forget forwards of orders that ended."""
        started = time.monotonic() if started is None else started
        routes = await self.db_read(lambda c: tunnels.routes(c, self.name))
        live = {(r.order_id, r.container_port) for r in routes}
        for key, forward in list(self.forwards.items()):
            if key not in live and forward.registered < started:
                del self.forwards[key]
        for order_id in set(self.streams) - {k[0] for k in live}:
            self._drop_streams(order_id)
        wanted = {
            r.public_port: (r.order_id, r.container_port)
            for r in routes
            if r.kind == "tcp" and r.public_port and (r.order_id, r.container_port) in self.forwards
        }
        for port, (_server, key) in list(self.listeners.items()):
            if wanted.get(port) != key:
                self._close_listener(port)
        for port, key in wanted.items():
            if port in self.listeners:
                continue
            try:
                server = await asyncio.start_server(
                    partial(self._tcp_client, key),
                    self.bind,
                    port,
                    reuse_address=True,
                )
            except OSError as exc:
                log.warning("cannot listen on public port %s for order %s: %s", port, key[0], exc)
                continue
            self.listeners[port] = (server, key)
            log.info("order %s: port %s open on %s:%s", key[0], key[1], self.name, port)

    def _close_listener(self, port: int) -> None:
        server, key = self.listeners.pop(port)
        server.close()
        log.info("order %s: port %s closed", key[0], key[1])

    def _drop_streams(self, order_id: int) -> None:
        for task in list(self.streams.get(order_id, ())):
            task.cancel()

    # ------------------------------------------------------------------ connections

    def _admit_client(self, client: str) -> bool:
        """Room for one more connection from this address (before knowing its order)."""
        s = self.settings
        return (
            self.open_total < s.gateway_max_conns
            and self.open_by_client[client] < s.gateway_max_conns_per_client
        )

    def _admit(self, order_id: int, client: str) -> bool:
        """Room for this (already counted) connection of ``client`` to the order."""
        s = self.settings
        return (
            self.open_by_order[order_id] < s.gateway_max_conns_per_order
            and self.open_by_client_order[(client, order_id)] < s.gateway_max_conns_per_client_order
        )

    @contextlib.contextmanager
    def _counted(self, client: str) -> Any:
        """Count a public connection, in all and for its address, while it is open."""
        self.open_total += 1
        self.open_by_client[client] += 1
        try:
            yield
        finally:
            self.open_total -= 1
            self.open_by_client[client] -= 1
            if self.open_by_client[client] <= 0:
                del self.open_by_client[client]

    async def _live(self, order_id: int, port: int, kind: str) -> Forward | None:
        """The agent's forward for this port, if the order still lives (checked now)."""
        forward = self.forwards.get((order_id, port))
        if forward is None or forward.kind != kind:
            return None
        route = await self.db_read(lambda c: tunnels.route(c, self.name, order_id, port))
        if route is None or route.kind != kind or route.server_id != forward.agent.server_id:
            return None
        return forward

    async def _tcp_client(
        self, key: tuple[int, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        order_id, port = key
        client = _client_of(writer)
        if not self._admit_client(client) or not self._admit(order_id, client):
            writer.close()
            return
        with self._counted(client):
            await self._stream(order_id, port, "tcp", reader, writer, b"")

    async def _stream(
        self,
        order_id: int,
        port: int,
        kind: str,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        head: bytes,
    ) -> None:
        task = asyncio.current_task()
        assert task is not None
        client = _client_of(writer)
        self.open_by_order[order_id] += 1
        self.open_by_client_order[(client, order_id)] += 1
        self.streams.setdefault(order_id, set()).add(task)
        try:
            forward = await self._live(order_id, port, kind)
            if forward is None or forward.agent.conn is None:
                if head:
                    await _answer(writer, 404, _not_found())
                return
            peer = writer.get_extra_info("peername") or ("", 0)
            try:
                up_reader, up_writer = await forward.agent.conn.open_connection(
                    tunnels.forward_host(order_id),
                    port,
                    str(peer[0]),
                    int(peer[1]),
                    window=CHANNEL_WINDOW,
                )
            except (asyncssh.Error, OSError) as exc:
                log.info("order %s port %s: the host did not connect: %s", order_id, port, exc)
                if head:
                    await _answer(writer, 502, _page(502, "The rental did not answer."))
                return
            if head:
                up_writer.write(head)
            await _splice(reader, writer, up_reader, up_writer, self.settings.gateway_idle_timeout)
        except asyncio.CancelledError:
            pass
        except (ConnectionError, OSError, asyncssh.Error):
            pass
        finally:
            self.open_by_order[order_id] -= 1
            if self.open_by_order[order_id] <= 0:
                del self.open_by_order[order_id]
            self.open_by_client_order[(client, order_id)] -= 1
            if self.open_by_client_order[(client, order_id)] <= 0:
                del self.open_by_client_order[(client, order_id)]
            tasks = self.streams.get(order_id)
            if tasks is not None:
                tasks.discard(task)
                if not tasks:
                    del self.streams[order_id]
            with contextlib.suppress(Exception):
                writer.close()

    async def _http_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        client = _client_of(writer)
        if not self._admit_client(client):
            writer.close()
            return
        with self._counted(client):  # from the accept: a head still coming holds a slot
            await self._http_request(client, reader, writer)

    async def _http_request(
        self, client: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_TIMEOUT)
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            with contextlib.suppress(Exception):
                await _answer(writer, 400, _page(400, "Bad request."))
            return
        except (ConnectionError, OSError):
            writer.close()
            return
        target = self._route_host(_host_of(head))
        found = None
        if target is not None:
            label = target[0]
            found = await self.db_read(lambda c: tunnels.order_by_label(c, label))
        if target is None or found is None:
            await _answer(writer, 404, _not_found())
            return
        (order_id, stopped), port = found, target[1]
        if stopped:  # its URL is kept and routes again once its renter starts it
            await _answer(writer, 503, _page(503, STOPPED_PAGE))
            return
        if not self._admit(order_id, client):
            await _answer(writer, 503, _page(503, "Too many connections to this rental."))
            return
        await self._stream(order_id, port, "http", reader, writer, head)

    def _route_host(self, host: str | None) -> tuple[str, int] | None:
        """The order label and port a ``Host`` names, or None."""
        if host is None:
            return None
        name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
        match = self._domain.match(name.lower().rstrip("."))
        if match is None:
            return None
        port = int(match.group(2))
        if port > 65535:
            return None
        return match.group(1), port


STOPPED_PAGE = "This rental is stopped; it answers again once its renter starts it."


def _client_of(writer: asyncio.StreamWriter) -> str:
    """The client's address (its port left out: one address, one budget)."""
    peer = writer.get_extra_info("peername")
    return str(peer[0]) if peer else ""


async def _splice(
    a_reader: Any, a_writer: Any, b_reader: Any, b_writer: Any, idle_timeout: float
) -> None:
    """Copy both ways until both sides are done (or either fails, or both stay silent for
    ``idle_timeout``); each copy waits for its writer to drain, so memory stays bounded."""
    last = [time.monotonic()]

    async def pump(src: Any, dst: Any) -> bool:
        """Copy until EOF; True when the EOF could be passed on (a half-close)."""
        while True:
            data = await src.read(CHUNK)
            if not data:
                break
            last[0] = time.monotonic()
            dst.write(data)
            await dst.drain()
        with contextlib.suppress(Exception):
            if dst.can_write_eof():
                dst.write_eof()
                return True
        return False  # e.g. TLS: no half-close, the connection ends with this direction

    async def watchdog() -> bool:
        while True:
            await asyncio.sleep(min(idle_timeout, 30.0))
            if time.monotonic() - last[0] >= idle_timeout:
                return False

    pumps: set[asyncio.Task[bool]] = {
        asyncio.create_task(pump(a_reader, b_writer)),
        asyncio.create_task(pump(b_reader, a_writer)),
    }
    dog = asyncio.create_task(watchdog())
    try:
        pending: set[asyncio.Task[bool]] = set(pumps)
        while pending:
            done, pending = await asyncio.wait(pending | {dog}, return_when=asyncio.FIRST_COMPLETED)
            if dog in done:
                break
            pending.discard(dog)
            if any(t.cancelled() or t.exception() is not None or not t.result() for t in done):
                break
    finally:
        for task in (*pumps, dog):
            task.cancel()
        for task in (*pumps, dog):
            with contextlib.suppress(BaseException):
                await task
        with contextlib.suppress(Exception):
            b_writer.close()


def _host_of(head: bytes) -> str | None:
    """The one Host header of a request head (None when missing, repeated or malformed)."""
    hosts = []
    for line in head.split(b"\r\n")[1:]:
        name, sep, value = line.partition(b":")
        if sep and name.strip().lower() == b"host":
            hosts.append(value.strip())
    if len(hosts) != 1:
        return None
    try:
        return hosts[0].decode("ascii")
    except UnicodeDecodeError:
        return None


def _page(status: int, message: str) -> bytes:
    return (
        "<!doctype html><html><head><meta charset=utf-8><title>openclore gateway</title></head>"
        f"<body><h1>{status}</h1><p>{message}</p></body></html>\n"
    ).encode()


def _not_found() -> bytes:
    return _page(
        404,
        "No rental answers at this address: the order does not exist, has ended, or has no "
        "http port here.",
    )


GATEWAY_HEADER = "X-Openclore-Gateway"
_REASONS = {400: "Bad Request", 404: "Not Found", 502: "Bad Gateway", 503: "Service Unavailable"}


async def _answer(writer: asyncio.StreamWriter, status: int, body: bytes) -> None:
    head = (
        f"HTTP/1.1 {status} {_REASONS[status]}\r\n"
        "Content-Type: text/html; charset=utf-8\r\n"
        f"Content-Length: {len(body)}\r\n"
        "Cache-Control: no-store\r\nConnection: close\r\n"
        f"{GATEWAY_HEADER}: 1\r\n\r\n"  # the gateway answered, not the rental (web/probe.py)
    ).encode()
    with contextlib.suppress(Exception):
        writer.write(head + body)
        await writer.drain()
    with contextlib.suppress(Exception):
        writer.close()

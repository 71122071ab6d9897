"""Whether a renter's published endpoints answer, for the Connect panel of My orders.

Each running order's SSH port and http port are probed from the market: a TCP connection to
the published host and port with a short timeout; for SSH the server's identification line must
start with ``SSH-``, for an http port (reached through the gateway's URL, whose own listener
always accepts) the answer to a ``HEAD`` must come from the rental: not one the gateway marks
as its own (no route, no answer, stopped) and no 502/503/504 of a proxy in front of it. The
probes of one page run concurrently and each result is kept for a few seconds, so the rows'
5-second refresh does not knock on a host more often than that.

Only addresses the market published for the signed-in renter's own orders are probed (the page
builds the endpoints from ``my_orders``; nothing here takes a host from a request), and never
those of a simulated (demo) server, where nothing listens. An SSH host is the agent's to report
(its ``public_host``), so a host could name any address and rent its own server to learn what
answers there from the market's network: unless it is one of the market's own names
(``public_hostnames``, the gateway's name), it is resolved once and probed only at a public
address (private ones with ``connect_probe_private``, a LAN market), at the address checked; the
market's own loopback only in a sandbox.
"""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import socket
import ssl
import time
import urllib.parse
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from openclore.domain.netpolicy import address_class, refusal

TIMEOUT = 1.0  # seconds a probe waits for the connection and the first answer, together
CACHE_SECONDS = 5.0  # a result is reused this long
CACHE_LIMIT = 4096  # entries kept at most (expired ones are dropped first)
JUPYTER_PORT = 8888

ANSWERING = "answering"
NOT_YET = "not yet"
STOPPED = "stopped"
SIMULATED = "simulated"

GATEWAY_ERRORS = (502, 503, 504)  # a proxy's answers when what is behind it does not
# the header the market's gateway puts on its own answers (gateway/server.py GATEWAY_HEADER)
GATEWAY_HEADER = b"x-openclore-gateway"
MAX_HEADERS = 64  # header lines read at most, looking for it


@dataclass(frozen=True)
class Endpoint:
    """One published endpoint: ``ssh`` (host and port) or ``http`` (the public URL)."""

    kind: str
    host: str
    port: int
    tls: bool = False
    url: str = ""

    @property
    def key(self) -> tuple[str, str, int, bool]:
        return (self.kind, self.host, self.port, self.tls)


def ssh_endpoint(order: dict[str, Any]) -> Endpoint | None:
    """The order's SSH endpoint: its first public host and the public side of port 22."""
    port = None
    for mapping in order.get("tcp_ports") or []:
        if str(mapping).startswith("22:"):
            port = str(mapping).split(":")[1]
    hosts = order.get("pub_cluster")
    if not port or not port.isdigit() or not hosts:
        return None
    return Endpoint("ssh", str(hosts[0]), int(port))


def http_endpoint(url: str) -> Endpoint | None:
    """The endpoint of a public http(s) URL, or None for anything else."""
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError:
        return None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return None
    tls = parts.scheme == "https"
    return Endpoint("http", parts.hostname, port or (443 if tls else 80), tls, url)


def _address(host: str) -> str:
    """Where to connect for ``host``: the loopback for ``localhost`` and its subdomains (RFC 6761
    reserves them; a development gateway's ``<order>-<port>.localhost`` URLs resolve in browsers
    but often not in the system resolver), else the host itself."""
    name = host.lower().rstrip(".")
    return "127.0.0.1" if name == "localhost" or name.endswith(".localhost") else host


@dataclass(frozen=True)
class Reach:
    """Which SSH hosts may be probed: at an address of a kind allowed
    (:func:`openclore.domain.netpolicy.refusal`); the market's own names at private ones too."""

    trusted: frozenset[str] = frozenset()
    allow_private: bool = False
    allow_loopback: bool = False


async def _ssh_address(host: str, port: int, reach: Reach) -> str | None:
    """The address to probe ``host`` at, or None when it may not be probed."""
    trusted = host.lower().rstrip(".") in reach.trusted  # the market's own: a LAN address too
    try:
        address = ipaddress.ip_address(_address(host))
    except ValueError:
        loop = asyncio.get_running_loop()
        try:
            found = await loop.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except OSError:  # no such name (yet)
            return None
        if not found:
            return None
        address = ipaddress.ip_address(found[0][4][0])
    why = refusal(
        address,
        allow_private=reach.allow_private or (trusted and address_class(address) == "private"),
        allow_loopback=reach.allow_loopback,
    )
    return None if why else str(address)


async def _ssh_answers(host: str, port: int, reach: Reach) -> bool:
    address = await _ssh_address(host, port, reach)
    if address is None:
        return False
    reader, writer = await asyncio.open_connection(address, port)
    try:
        line = await reader.readline()
    finally:
        writer.close()  # not waited for: a TLS goodbye must not hold the page
    return line.startswith(b"SSH-")


async def _http_answers(endpoint: Endpoint) -> bool:
    parts = urllib.parse.urlsplit(endpoint.url)
    tls = ssl.create_default_context() if endpoint.tls else None
    reader, writer = await asyncio.open_connection(
        _address(endpoint.host),
        endpoint.port,
        ssl=tls,
        server_hostname=endpoint.host if tls else None,
    )
    try:
        host = parts.netloc.rpartition("@")[2]
        head = [f"HEAD {parts.path or '/'} HTTP/1.1", f"Host: {host}", "Connection: close"]
        if parts.username is not None:  # a gateway behind a password (gateway_http_url)
            user = urllib.parse.unquote(parts.username)
            password = urllib.parse.unquote(parts.password or "")
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            head.append(f"Authorization: Basic {basic}")
        writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
        await writer.drain()
        status = (await reader.readline()).split(b" ", 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/") or not status[1].isdigit():
            return False
        for _ in range(MAX_HEADERS):
            line = await reader.readline()
            if line.strip() == b"":
                break
            if line.split(b":", 1)[0].strip().lower() == GATEWAY_HEADER:
                return False  # the gateway answered for the rental (no route, no answer)
    finally:
        writer.close()  # not waited for: a TLS goodbye must not hold the page
    return int(status[1]) not in GATEWAY_ERRORS


# tests and a development machine: every address (the console's prober is given the market's)
OPEN = Reach(allow_private=True, allow_loopback=True)


async def answers(endpoint: Endpoint, timeout: float = TIMEOUT, reach: Reach = OPEN) -> bool:
    """Does something that speaks the endpoint's protocol answer on it within ``timeout``
    seconds (the connection and the first answer together)? An SSH host ``reach`` does not
    allow is not probed (False)."""
    try:
        if endpoint.kind == "ssh":
            probe = _ssh_answers(endpoint.host, endpoint.port, reach)
        else:
            probe = _http_answers(endpoint)
        return await asyncio.wait_for(probe, timeout)
    except (OSError, TimeoutError, ValueError, ssl.SSLError, UnicodeError):
        return False


class Prober:
    """Probes endpoints concurrently and keeps each result ``ttl`` seconds."""

    def __init__(
        self,
        timeout: float = TIMEOUT,
        ttl: float = CACHE_SECONDS,
        clock: Callable[[], float] = time.monotonic,
        reach: Reach = OPEN,
    ) -> None:
        self.timeout = timeout
        self.reach = reach
        self.ttl = ttl
        self.clock = clock
        self._seen: dict[tuple[str, str, int, bool], tuple[float, bool]] = {}
        self.probes = 0  # probes made (not answered from the cache)

    async def check(self, endpoints: Iterable[Endpoint]) -> dict[Endpoint, bool]:
        """Whether each endpoint answers: a recent result, else a probe (all at once)."""
        now = self.clock()
        out: dict[Endpoint, bool] = {}
        todo: list[Endpoint] = []
        for endpoint in dict.fromkeys(endpoints):
            seen = self._seen.get(endpoint.key)
            if seen is not None and now - seen[0] < self.ttl:
                out[endpoint] = seen[1]
            else:
                todo.append(endpoint)
        if todo:
            self.probes += len(todo)
            results = await asyncio.gather(*(answers(e, self.timeout, self.reach) for e in todo))
            done = self.clock()
            if len(self._seen) + len(todo) > CACHE_LIMIT:
                self._seen = {k: v for k, v in self._seen.items() if done - v[0] < self.ttl}
                if len(self._seen) + len(todo) > CACHE_LIMIT:
                    self._seen.clear()
            for endpoint, result in zip(todo, results, strict=True):
                self._seen[endpoint.key] = (done, result)
                out[endpoint] = result
        return out


async def connect_panels(orders: list[dict[str, Any]], prober: Prober) -> None:
    """Set each live order's ``connect``: its SSH line and http port, each with its state
    (``answering``, ``not yet``, ``stopped`` or ``simulated``). The running orders of real
    servers are probed, all of the page's at once."""
    panels: list[tuple[dict[str, Any], list[tuple[dict[str, Any], Endpoint]]]] = []
    for o in orders:
        if o.get("expired"):
            continue
        items: list[tuple[dict[str, Any], Endpoint]] = []
        ssh = ssh_endpoint(o)
        if ssh is not None and o.get("ssh"):
            items.append(({"kind": "ssh", "line": o["ssh"]}, ssh))
        url = o.get("http_pub")
        http = http_endpoint(url) if isinstance(url, str) else None
        if http is not None:
            port = str(o.get("http_port") or http.port)
            jupyter = port == str(JUPYTER_PORT)
            items.append(({"kind": "http", "url": url, "port": port, "jupyter": jupyter}, http))
        panels.append((o, items))
    live = [endpoint for o, items in panels if _probed(o) for _item, endpoint in items]
    results = await prober.check(live) if live else {}
    for o, items in panels:
        for item, endpoint in items:
            if o.get("simulated"):
                item["state"] = SIMULATED
            elif not _probed(o):
                item["state"] = STOPPED
            else:
                item["state"] = ANSWERING if results.get(endpoint) else NOT_YET
        o["connect"] = [item for item, _endpoint in items]


def _probed(order: dict[str, Any]) -> bool:
    """A running order of a real server: the one kind whose endpoints are probed."""
    return (
        not order.get("simulated")
        and bool(order.get("running"))
        and order.get("state") not in ("stopped", "paused", "ended", "waiting")
    )

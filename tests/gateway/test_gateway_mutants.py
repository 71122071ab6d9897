"""The gateway's parts tested directly, without agents, containers or sockets: which ``Host`` a
request names and which rental that routes to, the pages and answers the gateway writes itself,
the connection caps' bookkeeping, which forwards an agent may hold and when they go, the splice's
copying, half-close and idle timeout, and what each refusal of a connection writes. Written to
kill mutants (``scripts/mutation gateway``); the end-to-end behaviour is tests/gateway/
test_gateway.py's."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace
from typing import Any

import pytest

from openclore.config import Settings
from openclore.gateway import server as gw
from openclore.gateway.server import (
    STOPPED_PAGE,
    AgentConnection,
    Forward,
    Gateway,
    _answer,
    _client_of,
    _host_of,
    _not_found,
    _page,
    _splice,
)
from openclore.market.tunnels import Route

from support import test_settings as settings_for

LABEL = "0123456789abcdef01234567"


class Writer:
    """A stream writer that keeps what is written."""

    def __init__(self, peer: Any = ("198.51.100.4", 4242), eof: bool = True) -> None:
        self.peer = peer
        self.data = bytearray()
        self.closed = False
        self.eof = False
        self._can_eof = eof

    def get_extra_info(self, name: str) -> Any:
        return self.peer if name == "peername" else None

    def write(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("closed")
        self.data += data

    async def drain(self) -> None:
        await asyncio.sleep(0)

    def close(self) -> None:
        self.closed = True

    def can_write_eof(self) -> bool:
        return self._can_eof

    def write_eof(self) -> None:
        self.eof = True


class Reader:
    """A stream reader over bytes fed to it (and its end)."""

    def __init__(self, data: bytes = b"", eof: bool = True) -> None:
        self.buffer = bytearray(data)
        self.ended = eof
        self._more: asyncio.Event | None = None

    def feed_data(self, data: bytes) -> None:
        self.buffer += data
        if self._more is not None:
            self._more.set()

    def feed_eof(self) -> None:
        self.ended = True
        if self._more is not None:
            self._more.set()

    async def _wait(self) -> None:
        self._more = asyncio.Event()
        await self._more.wait()
        self._more = None

    async def read(self, n: int) -> bytes:
        while not self.buffer and not self.ended:
            await self._wait()
        data = bytes(self.buffer[:n])
        del self.buffer[:n]
        return data

    async def readuntil(self, separator: bytes) -> bytes:
        while separator not in self.buffer:
            if self.ended:
                raise asyncio.IncompleteReadError(bytes(self.buffer), None)
            await self._wait()
        end = self.buffer.index(separator) + len(separator)
        data = bytes(self.buffer[:end])
        del self.buffer[:end]
        return data


def _reader(data: bytes = b"", eof: bool = True) -> Any:
    return Reader(data, eof)


def _gateway(**overrides: Any) -> Gateway:
    values: dict[str, Any] = {"gateway_name": "GW.Example", "http_domain": "Gpu.Example"}
    values.update(overrides)
    settings: Settings = settings_for("sqlite://", **values)
    return Gateway(None, settings)  # type: ignore[arg-type]


class Agent:
    """What a forward needs of an agent's connection."""

    def __init__(self, server_id: int | None = 7) -> None:
        self.server_id = server_id
        self.conn: Any = None


def run(coro: Any) -> Any:
    return asyncio.run(coro)


# ----------------------------------------------------------------------------- hosts


def test_a_request_names_one_host() -> None:
    head = b"GET / HTTP/1.1\r\nHost: a.example:8080\r\nAccept: */*\r\n\r\n"
    assert _host_of(head) == "a.example:8080"
    assert _host_of(b"GET / HTTP/1.1\r\n  hOsT :  b.example  \r\n\r\n") == "b.example"
    for head in (
        b"GET / HTTP/1.1\r\nAccept: */*\r\n\r\n",  # none
        b"GET / HTTP/1.1\r\nHost: a.example\r\nHost: b.example\r\n\r\n",  # two
        b"GET / HTTP/1.1\r\nHost: \xc3\xa9.example\r\n\r\n",  # not ASCII
        b"Host: a.example\r\nAccept: */*\r\n\r\n",  # the request line is no header
        b"GET / HTTP/1.1\r\nHost a.example\r\n\r\n",  # no colon
        b"GET / HTTP/1.1\r\nHostname: a.example\r\n\r\n",
        b"",
    ):
        assert _host_of(head) is None, head
    assert _host_of(b"GET / HTTP/1.1\r\nHost:\r\n\r\n") == ""


def test_a_host_routes_to_an_orders_label_and_port() -> None:
    g = _gateway()
    assert g.name == "gw.example"
    for host in (
        f"{LABEL}-8888.gpu.example",
        f"{LABEL}-8888.GPU.Example.",
        f"{LABEL}-8888.gpu.example:443",
        f"{LABEL.upper()}-8888.gpu.example",
    ):
        assert g._route_host(host) == (LABEL, 8888), host
    assert g._route_host(f"{LABEL}-1.gpu.example") == (LABEL, 1)
    assert g._route_host(f"{LABEL}-65535.gpu.example") == (LABEL, 65535)
    for host in (
        None,
        f"{LABEL}-65536.gpu.example",
        f"{LABEL}-99999.gpu.example",
        f"{LABEL}-0.gpu.example",
        f"{LABEL}-080.gpu.example",
        f"{LABEL}-123456.gpu.example",
        f"{LABEL[:-1]}-8888.gpu.example",
        f"{LABEL}0-8888.gpu.example",
        f"{LABEL}-8888.other.example",
        f"{LABEL}-8888.gpuxexample",
        f"x{LABEL}-8888.gpu.example",
        f"{LABEL}-8888.gpu.example.evil",
        "12-8888.gpu.example",
        "[::1]",
        f"[{LABEL}-8888.gpu.example]",
    ):
        assert g._route_host(host) is None, host


# ----------------------------------------------------------------------------- its own answers


def test_the_pages_the_gateway_writes_itself() -> None:
    assert _page(502, "The rental did not answer.") == (
        b"<!doctype html><html><head><meta charset=utf-8><title>openclore gateway</title>"
        b"</head><body><h1>502</h1><p>The rental did not answer.</p></body></html>\n"
    )
    assert _not_found() == _page(
        404,
        "No rental answers at this address: the order does not exist, has ended, or has no "
        "http port here.",
    )


@pytest.mark.parametrize(
    ("status", "reason"),
    [(400, "Bad Request"), (404, "Not Found"), (502, "Bad Gateway"), (503, "Service Unavailable")],
)
def test_an_answer_says_the_gateway_wrote_it_and_closes(status: int, reason: str) -> None:
    writer = Writer()
    run(_answer(writer, status, b"<p>body</p>"))  # type: ignore[arg-type]
    assert (
        bytes(writer.data)
        == (
            f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/html; charset=utf-8\r\n"
            "Content-Length: 11\r\nCache-Control: no-store\r\nConnection: close\r\n"
            "X-Openclore-Gateway: 1\r\n\r\n<p>body</p>"
        ).encode()
    )
    assert writer.closed
    # a client already gone: nothing raised, still closed
    gone = Writer()
    gone.closed = True
    run(_answer(gone, 404, b"x"))  # type: ignore[arg-type]
    assert gone.closed and gone.data == b""


def test_a_client_is_its_address_without_its_port() -> None:
    assert _client_of(Writer(("203.0.113.5", 1))) == "203.0.113.5"  # type: ignore[arg-type]
    assert _client_of(Writer(("2001:db8::1", 2, 0, 0))) == "2001:db8::1"  # type: ignore[arg-type]
    assert _client_of(Writer(None)) == ""  # type: ignore[arg-type]


# ----------------------------------------------------------------------------- caps


def test_connections_are_counted_in_all_and_per_address_while_open() -> None:
    g = _gateway(gateway_max_conns=3, gateway_max_conns_per_client=2)
    assert g._admit_client("a")
    with g._counted("a"):
        assert (g.open_total, dict(g.open_by_client)) == (1, {"a": 1})
        assert g._admit_client("a")
        with g._counted("a"):
            assert not g._admit_client("a")  # its two
            assert g._admit_client("b")
            with g._counted("b"):
                assert g.open_total == 3
                assert not g._admit_client("c")  # three in all
            assert g._admit_client("c")
        with pytest.raises(RuntimeError), g._counted("b"):
            raise RuntimeError("the stream failed")
        assert (g.open_total, dict(g.open_by_client)) == (1, {"a": 1})
    assert (g.open_total, dict(g.open_by_client)) == (0, {})


def test_an_orders_connections_are_capped_in_all_and_per_address() -> None:
    g = _gateway(gateway_max_conns_per_order=3, gateway_max_conns_per_client_order=2)
    assert g._admit(1, "a")
    g.open_by_order[1] = 2
    g.open_by_client_order[("a", 1)] = 1
    assert g._admit(1, "a") and g._admit(1, "b")
    g.open_by_client_order[("a", 1)] = 2
    assert not g._admit(1, "a") and g._admit(1, "b") and g._admit(2, "a")
    g.open_by_order[1] = 3
    assert not g._admit(1, "b") and g._admit(2, "b")


# ----------------------------------------------------------------------------- forwards


def test_forwards_are_granted_replaced_and_withdrawn_by_their_own_listener() -> None:
    g = _gateway()
    first, second = Agent(7), Agent(7)
    before = time.monotonic()
    offer = Forward(first, 5, 8888, "http")  # type: ignore[arg-type]
    assert offer.key == (5, 8888) and before <= offer.registered <= time.monotonic()
    assert g.server_of(offer) == 7
    listener = g._grant(offer)
    assert listener.get_port() == 8888 and g.forwards == {(5, 8888): offer}
    assert g._wake.is_set()
    g._wake.clear()
    assert run(listener.wait_closed()) is None
    # the agent reconnected: its new tunnel's forward replaces the old one, whose late close
    # leaves the new one in place
    again = Forward(second, 5, 8888, "http")  # type: ignore[arg-type]
    g._grant(again)
    g._wake.clear()
    listener.close()
    assert g.forwards == {(5, 8888): again} and not g._wake.is_set()
    g._grant(Forward(second, 5, 22, "tcp"))  # type: ignore[arg-type]
    g._grant(Forward(first, 6, 22, "tcp"))  # type: ignore[arg-type]
    g._wake.clear()
    g._withdraw(again)
    assert set(g.forwards) == {(5, 22), (6, 22)} and g._wake.is_set()
    g._wake.clear()
    g._agent_gone(second)  # type: ignore[arg-type]
    assert set(g.forwards) == {(6, 22)} and g._wake.is_set()


def test_an_agent_connection_joins_and_leaves_with_its_forwards() -> None:
    g = _gateway()
    agent = AgentConnection(g)
    assert (agent.conn, agent.server_id) == (None, None)
    assert agent.begin_auth("7") is True
    assert agent.password_auth_supported() is False
    assert agent.public_key_auth_supported() is True
    conn: Any = object()
    agent.connection_made(conn)
    assert agent.conn is conn and g.agents == {agent}
    other = Agent(8)
    g._grant(Forward(agent, 5, 22, "tcp"))
    g._grant(Forward(other, 6, 22, "tcp"))  # type: ignore[arg-type]
    g._wake.clear()
    agent.connection_lost(None)
    assert g.agents == set() and set(g.forwards) == {(6, 22)} and g._wake.is_set()


class _Key:
    def export_public_key(self, fmt: str) -> bytes:
        assert fmt == "openssh"
        return b"ssh-ed25519 AAAAC3Nz agent@host\n"


def test_an_agent_signs_in_as_its_server_with_the_key_on_record(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway()
    asked: list[tuple[int, str, str]] = []

    def matches(_conn: Any, server_id: int, name: str, line: str) -> bool:
        asked.append((server_id, name, line))
        return server_id == 42

    async def db_read(fn: Any) -> Any:
        return fn(None)

    monkeypatch.setattr(gw.tunnels, "agent_key_matches", matches)
    monkeypatch.setattr(g, "db_read", db_read)
    agent = AgentConnection(g)
    for name in ("", "x42", "4 2", "-42", "42a", "12345678901"):
        assert run(agent.validate_public_key(name, _Key())) is False, name
    assert asked == [] and agent.server_id is None
    assert run(agent.validate_public_key("41", _Key())) is False
    assert agent.server_id is None
    assert run(agent.validate_public_key("0000000042", _Key())) is True
    assert agent.server_id == 42
    assert asked == [
        (41, "gw.example", "ssh-ed25519 AAAAC3Nz agent@host\n"),
        (42, "gw.example", "ssh-ed25519 AAAAC3Nz agent@host\n"),
    ]


def test_an_agent_may_forward_only_its_own_servers_live_ports(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway()
    routes = {
        (5, 8888): Route(5, 7, 8888, "http", None),
        (5, 22): Route(5, 7, 22, "tcp", 20001),
        (6, 22): Route(6, 8, 22, "tcp", 20002),
        (5, 65535): Route(5, 7, 65535, "tcp", 20003),
    }
    asked: list[tuple[str, int, int]] = []

    def route(_conn: Any, name: str, order_id: int, port: int) -> Route | None:
        asked.append((name, order_id, port))
        return routes.get((order_id, port))

    async def db_read(fn: Any) -> Any:
        return fn(None)

    monkeypatch.setattr(gw.tunnels, "route", route)
    monkeypatch.setattr(g, "db_read", db_read)
    agent = AgentConnection(g)
    assert run(agent.server_requested("order-5", 22)) is False  # not signed in
    agent.server_id = 7
    for host, port in (
        ("order-5", 0),
        ("order-5", 65536),
        ("order-5", -1),
        ("order-x", 22),
        ("5", 22),
        ("order-6", 22),  # another server's order
        ("order-5", 9999),  # not a port of the order
    ):
        assert run(agent.server_requested(host, port)) is False, (host, port)
    assert asked == [("gw.example", 6, 22), ("gw.example", 5, 9999)]
    assert g.forwards == {}
    listener = run(agent.server_requested("order-5", 8888))
    assert listener.get_port() == 8888
    assert run(agent.server_requested("order-5", 65535)).get_port() == 65535
    assert run(agent.server_requested("order-5", 22)).get_port() == 22
    assert {k: (f.agent, f.kind) for k, f in g.forwards.items()} == {
        (5, 8888): (agent, "http"),
        (5, 65535): (agent, "tcp"),
        (5, 22): (agent, "tcp"),
    }


def test_a_connection_is_let_through_only_to_a_forward_of_a_live_route(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway()
    found: dict[tuple[int, int], Route | None] = {}

    def route(_conn: Any, name: str, order_id: int, port: int) -> Route | None:
        assert name == "gw.example"
        return found.get((order_id, port))

    async def db_read(fn: Any) -> Any:
        return fn(None)

    monkeypatch.setattr(gw.tunnels, "route", route)
    monkeypatch.setattr(g, "db_read", db_read)
    agent = Agent(7)
    offer = Forward(agent, 5, 8888, "http")  # type: ignore[arg-type]
    g._grant(offer)
    assert run(g._live(5, 8888, "http")) is None  # the order no longer runs
    found[(5, 8888)] = Route(5, 7, 8888, "http", None)
    assert run(g._live(5, 8888, "http")) is offer
    assert run(g._live(5, 8888, "tcp")) is None  # offered as http
    assert run(g._live(5, 22, "http")) is None  # not offered
    found[(5, 8888)] = Route(5, 7, 8888, "tcp", 20001)
    assert run(g._live(5, 8888, "http")) is None  # the route says tcp now
    found[(5, 8888)] = Route(5, 8, 8888, "http", None)
    assert run(g._live(5, 8888, "http")) is None  # the order moved to another server


# ----------------------------------------------------------------------------- requests


def _http(g: Gateway, head: bytes, monkeypatch: pytest.MonkeyPatch, **orders: Any) -> Writer:
    """Run one HTTP request through ``_http_request`` (``orders``: label -> (id, stopped)); a
    stream it would open is recorded in ``g.opened``."""
    opened: list[tuple[Any, ...]] = []

    async def db_read(fn: Any) -> Any:
        return fn(None)

    async def stream(*args: Any) -> None:
        opened.append(args)

    monkeypatch.setattr(gw.tunnels, "order_by_label", lambda _c, label: orders.get(label))
    monkeypatch.setattr(g, "db_read", db_read)
    monkeypatch.setattr(g, "_stream", stream)
    writer = Writer()
    run(g._http_request("198.51.100.4", _reader(head), writer))  # type: ignore[arg-type]
    g.opened = opened  # type: ignore[attr-defined]
    return writer


def _status(writer: Writer) -> bytes:
    return bytes(writer.data).split(b"\r\n", 1)[0]


def test_an_http_request_reaches_a_live_rental_or_gets_the_gateways_page(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway(gateway_max_conns_per_order=2)
    head = f"GET /x HTTP/1.1\r\nHost: {LABEL}-8888.gpu.example\r\n\r\n".encode()
    writer = _http(g, head, monkeypatch, **{LABEL: (5, False)})
    assert writer.data == b"" and not writer.closed
    assert [a[:3] for a in g.opened] == [(5, 8888, "http")]  # type: ignore[attr-defined]
    assert g.opened[0][5] == head  # type: ignore[attr-defined]  # the head goes on to the rental
    # stopped: its URL is kept, the gateway says so
    writer = _http(g, head, monkeypatch, **{LABEL: (5, True)})
    assert _status(writer) == b"HTTP/1.1 503 Service Unavailable"
    assert writer.data.endswith(_page(503, STOPPED_PAGE)) and g.opened == []  # type: ignore[attr-defined]
    # ended, or never there, or another domain
    for label, other in ((LABEL, {}), ("f" * 24, {LABEL: (5, False)})):
        writer = _http(g, head.replace(LABEL.encode(), label.encode()), monkeypatch, **other)
        assert _status(writer) == b"HTTP/1.1 404 Not Found"
        assert writer.data.endswith(_not_found()) and writer.closed
    writer = _http(g, b"GET / HTTP/1.1\r\nHost: elsewhere\r\n\r\n", monkeypatch)
    assert _status(writer) == b"HTTP/1.1 404 Not Found"
    # the order's connections are all taken
    g.open_by_order[5] = 2
    writer = _http(g, head, monkeypatch, **{LABEL: (5, False)})
    assert _status(writer) == b"HTTP/1.1 503 Service Unavailable"
    assert writer.data.endswith(_page(503, "Too many connections to this rental."))
    assert g.opened == []  # type: ignore[attr-defined]


def test_a_request_head_that_never_ends_is_a_400(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _gateway()
    writer = _http(g, b"GET / HTTP/1.1\r\nHost: a", monkeypatch)
    assert _status(writer) == b"HTTP/1.1 400 Bad Request"
    assert writer.data.endswith(_page(400, "Bad request.")) and writer.closed
    monkeypatch.setattr(gw, "HEAD_TIMEOUT", 0.05)
    writer = Writer()
    run(g._http_request("c", _reader(b"GET / HTTP/1.1\r\n", eof=False), writer))  # type: ignore[arg-type]
    assert _status(writer) == b"HTTP/1.1 400 Bad Request"


def test_connections_over_a_cap_are_closed_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    g = _gateway(gateway_max_conns_per_client=1, gateway_max_conns_per_client_order=1)
    calls: list[Any] = []

    async def stream(*args: Any) -> None:
        calls.append((args[:3], g.open_total, dict(g.open_by_client)))

    async def request(client: str, *_: Any) -> None:
        calls.append((client, g.open_total))

    monkeypatch.setattr(g, "_stream", stream)
    monkeypatch.setattr(g, "_http_request", request)
    writer = Writer(("198.51.100.4", 1))
    run(g._tcp_client((5, 22), _reader(), writer))  # type: ignore[arg-type]
    assert calls == [((5, 22, "tcp"), 1, {"198.51.100.4": 1})] and not writer.closed
    run(g._http_client(_reader(), writer))  # type: ignore[arg-type]
    assert calls[1] == ("198.51.100.4", 1)
    assert (g.open_total, dict(g.open_by_client)) == (0, {})
    # the address holds its one connection: the next is closed before anything is read
    g.open_by_client["198.51.100.4"] = 1
    for connect in (
        lambda w: g._tcp_client((5, 22), _reader(), w),
        lambda w: g._http_client(_reader(), w),
    ):
        refused = Writer(("198.51.100.4", 2))
        run(connect(refused))
        assert refused.closed and refused.data == b""
    assert len(calls) == 2
    # the address may connect, but holds its one connection to this order
    del g.open_by_client["198.51.100.4"]
    g.open_by_client_order[("198.51.100.4", 5)] = 1
    refused = Writer(("198.51.100.4", 3))
    run(g._tcp_client((5, 22), _reader(), refused))  # type: ignore[arg-type]
    assert refused.closed and len(calls) == 2 and g.open_total == 0


class _Tunnel:
    """An agent's SSH connection whose channels are in-memory pipes (or fail)."""

    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.opened: list[tuple[Any, ...]] = []
        self.up = Writer()

    async def open_connection(self, *args: Any, **kw: Any) -> tuple[Any, Any]:
        self.opened.append((*args, kw))
        if self.fail:
            raise OSError("refused by the host")
        return _reader(b"pong"), self.up


def test_a_stream_is_counted_while_open_and_answers_when_the_rental_cannot(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway()
    agent = Agent(7)
    offer = Forward(agent, 5, 8888, "http")  # type: ignore[arg-type]
    live: list[Forward | None] = [None]
    seen: list[Any] = []

    async def _live(order_id: int, port: int, kind: str) -> Forward | None:
        seen.append((order_id, port, kind, g.open_by_order[order_id]))
        seen.append(dict(g.open_by_client_order))
        return live[0]

    monkeypatch.setattr(g, "_live", _live)

    def stream(head: bytes) -> Writer:
        writer = Writer(("198.51.100.4", 4242))
        run(g._stream(5, 8888, "http", _reader(b"ping"), writer, head))  # type: ignore[arg-type]
        assert (dict(g.open_by_order), dict(g.open_by_client_order), g.streams) == ({}, {}, {})
        assert writer.closed
        return writer

    assert _status(stream(b"GET / HTTP/1.1\r\n\r\n")) == b"HTTP/1.1 404 Not Found"
    assert seen == [(5, 8888, "http", 1), {("198.51.100.4", 5): 1}]
    assert stream(b"").data == b""  # tcp: nothing to say, closed
    live[0] = offer  # offered, but its tunnel is gone
    assert _status(stream(b"GET / HTTP/1.1\r\n\r\n")) == b"HTTP/1.1 404 Not Found"
    agent.conn = _Tunnel(fail=True)
    writer = stream(b"GET / HTTP/1.1\r\n\r\n")
    assert _status(writer) == b"HTTP/1.1 502 Bad Gateway"
    assert writer.data.endswith(_page(502, "The rental did not answer."))
    assert stream(b"").data == b""
    agent.conn = tunnel = _Tunnel()
    writer = stream(b"GET / HTTP/1.1\r\n\r\n")
    assert tunnel.opened == [("order-5", 8888, "198.51.100.4", 4242, {"window": gw.CHANNEL_WINDOW})]
    assert bytes(tunnel.up.data) == b"GET / HTTP/1.1\r\n\r\nping"  # the head, then the rest
    assert bytes(writer.data) == b"pong" and tunnel.up.closed


def test_an_orders_open_streams_are_cancelled_when_it_ends() -> None:
    g = _gateway()

    async def main() -> list[bool]:
        async def hold() -> None:
            await asyncio.sleep(30)

        tasks = [asyncio.create_task(hold()) for _ in range(3)]
        g.streams = {5: {tasks[0], tasks[1]}, 6: {tasks[2]}}
        g._drop_streams(5)
        g._drop_streams(9)  # none
        await asyncio.sleep(0)
        result = [t.cancelled() for t in tasks]
        tasks[2].cancel()
        return result

    assert run(main()) == [True, True, False]


# ----------------------------------------------------------------------------- splice


def test_a_splice_copies_both_ways_and_passes_each_half_close() -> None:
    a_writer, b_writer = Writer(), Writer()
    run(_splice(_reader(b"up" * 70000), a_writer, _reader(b"down"), b_writer, 5.0))
    assert bytes(b_writer.data) == b"up" * 70000 and bytes(a_writer.data) == b"down"
    assert a_writer.eof and b_writer.eof and b_writer.closed


@pytest.mark.timing
def test_a_splice_ends_when_a_side_cannot_half_close() -> None:
    async def main() -> tuple[Writer, float]:
        b_writer = Writer(eof=False)
        started = time.monotonic()
        # the client's side ended and the rental's side cannot be half-closed (TLS): the
        # rental's silence does not keep the splice open until the idle timeout
        await _splice(_reader(b"x"), Writer(), _reader(eof=False), b_writer, 30.0)
        return b_writer, time.monotonic() - started

    b_writer, took = run(main())
    assert bytes(b_writer.data) == b"x" and not b_writer.eof and b_writer.closed and took < 5

    # the other way round: the half-close is passed on, and the splice waits for the rest
    async def other() -> tuple[Writer, bytes]:
        a_writer, b_writer = Writer(eof=False), Writer()
        reader = _reader(eof=False)

        async def answer() -> None:
            await asyncio.sleep(0.2)
            reader.feed_data(b"late")
            reader.feed_eof()

        task = asyncio.create_task(answer())
        await _splice(_reader(b"q"), a_writer, reader, b_writer, 30.0)
        await task
        return b_writer, bytes(a_writer.data)

    b_writer, back = run(other())
    assert b_writer.eof and bytes(b_writer.data) == b"q" and back == b"late"


@pytest.mark.timing
def test_a_splice_silent_for_its_idle_timeout_ends() -> None:
    async def main() -> float:
        started = time.monotonic()
        await _splice(_reader(eof=False), Writer(), _reader(eof=False), Writer(), 0.3)
        return time.monotonic() - started

    took = run(main())
    assert 0.3 <= took < 10.0


@pytest.mark.timing
def test_a_splice_kept_busy_outlives_its_idle_timeout() -> None:
    async def main() -> tuple[float, bytes]:
        reader = _reader(eof=False)
        out = Writer()

        async def trickle() -> None:
            for _ in range(12):
                await asyncio.sleep(0.1)
                reader.feed_data(b".")
            reader.feed_eof()

        started = time.monotonic()
        feeder = asyncio.create_task(trickle())
        await _splice(reader, Writer(), _reader(b""), out, 0.6)
        await feeder
        return time.monotonic() - started, bytes(out.data)

    took, data = run(main())
    assert data == b"." * 12 and took >= 1.1


# ----------------------------------------------------------------------------- second run


def test_a_closed_listener_is_logged_with_its_order_and_port(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = _gateway()

    class Listener:
        closed = False

        def close(self) -> None:
            self.closed = True

    listener = Listener()
    g.listeners[40022] = (listener, (5, 22))  # type: ignore[assignment]
    with caplog.at_level("INFO", logger=gw.log.name):
        g._close_listener(40022)
    assert listener.closed and g.listeners == {}
    assert [r.getMessage() for r in caplog.records] == ["order 5: port 22 closed"]


def _offering(g: Gateway, monkeypatch: pytest.MonkeyPatch, tunnel: _Tunnel) -> Agent:
    """Every connection to ``g`` finds order 5's port 8888 offered through ``tunnel``."""
    agent = Agent(7)
    agent.conn = tunnel
    offer = Forward(agent, 5, 8888, "http")  # type: ignore[arg-type]

    async def _live(*_: Any) -> Forward:
        return offer

    monkeypatch.setattr(g, "_live", _live)
    return agent


def test_a_stream_that_the_host_refuses_is_logged_and_an_unknown_peer_is_named_empty(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    g = _gateway()
    agent = _offering(g, monkeypatch, _Tunnel(fail=True))
    with caplog.at_level("INFO", logger=gw.log.name):
        run(g._stream(5, 8888, "tcp", _reader(), Writer(None), b""))  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "order 5 port 8888: the host did not connect: refused by the host"
    ]
    # a peer the socket cannot name goes to the host as an empty address and port 0
    assert agent.conn.opened == [("order-5", 8888, "", 0, {"window": gw.CHANNEL_WINDOW})]


def test_two_streams_of_one_order_are_counted_until_each_ends(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway()
    _offering(g, monkeypatch, _Tunnel())

    async def main() -> list[Any]:
        held = Reader(eof=False)  # the first client keeps its connection open
        first = asyncio.create_task(
            g._stream(5, 8888, "tcp", held, Writer(("198.51.100.4", 1)), b"")  # type: ignore[arg-type]
        )
        await asyncio.sleep(0.01)
        both = (dict(g.open_by_order), dict(g.open_by_client_order))
        await g._stream(5, 8888, "tcp", _reader(), Writer(("198.51.100.4", 2)), b"")  # type: ignore[arg-type]
        one = (dict(g.open_by_order), dict(g.open_by_client_order), len(g.streams[5]))
        held.feed_eof()
        await asyncio.wait_for(first, 5)
        return [both, one, (dict(g.open_by_order), dict(g.open_by_client_order), g.streams)]

    both, one, none = run(main())
    assert both == ({5: 1}, {("198.51.100.4", 5): 1})
    assert one == ({5: 1}, {("198.51.100.4", 5): 1}, 1)
    assert none == ({}, {}, {})


def test_an_http_request_over_its_addresss_cap_for_the_order_is_refused(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway(gateway_max_conns_per_client_order=1)
    head = f"GET /x HTTP/1.1\r\nHost: {LABEL}-8888.gpu.example\r\n\r\n".encode()
    g.open_by_client_order[("198.51.100.4", 5)] = 1  # this address holds its one connection
    writer = _http(g, head, monkeypatch, **{LABEL: (5, False)})
    assert _status(writer) == b"HTTP/1.1 503 Service Unavailable"
    assert g.opened == []  # type: ignore[attr-defined]
    g.open_by_client_order.clear()
    g.open_by_client_order[("198.51.100.9", 5)] = 1  # another address's connection
    writer = _http(g, head, monkeypatch, **{LABEL: (5, False)})
    assert writer.data == b"" and len(g.opened) == 1  # type: ignore[attr-defined]


def test_an_answer_to_a_client_whose_close_fails_still_ends() -> None:
    class Failing(Writer):
        def close(self) -> None:
            raise RuntimeError("transport already gone")

    writer = Failing()
    run(gw._answer(writer, 404, b"gone"))  # type: ignore[arg-type]
    assert bytes(writer.data).endswith(b"\r\n\r\ngone")


def test_port_1_may_be_forwarded_and_a_refused_forward_is_logged_with_its_server(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    g = _gateway()

    async def db_read(fn: Any) -> Any:
        return fn(None)

    routes = {(5, 1): Route(5, 7, 1, "tcp", 20004)}
    monkeypatch.setattr(gw.tunnels, "route", lambda _c, _n, o, p: routes.get((o, p)))
    monkeypatch.setattr(g, "db_read", db_read)
    agent = AgentConnection(g)
    agent.server_id = 7
    assert run(agent.server_requested("order-5", 1)).get_port() == 1
    with caplog.at_level("WARNING", logger=gw.log.name):
        assert run(agent.server_requested("order-6", 22)) is False
    assert [r.getMessage() for r in caplog.records] == [
        "server 7 asked for a forward of order-6:22 it does not run; refused"
    ]


def test_a_forward_taken_over_by_another_tunnel_is_logged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    g = _gateway()
    first, second = Agent(7), Agent(8)
    with caplog.at_level("INFO", logger=gw.log.name):
        g._grant(Forward(first, 5, 22, "tcp"))  # type: ignore[arg-type]
        g._grant(Forward(first, 5, 22, "tcp"))  # type: ignore[arg-type]  # the same tunnel again
        assert caplog.records == []
        g._grant(Forward(second, 5, 22, "tcp"))  # type: ignore[arg-type]
    assert [r.getMessage() for r in caplog.records] == [
        "forward (5, 22) moves to a new tunnel of server 7"
    ]
    assert g.forwards[(5, 22)].agent is second


class _Server:
    """What start() keeps of a listening server, and what stop() does with it."""

    def __init__(self, port: int) -> None:
        self.sockets = [self]
        self.port = port
        self.closed = False
        self.waited = False

    def getsockname(self) -> tuple[str, int]:
        return ("127.0.0.1", self.port)

    def close(self) -> None:
        self.closed = True

    async def wait_closed(self) -> None:
        self.waited = True


def test_start_registers_the_gateway_and_listens_as_configured_and_stop_undoes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway(gateway_ssh_port=2200, gateway_bind="127.0.0.9")
    g.http_port = 8080  # a router too
    key = gw.asyncssh.generate_private_key("ssh-ed25519")
    registered: list[Any] = []
    ssh, http = _Server(2222), _Server(8443)
    ssh_args: list[Any] = []
    http_args: list[Any] = []

    async def db_call(fn: Any) -> Any:
        registered.append(fn)
        return key.export_private_key("openssh").decode(), ""

    async def create_server(*args: Any, **kw: Any) -> _Server:
        ssh_args.append((args, kw))
        return ssh

    async def start_server(*args: Any, **kw: Any) -> _Server:
        http_args.append((args, kw))
        return http

    def register(_c: Any, *args: Any) -> tuple[str, str]:
        registered.append(args)
        return "", ""

    monkeypatch.setattr(g, "db_call", db_call)
    monkeypatch.setattr(gw.asyncssh, "create_server", create_server)
    monkeypatch.setattr(gw.asyncio, "start_server", start_server)
    monkeypatch.setattr(gw.tunnels, "register_gateway", register)

    async def main() -> tuple[float, float, list[bool]]:
        before = time.time()
        await g.start()
        registered[0](None)  # what the gateway's row is registered with
        after = time.time()

        async def hold() -> None:
            await asyncio.sleep(30)

        streams = [asyncio.create_task(hold()) for _ in range(2)]
        g.streams = {5: {streams[0]}, 6: {streams[1]}}
        await g.stop()
        await asyncio.sleep(0)
        return before, after, [t.cancelled() for t in streams]

    before, after, cancelled = run(main())
    *_, at = registered[1]
    assert int(before) <= at <= after
    (args, kw), = ssh_args
    assert args[1:] == ("127.0.0.9", 2200)
    assert (kw["keepalive_interval"], kw["keepalive_count_max"], kw["login_timeout"]) == (30, 3, 20)
    assert (kw["allow_pty"], kw["x11_forwarding"], kw["agent_forwarding"]) == (False,) * 3
    assert g.ssh_port == 2222 and g.http_port == 8443
    (args, kw), = http_args
    assert args[1:] == ("127.0.0.9", 8080) and kw["limit"] == gw.HEAD_LIMIT
    assert cancelled == [True, True]
    assert ssh.closed and ssh.waited and http.closed and http.waited


def test_the_sync_loop_marks_the_gateway_seen_every_so_often_and_survives_a_failed_sync(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    g = _gateway()
    g.sync_interval = 0.001
    clock = iter([100.0, 100.0 + gw.SEEN_EVERY / 2, 100.0 + gw.SEEN_EVERY, 100.0 + gw.SEEN_EVERY])
    monkeypatch.setattr(
        gw, "time", SimpleNamespace(monotonic=lambda: next(clock), time=lambda: 1_700_000_000.5)
    )
    seen: list[dict[str, Any]] = []
    synced: list[float | None] = []

    async def db_call(fn: Any) -> None:
        assert fn.func is gw.tunnels.gateway_seen
        seen.append(fn.keywords)

    async def sync(started: float | None = None) -> None:
        synced.append(started)
        if len(synced) == 2:
            raise RuntimeError("database away")
        if len(synced) == 4:
            raise asyncio.CancelledError

    monkeypatch.setattr(g, "db_call", db_call)
    monkeypatch.setattr(g, "sync", sync)
    with caplog.at_level("ERROR", logger=gw.log.name), pytest.raises(asyncio.CancelledError):
        run(g._sync_loop())
    # seen at once, not half the interval later, again when the whole interval has passed
    assert seen == [{"name": g.name, "now": 1_700_000_000}] * 2
    every = gw.SEEN_EVERY
    assert synced == [100.0, 100.0 + every / 2, 100.0 + every, 100.0 + every]
    assert [r.getMessage() for r in caplog.records] == ["gateway sync failed; retrying"]


def test_stop_waits_two_seconds_at_most_for_the_router_and_minds_no_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway()

    class Stuck(_Server):
        async def wait_closed(self) -> None:
            raise OSError("already gone")

    waits: list[Any] = []
    wait_for = asyncio.wait_for

    async def recorded(aw: Any, timeout: Any) -> Any:
        waits.append(timeout)
        return await wait_for(aw, timeout)

    g._http = Stuck(8443)  # type: ignore[assignment]
    monkeypatch.setattr(gw.asyncio, "wait_for", recorded)
    run(g.stop())  # its failure is no failure of stop()
    assert waits == [2] and g._http.closed


def test_a_stream_whose_client_cannot_be_closed_still_ends_cleanly(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway()

    async def _live(*_: Any) -> None:
        return None

    class Failing(Writer):
        def close(self) -> None:
            raise RuntimeError("transport already gone")

    monkeypatch.setattr(g, "_live", _live)
    run(g._stream(5, 22, "tcp", _reader(), Failing(), b""))  # type: ignore[arg-type]
    assert (dict(g.open_by_order), g.streams) == ({}, {})


def test_a_sync_forgets_a_dead_orders_forward_granted_before_it_began_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    g = _gateway()

    async def db_read(fn: Any) -> Any:
        return []  # no live route: the order ended

    monkeypatch.setattr(g, "db_read", db_read)
    forward = Forward(Agent(7), 5, 22, "tcp", registered=100.0)  # type: ignore[arg-type]
    g.forwards[(5, 22)] = forward
    run(g.sync(50.0))  # granted after this sync began (it read the routes before): kept
    assert g.forwards == {(5, 22): forward}
    run(g.sync())  # a sync beginning now: forgotten
    assert g.forwards == {}


def test_a_sync_opens_the_public_ports_wanted_closes_the_rest_and_logs_each(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    g = _gateway(gateway_bind="127.0.0.9")
    agent = Agent(7)
    routes = [
        Route(5, 7, 22, "tcp", 40022),  # offered: opened
        Route(5, 7, 8888, "http", 40080),  # http: through the router, never a port
        Route(6, 7, 22, "tcp", None),  # no public port
        Route(8, 7, 22, "tcp", 40088),  # not offered by an agent: not opened
        Route(9, 7, 22, "tcp", 40099),  # its port is taken: logged, the rest goes on
        Route(10, 7, 2222, "tcp", 40100),  # after the refused one: opened
    ]
    for r in routes[:3] + routes[4:]:
        forward = Forward(agent, r.order_id, r.container_port, r.kind)  # type: ignore[arg-type]
        g.forwards[forward.key] = forward
    opened: list[Any] = []

    async def db_read(fn: Any) -> Any:
        return routes

    async def start_server(client: Any, bind: str, port: int, **kw: Any) -> _Server:
        if port == 40099:
            raise OSError("address in use")
        opened.append((client.args, bind, port, kw))
        return _Server(port)

    monkeypatch.setattr(g, "db_read", db_read)
    monkeypatch.setattr(gw.asyncio, "start_server", start_server)
    stale = _Server(40777)
    g.listeners[40777] = (stale, (4, 22))  # type: ignore[assignment]  # no longer wanted
    with caplog.at_level("INFO", logger=gw.log.name):
        run(g.sync(0.0))
    assert opened == [
        (((5, 22),), "127.0.0.9", 40022, {"reuse_address": True}),
        (((10, 2222),), "127.0.0.9", 40100, {"reuse_address": True}),
    ]
    assert {p: key for p, (_, key) in g.listeners.items()} == {40022: (5, 22), 40100: (10, 2222)}
    assert stale.closed
    assert [r.getMessage() for r in caplog.records] == [
        "order 4: port 22 closed",
        "order 5: port 22 open on gw.example:40022",
        "cannot listen on public port 40099 for order 9: address in use",
        "order 10: port 2222 open on gw.example:40100",
    ]
    # a listener still wanted stays as it is
    caplog.clear()
    run(g.sync(0.0))
    assert len(opened) == 2 and caplog.records[-1].getMessage().startswith("cannot listen")

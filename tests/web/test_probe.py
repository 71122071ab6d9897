"""The Connect panel's probes against real local listeners: an SSH server's banner, an http
port behind a gateway-like proxy, a silent listener and a closed port; the probes of one page at
once, and a result reused for a few seconds."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

from openclore.web import probe
from openclore.web.probe import (
    ANSWERING,
    NOT_YET,
    SIMULATED,
    STOPPED,
    Endpoint,
    Prober,
    answers,
    connect_panels,
    http_endpoint,
    ssh_endpoint,
)

from support import free_port

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


@asynccontextmanager
async def listening(handler: Handler) -> AsyncIterator[int]:
    server = await asyncio.start_server(handler, "127.0.0.1", 0)
    try:
        yield int(server.sockets[0].getsockname()[1])
    finally:
        server.close()
        await server.wait_closed()


def says(data: bytes) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(data)
        await writer.drain()
        writer.close()

    return handle


async def silent(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    await reader.read()  # accepts and says nothing until the probe hangs up
    writer.close()


def http_answering(status: int, seen: list[bytes]) -> Handler:
    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        seen.append(await reader.readuntil(b"\r\n\r\n"))
        writer.write(f"HTTP/1.1 {status} Whatever\r\nContent-Length: 0\r\n\r\n".encode())
        await writer.drain()
        writer.close()

    return handle


def _http(url: str) -> Endpoint:
    endpoint = http_endpoint(url)
    assert endpoint is not None, url
    return endpoint


def test_ssh_needs_an_ssh_banner() -> None:
    async def run() -> None:
        async with listening(says(b"SSH-2.0-OpenSSH_9.6\r\n")) as sshd:
            assert await answers(Endpoint("ssh", "127.0.0.1", sshd))
        async with listening(says(b"HTTP/1.1 400 Bad Request\r\n\r\n")) as web:
            assert not await answers(Endpoint("ssh", "127.0.0.1", web))
        async with listening(silent) as quiet:
            started = time.monotonic()
            assert not await answers(Endpoint("ssh", "127.0.0.1", quiet), timeout=0.3)
            assert time.monotonic() - started < 2
        assert not await answers(Endpoint("ssh", "127.0.0.1", free_port()))  # closed

    asyncio.run(run())


def test_an_http_port_answers_unless_the_gateway_answers_for_it() -> None:
    async def run() -> None:
        seen: list[bytes] = []
        async with listening(http_answering(200, seen)) as port:
            url = f"http://gw:pass%21@127.0.0.1:{port}/lab?x=1"
            endpoint = _http(url)
            assert endpoint == Endpoint("http", "127.0.0.1", port, False, url)
            assert await answers(endpoint)
        request = seen[0].decode()
        assert request.startswith("HEAD /lab HTTP/1.1\r\n")
        assert f"\r\nHost: 127.0.0.1:{port}\r\n" in request
        assert "Authorization: Basic " + base64.b64encode(b"gw:pass!").decode() in request
        for status, up in ((404, True), (401, True), (502, False), (503, False)):
            async with listening(http_answering(status, [])) as port:
                assert await answers(_http(f"http://127.0.0.1:{port}/")) is up, status
        seen.clear()  # a development gateway's name under localhost: the loopback, as named
        async with listening(http_answering(200, seen)) as port:
            assert await answers(_http(f"http://abc-8888.localhost:{port}/"))
            assert await answers(Endpoint("ssh", "LOCALHOST.", port)) is False  # no banner
        assert f"\r\nHost: abc-8888.localhost:{port}\r\n" in seen[0].decode()
        async with listening(says(b"SSH-2.0-OpenSSH_9.6\r\n")) as sshd:
            assert await answers(Endpoint("ssh", "x.localhost", sshd))
            assert not await answers(_http(f"http://127.0.0.1:{sshd}/"))
        assert not await answers(_http(f"http://127.0.0.1:{free_port()}/"))

    asyncio.run(run())
    assert http_endpoint("https://a.example/") == Endpoint(
        "http", "a.example", 443, True, "https://a.example/"
    )
    assert _http("http://a.example").port == 80
    for bad in ("ftp://a.example/", "http:///x", "http://a.example:99999/", "javascript:x"):
        assert http_endpoint(bad) is None, bad


def test_probes_run_at_once_and_are_kept_a_few_seconds() -> None:
    now = [1000.0]
    prober = Prober(timeout=0.4, ttl=5, clock=lambda: now[0])

    async def run() -> None:
        async with (
            listening(silent) as a,
            listening(silent) as b,
            listening(silent) as c,
            listening(says(b"SSH-2.0-x\r\n")) as sshd,
        ):
            quiet = [Endpoint("ssh", "127.0.0.1", p) for p in (a, b, c)]
            up = Endpoint("ssh", "127.0.0.1", sshd)
            started = time.monotonic()
            results = await prober.check([*quiet, up, up])
            assert time.monotonic() - started < 1.1  # three 0.4 s timeouts, together
            assert results == {quiet[0]: False, quiet[1]: False, quiet[2]: False, up: True}
            assert prober.probes == 4  # the same endpoint twice is probed once
            now[0] += 4.9
            assert (await prober.check([up]))[up] and prober.probes == 4  # from the cache
            now[0] += 0.2
            assert (await prober.check([up]))[up] and prober.probes == 5  # probed again

    asyncio.run(run())


def _order(**fields: Any) -> dict[str, Any]:
    return {
        "running": True,
        "state": "running",
        "pub_cluster": ["127.0.0.1"],
        **fields,
    }


def test_the_panel_probes_only_running_orders_of_real_servers() -> None:
    async def run() -> None:
        async with listening(says(b"SSH-2.0-x\r\n")) as sshd, listening(silent) as jupyter:
            line = f"ssh root@127.0.0.1 -p {sshd}"
            url = f"http://127.0.0.1:{jupyter}/"
            live = _order(id=1, tcp_ports=[f"22:{sshd}"], ssh=line, http_port="8888", http_pub=url)
            other = _order(
                id=2, tcp_ports=["22:1"], ssh="ssh root@127.0.0.1 -p 1", http_port="6006"
            )
            other["http_pub"] = f"http://127.0.0.1:{free_port()}/"
            demo = _order(id=3, tcp_ports=["22:2"], ssh="x", http_pub=url, simulated=True)
            stopped = _order(id=4, tcp_ports=["22:3"], ssh="y", state="stopped", running=False)
            paused = _order(id=5, tcp_ports=["22:4"], ssh="z", state="paused", running=False)
            ended = _order(id=6, tcp_ports=["22:5"], ssh="w", expired=True)
            prober = Prober(timeout=0.3)
            orders = [live, other, demo, stopped, paused, ended]
            await connect_panels(orders, prober)
            assert prober.probes == 4  # the two running orders' SSH and http ports
            assert live["connect"] == [
                {"kind": "ssh", "line": line, "state": ANSWERING},
                {"kind": "http", "url": url, "port": "8888", "jupyter": True, "state": NOT_YET},
            ]
            assert [(e["kind"], e["state"]) for e in other["connect"]] == [
                ("ssh", NOT_YET),
                ("http", NOT_YET),
            ]
            assert other["connect"][1]["jupyter"] is False and other["connect"][1]["port"] == "6006"
            assert [e["state"] for e in demo["connect"]] == [SIMULATED, SIMULATED]
            assert [e["state"] for e in stopped["connect"]] == [STOPPED]
            assert [e["state"] for e in paused["connect"]] == [STOPPED]
            assert "connect" not in ended
            nothing = _order(id=7, tcp_ports=[], ssh=None, http_pub="javascript:alert(1)")
            await connect_panels([nothing], prober)
            assert nothing["connect"] == [] and prober.probes == 4

    asyncio.run(run())
    assert ssh_endpoint({"tcp_ports": ["22:x"], "pub_cluster": ["h"]}) is None
    assert ssh_endpoint({"tcp_ports": ["22:7"], "pub_cluster": []}) is None
    assert ssh_endpoint({"tcp_ports": ["8:9", "22:7"], "pub_cluster": ["h"]}) == Endpoint(
        "ssh", "h", 7
    )


def test_the_gateways_own_answers_are_not_the_rentals() -> None:
    """The gateway marks its 404 (no route), 502 and 503 pages; a rental's own 404 answers."""
    from openclore.gateway.server import GATEWAY_HEADER, _answer

    assert GATEWAY_HEADER.lower().encode() == probe.GATEWAY_HEADER

    async def gateway_page(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        await _answer(writer, 404, b"No rental answers at this address")

    async def run() -> None:
        async with listening(gateway_page) as port:
            assert not await answers(_http(f"http://127.0.0.1:{port}/"))
        async with listening(http_answering(404, [])) as port:
            assert await answers(_http(f"http://127.0.0.1:{port}/"))

    asyncio.run(run())


def test_an_ssh_host_the_agent_names_is_probed_only_where_the_market_allows() -> None:
    """The SSH host is the agent's to report: a host could name an address inside the market's
    network and rent its own server to learn what answers there. Outside a sandbox the loopback
    is never probed, private addresses only for the market's own names or with
    connect_probe_private, public ones always."""
    from openclore.web.probe import Reach

    connections: list[int] = []

    async def counting(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(1)
        await says(b"SSH-2.0-x\r\n")(reader, writer)

    strict = Reach()

    async def run() -> None:
        async with listening(counting) as sshd:
            for host in ("127.0.0.1", "localhost", "::ffff:127.0.0.1"):
                assert not await answers(Endpoint("ssh", host, sshd), reach=strict), host
            assert connections == []  # refused before connecting
            sandbox = Reach(allow_loopback=True)
            assert await answers(Endpoint("ssh", "localhost", sshd), reach=sandbox)
            assert connections == [1]
        assert await probe._ssh_address("10.1.2.3", 22, strict) is None
        assert await probe._ssh_address("169.254.169.254", 22, strict) is None
        assert await probe._ssh_address("10.1.2.3", 22, Reach(allow_private=True)) == "10.1.2.3"
        assert await probe._ssh_address("8.8.8.8", 22, strict) == "8.8.8.8"
        assert await probe._ssh_address("no-such-host.invalid", 22, strict) is None
        # the market's own name: its LAN address is probed, a loopback one still is not
        own = Reach(trusted=frozenset({"192.168.1.9"}))
        assert await probe._ssh_address("192.168.1.9", 22, own) == "192.168.1.9"
        loopback_named = Reach(trusted=frozenset({"localhost"}))
        assert await probe._ssh_address("localhost", 22, loopback_named) is None

    asyncio.run(run())

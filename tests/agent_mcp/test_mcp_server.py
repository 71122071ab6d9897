"""``openclore mcp`` driven by the official MCP SDK's own client (``mcp.ClientSession``), over
stdio to a ``python -m openclore mcp`` process and over streamable HTTP, against a real openclore
sandbox market over real HTTP: list the tools, search, rent, status with connection info, logs,
stop and start, cancel, wallet and runway, templates; a key's scopes choose the tools."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client
from mcp.client.streamable_http import streamablehttp_client
from mcp.shared.memory import create_connected_server_and_client_session
from mcp.types import CallToolResult

from openclore.client import (
    AsyncClient,
    Client,
    CloreConnectionError,
    InvalidToken,
    Order,
    error_for,
)
from openclore.mcp.server import build_server, key_info
from openclore.mcp.tools import (
    SCOPES,
    SIMULATED,
    TOOL_SCOPES,
    KeyInfo,
    allowed_tools,
    explain,
    money,
    order_view,
    plain,
)

from support import Market, free_port

IMAGE = "cloreai/ubuntu20.04-jupyter"
SRC = str(Path(__file__).resolve().parents[2] / "src")
HTTP_TOKEN = "mcp-test-token"
READ_TOOLS = {"search_offers", "order_status", "order_logs", "wallet", "list_templates"}


@pytest.fixture
def backend() -> str:
    """The MCP server only speaks HTTP to the market: one database backend is enough here (the
    market's own tests cover both)."""
    return "sqlite"


@pytest.fixture
def world(market: Market) -> tuple[str, int]:
    """A renter's token and a host's server (on-demand 0.0001, spot 0.00001 a day, 50 GB of
    disk kept when stopped at 0.0002 a GB-day)."""
    host = market.user("host")
    renter = market.user("renter", bitcoin="1")
    sid = market.server(host, "keeper", on_demand="0.0001", spot="0.00001", mrl=720)
    with Client(host, base_url=market.url, rate_limit=False) as client:
        client.set_server_settings("keeper", disk_gb=50, storage_price="0.0002")
    return renter, sid


def _env(market: Market, token: str) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        OPENCLORE_URL=market.url,
        OPENCLORE_API_KEY=token,
        OPENCLORE_CONFIG=os.devnull,
        PYTHONPATH=os.pathsep.join(p for p in (SRC, env.get("PYTHONPATH")) if p),
    )
    env.pop("OPENCLORE_PROFILE", None)
    return env


@asynccontextmanager
async def stdio_session(market: Market, token: str) -> AsyncIterator[ClientSession]:
    params = StdioServerParameters(
        command=sys.executable, args=["-m", "openclore", "mcp"], env=_env(market, token)
    )
    async with (
        stdio_client(params) as (read, write),
        ClientSession(read, write) as session,
    ):
        await session.initialize()
        yield session


@asynccontextmanager
async def memory_session(market: Market, token: str) -> AsyncIterator[ClientSession]:
    """The same server built in this process (``build_server`` as ``openclore mcp`` calls it)
    and joined to the SDK's client by in-memory streams: what the stdio tests check, also where
    mutation testing can see which tool code ran. Its client does not pace itself (the test
    market has no rate limits), so these run in a fraction of the stdio ones' time."""
    async with AsyncClient(token, base_url=market.url, rate_limit=False) as client:
        server = build_server(client, await key_info(client))
        async with create_connected_server_and_client_session(server) as session:
            yield session


@pytest.fixture(params=["stdio", "memory"])
def session_for(request: pytest.FixtureRequest) -> Any:
    """Opens a client session to the MCP server over stdio (a real ``openclore mcp`` process)
    or in memory (the same server in this process)."""
    return stdio_session if request.param == "stdio" else memory_session


@pytest.fixture
def http_mcp(market: Market, world: tuple[str, int]) -> Iterator[str]:
    """``openclore mcp --transport http`` as its own process, answering only requests with the
    bearer token ``HTTP_TOKEN``; yields its URL."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "openclore", "mcp", "--transport", "http", "--port", str(port)],
        env=_env(market, world[0]) | {"OPENCLORE_MCP_TOKEN": HTTP_TOKEN},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    deadline = time.time() + 30
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            assert process.poll() is None, process.stderr.read() if process.stderr else ""
            assert time.time() < deadline, "the MCP server did not listen"
            time.sleep(0.1)
    try:
        yield f"http://127.0.0.1:{port}/mcp"
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stderr:
            process.stderr.close()


def data(result: CallToolResult) -> Any:
    """A tool's answer: its structured content, which its text content repeats as JSON."""
    assert not result.isError, result.content
    assert result.structuredContent is not None
    text = result.content[0]
    assert text.type == "text" and json.loads(text.text) == result.structuredContent
    return result.structuredContent


def refused(result: CallToolResult) -> str:
    assert result.isError
    text = result.content[0]
    assert text.type == "text"
    return text.text


async def call(session: ClientSession, tool: str, **arguments: Any) -> CallToolResult:
    return await session.call_tool(tool, arguments)


# ----------------------------------------------------------------------------- over stdio


def test_rent_status_stop_start_cancel(
    market: Market, world: tuple[str, int], session_for: Any
) -> None:
    token, sid = world

    async def flow() -> None:
        async with session_for(market, token) as session:
            listed = await session.list_tools()
            tools = {t.name: t for t in listed.tools}
            # an operator-issued token has every scope: every tool
            assert set(tools) == set(TOOL_SCOPES)
            rent = tools["rent_server"].inputSchema
            assert rent["required"] == ["server_id"]
            assert set(rent["properties"]) >= {
                "server_id", "image", "type", "price", "currency", "ports", "env",
                "template_id", "gpu_count",
            }  # fmt: skip
            price = rent["properties"]["price"]["anyOf"][0]
            assert price["type"] == "string" and "pattern" in price  # money: exact strings
            assert tools["search_offers"].annotations is not None
            assert tools["search_offers"].annotations.readOnlyHint is True
            assert tools["cancel_order"].annotations is not None
            assert tools["cancel_order"].annotations.destructiveHint is True
            assert all(t.description for t in listed.tools)

            found = data(await call(session, "search_offers", gpu="3090", max_price="0.001"))
            assert found["total"] == 1
            (offer,) = found["offers"]
            assert offer["id"] == sid and offer["gpu"] == "NVIDIA GeForce RTX 3090"
            assert offer["on_demand_per_day"] == {"bitcoin": "0.0001"}
            assert offer["country"] == "CZ" and offer["gpu_count"] == 1
            cheap = data(await call(session, "search_offers", max_price="0.00001"))
            assert cheap["offers"] == []
            bad = await call(session, "search_offers", max_price=0.001)  # a float: refused
            assert bad.isError

            before = data(await call(session, "wallet"))
            (btc,) = [w for w in before["wallets"] if w["currency"] == "bitcoin"]
            assert btc["balance"] == "1" or Decimal(btc["balance"]) == 1
            assert before["key"]["scopes"] == list(SCOPES)  # an operator-issued token
            assert before["key"]["spend_limit_per_day"] is None

            wrong = refused(
                await call(session, "rent_server", server_id=sid, image=IMAGE, price="0.0002")
            )
            assert "price_changed" in wrong
            rented = data(
                await call(
                    session,
                    "rent_server",
                    server_id=sid,
                    image=IMAGE,
                    price="0.0001",
                    ports={"22": "tcp", "8888": "http"},
                    env={"HELLO": "world"},
                )
            )["order"]
            oid = rented["id"]
            assert rented["server_id"] == sid and rented["type"] == "on-demand"
            assert rented["price_per_day"] == "0.0001" and rented["currency"] == "bitcoin"
            assert rented["disk_gb"] == 50 and rented["storage_per_day"] == "0.01"

            status = data(await call(session, "order_status", order_id=oid))["order"]
            assert status["state"] == "running"
            assert status["connection"]["ssh"].startswith("ssh -p ")
            assert "22" in status["connection"]["tcp"]
            assert status["connection"]["simulated"] == SIMULATED  # the demo host's order
            everything = data(await call(session, "order_status"))["orders"]
            assert [o["id"] for o in everything] == [oid]

            burning = data(await call(session, "wallet"))
            (btc,) = [w for w in burning["wallets"] if w["currency"] == "bitcoin"]
            assert Decimal(btc["burn_per_day"]) > 0 and btc["runway_seconds"] > 0
            runway = Decimal(btc["runway_seconds"]) / 86400
            assert abs(Decimal(btc["runway_days"]) - runway) <= Decimal("0.005")

            logs = data(await call(session, "order_logs", order_id=oid, tail=10))
            assert logs["order_id"] == oid
            assert logs["lines"][0] == f"[simulated] order {oid}: container started from {IMAGE}"
            assert "Server listening on 0.0.0.0 port 22." in logs["lines"]

            stopped = data(await call(session, "stop_order", order_id=oid))["order"]
            assert stopped["state"] == "stopped" and stopped["stop_reason"] == "user"
            again = refused(await call(session, "stop_order", order_id=oid))
            assert "order_already_stopped" in again
            started = data(await call(session, "start_order", order_id=oid))["order"]
            assert started["state"] == "running"

            assert data(await call(session, "cancel_order", order_id=oid)) == {
                "order_id": oid,
                "cancelled": True,
            }
            assert data(await call(session, "order_status"))["orders"] == []
            gone = refused(await call(session, "cancel_order", order_id=oid))
            assert "order" in gone

            spot = refused(
                await call(session, "rent_server", server_id=sid, type="spot", image=IMAGE)
            )
            assert "needs `price`" in spot

    asyncio.run(flow())


def test_templates_and_spot(market: Market, world: tuple[str, int], session_for: Any) -> None:
    token, sid = world

    async def flow() -> None:
        async with session_for(market, token) as session:
            made = data(
                await call(
                    session,
                    "create_template",
                    name="notebook",
                    image=IMAGE,
                    ports={"8888": "http"},
                    env={"A": "1"},
                )
            )["template"]
            assert made["name"] == "notebook" and made["image"] == IMAGE
            listed = data(await call(session, "list_templates", q="NOTE"))["templates"]
            assert [t["id"] for t in listed] == [made["id"]]
            order = data(await call(session, "rent_server", server_id=sid, template_id=made["id"]))[
                "order"
            ]
            assert order["image"] == IMAGE and order["template_id"] == made["id"]
            data(await call(session, "cancel_order", order_id=order["id"]))

            low = refused(
                await call(
                    session,
                    "rent_server",
                    server_id=sid,
                    image=IMAGE,
                    type="spot",
                    price="0.000001",
                )
            )
            assert "too_low_price" in low and "min_price: 0.00001" in low
            bid = data(
                await call(
                    session, "rent_server", server_id=sid, image=IMAGE, type="spot",
                    price="0.000012",
                )
            )["order"]  # fmt: skip
            assert bid["type"] == "spot" and bid["price_per_day"] == "0.000012"
            data(await call(session, "cancel_order", order_id=bid["id"]))

            nothing = refused(await call(session, "rent_server", server_id=sid))
            assert "Give an `image` or a `template_id`" in nothing
            stranger = refused(await call(session, "order_status", order_id=999999))
            assert "Order 999999 is not one of yours" in stranger

    asyncio.run(flow())


def test_stdio_bad_key_is_one_clear_line(market: Market) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "openclore", "mcp"],
        env=_env(market, "not-a-token"),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1 and done.stdout == ""
    assert done.stderr.strip().startswith("error: invalid API token"), done.stderr


# ----------------------------------------------------------------------------- over HTTP


def test_streamable_http(market: Market, world: tuple[str, int], http_mcp: str) -> None:
    _, sid = world

    hello = {"jsonrpc": "2.0", "id": 1, "method": "ping"}
    for headers in ({}, {"Authorization": "Bearer wrong"}):
        answer = httpx.post(http_mcp, json=hello, headers=headers, timeout=10)
        assert answer.status_code == 401 and answer.headers["www-authenticate"] == "Bearer"

    async def flow() -> None:
        bearer = {"Authorization": f"Bearer {HTTP_TOKEN}"}
        async with (
            streamablehttp_client(http_mcp, headers=bearer) as (read, write, _),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            names = {t.name for t in (await session.list_tools()).tools}
            assert names == set(TOOL_SCOPES)
            (offer,) = data(await call(session, "search_offers"))["offers"]
            assert offer["id"] == sid
            order = data(
                await call(session, "rent_server", server_id=sid, image=IMAGE, wait_seconds=30)
            )["order"]
            assert order["state"] == "running"
            assert order["connection"]["ssh"].startswith("ssh -p ")  # waited for it
            status = data(await call(session, "order_status", order_id=order["id"]))["order"]
            assert status["connection"] == order["connection"]
            data(await call(session, "cancel_order", order_id=order["id"]))
            wallets = data(await call(session, "wallet"))["wallets"]
            assert any(w["currency"] == "bitcoin" for w in wallets)

    asyncio.run(flow())


# ----------------------------------------------------------------------------- scopes


def test_scopes_choose_the_tools() -> None:
    assert allowed_tools(frozenset({"read"})) == sorted(READ_TOOLS, key=list(TOOL_SCOPES).index)
    # create_template needs rent, as the API's create_template does
    assert set(allowed_tools(frozenset({"read", "rent"}))) == set(TOOL_SCOPES)
    assert "create_template" not in allowed_tools(frozenset({"read", "account"}))
    assert allowed_tools(frozenset(SCOPES)) == list(TOOL_SCOPES)
    assert allowed_tools(frozenset({"host", "money"})) == []
    assert set(TOOL_SCOPES.values()) <= set(SCOPES)


def _key(market: Market, token: str, scopes: list[str], **options: Any) -> str:
    """A new API key of ``token``'s account; returns its secret."""
    with Client(token, base_url=market.url, rate_limit=False) as client:
        return client.create_api_key(scopes, name="agent", **options).secret


def test_a_read_only_key_is_offered_only_the_read_tools(
    market: Market, world: tuple[str, int], session_for: Any
) -> None:
    token, sid = world
    reader = _key(market, token, ["read"])

    async def flow() -> None:
        async with session_for(market, reader) as session:
            assert {t.name for t in (await session.list_tools()).tools} == READ_TOOLS
            (offer,) = data(await call(session, "search_offers"))["offers"]
            assert offer["id"] == sid
            key = data(await call(session, "wallet"))["key"]
            assert key == {"scopes": ["read"], "name": "agent", "spend_limit_per_day": None}
            assert data(await call(session, "order_status")) == {"orders": []}
            # a tool it is not offered is not there to call
            assert "rent_server" in refused(
                await call(session, "rent_server", server_id=sid, image=IMAGE)
            )

    asyncio.run(flow())
    # the market itself refuses the key what it may not do
    with Client(reader, base_url=market.url, rate_limit=False) as client:
        assert client.my_orders() == []


def test_a_spend_limit_is_the_agents_budget(
    market: Market, world: tuple[str, int], session_for: Any
) -> None:
    token, sid = world
    small = _key(market, token, ["read", "rent"], spend_limit={"bitcoin": "0.00000113"})
    agent = _key(market, token, ["read", "rent"], spend_limit={"bitcoin": "0.001"})

    async def flow() -> None:
        async with session_for(market, small) as session:
            names = {t.name for t in (await session.list_tools()).tools}
            assert names == set(TOOL_SCOPES)
            key = data(await call(session, "wallet"))["key"]
            assert key == {
                "scopes": ["read", "rent"],
                "name": "agent",
                "spend_limit_per_day": {"bitcoin": "0.00000113"},
                "spent_today": {"bitcoin": "0"},
                "left_today": {"bitcoin": "0.00000113"},
            }
            # 0.0001 a day is more than the key may spend in a day
            over = refused(await call(session, "rent_server", server_id=sid, image=IMAGE))
            assert "spend_limit_exceeded" in over and "limit: 0.00000113" in over
        async with session_for(market, agent) as session:
            order = data(await call(session, "rent_server", server_id=sid, image=IMAGE))["order"]
            market.advance(8640)  # a tenth of a day at 0.0001 a day
            key = data(await call(session, "wallet"))["key"]
            spent = Decimal(key["spent_today"]["bitcoin"])
            assert Decimal("0") < spent <= Decimal("0.00001")
            assert Decimal(key["left_today"]["bitcoin"]) == Decimal("0.001") - spent
            data(await call(session, "cancel_order", order_id=order["id"]))

    asyncio.run(flow())


def test_the_server_reads_the_key_it_runs_with(market: Market) -> None:
    token = market.user("agent")
    secret = _key(market, token, ["read"], spend_limit={"bitcoin": "10.5"})

    async def info(key: str) -> KeyInfo:
        async with AsyncClient(key, base_url=market.url, rate_limit=False) as client:
            return await key_info(client)

    operator_issued = asyncio.run(info(token))
    assert operator_issued.scopes == frozenset(SCOPES) and operator_issued.reported
    assert operator_issued.spend_limit is None
    limited = asyncio.run(info(secret))
    assert limited.scopes == {"read"} and limited.name == "agent"
    assert limited.spend_limit == {"bitcoin": Decimal("10.5")}
    with pytest.raises(InvalidToken):
        asyncio.run(info("not-a-token"))


def test_a_market_without_key_scopes_gives_every_scope() -> None:
    """A market without ``GET /v1/api_key`` (code 4) is taken to give the key every scope once a
    read shows the key is valid there."""
    valid = True

    def answer(request: httpx.Request) -> httpx.Response:
        if request.url.path == "/v1/api_key":
            body: dict[str, Any] = {"code": 4}
        else:
            body = {"code": 0, "wallets": []} if valid else {"code": 3}
        return httpx.Response(200, json=body)

    async def info() -> KeyInfo:
        transport = httpx.MockTransport(answer)
        async with AsyncClient(
            "k", base_url="http://market", transport=transport, rate_limit=False
        ) as client:
            return await key_info(client)

    key = asyncio.run(info())
    assert key == KeyInfo.unreported() and key.scopes == frozenset(SCOPES)
    assert key.budget(None) == {
        "scopes": list(SCOPES),
        "spend_limit_per_day": None,
        "note": "the market does not report key scopes; every tool is offered",
    }
    valid = False
    with pytest.raises(InvalidToken):
        asyncio.run(info())


def test_money_is_exact_decimal_strings() -> None:
    assert money(Decimal("6.944444444444445e-9")) == "0.000000006944444444444445"
    assert money(Decimal("1E-8")) == "0.00000001"
    assert money(Decimal("10.5")) == "10.5"
    assert plain({"a": [Decimal("0.1")], "b": 1}) == {"a": ["0.1"], "b": 1}


def test_refusals_read_as_one_sentence_the_agent_can_act_on() -> None:
    assert explain(error_for({"code": 3, "error": "missing_scope", "scope": "rent"})) == (
        "This API key lacks the scope this needs: rent (missing_scope)."
    )
    assert "invalid, revoked or expired" in explain(error_for({"code": 3}))
    too_low = explain(error_for({"code": 6, "error": "too_low_price", "min_price": 0.5}))
    assert too_low.endswith("(too_low_price; min_price: 0.5)")
    unknown = explain(error_for({"code": 6, "error": "something_new"}))
    assert unknown == "The market refused this. (something_new)"
    down = explain(CloreConnectionError("connection refused", sent=False))
    assert down == "The market did not answer: connection refused"
    assert explain(error_for({"code": 2, "error": "bad id"})) == "bad id"


def test_an_orders_connection_info() -> None:
    base = {"id": 7, "si": 3, "currency": "bitcoin", "price": "0.5", "mrl": 3600, "ct": 0}
    waiting = Order.model_validate({**base, "running": False})
    assert order_view(waiting)["connection"] == {}
    published = Order.model_validate(
        {
            **base,
            "running": True,
            "pub_cluster": ["n1.example.net"],
            "tcp_ports": ["22:10022", "6006:10023"],
            "http_port": "8888",
            "http_pub": "https://o7-8888.example.net",
        }
    )
    view = order_view(published)
    assert view["connection"] == {
        "ssh": "ssh -p 10022 root@n1.example.net",
        "tcp": {"22": "n1.example.net:10022", "6006": "n1.example.net:10023"},
        "http": {"port": "8888", "url": "https://o7-8888.example.net"},
    }
    assert view["price_per_day"] == "0.5" and view["state"] == "running"
    demo = order_view(published.model_copy(update={"simulated": True}))["connection"]
    assert demo["simulated"] == SIMULATED and "nothing answers" in demo["simulated"]
    assert demo["ssh"] == "ssh -p 10022 root@n1.example.net"


def test_the_command_says_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    from typer.testing import CliRunner

    from openclore.cli import mcp_command
    from openclore.cli.main import app

    runner = CliRunner()
    bad = runner.invoke(app, ["mcp", "--transport", "sse"], env={"OPENCLORE_API_KEY": "k"})
    assert bad.exit_code == 2 and "stdio or http" in bad.stderr
    real = mcp_command.importlib.util.find_spec
    monkeypatch.setattr(
        mcp_command.importlib.util,
        "find_spec",
        lambda name, *a: None if name == "mcp" else real(name, *a),
    )
    missing = runner.invoke(app, ["mcp"], env={"OPENCLORE_API_KEY": "k"})
    assert missing.exit_code == 1
    assert "pip install 'openclore[mcp]'" in missing.stderr
    monkeypatch.undo()
    nokey = runner.invoke(
        app, ["mcp"], env={"OPENCLORE_API_KEY": None, "OPENCLORE_CONFIG": os.devnull}
    )
    assert nokey.exit_code == 1 and "no API key" in nokey.stderr

"""order_logs (extension): an order's container output, fetched from its host's agent through
whichever process holds the agent's connection; demo servers answer with simulated output."""

from __future__ import annotations

from pathlib import Path

import pytest

from openclore.client import Client

from agent_support import host_server, start_agent, wait_order_state
from support import Market, ok, order_body


def test_the_owner_reads_the_logs_of_a_running_order_from_its_agent(
    market: Market, tmp_path: Path
) -> None:
    host = market.user()
    token = market.user(bitcoin="0.01")
    renter = market.client(token)
    stranger = market.client(market.user(bitcoin="0.01"))
    sid, init = host_server(market, host)
    agent = start_agent(market.url, tmp_path / "agent", init_token=init)
    try:
        oid = ok(
            renter.post("/v1/create_order", json=order_body(sid, ports={"22": "tcp", "80": "http"}))
        )["order_id"]
        wait_order_state(renter, oid, "running")
        lines = ok(renter.get("/v1/order_logs", params={"id": oid, "tail": 50}))["logs"]
        assert lines[0].startswith("[simulated] container ") and "Server listening" in lines[1]
        assert len(ok(renter.get("/v1/order_logs", params={"id": oid, "tail": 1}))["logs"]) == 1
        # only the owner; bad input is a clear error
        foreign = stranger.get("/v1/order_logs", params={"id": oid}).json()
        assert foreign == {"error": "order_dont_exist", "code": 6}
        for params, text in (
            ({"id": oid, "tail": 0}, "tail"),
            ({"id": oid, "tail": 5000}, "tail"),
            ({"id": "x"}, "id"),
            ({}, "id"),
        ):
            body = renter.get("/v1/order_logs", params=params).json()
            assert body["code"] == 2 and text in body["error"]
        # the agent is gone: the server goes offline, and the answer says so
        agent.stop()
        market.clock.advance(market.settings.agent_timeout + 1)
        from openclore.engine.ticker import tick

        tick(market.db, market.now(), market.settings.agent_timeout)
        offline = renter.get("/v1/order_logs", params={"id": oid}).json()
        assert offline == {"error": "server-offline", "code": 6}
        ok(renter.post("/v1/cancel_order", json={"id": oid}))
        ended = renter.get("/v1/order_logs", params={"id": oid}).json()
        assert ended == {"error": "order_not_active", "code": 6}
    finally:
        agent.stop()


def test_a_demo_server_answers_with_simulated_output(market: Market, tmp_path: Path) -> None:
    host = market.user()
    renter = market.client(market.user(bitcoin="0.01"))
    sid = market.server(host)
    oid = ok(renter.post("/v1/create_order", json=order_body(sid, ports={"22": "tcp"})))["order_id"]
    market.clock.advance(180)
    lines = ok(renter.get("/v1/order_logs", params={"id": oid}))["logs"]
    assert lines[0] == f"[simulated] order {oid}: container started from {order_body(sid)['image']}"
    assert lines[-1].startswith("[simulated] up 3 min")
    (order,) = ok(renter.get("/v1/my_orders"))["orders"]
    assert order["simulated"] is True
    # the SDK's wait: a demo order is ready once it runs (nothing listens on its ports)
    sdk = Client(str(renter.headers["auth"]), base_url=market.url, rate_limit=False)
    assert sdk.wait_for_order(oid, timeout=5).simulated is True
    with pytest.raises(LookupError):
        sdk.wait_for_order(oid + 100, timeout=5)
    with pytest.raises(TimeoutError):  # an SSH port nothing answers on, on a real host
        other = market.client(market.user(bitcoin="0.01"))
        sid2, init = host_server(market, market.user(), "real")
        agent = start_agent(market.url, tmp_path / "a", init_token=init)
        try:
            oid2 = ok(other.post("/v1/create_order", json=order_body(sid2, ports={"22": "tcp"})))[
                "order_id"
            ]
            wait_order_state(other, oid2, "running")
            Client(
                str(other.headers["auth"]), base_url=market.url, rate_limit=False
            ).wait_for_order(oid2, timeout=1.5, interval=0.2)
        finally:
            agent.stop()

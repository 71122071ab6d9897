"""Bad input, table-driven: the right Clore code and a clear message, never a 500, no writes."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import func, select

from openclore.store.schema import accounts, orders, server_prices, servers, transfers

from support import Market, ok, order_body, spot_body

SID = "<sid>"  # replaced by the test's server id

CREATE_ORDER_CASES: list[tuple[str, dict[str, Any], int, str]] = [
    ("no currency", {"currency": None}, 2, "currency"),
    ("numeric currency", {"currency": 1}, 2, "currency"),
    ("no image", {"image": None}, 2, "image"),
    ("empty image", {"image": ""}, 2, "image"),
    ("image with spaces", {"image": "ubuntu latest"}, 2, "image"),
    ("image too long", {"image": "a" * 600}, 2, "image"),
    ("server as string", {"renting_server": "6"}, 2, "renting_server"),
    ("server as float", {"renting_server": 6.5}, 2, "renting_server"),
    ("server as bool", {"renting_server": True}, 2, "renting_server"),
    ("negative server", {"renting_server": -1}, 2, "renting_server"),
    ("huge server id", {"renting_server": 2**70}, 2, "renting_server"),
    ("unknown type", {"type": "rent"}, 2, "type"),
    ("no type", {"type": None}, 2, "type"),
    ("spot without price", {"type": "spot"}, 2, "spotprice"),
    ("negative spot price", {"type": "spot", "spotprice": -1}, 2, "spotprice"),
    ("zero spot price", {"type": "spot", "spotprice": 0}, 2, "spotprice"),
    ("absurd spot price", {"type": "spot", "spotprice": 1e300}, 2, "spotprice"),
    ("over a million a day", {"type": "spot", "spotprice": 1000001}, 2, "spotprice"),
    ("six ports", {"ports": {str(p): "tcp" for p in range(22, 28)}}, 2, "at most 5"),
    ("two http ports", {"ports": {"80": "http", "8888": "http"}}, 2, "one http"),
    ("udp port", {"ports": {"22": "udp"}}, 2, "protocol"),
    ("port 0", {"ports": {"0": "tcp"}}, 2, "port"),
    ("port 70000", {"ports": {"70000": "tcp"}}, 2, "port"),
    ("port name", {"ports": {"ssh": "tcp"}}, 2, "port"),
    ("ports as list", {"ports": ["22"]}, 2, "ports"),
    ("env as list", {"env": ["A=1"]}, 2, "env"),
    ("env number value", {"env": {"A": 1}}, 2, "env"),
    ("env long name", {"env": {"A" * 129: "x"}}, 2, "128"),
    ("env long value", {"env": {"A": "x" * 1537}}, 2, "1536"),
    ("env too big", {"env": {f"V{i}": "x" * 1000 for i in range(12)}}, 2, "12000"),
    ("env name with =", {"env": {"A=B": "x"}}, 2, "env"),
    ("jupyter token too long", {"jupyter_token": "a" * 33}, 2, "jupyter_token"),
    ("jupyter token bad chars", {"jupyter_token": "tok;rm -rf"}, 2, "jupyter_token"),
    ("ssh password too long", {"ssh_password": "a" * 33}, 2, "ssh_password"),
    ("ssh password quote", {"ssh_password": "pa'ss"}, 2, "ssh_password"),
    ("ssh key too long", {"ssh_key": "a" * 3073}, 2, "ssh_key"),
    ("ssh key shell chars", {"ssh_key": "ssh-ed25519 AAAA$(reboot)"}, 2, "ssh_key"),
    ("command not string", {"command": ["ls"]}, 2, "command"),
    ("command huge", {"command": "x" * 20000}, 2, "command"),
    ("autossh not bool", {"autossh_entrypoint": "yes"}, 2, "autossh_entrypoint"),
    ("required_price text", {"required_price": "cheap"}, 2, "required_price"),
    ("unknown server", {"renting_server": 987654}, 6, "server-dont-exist"),
]


@pytest.mark.parametrize(
    ("case", "change", "code", "message"),
    CREATE_ORDER_CASES,
    ids=[c[0] for c in CREATE_ORDER_CASES],
)
def test_create_order_bad_input(
    market: Market, case: str, change: dict[str, Any], code: int, message: str
) -> None:
    sid = market.server(market.user())
    token = market.user(bitcoin="0.01")
    body = order_body(sid)
    for key, value in change.items():
        if value is None:
            body.pop(key, None)
        else:
            body[key] = value
    before = _counts(market)
    r = market.client(token).post("/v1/create_order", json=body)
    assert r.status_code == 200
    answer = r.json()
    assert answer["code"] == code, answer
    assert message in answer["error"], answer
    assert _counts(market) == before  # nothing written


def test_starred_fields_accept_the_documented_alphabet(market: Market) -> None:
    sid = market.server(market.user())
    c = market.client(market.user(bitcoin="0.01"))
    body = order_body(
        sid,
        jupyter_token="aZ09 -=.@+/",
        ssh_password="Hpcj08ZaOpCbTmn1Eu",
        ssh_key="ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIJ+x/y=z user@host",
        env={"A" * 128: "x" * 1536},
    )
    ok(c.post("/v1/create_order", json=body))


SIMPLE_CASES: list[tuple[str, str, Any, int]] = [
    ("cancel_order", "/v1/cancel_order", {}, 2),
    ("cancel_order", "/v1/cancel_order", {"id": "1"}, 2),
    ("cancel_order", "/v1/cancel_order", {"id": 1.5}, 2),
    ("cancel_order", "/v1/cancel_order", {"id": None}, 2),
    ("cancel_order", "/v1/cancel_order", {"id": 1, "issue": 5}, 2),
    ("cancel_order", "/v1/cancel_order", {"id": 2**40}, 2),
    ("set_spot_price", "/v1/set_spot_price", {}, 2),
    ("set_spot_price", "/v1/set_spot_price", {"order_id": 1}, 2),
    ("set_spot_price", "/v1/set_spot_price", {"order_id": 1, "desired_price": "x"}, 2),
    ("set_spot_price", "/v1/set_spot_price", {"order_id": 1, "desired_price": -1}, 2),
    ("set_spot_price", "/v1/set_spot_price", {"order_id": 1, "desired_price": 0}, 2),
    ("set_spot_price", "/v1/set_spot_price", {"order_id": [1], "desired_price": 1}, 2),
    ("set_spot_price", "/v1/set_spot_price", {"order_id": 1, "desired_price": 2e6}, 2),
    ("server_config", "/v1/server_config", {"server_name": 7}, 2),
    ("server_config", "/v1/server_config", {"server_name": ""}, 2),
    ("server_config", "/v1/server_config", {"server_name": "x" * 500}, 2),
    ("add_server", "/v1/add_server", {"name": None}, 2),
    ("add_server", "/v1/add_server", {"name": "x" * 200}, 2),
    ("sandbox advance", "/sandbox/advance_time", {"seconds": -5}, 2),
    ("sandbox advance", "/sandbox/advance_time", {"seconds": "1d"}, 2),
    ("sandbox deposit", "/sandbox/deposit", {"currency": "bitcoin", "amount": -1}, 2),
    ("sandbox deposit", "/sandbox/deposit", {"currency": "bitcoin"}, 2),
    ("sandbox deposit", "/sandbox/deposit", {"currency": "doge", "amount": 1}, 6),
]


@pytest.mark.parametrize(
    ("name", "path", "body", "code"),
    SIMPLE_CASES,
    ids=[f"{c[0]}-{i}" for i, c in enumerate(SIMPLE_CASES)],
)
def test_endpoint_bad_input(market: Market, name: str, path: str, body: Any, code: int) -> None:
    token = market.user(bitcoin="0.01")
    before = _counts(market)
    r = market.client(token).post(path, json=body)
    assert r.status_code == 200
    answer = r.json()
    assert answer["code"] == code, answer
    assert answer.get("error"), answer
    assert _counts(market) == before


def test_other_users_ids_are_not_yours(market: Market) -> None:
    host = market.user()
    sid = market.server(host, "rig")
    owner = market.client(market.user(bitcoin="0.01"))
    oid = ok(owner.post("/v1/create_order", json=spot_body(sid, "0.000002")))["order_id"]
    thief = market.client(market.user(bitcoin="0.01"))
    assert thief.post("/v1/cancel_order", json={"id": oid}).json()["error"] == (
        "you_dont_own_this_order"
    )
    assert (
        thief.post("/v1/set_spot_price", json={"order_id": oid, "desired_price": 1}).json()["error"]
        == "order_dont_exist"
    )
    assert thief.post("/v1/server_config", json={"server_name": "rig"}).json()["error"] == (
        "server_dont_exist"
    )
    assert (
        thief.post("/v1/set_server_settings", json={"name": "rig", "mrl": 5}).json()["error"]
        == "server_dont_exist"
    )
    assert all(
        o["id"] != oid for o in ok(thief.get("/v1/my_orders?return_completed=true"))["orders"]
    )
    (offer,) = ok(thief.get(f"/v1/spot_marketplace?market={sid}"))["market"]["offers"]
    assert offer["my"] is False


def test_sandbox_is_refused_when_off(market: Market) -> None:
    market.reconfigure(sandbox=False)
    c = market.client(market.user())
    for path in ("/sandbox/advance_time", "/sandbox/deposit"):
        body = c.post(path, json={"seconds": 1}).json()
        assert body["code"] == 4 and "sandbox" in body["error"]


def _counts(market: Market) -> tuple[int, ...]:
    with market.db.read() as conn:
        counts = [
            int(conn.execute(select(func.count()).select_from(t)).scalar_one())
            for t in (orders, transfers, servers, server_prices)
        ]
        weighted = select(func.sum(accounts.c.balance * accounts.c.id))
        return (*counts, int(conn.execute(weighted).scalar_one()))

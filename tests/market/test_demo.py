"""SPEC §6: the demo world replays every seed example, in order, at the documented rate limits."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from openclore.market.demo import RENTER_HOST_TOKEN, RENTER_TOKEN, seed

from support import Market, free_port

JSON = {"Content-type": "application/json"}

SET_SERVER_SETTINGS = b"""{
    "name": "Jan Vykydal",
    "availability":true,
    "mrl":96,
    "on_demand":0.0001,
    "spot":0.00000113
}"""
CREATE_SPOT = b"""
{
    "currency":"bitcoin",
    "image":"cloreai/ubuntu20.04-jupyter",
    "renting_server":6,
    "type":"spot",
    "spotprice":0.000001,
    "ports":{
        "22":"tcp",
        "8888":"http"
    },
    "env":{
        "VARIABLE_NAME":"VARIABLE_VALUE",
    },
    "jupyter_token":"hoZluOjbCOQ5D5yH7R",
    "ssh_password":"Hpcj08ZaOpCbTmn1Eu",
    "command":"#!/bin/sh\\napt update -y && apt install htop"
}"""
CREATE_ON_DEMAND = CREATE_SPOT.replace(
    b'"type":"spot",\n    "spotprice":0.000001,', '"type":"按需",'.encode()
)


class Paced:
    """A client that spaces its calls like the clore-ai SDK: 1 s apart, create_order 5 s."""

    def __init__(self, url: str, token: str) -> None:
        self.client = httpx.Client(base_url=url, headers={"auth": token}, timeout=30)
        self.last = 0.0
        self.last_create = 0.0

    def send(self, method: str, path: str, body: bytes | None = None) -> dict[str, object]:
        wait = max(self.last + 1.0 - time.monotonic(), 0.0)
        if path.endswith("create_order"):
            wait = max(wait, self.last_create + 5.0 - time.monotonic())
        time.sleep(wait)
        self.last = time.monotonic()
        if path.endswith("create_order"):
            self.last_create = self.last
        r = self.client.request(method, path, content=body, headers=JSON if body else None)
        assert r.status_code == 200, r.text
        data: dict[str, object] = r.json()
        return data


@pytest.mark.slow
@pytest.mark.timing
def test_every_seed_example_in_order(market: Market) -> None:
    with market.db.write() as conn:
        seed(conn, market.settings, market.now())
    market.reconfigure(rate_limit_interval=1.0, create_order_interval=5.0)
    jan = Paced(market.url, RENTER_HOST_TOKEN)
    renter = Paced(market.url, RENTER_TOKEN)

    wallets = jan.send("GET", "/v1/wallets")
    assert wallets["code"] == 0
    assert wallets["wallets"][0] == {  # type: ignore[index]
        "name": "bitcoin",
        "deposit": "tb1q6erw7v02t7hakgmlcl4wfnlykzqj05alndruwr",
        "balance": 0.00153176,
        "withdrawal_fee": 0.0001,
        # extensions: offer 39 runs at 0.0000042 a day
        "burn_per_day": 4.2e-06,
        "runway_seconds": 153176 * 86400 // 420,
    }

    servers = jan.send("GET", "/v1/my_servers")
    by_name = {s["name"]: s for s in servers["servers"]}  # type: ignore[attr-defined]
    assert by_name["Michael"]["connected"] is False
    assert by_name["Michael"]["visibility"] == "hidden"
    assert by_name["Michael"]["init_token"] == "qnwVIMsZPjUWS7jw6gAbTOeoGQNgTH9XVxJaiCEbG0OlmfjF"
    jan_v = by_name["Jan Vykydal"]
    assert (jan_v["connected"], jan_v["visibility"], jan_v["online"]) == (True, "public", False)
    assert jan_v["pricing"]["bitcoin"] == 0.00010337
    assert jan_v["min_spot_pricing"]["bitcoin"] == 0.00005168
    assert jan_v["specs"]["gpu"] == "1x GeForce GTX 1080 Ti"
    assert servers["limit"] == 16

    config = jan.send("GET", "/v1/server_config", b'{\n    "server_name":"Jan Vykydal"\n}')
    assert config["creation_completed"] is True
    cfg = config["config"]
    assert (cfg["id"], cfg["mrl"], cfg["rental_status"], cfg["initialized"]) == (4, 72, 0, True)  # type: ignore[index]
    assert cfg["background_job"] == {  # type: ignore[index]
        "times_updated": 1,
        "image": "cloreai/ubuntu20.04-jupyter",
        "command": "",
        "env": {},  # the seed shows []: an object since SPEC §7 (docs/decisions.md)
    }

    market_body = jan.send("GET", "/v1/marketplace")
    six = next(s for s in market_body["servers"] if s["id"] == 6)  # type: ignore[attr-defined]
    assert (six["owner"], six["mrl"], six["rented"]) == (4, 73, False)
    assert six["price"] == {
        "on_demand": {"bitcoin": 0.00001},
        "spot": {"bitcoin": 0.000001},
        # the demo's exchange rates (60000 USD per bitcoin) give the USD prices of live Clore
        "usd": {
            "on_demand_usd": 0.6,
            "on_demand_btc": 0.6,
            "spot_usd": 0.06,
            "spot": 0.06,
            "spot_btc": 0.06,
        },
    }
    assert six["cuda_version"] == "12.2" and six["online"] is True
    assert six["specs"]["net"]["cc"] == "CZ"
    assert market_body["my_servers"] == [1, 2, 4]
    assert len(market_body["servers"]) > 30  # type: ignore[arg-type]

    mine = jan.send("GET", "/v1/my_orders?return_completed=true")
    orders = {o["id"]: o for o in mine["orders"]}  # type: ignore[attr-defined]
    assert orders[38]["fee"] == 5 and orders[38]["creation_fee"] == 3e-7
    assert orders[38]["mrl"] == 262800 and orders[38]["ct"] == 1667401396
    assert orders[38]["pub_cluster"] == ["n1.c1.clorecloud.net", "n2.c1.clorecloud.net"]
    assert orders[38]["tcp_ports"] == ["22:10000"] and orders[38]["http_port"] == "8888"
    assert orders[36]["fee"] == 2.5 and orders[36]["spot"] is True
    assert orders[36]["expired"] is True and orders[36]["tcp_ports"] == []
    assert "expired" not in orders[39]

    spot = jan.send("GET", "/v1/spot_marketplace?market=6")
    assert spot["exists"] is True
    assert spot["market"]["offers"] == [  # type: ignore[index]
        {"offer_id": 39, "bid": 0.0000042, "active": True, "my": True, "currency": "bitcoin"}
    ]
    assert spot["market"]["server"] == {  # type: ignore[index]
        "min_pricing": {"bitcoin": 0.000001},
        "mrl": 262800,
        "visibility": "public",
        "online": True,
    }

    assert jan.send("POST", "/v1/set_server_settings", SET_SERVER_SETTINGS) == {"code": 0}
    lower = b'{\n    "order_id":39,\n    "desired_price":%s\n}'
    assert jan.send("POST", "/v1/set_spot_price", lower % b"0.00000200") == {
        "error": "exceeded_max_step",
        "max_step": 0.0000032,
        "code": 6,
    }
    assert jan.send("POST", "/v1/set_spot_price", lower % b"0.00000320") == {"code": 0}
    market.clock.advance(87)
    assert jan.send("POST", "/v1/set_spot_price", lower % b"0.00000220") == {
        "error": "can_lower_every_600_seconds",
        "time_to_lowering": 513,
        "code": 6,
    }
    cancel = '{\n    "id":39,\n    "issue":"GPU #1 过热并降频"\n}'.encode()
    assert jan.send("POST", "/v1/cancel_order", cancel) == {"code": 0}

    spot_order = renter.send("POST", "/v1/create_order", CREATE_SPOT)
    assert spot_order["code"] == 0
    on_demand = renter.send("POST", "/v1/create_order", CREATE_ON_DEMAND)
    assert on_demand["code"] == 0
    assert on_demand["order_id"] == 41 and spot_order["order_id"] == 40
    assert on_demand["order"]["id"] == 41  # type: ignore[index]


@pytest.mark.timing
def test_serve_demo_command_starts_a_fresh_world(tmp_path: Path) -> None:
    port = free_port()
    env = {**os.environ, "OPENCLORE_TICK_INTERVAL": "1"}
    env.pop("OPENCLORE_DATABASE_URL", None)

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [sys.executable, "-m", "openclore", "serve", "--demo", "--port", str(port)],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )

    def wallets() -> dict[str, object]:
        deadline = time.time() + 30
        while True:
            try:
                r = httpx.get(
                    f"http://127.0.0.1:{port}/v1/wallets",
                    headers={"auth": RENTER_TOKEN},
                    timeout=2,
                )
                data: dict[str, object] = r.json()
                return data
            except httpx.HTTPError:
                if time.time() > deadline:
                    raise
                time.sleep(0.2)

    proc = start()
    try:
        first = wallets()
        assert first["code"] == 0
        # change something, then restart: the demo world comes back identical
        time.sleep(1.05)
        deposit = httpx.post(
            f"http://127.0.0.1:{port}/sandbox/deposit",
            headers={"auth": RENTER_TOKEN},
            json={"currency": "bitcoin", "amount": 1},
            timeout=5,
        ).json()
        assert deposit == {"code": 0}
    finally:
        proc.terminate()
        out = proc.communicate(timeout=15)[0].decode()
    assert RENTER_HOST_TOKEN in out and RENTER_TOKEN in out
    assert f"curl -H 'auth: {RENTER_HOST_TOKEN}'" in out.replace("\n", " ")
    assert "Deprecation" not in out  # no library's warnings on every start
    # nothing but its database is left in the folder it ran in (no lock files beside it)
    assert {p.name for p in tmp_path.iterdir()} <= {
        "openclore-demo.sqlite",
        "openclore-demo.sqlite-wal",
        "openclore-demo.sqlite-shm",
    }
    time.sleep(1.1)  # the rate limit of the previous world's token does not carry over anyway
    proc = start()
    try:
        again = wallets()
    finally:
        proc.terminate()
        proc.communicate(timeout=15)
    assert again == first

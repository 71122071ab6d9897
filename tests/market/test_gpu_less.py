"""Issue #26: a server whose agent reports no GPU is left out of every renter's listing
(``marketplace`` with or without a query, Vast's offers, GigaSPOT, standing orders), its host is
told why (``my_servers`` ``not_listed``), and it stays rentable by id (docs/decisions.md)."""

from __future__ import annotations

import pytest
from sqlalchemy import select, update

from openclore.domain.specs import gpu_count, not_listed_reason
from openclore.domain.usd import rate_units
from openclore.market.demo import seed
from openclore.market.rates import set_rates
from openclore.market.servers import prices_of
from openclore.store.schema import servers

from support import Market, ok, order_body

NO_GPU_SPECS = {"cpu": "AMD EPYC 7B13", "cpus": "2/2", "ram": 8, "gpu": "0x", "gpuram": 0}


@pytest.mark.parametrize(
    ("gpu_array", "specs", "count"),
    [
        (["A100", "A100"], {"gpu": "2x A100"}, 2),
        (["A100"], None, 1),
        ([], {"gpu": "4x RTX 4090"}, 4),  # stored before gpu_array, or an agent that sent none
        (None, {"gpu": "1x A100"}, 1),
        ([], {"gpu": "0x", "gpuram": 0}, 0),  # what the agent reports on a machine without one
        (None, None, 0),
        ([], {"gpu": "RTX 4090"}, 0),  # not "Nx NAME": no count
        (["\x1b[31m"], {"gpu": "1x \x1b[2J"}, 0),  # text that may not be shown counts for nothing
        ("A100", {"gpu": 3}, 0),
    ],
)
def test_gpu_count_and_the_reason(gpu_array: object, specs: object, count: int) -> None:
    assert gpu_count(gpu_array, specs) == count
    assert not_listed_reason(gpu_array, specs) == (None if count else "no_gpu")


def test_a_server_without_a_gpu_is_not_listed_but_stays_rentable_by_id(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="0.01")
    with_gpu = market.server(host, "gpu")
    without = market.server(host, "cpu-only", specs=NO_GPU_SPECS, gpu_array=[])
    with market.db.write() as conn:
        set_rates(conn, {"bitcoin": rate_units("60000")}, market.settings, market.now())

    for caller in (market.client(), market.client(renter), market.client(host)):
        listing = ok(caller.get("/v1/marketplace"))
        assert [s["id"] for s in listing["servers"]] == [with_gpu]
        queried = ok(caller.get("/v1/marketplace", params={"min_gpus": "0", "sort": "gpus"}))
        assert [s["id"] for s in queried["servers"]] == [with_gpu]
    # the host's own ids are the host's servers, listed or not (as for hidden ones)
    assert ok(market.client(host).get("/v1/marketplace"))["my_servers"] == [with_gpu, without]

    vast = market.client()
    vast.headers["Authorization"] = f"Bearer {renter}"
    offers = vast.post("/api/v0/bundles/", json={}).json()["offers"]
    assert [o["machine_id"] for o in offers] == [with_gpu]
    gigaspot = ok(market.client(renter).get("/v1/get_gigaspot"))["snapshot"]
    assert str(without) not in gigaspot and str(with_gpu) in gigaspot

    mine = {s["id"]: s for s in ok(market.client(host).get("/v1/my_servers"))["servers"]}
    assert mine[without]["not_listed"] == "no_gpu"
    assert mine[without]["specs"]["gpu"] == "0x"
    assert "not_listed" not in mine[with_gpu]
    # an operator still sees it (and a host's settings page finds it by name)
    config = ok(market.client(host).get("/v1/server_config", params={"server_name": "cpu-only"}))
    assert config["config"]["id"] == without and config["config"]["online"] is True

    # SPEC §4 names no error for it: whoever knows the id may still rent it whole
    order = ok(market.client(renter).post("/v1/create_order", json=order_body(without)))
    mine_orders = ok(market.client(renter).get("/v1/my_orders"))["orders"]
    assert [o["si"] for o in mine_orders] == [without] and order["order_id"] == mine_orders[0]["id"]
    # ... but not through Vast's offers, which name only what is offered
    refused = vast.put(f"/api/v0/asks/{without * 100}/", json={"image": "ubuntu"})
    assert refused.status_code == 404 and refused.json()["error"] == "server-dont-exist"

    # the agent reports a GPU (a card was fitted): listed at once, the reason gone
    with market.db.write() as conn:
        conn.execute(
            update(servers)
            .where(servers.c.id == without)
            .values(specs={**NO_GPU_SPECS, "gpu": "1x NVIDIA L4", "gpuram": 24}, gpu_array=["L4"])
        )
    listed = ok(market.client().get("/v1/marketplace"))["servers"]
    assert [s["id"] for s in listed] == [with_gpu, without]
    assert next(s for s in listed if s["id"] == without)["rented"] is True
    mine = {s["id"]: s for s in ok(market.client(host).get("/v1/my_servers"))["servers"]}
    assert "not_listed" not in mine[without]


def test_a_server_not_yet_connected_gets_no_reason(market: Market) -> None:
    """Before its agent registers nothing is known of its GPUs: it is not listed (offline), and
    ``not_listed`` is not guessed."""
    host = market.client(market.user())
    ok(host.post("/v1/add_server", json={"name": "new"}))
    (server,) = ok(host.get("/v1/my_servers"))["servers"]
    assert "not_listed" not in server and "init_token" in server


def test_every_demo_server_that_its_host_offers_is_still_listed(market: Market) -> None:
    """``serve --demo``: every public, online, priced server has GPUs, so all of them list."""
    with market.db.write() as conn:
        seed(conn, market.settings, market.now())
    with market.db.read() as conn:
        rows = conn.execute(
            select(servers).where(
                servers.c.removed_at.is_(None),
                servers.c.visibility == "public",
                servers.c.online.is_(True),
            )
        ).all()
        prices = prices_of(conn, [r.id for r in rows], enabled_only=True)
    offered = {r.id for r in rows if any(od or spot for od, spot in prices[r.id].values())}
    assert all(gpu_count(r.gpu_array, r.specs) > 0 for r in rows)
    listed = {s["id"] for s in ok(market.client().get("/v1/marketplace"))["servers"]}
    assert 6 in listed and len(listed) > 30
    assert listed == offered

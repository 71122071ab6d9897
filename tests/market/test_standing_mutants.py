"""Standing orders (market/standing.py) pinned where the flow tests (test_standing.py) do not
look: the whole view and what it hides, the listing's order, what a cancel records, the
expiry at its very second, how many orders a match reports, which servers are candidates (too
small, GPU-less, taken, partly rented), a reason kept or replaced, and whom a fill acts as.

Written to kill mutants of `scripts/mutation standing`."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update

from openclore.market.standing import (
    cancel_standing_order,
    match_standing_orders,
    standing_view,
)
from openclore.store.schema import audit_log, servers, standing_orders
from test_partial_rentals import four_gpu_server
from test_standing import WANT, bring_online, mine, offline_server, orders_on, place

from support import Market, error, ok, order_body

pytestmark = pytest.mark.origin("mutant")

RTX_4090 = {
    "gpu_array": ["NVIDIA GeForce RTX 4090"],
    "specs": {"gpu": "1x NVIDIA GeForce RTX 4090", "gpuram": 24, "net": {"cc": "CZ"}},
}


def stored(market: Market, standing_id: int) -> dict[str, Any]:
    with market.db.read() as conn:
        row = conn.execute(select(standing_orders).where(standing_orders.c.id == standing_id))
        return dict(row.one()._mapping)


def audit(market: Market, action: str) -> list[dict[str, Any]]:
    with market.db.read() as conn:
        rows = conn.execute(
            select(audit_log).where(audit_log.c.action == action).order_by(audit_log.c.id)
        )
        return [dict(r._mapping) for r in rows]


def test_the_view_shows_every_field_and_never_the_secrets(market: Market) -> None:
    host = market.user()
    offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    expires = market.now() + 3600
    view = place(alice, count=2, expires_at=expires, ssh_password="Sandbox2026pass")
    order = view.pop("order")
    assert order["image"] == WANT["image"] and order["ports"] == WANT["ports"]
    assert "ssh_password" not in order
    assert view == {
        "id": view["id"],
        "state": "open",
        "query": {"gpu": "3090"},
        "max_price_per_day": 0.00002,
        "currency": "bitcoin",
        "gpu_count": None,
        "type": "on-demand",
        "template_id": None,
        "count": 2,
        "filled": 0,
        "order_ids": [],
        "expires_at": expires,
        "created_at": market.now(),
        "ended_at": None,
        "last_error": None,
    }
    assert stored(market, view["id"])["fields"]["ssh_password"] == "Sandbox2026pass"


def test_the_list_is_newest_first(market: Market) -> None:
    offline_server(market, market.user(), "a")
    alice = market.client(market.user(bitcoin="0.01"))
    first = place(alice)["id"]
    second = place(alice)["id"]
    third = place(alice)["id"]
    assert [s["id"] for s in mine(alice)] == [third, second, first]


def test_a_cancel_records_its_time_and_whom_it_concerns(market: Market) -> None:
    offline_server(market, market.user(), "a")
    token = market.user(bitcoin="0.01")
    alice = market.client(token)
    standing = place(alice)
    market.clock.advance(7)
    with market.db.write() as conn:  # the market's own cancel (no user acting): about whom
        view = cancel_standing_order(conn, market.user_id(token), standing["id"], market.now())
    assert view["state"] == "cancelled" and view["ended_at"] == market.now()
    assert stored(market, standing["id"])["ended_at"] == market.now()
    (entry,) = audit(market, "standing_order.cancel")
    assert entry["user_id"] == market.user_id(token)
    assert entry["target"] == f"standing_order:{standing['id']}" and entry["detail"] == {}
    again = alice.post("/v1/cancel_standing_order", json={"id": standing["id"]}).json()
    assert again["error"] == "standing_order_not_open"
    assert "cancelled" in str(again)  # the state it is in


def test_a_standing_order_expires_at_its_very_second(market: Market) -> None:
    host = market.user()
    a = offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    standing = place(alice, expires_at=market.now() + 100)
    market.clock.advance(99)
    assert mine(alice)[0]["state"] == "open"
    market.clock.advance(1)
    assert mine(alice)[0]["state"] == "expired"  # shown so before the engine records it
    assert stored(market, standing["id"])["state"] == "open"
    bring_online(market, a)  # the match records it and does not fill it
    row = stored(market, standing["id"])
    assert (row["state"], row["ended_at"], row["filled"]) == ("expired", market.now(), 0)
    assert orders_on(market, a) == []


def test_a_match_reports_the_orders_it_made(market: Market) -> None:
    host = market.user()
    a = offline_server(market, host, "a")
    b = offline_server(market, host, "b")
    c = offline_server(market, host, "c")
    alice = market.client(market.user(bitcoin="0.01"))
    bob = market.client(market.user(bitcoin="0.01"))
    place(alice, count=2)
    place(bob)
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id.in_([a, b, c])).values(online=True))
        assert match_standing_orders(conn, market.settings, market.now()) == 3
        assert match_standing_orders(conn, market.settings, market.now()) == 0


def test_a_reason_stays_until_a_fill_or_another_reason(market: Market) -> None:
    host = market.user()
    offline_server(market, host, "a")
    other = offline_server(market, host, "b", **RTX_4090)
    alice = market.client(market.user(bitcoin="0.01"))
    standing = place(alice)
    with market.db.write() as conn:
        conn.execute(
            update(standing_orders)
            .where(standing_orders.c.id == standing["id"])
            .values(last_error="not_enough_balance")
        )
    bring_online(market, other)  # a match runs and finds nothing for it
    assert stored(market, standing["id"])["last_error"] == "not_enough_balance"


def test_stored_fields_no_longer_valid_are_an_invalid_order(market: Market) -> None:
    host = market.user()
    a = offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    standing = place(alice)
    with market.db.write() as conn:
        conn.execute(
            update(standing_orders)
            .where(standing_orders.c.id == standing["id"])
            .values(fields={"image": "", "ports": {"nope": "udp"}})
        )
    bring_online(market, a)
    row = stored(market, standing["id"])
    assert (row["state"], row["last_error"], row["filled"]) == ("open", "invalid_order", 0)
    assert orders_on(market, a) == []


def test_a_fill_acts_as_its_owner_through_the_engine(market: Market) -> None:
    host = market.user()
    a = offline_server(market, host, "a")
    b = offline_server(market, host, "b")
    token = market.user(bitcoin="0.01")
    owner = market.client(token)
    plain = place(owner)
    made = ok(owner.post("/v1/create_api_key", json={"scopes": ["read", "rent"]}))
    keyed = place(market.client(made["secret"]))
    bring_online(market, a, b)
    entries = {e["target"]: e for e in audit(market, "order.create")}
    for standing in (plain, keyed):
        (order_id,) = stored_fills(market, standing["id"])
        entry = entries[f"order:{order_id}"]
        assert entry["actor"] == f"user:{market.user_id(token)}"
        assert entry["source"] == "engine"
        assert entry["detail"]["via"] == f"standing_order:{standing['id']}"


def stored_fills(market: Market, standing_id: int) -> list[int]:
    ids: list[int] = next(s for s in mine_all(market) if s["id"] == standing_id)["order_ids"]
    return ids


def mine_all(market: Market) -> list[dict[str, Any]]:
    with market.db.read() as conn:
        rows = conn.execute(select(standing_orders).order_by(standing_orders.c.id))
        return [standing_view(conn, dict(r._mapping)) for r in rows]


def test_servers_that_cannot_take_it_are_passed_over_not_the_rest(market: Market) -> None:
    host = market.user()
    small = offline_server(market, host, "small", **RTX_4090)
    quad = four_gpu_server(market, host)
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == quad).values(online=False))
    alice = market.client(market.user(bitcoin="0.1"))
    # four GPUs: the 1-GPU server (listed first) is too small, the quad takes all four
    standing = place(alice, query={"gpu": "4090"}, gpu_count=4, max_price_per_day=0.0004)
    bring_online(market, small, quad)
    (view,) = mine(alice)
    assert view["state"] == "filled"
    assert (
        orders_on(market, quad)[0][0]
        == view["order_ids"][0]
        == stored_fills(market, standing["id"])[0]
    )
    assert orders_on(market, small) == []


def test_a_machine_without_gpus_is_never_a_candidate(market: Market) -> None:
    host = market.user()
    bare = market.server(host, "bare", gpu_array=[], specs={"gpu": "0x"}, online=False)
    alice = market.client(market.user(bitcoin="0.01"))
    place(alice, query={})
    bring_online(market, bare)
    assert orders_on(market, bare) == []
    assert mine(alice)[0]["state"] == "open"


def test_per_gpu_on_demand_takes_free_gpus_of_a_partly_rented_server(market: Market) -> None:
    host = market.user()
    quad = four_gpu_server(market, host)
    bob = market.client(market.user(bitcoin="0.1"))
    ok(bob.post("/v1/create_order", json={**order_body(quad), "gpu_count": 1, "price": 0.0001}))
    alice = market.client(market.user(bitcoin="0.1"))
    view = place(alice, query={"gpu": "4090"}, gpu_count=1, max_price_per_day=0.0001)
    assert view["state"] == "filled" and len(orders_on(market, quad)) == 2


def test_a_spot_order_passes_over_a_taken_server_to_a_free_one(market: Market) -> None:
    host = market.user()
    taken = market.server(host, "taken")
    free = offline_server(market, host, "free")
    bob = market.client(market.user(bitcoin="0.01"))
    ok(bob.post("/v1/create_order", json=order_body(taken)))
    alice = market.client(market.user(bitcoin="0.01"))
    standing = place(alice, type="spot")
    assert standing["state"] == "open"
    bring_online(market, free)
    (view,) = mine(alice)
    assert view["state"] == "filled"
    assert orders_on(market, free)[0][0] == view["order_ids"][0]
    assert error(alice.post("/v1/cancel_standing_order", json={"id": view["id"]})) == (
        "standing_order_not_open"
    )

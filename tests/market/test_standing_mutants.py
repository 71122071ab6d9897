"""Standing orders (market/standing.py) pinned where the flow tests (test_standing.py) do not
look: the whole view and what it hides, the listing's order, what a cancel records, the
expiry at its very second, how many orders a match reports, which servers are candidates (too
small, GPU-less, taken, partly rented), a reason kept or replaced, and whom a fill acts as.

Written to kill mutants of `scripts/mutation standing`."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from openclore.config import Settings
from openclore.domain.errors import MarketError
from openclore.market import standing as standing_module
from openclore.market.inputs import CreateStandingOrderRequest
from openclore.market.standing import (
    MAX_OPEN,
    QUERY_PARAMS,
    _funded,
    cancel_standing_order,
    create_standing_order,
    match_standing_orders,
)
from openclore.store.schema import orders, servers, standing_order_fills, standing_orders
from test_api_keys import make_key
from test_partial_rentals import four_gpu_server
from test_standing import WANT, bring_online, mine, offline_server, orders_on, place

from support import Market, audit_entries, error, ok, order_body, stored_events

pytestmark = pytest.mark.origin("mutant")

RTX_4090 = {
    "gpu_array": ["NVIDIA GeForce RTX 4090"],
    "specs": {"gpu": "1x NVIDIA GeForce RTX 4090", "gpuram": 24, "net": {"cc": "CZ"}},
}


def stored(market: Market, standing_id: int) -> dict[str, Any]:
    with market.db.read() as conn:
        row = conn.execute(select(standing_orders).where(standing_orders.c.id == standing_id))
        return dict(row.one()._mapping)


def set_stored(market: Market, standing_id: int, **values: Any) -> None:
    """Change a standing order's row as no use case would (a stored state from elsewhere)."""
    with market.db.write() as conn:
        conn.execute(
            update(standing_orders).where(standing_orders.c.id == standing_id).values(**values)
        )


def stored_fills(market: Market, standing_id: int) -> list[int]:
    with market.db.read() as conn:
        return [
            int(i)
            for i in conn.execute(
                select(standing_order_fills.c.order_id)
                .where(standing_order_fills.c.standing_order_id == standing_id)
                .order_by(standing_order_fills.c.order_id)
            ).scalars()
        ]


def test_the_view_shows_every_field_and_never_the_secrets(market: Market) -> None:
    host = market.user()
    offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    expires = market.now() + 3600
    view = place(alice, count=2, expires_at=expires, ssh_password="Sandbox2026pass")
    order = view.pop("order")
    # the fields as given (never an empty one, never the password)
    assert order == {"image": WANT["image"], "ports": WANT["ports"]}
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
    (entry,) = audit_entries(market, "standing_order.cancel")
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
    set_stored(market, standing["id"], last_error="not_enough_balance")
    bring_online(market, other)  # a match runs and finds nothing for it
    assert stored(market, standing["id"])["last_error"] == "not_enough_balance"


def test_stored_fields_no_longer_valid_are_an_invalid_order(market: Market) -> None:
    host = market.user()
    a = offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    standing = place(alice)
    set_stored(market, standing["id"], fields={"image": "", "ports": {"nope": "udp"}})
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
    plain = place_directly(market, market.user_id(token))  # no key: the owner's own
    _, secret = make_key(owner, scopes=["read", "rent"])
    keyed = place(market.client(secret))
    bring_online(market, a, b)
    entries = {e["target"]: e for e in audit_entries(market, "order.create")}
    for standing in (plain, keyed):
        (order_id,) = stored_fills(market, standing["id"])
        entry = entries[f"order:{order_id}"]
        assert entry["actor"] == f"user:{market.user_id(token)}"
        assert entry["source"] == "engine"
        assert entry["detail"]["via"] == f"standing_order:{standing['id']}"


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


# ------------------------------------------------------------------ placing, at each limit


def place_directly(
    market: Market, user_id: int, settings: Settings | None = None, **extra: Any
) -> dict[str, Any]:
    """create_standing_order as the market's own (no user acting), with these settings."""
    body = {**WANT, **extra}
    req = CreateStandingOrderRequest.model_validate(body)
    with market.db.write() as conn:
        return create_standing_order(
            conn, user_id, req, body, settings or market.settings, market.now()
        )


def test_at_most_twenty_open_standing_orders_each(market: Market) -> None:
    offline_server(market, market.user(), "a")
    alice = market.client(market.user(bitcoin="0.01"))
    bob = market.client(market.user(bitcoin="0.01"))
    placed = [place(alice)["id"] for _ in range(MAX_OPEN - 1)]
    place(bob)  # another user's do not count
    ok(alice.post("/v1/cancel_standing_order", json={"id": placed[0]}))  # nor cancelled ones
    place(alice, expires_at=market.now() + 5)  # an expiring one counts while it lasts
    place(alice)  # the twentieth
    refused = alice.post("/v1/create_standing_order", json=WANT).json()
    assert refused["error"] == "standing_order_limit_reached" and refused["limit"] == MAX_OPEN
    market.clock.advance(5)  # the expiring one lapsed at its second: room for one more
    place(alice)
    assert alice.post("/v1/create_standing_order", json=WANT).json()["error"] == (
        "standing_order_limit_reached"
    )


def test_the_order_limit_counts_the_renters_live_orders_only(market: Market) -> None:
    host = market.user()
    a = market.server(host, "a")
    b = market.server(host, "b")
    alice = market.user(bitcoin="0.01")
    bob = market.client(market.user(bitcoin="0.01"))
    one = market.settings.model_copy(update={"max_active_orders": 1})
    ok(bob.post("/v1/create_order", json=order_body(a)))  # another renter's live order
    nothing_fits = {"gpu": "4090"}
    place_directly(market, market.user_id(alice), one, query=nothing_fits)
    mine_order = ok(market.client(alice).post("/v1/create_order", json=order_body(b)))
    with pytest.raises(MarketError) as limit:
        place_directly(market, market.user_id(alice), one, query=nothing_fits)
    assert limit.value.name == "order_limit_reached" and limit.value.extra == {"limit": 1}
    ok(market.client(alice).post("/v1/cancel_order", json={"id": mine_order["order_id"]}))
    # an ended order does not count
    place_directly(market, market.user_id(alice), one, query=nothing_fits)


def test_the_wallet_must_hold_the_creation_fee_and_the_runway_to_the_unit(
    market: Market,
) -> None:
    offline_server(market, market.user(), "a")
    # 0.00002 a day: 833 units of runway (an hour); the creation fee 300 on demand, 100 spot
    exact = market.client(market.user(bitcoin="0.000001133"))
    short = market.client(market.user(bitcoin="0.000001132"))
    spot = market.client(market.user(bitcoin="0.000000933"))
    place(exact)
    assert short.post("/v1/create_standing_order", json=WANT).json()["error"] == (
        "not_enough_balance"
    )
    place(spot, type="spot")
    assert spot.post("/v1/create_standing_order", json=WANT).json()["error"] == (
        "not_enough_balance"
    )
    nothing = market.client(market.user())  # no wallet of that currency at all
    assert nothing.post("/v1/create_standing_order", json=WANT).json()["error"] == (
        "not_enough_balance"
    )


def test_a_currency_without_a_creation_fee_needs_the_runway_alone(market: Market) -> None:
    token = market.user(bitcoin="0.000000833")
    free = market.settings.model_copy(update={"creation_fee_on_demand": {}})
    with market.db.read() as conn:
        assert _funded(conn, market.user_id(token), "bitcoin", False, 20_000, free)
        assert not _funded(conn, market.user_id(token), "bitcoin", False, 20_001 * 2, free)


def test_expires_at_must_lie_after_now(market: Market) -> None:
    alice = market.client(market.user(bitcoin="0.01"))
    refused = alice.post("/v1/create_standing_order", json={**WANT, "expires_at": market.now()})
    assert refused.json() == {
        "code": 2,
        "error": "expires_at: must be in the future (unix seconds)",
    }
    place(alice, expires_at=market.now() + 1)


def test_a_placement_is_audited_with_its_terms(market: Market) -> None:
    offline_server(market, market.user(), "a")
    token = market.user(bitcoin="0.01")
    view = place_directly(market, market.user_id(token), count=3)
    (entry,) = audit_entries(market, "standing_order.create")
    assert entry["user_id"] == market.user_id(token)
    assert entry["target"] == f"standing_order:{view['id']}"
    assert entry["detail"] == {"currency": "bitcoin", "max_price_units": 20_000, "count": 3}


def test_the_query_is_checked_and_kept_as_the_marketplace_reads_it(market: Market) -> None:
    alice = market.client(market.user(bitcoin="0.01"))
    long_name = "z" * 40
    unknown = alice.post("/v1/create_standing_order", json={**WANT, "query": {long_name: 1}})
    assert unknown.json()["code"] == 2
    message = str(unknown.json())
    assert repr("z" * 32) in message and repr("z" * 33) not in message
    assert "(use " + ", ".join(QUERY_PARAMS) + ")" in message
    bad_currency = {**WANT, "query": {"currency": "dogecoin"}}
    assert alice.post("/v1/create_standing_order", json=bad_currency).json()["code"] == 2
    view = place(alice, query={"gpu": "3090", "min_gpus": 1})
    assert view["query"] == {"gpu": "3090", "min_gpus": "1"}
    # a JSON boolean is kept as the query string writes it
    assert place(alice, query={"gpu": True})["query"] == {"gpu": "true"}
    assert place(alice, query={"gpu": False})["query"] == {"gpu": "false"}


def test_fill_events_carry_what_was_taken(market: Market) -> None:
    host = market.user()
    a = offline_server(market, host, "a", on_demand="0.000015")
    token = market.user(bitcoin="0.01")
    alice = market.client(token)
    standing = place(alice, count=2)
    bring_online(market, a)
    (order_id,) = orders_on(market, a)[0][:1]
    assert stored_events(market, "standing_order.filled") == [
        {
            "user_id": market.user_id(token),
            "standing_order_id": standing["id"],
            "order_id": order_id,
            "server_id": a,
            "currency": "bitcoin",
            "price": 0.000015,
            "filled": 1,
            "count": 2,
        }
    ]


def test_a_filled_standing_order_records_when(market: Market) -> None:
    host = market.user()
    a = offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    standing = place(alice)
    market.clock.advance(30)
    bring_online(market, a)
    row = stored(market, standing["id"])
    assert (row["state"], row["filled"], row["ended_at"]) == ("filled", 1, market.now())


def test_the_earliest_placed_fills_first_whatever_its_id(market: Market) -> None:
    host = market.user()
    a = offline_server(market, host, "a")
    alice = market.client(market.user(bitcoin="0.01"))
    bob = market.client(market.user(bitcoin="0.01"))
    first = place(alice)
    second = place(bob)
    # bob's was placed a second earlier (a replica's clock)
    set_stored(market, second["id"], created_at=first["created_at"] - 1)
    bring_online(market, a)
    assert mine(bob)[0]["state"] == "filled" and mine(alice)[0]["state"] == "open"


def test_a_template_must_be_the_renters_own(market: Market) -> None:
    offline_server(market, market.user(), "a")
    alice = market.client(market.user(bitcoin="0.01"))
    bob = market.client(market.user(bitcoin="0.01"))
    template = ok(
        alice.post(
            "/v1/create_template",
            json={"name": "t", "image": "cloreai/ubuntu20.04-jupyter", "ports": {"22": "tcp"}},
        )
    )["template"]
    view = place(alice, template_id=template["id"])
    assert view["template_id"] == template["id"]
    assert stored(market, view["id"])["template_id"] == template["id"]
    refused = bob.post("/v1/create_standing_order", json={**WANT, "template_id": template["id"]})
    assert refused.json()["code"] != 0


# ------------------------------------------------------------------ candidates, one by one


def per_gpu_servers(market: Market, *day_prices: str) -> list[int]:
    """Offline 4-GPU servers rented per GPU, one per price (per day for all four GPUs)."""
    made = []
    for price in day_prices:
        sid = four_gpu_server(market, market.user(), on_demand=price)
        with market.db.write() as conn:
            conn.execute(update(servers).where(servers.c.id == sid).values(online=False))
        made.append(sid)
    return made


@pytest.mark.parametrize("refusal", ["market", "integrity"])
def test_a_refusing_server_passes_a_per_gpu_order_to_the_next_one(
    market: Market, monkeypatch: pytest.MonkeyPatch, refusal: str
) -> None:
    """Cheapest first: the first and the last refuse (a server's own refusal, or its unique
    index), the middle one takes one GPU and then refuses too; the standing order stays open
    with one fill, and no candidate is tried out of turn."""
    cheap, middle, dear = per_gpu_servers(market, "0.0004", "0.0006", "0.0008")
    real = standing_module.create_order
    tried: list[int] = []

    def create(conn: Any, user_id: int, req: Any, *args: Any, **kw: Any) -> int:
        tried.append(req.renting_server)
        if req.renting_server == middle and tried.count(middle) == 1:
            return int(real(conn, user_id, req, *args, **kw))
        if refusal == "market":
            raise MarketError("server-already-rented")
        raise IntegrityError("INSERT", {}, Exception("unique index"))

    monkeypatch.setattr(standing_module, "create_order", create)
    alice = market.client(market.user(bitcoin="0.1"))
    standing = place(alice, query={"gpu": "4090"}, gpu_count=1, count=2, max_price_per_day=0.0002)
    bring_online(market, cheap, middle, dear)
    assert tried == [cheap, middle, middle, dear]
    row = stored(market, standing["id"])
    assert (row["state"], row["filled"]) == ("open", 1)
    assert len(orders_on(market, middle)) == 1


def test_a_server_without_a_price_in_the_currency_is_passed_over(market: Market) -> None:
    host = market.user()
    clore_only = offline_server(market, host, "clore", currency="CLORE-Blockchain")
    btc = offline_server(market, host, "btc")
    alice = market.client(market.user(bitcoin="0.01"))
    standing = place(alice)
    bring_online(market, clore_only, btc)
    assert orders_on(market, btc)[0][0] == stored_fills(market, standing["id"])[0]
    assert orders_on(market, clore_only) == []


def test_the_query_prices_are_in_the_standing_orders_currency(market: Market) -> None:
    host = market.user()
    sid = offline_server(market, host, "clore", currency="CLORE-Blockchain", on_demand="2")
    alice = market.client(market.user(CLORE_Blockchain="1000"))
    body = {
        "query": {"gpu": "3090", "max_price": "3"},
        "max_price_per_day": 3,
        "currency": "CLORE-Blockchain",
    }
    standing = place(alice, **body)
    bring_online(market, sid)
    assert orders_on(market, sid)[0][0] == stored_fills(market, standing["id"])[0]


def test_a_price_of_one_unit_is_a_price(market: Market) -> None:
    host = market.user()
    sid = offline_server(market, host, "cheap", on_demand="0.000000001")
    alice = market.client(market.user(bitcoin="0.01"))
    place(alice)
    bring_online(market, sid)
    assert len(orders_on(market, sid)) == 1


def test_a_server_without_a_spot_minimum_gets_no_spot_fill(market: Market) -> None:
    host = market.user()
    sid = offline_server(market, host, "no-spot", spot="0")
    alice = market.client(market.user(bitcoin="0.01"))
    place(alice, type="spot")
    bring_online(market, sid)
    assert orders_on(market, sid) == []


def test_a_failing_match_makes_no_order_and_says_so(
    market: Market, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    offline_server(market, market.user(), "a")
    place(market.client(market.user(bitcoin="0.01")))

    def broken(*_args: Any) -> int:
        raise RuntimeError("a bug in the match")

    monkeypatch.setattr(standing_module, "_match", broken)
    with market.db.write() as conn:
        assert match_standing_orders(conn, market.settings, market.now()) == 0
    (record,) = [r for r in caplog.records if r.name == "openclore.standing"]
    assert record.getMessage() == "standing-order match failed; the change commits without it"


def test_a_spot_minimum_of_one_unit_is_a_minimum(market: Market) -> None:
    host = market.user()
    sid = offline_server(market, host, "cheap-spot", spot="0.000000001")
    alice = market.client(market.user(bitcoin="0.01"))
    place(alice, type="spot")
    bring_online(market, sid)
    (order_id, _), *_ = orders_on(market, sid)
    with market.db.read() as conn:
        price = conn.execute(select(orders.c.price).where(orders.c.id == order_id)).scalar_one()
    assert price == 1  # the bid is the server's minimum, one unit a day

"""The official ``clore-ai`` SDK (PyPI) against a real openclore server: which calls work.

The table below is what docs/clore-ai-compat.md shows. Every call that fails, fails because of
that SDK's own models or error handling (checked here against what the API documents), except
where the table says otherwise. A change on either side changes the table and fails this test.
"""

from __future__ import annotations

import asyncio
import os
import time
from collections.abc import Callable, Iterator
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from pydantic import ValidationError
from sqlalchemy import select, update

from openclore.client import Client
from openclore.domain.usd import rate_units
from openclore.market.rates import set_rates
from openclore.store.schema import orders, server_prices, servers

from support import Market

try:
    import clore_ai.client as clore_client  # type: ignore[import-untyped]
    from clore_ai import AsyncCloreAI, CloreAI
    from clore_ai.exceptions import CloreAPIError  # type: ignore[import-untyped]
except ImportError:  # the `test` extra installs it; CI must not skip this
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        raise
    pytest.skip("clore-ai is not installed (pip install -e '.[test]')", allow_module_level=True)

from test_client_sdk import ClorelikeCreateOrder

IMAGE = "cloreai/ubuntu20.04-jupyter"

EXPECTED = {
    "AsyncCloreAI.wallets()": "works",
    "wallets()": "works",
    "marketplace()": "works",
    "marketplace(max_price_usd=1)": "works (price.usd from the operator's exchange rates)",
    "my_servers()": "works",
    "server_config(name)": "works",
    "my_orders() with no orders": "works",
    "my_orders() with an order": "fails: ValidationError Order.pub_cluster, Order.tcp_ports",
    "spot_marketplace(server_id)": (
        "works; SpotOffer.order_id/price are None (the API sends offer_id/bid)"
    ),
    "set_server_settings(name, ...)": "works",
    "create_order(type='on-demand')": "works",
    "create_order(type='spot')": "works",
    "create_order(...), ports not yet published": "works",
    'create_order(...) answered {"code":0}': (
        "fails: ValidationError Order.id (the order IS created)"
    ),
    "set_spot_price(order_id, price)": "works",
    "cancel_order(order_id, issue)": "works",
    "code 6 error (cancel_order of a foreign order)": (
        "raises FieldError('API error code 6'); the name is only in .response['error']"
    ),
    "invalid token": "raises AuthError",
    "rate limited (code 5, HTTP 429)": (
        "works: the 429 is retried as an HTTP error after a fixed 1 s sleep; Retry-After ignored"
    ),
    "http_status='rest': invalid token (HTTP 401)": (
        "fails: the 401 is retried 3 times (sleeps 1, 2, 4 s), then CloreAPIError, not AuthError"
    ),
}


def outcome(fn: Callable[[], Any]) -> str:
    try:
        fn()
    except ValidationError as exc:
        fields = sorted(
            {exc.title + "." + ".".join(str(p) for p in e["loc"]) for e in exc.errors()}
        )
        return "fails: ValidationError " + ", ".join(fields)
    except CloreAPIError as exc:
        return f"fails: {type(exc).__name__}: {exc}"
    return "works"


def fast(sdk: CloreAI) -> CloreAI:
    """Switch the SDK's own client-side pacing off (its 1 s / 5 s waits) to keep this test fast."""
    sdk.rate_limiter = clore_client.RateLimiter(requests_per_second=1000, create_order_delay=0)
    return sdk


@pytest.fixture
def sdks() -> Iterator[list[CloreAI]]:
    made: list[CloreAI] = []
    yield made
    for sdk in made:
        sdk.close()


def test_clore_ai_sdk_against_openclore(
    market: Market, sdks: list[CloreAI], monkeypatch: pytest.MonkeyPatch
) -> None:
    v1 = market.url + "/v1"  # the clore-ai SDK wants the /v1 in its base URL
    host_token, renter_token = market.user(), market.user(bitcoin="0.01")
    sid = market.server(host_token, "rig")
    silent = market.server(host_token, "silent rig")  # its agent publishes no ports yet
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == silent).values(simulated=False))
    host = fast(CloreAI(host_token, base_url=v1))
    renter = fast(CloreAI(renter_token, base_url=v1))
    sdks.extend([host, renter])
    ours = Client(renter_token, base_url=market.url, rate_limit=False)
    got: dict[str, str] = {}

    async def async_wallets() -> None:
        async with AsyncCloreAI(renter_token, base_url=v1) as a:
            assert "bitcoin" in [w.name for w in await a.wallets()]

    got["AsyncCloreAI.wallets()"] = outcome(lambda: asyncio.run(async_wallets()))
    got["wallets()"] = outcome(renter.wallets)
    got["marketplace()"] = outcome(lambda: _expect(sid in [s.id for s in renter.marketplace()]))
    assert sid in [s.id for s in renter.marketplace(available_only=False)]
    # 0.00001 BTC a day at 60000 USD/BTC: 0.6 USD, under the SDK's max_price_usd=1
    with market.db.write() as conn:
        set_rates(conn, {"bitcoin": rate_units("60000")}, market.settings, market.now())
    cheap = [s.id for s in renter.marketplace(max_price_usd=1)]
    got["marketplace(max_price_usd=1)"] = (
        "works (price.usd from the operator's exchange rates)"
        if sid in cheap and sid not in [s.id for s in renter.marketplace(max_price_usd=0.5)]
        else f"fails: {cheap}"
    )
    got["my_servers()"] = outcome(lambda: _expect(len(host.my_servers()) == 2))
    got["server_config(name)"] = outcome(lambda: host.server_config("rig"))
    got["my_orders() with no orders"] = outcome(lambda: _expect(renter.my_orders() == []))

    before = {o.id for o in ours.my_orders()}
    got["create_order(type='on-demand')"] = created(
        outcome(
            lambda: renter.create_order(sid, IMAGE, "on-demand", "bitcoin", ports={"22": "tcp"})
        ),
        ours,
        before,
    )
    got["my_orders() with an order"] = outcome(renter.my_orders)
    (order_id,) = {o.id for o in ours.my_orders()} - before
    got["cancel_order(order_id, issue)"] = changed(
        outcome(lambda: renter.cancel_order(order_id, issue="GPU #1 overheats")),
        lambda: (
            order_state(market, order_id)["expired"]
            and order_state(market, order_id)["issue"] == "GPU #1 overheats"
        ),
        "the order",
    )
    before = {o.id for o in ours.my_orders()}
    got["create_order(type='spot')"] = created(
        outcome(
            lambda: renter.create_order(
                sid, IMAGE, "spot", "bitcoin", spot_price=0.0000042, ports={"22": "tcp"}
            )
        ),
        ours,
        before,
    )
    (spot_id,) = {o.id for o in ours.my_orders()} - before
    book = renter.spot_marketplace(sid)
    offer = (book.offers or [])[0]
    assert (offer.model_extra or {}).get("offer_id") == spot_id
    got["spot_marketplace(server_id)"] = (
        "works; SpotOffer.order_id/price are None (the API sends offer_id/bid)"
        if offer.order_id is None and offer.price is None
        else "works"
    )
    got["set_spot_price(order_id, price)"] = changed(
        outcome(lambda: renter.set_spot_price(spot_id, 0.00001)),
        lambda: order_state(market, spot_id)["price"] == 10_000,
        "the bid",
    )
    assert ours.my_orders()[0].price is not None
    got["set_server_settings(name, ...)"] = changed(
        outcome(
            lambda: host.set_server_settings(
                "rig", availability=True, mrl=96, on_demand=0.0001, spot=0.00000113
            )
        ),
        lambda: (
            (server_state(market, sid)["mrl_hours"], server_state(market, sid)["prices"])
            == (96, {"bitcoin": (100_000, 1_130)})
        ),
        "the server",
    )
    assert ours.spot_marketplace(sid).market is not None
    before = {o.id for o in ours.my_orders()}
    got["create_order(...), ports not yet published"] = created(
        outcome(lambda: renter.create_order(silent, IMAGE, "on-demand", "bitcoin")), ours, before
    )
    try:
        host.cancel_order(spot_id)
    except CloreAPIError as exc:
        assert exc.response == {"error": "you_dont_own_this_order", "code": 6}
        got["code 6 error (cancel_order of a foreign order)"] = (
            f"raises {type(exc).__name__}('{exc}'); the name is only in .response['error']"
        )
    try:
        fast(CloreAI("not-a-token", base_url=v1)).wallets()
    except CloreAPIError as exc:
        got["invalid token"] = f"raises {type(exc).__name__}"

    # a server that answers create_order like Clore.ai: {"code":0} and nothing else
    market.switch.app = ClorelikeCreateOrder(market.switch.app)
    ours.cancel_order(spot_id)
    before = {o.id for o in ours.my_orders()}
    got['create_order(...) answered {"code":0}'] = created(
        outcome(lambda: renter.create_order(sid, IMAGE, "spot", "bitcoin", spot_price=0.000002)),
        ours,
        before,
    )

    # rate limits on: the SDK's own pacing (1 s) is back, a second client takes the slot first
    market.reconfigure(rate_limit_interval=1, create_order_interval=5)
    sleeps: list[float] = []

    def recorded_sleep(seconds: float) -> None:
        sleeps.append(seconds)
        time.sleep(seconds)

    monkeypatch.setattr(clore_client, "time", SimpleNamespace(time=time.time, sleep=recorded_sleep))
    statuses: list[int] = []
    paced = CloreAI(renter_token, base_url=v1)
    paced.client = httpx.Client(
        timeout=30, event_hooks={"response": [lambda r: statuses.append(r.status_code)]}
    )
    sdks.append(paced)
    httpx.get(v1 + "/wallets", headers={"auth": renter_token})  # someone else's call
    paced.wallets()
    if statuses == [429, 200] and [s for s in sleeps if s >= 0.5] == [1.0]:
        got["rate limited (code 5, HTTP 429)"] = (
            "works: the 429 is retried as an HTTP error after a fixed 1 s sleep; Retry-After "
            "ignored"
        )
    else:
        got["rate limited (code 5, HTTP 429)"] = f"statuses {statuses}, sleeps {sleeps}"

    # the REST status mapping: the SDK retries every 4xx (sleeps recorded, not slept)
    market.reconfigure(http_status="rest")
    sleeps.clear()
    statuses.clear()
    monkeypatch.setattr(clore_client, "time", SimpleNamespace(time=time.time, sleep=sleeps.append))
    rest = CloreAI("not-a-token", base_url=v1)
    rest.client = httpx.Client(
        timeout=30, event_hooks={"response": [lambda r: statuses.append(r.status_code)]}
    )
    sdks.append(rest)
    try:
        rest.wallets()
    except CloreAPIError as exc:
        # (the SDK's own pacing sleeps in between are not exactly 1, 2 or 4 s)
        backoff = [s for s in sleeps if s in (1.0, 2.0, 4.0)]
        if statuses == [401] * 4 and backoff == [1.0, 2.0, 4.0]:
            got["http_status='rest': invalid token (HTTP 401)"] = (
                f"fails: the 401 is retried 3 times (sleeps 1, 2, 4 s), then "
                f"{type(exc).__name__}, not AuthError"
            )
    ours.close()
    assert got == EXPECTED


def _expect(condition: bool) -> None:
    assert condition


def changed(result: str, check: Callable[[], bool], what: str) -> str:
    """A call that "works" must have changed the market: checked in the database."""
    if result == "works" and not check():
        return f"answers code 0, but {what} did not change"
    return result


def order_state(market: Market, order_id: int) -> dict[str, Any]:
    with market.db.read() as conn:
        return dict(conn.execute(select(orders).where(orders.c.id == order_id)).one()._mapping)


def server_state(market: Market, server_id: int) -> dict[str, Any]:
    with market.db.read() as conn:
        row = dict(conn.execute(select(servers).where(servers.c.id == server_id)).one()._mapping)
        row["prices"] = {
            p.currency: (p.on_demand, p.spot)
            for p in conn.execute(
                select(server_prices).where(server_prices.c.server_id == server_id)
            )
        }
    return row


def created(result: str, ours: Client, before: set[int]) -> str:
    """Note when a failing create_order did create the order (checked with openclore's SDK)."""
    new = {o.id for o in ours.my_orders()} - before
    if result.startswith("fails") and new:
        return result + " (the order IS created)"
    return result


def test_openclore_sdk_reads_what_clore_ai_cannot(market: Market) -> None:
    """The same calls through openclore.client: every one works."""
    host_token, renter_token = market.user(), market.user(bitcoin="0.01")
    sid = market.server(host_token, "rig")
    with (
        Client(host_token, base_url=market.url, rate_limit=False) as host,
        Client(renter_token, base_url=market.url, rate_limit=False) as renter,
    ):
        assert host.server_config("rig").background_job is not None
        order = renter.create_order(sid, IMAGE, ports={22: "tcp"})
        listed = renter.my_orders()[0]
        assert listed.id == order.id
        assert listed.pub_cluster and listed.tcp_ports and listed.ssh_command()
        renter.cancel_order(order.id)
        offer = renter.create_order(sid, IMAGE, type="spot", spot_price="0.0000042")
        assert renter.spot_marketplace(sid).offers[0].offer_id == offer.id


def test_the_docs_show_this_table() -> None:
    from pathlib import Path

    doc = (Path(__file__).parents[2] / "docs" / "clore-ai-compat.md").read_text()
    rows = [line for line in doc.splitlines() if line.startswith("| ") and "---" not in line]
    assert len(rows) == len(EXPECTED) + 1  # + the header
    for result in EXPECTED.values():
        assert f"| {result} |" in doc, result

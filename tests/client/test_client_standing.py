"""The SDK's standing orders (SPEC §8) against a real openclore server over real HTTP, in the
synchronous and the asynchronous client: placed, filled when a server appears, listed,
cancelled, and their refusals as exceptions."""

from __future__ import annotations

import asyncio
from decimal import Decimal

import pytest
from sqlalchemy import update

from openclore.client import (
    AsyncClient,
    Client,
    InvalidInput,
    NotEnoughBalance,
    StandingOrder,
    StandingOrderDoesNotExist,
    StandingOrderNotOpen,
)
from openclore.store.schema import servers

from support import Market


def test_the_sync_client_places_lists_and_cancels_standing_orders(market: Market) -> None:
    host = market.user()
    server_id = market.server(host, "a", online=False)
    with Client(market.user(bitcoin="0.01"), base_url=market.url, rate_limit=False) as client:
        placed = client.create_standing_order(
            "0.00002", "ubuntu", query={"gpu": "3090", "min_gpus": 1}, ports={22: "tcp"}
        )
        assert isinstance(placed, StandingOrder) and placed.state == "open"
        assert placed.max_price_per_day == Decimal("0.00002") and placed.query["min_gpus"] == "1"
        spare = client.create_standing_order("0.00002", "ubuntu", count=2)
        with market.db.write() as conn:
            conn.execute(update(servers).where(servers.c.id == server_id).values(online=True))
        listed = {s.id: s for s in client.standing_orders()}
        assert listed[placed.id].state == "filled" and len(listed[placed.id].order_ids) == 1
        assert listed[spare.id].state == "open" and listed[spare.id].order_ids == []
        (order,) = client.my_orders()
        assert order.id == listed[placed.id].order_ids[0]
        assert client.cancel_standing_order(spare.id).state == "cancelled"
        with pytest.raises(StandingOrderNotOpen) as refused:
            client.cancel_standing_order(spare.id)
        assert refused.value.state == "cancelled"
        with pytest.raises(StandingOrderDoesNotExist):
            client.cancel_standing_order(999_999)
        with pytest.raises(InvalidInput):
            client.create_standing_order("0.00002", "ubuntu", query={"nonsense": 1})
    poor = Client(market.user(), base_url=market.url, rate_limit=False)
    with poor, pytest.raises(NotEnoughBalance):
        poor.create_standing_order("0.00002", "ubuntu")


def test_the_async_client_has_the_same_calls(market: Market) -> None:
    token = market.user(bitcoin="0.01")

    async def run() -> None:
        async with AsyncClient(token, base_url=market.url, rate_limit=False) as client:
            placed = await client.create_standing_order("0.00002", "ubuntu", type="spot")
            assert placed.type == "spot" and placed.state == "open"
            assert [s.id for s in await client.standing_orders()] == [placed.id]
            assert (await client.cancel_standing_order(placed.id)).state == "cancelled"

    asyncio.run(run())

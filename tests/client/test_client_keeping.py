"""The SDK's keeping-work calls (SPEC §8) against a real openclore server over real HTTP: stop and
start, restart, reset, extend, timers, disk and volumes, the host's disk and storage price, and
the exceptions each refusal raises, in the synchronous and the asynchronous client."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest

from openclore.client import (
    AsyncClient,
    Client,
    DiskNotOffered,
    DiskOutOfRange,
    ExtendOutOfRange,
    GpusNotFree,
    InvalidInput,
    Order,
    OrderAlreadyStopped,
    OrderNotRunning,
    OrderNotStopped,
    Volume,
    VolumeDoesNotExist,
    VolumeInUse,
    VolumeNotOnServer,
    error_for,
)

from support import Market

IMAGE = "cloreai/ubuntu20.04-jupyter"
DAY = 86400


@pytest.fixture
def clients() -> Iterator[list[Client]]:
    made: list[Client] = []
    yield made
    for c in made:
        c.close()


def sdk(market: Market, token: str, made: list[Client]) -> Client:
    c = Client(token, base_url=market.url, rate_limit=False)
    made.append(c)
    return c


def keeper(market: Market, host: Client, host_token: str, name: str = "keeper") -> int:
    """A server offering 50 GB per rental at 0.0002 BTC per GB per day, set through the SDK."""
    sid = market.server(host_token, name, on_demand="0.0001", spot="0.00001", mrl=720)
    host.set_server_settings(name, disk_gb=50, storage_price="0.0002")
    return sid


def mine(client: Client, order_id: int) -> Order:
    (found,) = [o for o in client.my_orders(return_completed=True) if o.id == order_id]
    return found


def test_stop_start_and_storage_through_the_sdk(market: Market, clients: list[Client]) -> None:
    host_token = market.user()
    h = sdk(market, host_token, clients)
    sid = keeper(market, h, host_token)
    config = h.server_config("keeper")
    assert config.disk_gb == 50
    assert config.storage_pricing["bitcoin"] == Decimal("0.0002")

    r = sdk(market, market.user(bitcoin="1"), clients)
    order = r.create_order(sid, IMAGE)
    assert order.disk_gb == 50 and order.storage_per_day == Decimal("0.01")
    assert order.state == "running" and not order.stopped
    market.advance(60)
    stopped = r.stop_order(order.id)
    assert isinstance(stopped, Order) and stopped.stopped and stopped.stop_reason == "user"
    assert stopped.running is False
    with pytest.raises(OrderAlreadyStopped):
        r.stop_order(order.id)
    with pytest.raises(OrderNotRunning):
        r.restart_order(order.id)

    # someone else rents the whole server: the start is refused and changes nothing
    other = sdk(market, market.user(bitcoin="1"), clients)
    theirs = other.create_order(sid, IMAGE)
    with pytest.raises(GpusNotFree) as taken:
        r.start_order(order.id)
    assert taken.value.name == "gpus_not_free"
    assert mine(r, order.id).stopped
    other.cancel_order(theirs.id)

    market.advance(DAY)  # a day stopped: 50 GB × 0.0002 = 0.01
    assert mine(r, order.id).storage_spend == Decimal("0.01")
    started = r.start_order(order.id)
    assert started.state == "running" and started.stop_reason is None
    with pytest.raises(OrderNotStopped):
        r.start_order(order.id)

    assert r.restart_order(order.id) == 1
    assert r.restart_order(order.id) == 2
    assert r.reset_order(order.id) == 1
    now = mine(r, order.id)
    assert now.restarts == 2 and now.resets == 1
    assert r.extend_order(order.id, 24) == order.mrl + 24 * 3600  # type: ignore[operator]
    with pytest.raises(ExtendOutOfRange) as too_long:
        r.extend_order(order.id, 24 * 365)
    assert too_long.value.max_hours is not None and too_long.value.max_hours < 720
    kinds = [e.type for e in r.events_after(0, 100).events]
    for kind in ("order.stopped", "order.restarted", "order.reset", "order.extended"):
        assert kind in kinds


def test_volumes_disk_and_timers_through_the_sdk(market: Market, clients: list[Client]) -> None:
    host_token = market.user()
    h = sdk(market, host_token, clients)
    sid = keeper(market, h, host_token)
    bare = market.server(host_token, "bare")  # offers no disk
    r = sdk(market, market.user(bitcoin="1"), clients)

    volume = r.create_volume(sid, 20, "datasets")
    assert isinstance(volume, Volume) and volume.server_id == sid and volume.size_gb == 20
    assert volume.price_per_day == Decimal("0.004") and volume.state == "ready"
    assert volume.currency == "bitcoin" and volume.mounted_by == []
    with pytest.raises(DiskNotOffered):
        r.create_volume(bare, 10, "nowhere")
    with pytest.raises(DiskOutOfRange) as too_big:
        r.create_volume(sid, 51, "huge")
    assert too_big.value.max_disk_gb == 50
    with pytest.raises(InvalidInput):
        r.create_volume(sid, 1, "bad name!")
    with pytest.raises(VolumeNotOnServer) as elsewhere:
        r.create_order(bare, IMAGE, volumes={volume.id: "/data"})
    assert elsewhere.value.volume_id == volume.id
    with pytest.raises(VolumeDoesNotExist):
        r.create_order(sid, IMAGE, volumes={999999: "/data"})
    with pytest.raises(DiskOutOfRange):
        r.create_order(sid, IMAGE, disk_gb=60)
    with pytest.raises(DiskNotOffered):
        r.create_order(bare, IMAGE, disk_gb=10)

    order = r.create_order(
        sid, IMAGE, disk_gb=30, volumes={volume.id: "/data"}, stop_after=3600, terminate_after=DAY
    )
    assert order.disk_gb == 30 and order.storage_per_day == Decimal("0.006")
    assert [(v.id, v.path) for v in order.volumes] == [(volume.id, "/data")]
    assert order.stop_at == market.now() + 3600 and order.mrl == DAY
    (listed,) = r.volumes()
    assert listed.id == volume.id and listed.mounted_by == [order.id]
    with pytest.raises(VolumeInUse) as in_use:
        r.delete_volume(volume.id)
    assert in_use.value.orders == [order.id]

    market.advance(3600)  # the stop timer
    stopped = mine(r, order.id)
    assert stopped.stopped and stopped.stop_reason == "timer" and stopped.stop_at is None
    r.cancel_order(order.id)
    r.delete_volume(volume.id)
    assert r.volumes() == []
    (gone,) = r.volumes(include_ended=True)
    assert gone.state == "deleted" and gone.ended_at is not None and gone.spend > 0
    with pytest.raises(VolumeDoesNotExist):
        r.delete_volume(volume.id)


def test_the_async_client_keeps_work_too(market: Market, clients: list[Client]) -> None:
    host_token = market.user()
    sid = keeper(market, sdk(market, host_token, clients), host_token)
    renter = market.user(bitcoin="1")

    async def main() -> None:
        async with AsyncClient(renter, base_url=market.url, rate_limit=False) as r:
            volume = await r.create_volume(sid, 5, "scratch", currency="bitcoin")
            order = await r.create_order(sid, IMAGE, volumes={str(volume.id): "/scratch"})
            stopped = await r.stop_order(order.id)
            assert stopped.state == "stopped"
            assert (await r.start_order(order.id)).state == "running"
            assert await r.restart_order(order.id) == 1
            assert await r.reset_order(order.id) == 1
            market.advance(7200)  # two hours used: room for one more within the host's mrl
            assert await r.extend_order(order.id, 1) == (order.mrl or 0) + 3600
            assert [v.mounted_by for v in await r.volumes()] == [[order.id]]
            await r.cancel_order(order.id)
            await r.delete_volume(volume.id)
            assert await r.volumes() == []

    asyncio.run(main())


def test_keeping_errors_carry_their_fields() -> None:
    def raised(name: str, **extra: Any) -> Any:
        return error_for({"code": 6, "error": name, **extra})

    assert raised("gpus_not_free", gpu_count=2).gpu_count == 2
    assert raised("extend_out_of_range", max_hours=12).max_hours == 12
    assert raised("disk_gb_out_of_range", max_disk_gb=50).max_disk_gb == 50
    assert raised("volume_in_use", orders=[3, 4]).orders == [3, 4]
    assert raised("volume_not_on_server", volume_id=7).volume_id == 7
    assert raised("volume_dont_exist").volume_id is None
    assert raised("volume_limit_reached", limit=50).limit == 50
    assert raised("extend_out_of_range", max_hours="many").max_hours is None
    assert raised("volume_in_use").orders == []


def test_a_retried_change_gets_its_first_answer(market: Market, clients: list[Client]) -> None:
    """The SDK sends each change with an Idempotency-Key: a retry after a lost answer replays
    the first answer (the restart's number, the new mrl) and acts once."""
    host_token = market.user()
    sid = keeper(market, sdk(market, host_token, clients), host_token)
    renter = market.user(bitcoin="1")
    order = sdk(market, renter, clients).create_order(sid, IMAGE)
    market.advance(7200)
    http = market.client(renter)
    for path, body, field in (
        ("/v1/restart_order", {"id": order.id}, "restart"),
        ("/v1/reset_order", {"id": order.id}, "generation"),
        ("/v1/extend_order", {"id": order.id, "hours": 1}, "mrl"),
    ):
        key = {"Idempotency-Key": f"retry-{field}"}
        first = http.post(path, json=body, headers=key).json()
        again = http.post(path, json=body, headers=key)
        assert first["code"] == 0 and field in first, first
        assert again.json() == first and again.headers["Idempotent-Replayed"] == "true"
    found = mine(sdk(market, renter, clients), order.id)
    assert found.restarts == 1 and found.resets == 1 and found.mrl == (order.mrl or 0) + 3600

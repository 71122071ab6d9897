"""Volumes (market/volumes.py) pinned where the flow tests (test_keeping.py) do not look: every
refusal of a new volume by name and figure, funding to the unit, what a volume row and its view
hold, events and audit entries as written, the agent's reports turning a volume ready or gone
(on its own server only), a removed server's volumes, the list's order and filter, and the
mount checks at their limit.

Written to kill mutants of `scripts/mutation volumes`."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import delete, select, update

from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import to_coins, to_units
from openclore.ledger.addresses import deposit_address
from openclore.ledger.ledger import account_key
from openclore.market.volumes import (
    MAX_LIVE_VOLUMES,
    MAX_MOUNTS,
    apply_volume_reports,
    checked_mounts,
    create_volume,
    delete_volume,
    desired_volumes,
    docker_name,
    end_server_volumes,
    my_volumes,
)
from openclore.protocol import DesiredVolume, VolumeStatus
from openclore.store.schema import accounts, servers, volumes
from test_keeping import storage_server
from test_keeping_mutants import woken

from support import Market, audit_entries, ok, order_body, stored_events

pytestmark = pytest.mark.origin("mutant")


def make(
    market: Market, user_id: int, sid: int, size: int = 10, name: str = "data", **kw: Any
) -> int:
    with market.db.write() as conn:
        return create_volume(
            conn,
            user_id,
            sid,
            size,
            name,
            kw.pop("currency", None),
            kw.pop("settings", market.settings),
            market.now(),
            **kw,
        )


def refusal(market: Market, user_id: int, sid: int, **kw: Any) -> MarketError:
    with pytest.raises(MarketError) as caught:
        make(market, user_id, sid, **kw)
    return caught.value


def row(market: Market, vid: int) -> dict[str, Any]:
    with market.db.read() as conn:
        return dict(conn.execute(select(volumes).where(volumes.c.id == vid)).one()._mapping)


def agent_server(market: Market, host: str) -> int:
    """A storage server run by a real agent of protocol 3 (volumes start as 'creating')."""
    sid = storage_server(market, host)
    with market.db.write() as conn:
        conn.execute(
            update(servers)
            .where(servers.c.id == sid)
            .values(simulated=False, agent_protocol=3, last_seen=market.now())
        )
    return sid


def test_a_new_volume_is_refused_by_name_with_its_figures(market: Market) -> None:
    host = market.user()
    sid = storage_server(market, host)
    alice = market.user_id(market.user(bitcoin="1"))
    with pytest.raises(InvalidInput, match=r"name: 1 to 64 letters, digits, '_', '\.' or '-'"):
        make(market, alice, sid, name="-bad")
    assert refusal(market, alice, sid, currency="dogecoin").name == "currency-not-allowed"
    assert refusal(market, alice, sid + 1000).name == "server-dont-exist"
    assert refusal(market, market.user_id(host), sid).name == "cant_rent_from_yourself"
    too_big = refusal(market, alice, sid, size=51)
    assert (too_big.name, too_big.extra) == ("disk_gb_out_of_range", {"max_disk_gb": 50})
    assert refusal(market, alice, sid, size=0).name == "disk_gb_out_of_range"
    make(market, alice, sid, size=50)  # the whole offer fits
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(visibility="hidden"))
    assert refusal(market, alice, sid).name == "server-dont-exist"
    with market.db.write() as conn:
        conn.execute(
            update(servers).where(servers.c.id == sid).values(visibility="public", disk_gb=None)
        )
    assert refusal(market, alice, sid).name == "disk_not_offered"
    with market.db.write() as conn:
        conn.execute(
            update(servers)
            .where(servers.c.id == sid)
            .values(disk_gb=50, simulated=False, agent_protocol=2)
        )
    assert refusal(market, alice, sid).name == "stop_not_supported"


def test_at_most_fifty_live_volumes_each(market: Market) -> None:
    sid = storage_server(market, market.user())
    alice = market.user_id(market.user(bitcoin="1"))
    bob = market.user_id(market.user(bitcoin="1"))
    first = make(market, alice, sid, size=1, name="v0")
    for i in range(1, MAX_LIVE_VOLUMES):
        make(market, alice, sid, size=1, name=f"v{i}")
    make(market, bob, sid, size=1)  # another renter's do not count
    full = refusal(market, alice, sid, size=1)
    assert (full.name, full.extra) == ("volume_limit_reached", {"limit": MAX_LIVE_VOLUMES})
    with market.db.write() as conn:
        delete_volume(conn, alice, first, market.now())
    make(market, alice, sid, size=1, name="again")  # a deleted one does not count


def test_the_wallet_must_hold_the_runway_to_the_unit(market: Market) -> None:
    sid = storage_server(market, market.user())  # 0.0002 per GB per day
    # 10 GB: 0.002 a day, an hour of runway is 83333 units
    exact = market.user_id(market.user(bitcoin="0.000083333"))
    short = market.user_id(market.user(bitcoin="0.000083332"))
    make(market, exact, sid)
    assert refusal(market, short, sid).name == "not_enough_balance"
    assert to_units("0.002") * 3600 // 86400 == 83333


def test_a_volume_row_its_events_and_its_audit_entries(market: Market) -> None:
    sid = storage_server(market, market.user())
    alice = market.user_id(market.user(bitcoin="1"))
    with woken(market, sid) as told:
        vid = make(market, alice, sid, size=10)
        assert told.wait(5)
    stored = row(market, vid)
    assert (stored["state"], stored["quota"], stored["seconds"], stored["spend"]) == (
        "ready",
        True,
        0,
        0,
    )
    assert (stored["fee_paid"], stored["billed_at"], stored["rate"]) == (0, market.now(), 2_000_000)
    assert stored_events(market, "volume.created") == [
        {
            "user_id": alice,
            "volume_id": vid,
            "server_id": sid,
            "name": "data",
            "size_gb": 10,
            "currency": "bitcoin",
            "price_per_day": 0.002,
        }
    ]
    market.clock.advance(60)
    with woken(market, sid) as told:
        with market.db.write() as conn:
            delete_volume(conn, alice, vid, market.now())
        assert told.wait(5)
    gone = row(market, vid)
    assert (gone["state"], gone["ended_at"], gone["billed_at"]) == ("deleted", market.now(), None)
    assert stored_events(market, "volume.deleted") == [
        {"user_id": alice, "volume_id": vid, "server_id": sid}
    ]
    (created,) = audit_entries(market, "volume.create")
    (deleted,) = audit_entries(market, "volume.delete")
    assert (created["user_id"], created["target"], created["detail"]) == (
        alice,
        f"volume:{vid}",
        {"size_gb": 10},
    )
    assert (deleted["user_id"], deleted["target"], deleted["detail"]) == (
        alice,
        f"volume:{vid}",
        {},
    )


def test_a_volume_on_a_real_agent_is_creating_until_reported(market: Market) -> None:
    host = market.user()
    sid = agent_server(market, host)
    other = agent_server(market, market.user())
    alice = market.user_id(market.user(bitcoin="1"))
    vid = make(market, alice, sid)
    elsewhere = make(market, alice, other)
    first = row(market, vid)
    assert (first["state"], first["quota"]) == ("creating", None)
    with market.db.write() as conn:  # nothing reported yet: it stays creating
        apply_volume_reports(conn, sid, [], market.now())
    assert row(market, vid)["state"] == "creating"
    report = VolumeStatus(name=docker_name(vid), ok=True, quota=False, error="no quota on ext4")
    with market.db.write() as conn:
        apply_volume_reports(conn, sid, [report], market.now())
    ready = row(market, vid)
    assert (ready["state"], ready["quota"], ready["error"]) == ("ready", False, "no quota on ext4")
    assert stored_events(market, "volume.ready") == [
        {
            "user_id": alice,
            "volume_id": vid,
            "server_id": sid,
            "quota": False,
            "note": "no quota on ext4",
        }
    ]
    with market.db.write() as conn:  # reported again, now with a quota and no problem
        apply_volume_reports(conn, sid, [VolumeStatus(docker_name(vid), True, True)], market.now())
    again = row(market, vid)
    assert (again["state"], again["quota"], again["error"]) == ("ready", True, None)
    assert len(stored_events(market, "volume.ready")) == 1
    market.clock.advance(30)
    with market.db.write() as conn:  # no longer reported: gone, billed to now
        apply_volume_reports(conn, sid, [], market.now())
    lost = row(market, vid)
    assert (lost["state"], lost["ended_at"], lost["billed_at"], lost["error"]) == (
        "gone",
        market.now(),
        None,
        None,
    )
    assert stored_events(market, "volume.gone") == [
        {"user_id": alice, "volume_id": vid, "server_id": sid}
    ]
    assert row(market, elsewhere)["state"] == "creating"  # another server's report is its own


def test_a_volume_the_agent_could_not_make_is_gone_with_why(market: Market) -> None:
    sid = agent_server(market, market.user())
    alice = market.user_id(market.user(bitcoin="1"))
    vid = make(market, alice, sid)
    broken = VolumeStatus(name=docker_name(vid), ok=False, error="disk full")
    with market.db.write() as conn:
        apply_volume_reports(conn, sid, [broken], market.now())
    assert (row(market, vid)["state"], row(market, vid)["error"]) == ("gone", "disk full")
    (gone,) = stored_events(market, "volume.gone")
    assert gone == {"user_id": alice, "volume_id": vid, "server_id": sid, "error": "disk full"}


def test_a_removed_servers_volumes_end_each_of_them(market: Market) -> None:
    sid = storage_server(market, market.user())
    alice = market.user_id(market.user(bitcoin="1"))
    one, two = make(market, alice, sid, name="a"), make(market, alice, sid, name="b")
    market.clock.advance(10)
    with market.db.write() as conn:
        end_server_volumes(conn, sid, market.now())
    for vid in (one, two):
        ended = row(market, vid)
        assert (ended["state"], ended["ended_at"], ended["billed_at"]) == (
            "ended",
            market.now(),
            None,
        )
    assert [(e["volume_id"], e["reason"]) for e in stored_events(market, "volume.ended")] == [
        (one, "server_removed"),
        (two, "server_removed"),
    ]


def test_the_list_newest_first_with_its_mounts_and_ended_ones_on_request(market: Market) -> None:
    sid = storage_server(market, market.user())
    token = market.user(bitcoin="1")
    alice = market.user_id(token)
    old = make(market, alice, sid, name="old")
    kept = make(market, alice, sid, name="kept", size=5)
    client = market.client(token)
    mounts = {str(kept): "/data", str(old): "/old"}
    first = ok(client.post("/v1/create_order", json=order_body(sid, volumes=mounts)))["order_id"]
    gone = make(market, alice, sid, size=1, name="temp")
    with market.db.write() as conn:
        delete_volume(conn, alice, gone, market.now())
    with market.db.read() as conn:
        listed = my_volumes(conn, alice)["volumes"]
        everything = my_volumes(conn, alice, include_ended=True)["volumes"]
    assert [v["id"] for v in listed] == [kept, old]
    assert [v["id"] for v in everything] == [gone, kept, old]
    assert listed[0] == {
        "id": kept,
        "name": "kept",
        "server_id": sid,
        "size_gb": 5,
        "currency": "bitcoin",
        "price_per_day": to_coins(1_000_000),
        "state": "ready",
        "created_at": market.now(),
        "ended_at": None,
        "spend": to_coins(0),
        "quota": True,
        "mounted_by": [first],
    }
    assert listed[1]["mounted_by"] == [first]


def test_mounts_at_their_limit_and_whose_they_are(market: Market) -> None:
    sid = storage_server(market, market.user())
    other = storage_server(market, market.user())
    alice = market.user_id(market.user(bitcoin="1"))
    bob = market.user_id(market.user(bitcoin="1"))
    mine = [make(market, alice, sid, size=1, name=f"m{i}") for i in range(MAX_MOUNTS + 1)]
    theirs = make(market, bob, sid, size=1)
    away = make(market, alice, other, size=1)
    with market.db.read() as conn:
        assert checked_mounts(conn, alice, sid, None) is None
        eight = {str(v): f"/m{v}" for v in mine[:MAX_MOUNTS]}
        assert checked_mounts(conn, alice, sid, eight) == eight
        with pytest.raises(InvalidInput, match=f"volumes: at most {MAX_MOUNTS}"):
            checked_mounts(conn, alice, sid, {str(v): f"/m{v}" for v in mine})
        with pytest.raises(MarketError) as foreign:
            checked_mounts(conn, alice, sid, {str(theirs): "/x"})
        assert (foreign.value.name, foreign.value.extra) == (
            "volume_dont_exist",
            {"volume_id": theirs},
        )
        with pytest.raises(MarketError) as far:
            checked_mounts(conn, alice, sid, {str(away): "/x"})
        assert (far.value.name, far.value.extra) == ("volume_not_on_server", {"volume_id": away})


def test_the_agent_keeps_its_servers_live_volumes_in_id_order(market: Market) -> None:
    sid = storage_server(market, market.user())
    other = storage_server(market, market.user())
    alice = market.user_id(market.user(bitcoin="1"))
    big = make(market, alice, sid, size=20, name="big")
    small = make(market, alice, sid, size=3, name="small")
    make(market, alice, other, size=4, name="elsewhere")
    deleted = make(market, alice, sid, size=5, name="deleted")
    with market.db.write() as conn:
        delete_volume(conn, alice, deleted, market.now())
    with market.db.read() as conn:
        assert desired_volumes(conn, sid) == [
            DesiredVolume(name=f"openclore-vol-{big}", size_gb=20),
            DesiredVolume(name=f"openclore-vol-{small}", size_gb=3),
        ]


def test_reports_touch_their_servers_live_volumes_only(market: Market) -> None:
    sid = agent_server(market, market.user())
    other = storage_server(market, market.user())  # a demo server: its volumes are ready
    alice = market.user_id(market.user(bitcoin="1"))
    fresh = make(market, alice, sid, name="fresh")
    elsewhere = make(market, alice, other, name="elsewhere")
    deleted = make(market, alice, sid, name="deleted")
    with market.db.write() as conn:
        delete_volume(conn, alice, deleted, market.now())
    before = row(market, deleted)
    reports = [
        VolumeStatus(docker_name(fresh), ok=True, quota=True),
        VolumeStatus(docker_name(deleted), ok=True, quota=True, error="still here"),
    ]
    with market.db.write() as conn:
        apply_volume_reports(conn, sid, reports, market.now())
    assert row(market, elsewhere)["state"] == "ready"  # not this server's
    assert row(market, deleted) == before  # deleted: the agent removes it, nothing changes
    (ready,) = stored_events(market, "volume.ready")
    assert ready == {"user_id": alice, "volume_id": fresh, "server_id": sid, "quota": True}


def test_a_renter_who_cannot_pay_ends_and_the_next_volume_is_still_seen(market: Market) -> None:
    sid = storage_server(market, market.user())
    poor = market.user_id(market.user(bitcoin="0.0001"))  # a 10 GB volume costs 0.002 a day
    rich = market.user_id(market.user(bitcoin="1"))
    first = make(market, poor, sid, name="poor")
    second = make(market, rich, sid, name="rich")
    market.clock.advance(86400)
    with market.db.write() as conn:  # the agent lost both
        apply_volume_reports(conn, sid, [], market.now())
    assert row(market, first)["state"] == "ended"  # its renter ran dry first
    assert row(market, second)["state"] == "gone"


def test_a_removed_servers_volumes_after_a_renter_ran_dry(market: Market) -> None:
    sid = storage_server(market, market.user())
    other = storage_server(market, market.user())
    poor = market.user_id(market.user(bitcoin="0.0001"))
    rich = market.user_id(market.user(bitcoin="1"))
    first = make(market, poor, sid, name="poor")
    second = make(market, rich, sid, name="rich")
    elsewhere = make(market, rich, other, name="elsewhere")
    market.clock.advance(86400)
    with market.db.write() as conn:
        end_server_volumes(conn, sid, market.now())
    assert (row(market, first)["state"], row(market, second)["state"]) == ("ended", "ended")
    assert row(market, elsewhere)["state"] == "ready"
    assert stored_events(market, "volume.ended")[-1] == {
        "user_id": rich,
        "volume_id": second,
        "server_id": sid,
        "reason": "server_removed",
    }
    with market.db.write() as conn:  # again: nothing left to end
        end_server_volumes(conn, sid, market.now())
    assert len(stored_events(market, "volume.ended")) == 2


def test_deleting_bills_a_live_volume_and_only_ones_own(market: Market) -> None:
    sid = agent_server(market, market.user())
    alice = market.user_id(market.user(bitcoin="1"))
    bob = market.user_id(market.user(bitcoin="1"))
    live = make(market, alice, sid, name="live")
    lost = make(market, alice, sid, name="lost")
    with market.db.write() as conn:
        apply_volume_reports(conn, sid, [VolumeStatus(docker_name(live), ok=True)], market.now())
        conn.execute(update(volumes).where(volumes.c.id == lost).values(state="gone"))
    with pytest.raises(MarketError) as theirs, market.db.write() as conn:
        delete_volume(conn, bob, live, market.now())
    assert theirs.value.name == "volume_dont_exist"
    market.clock.advance(86400)
    with market.db.write() as conn:
        delete_volume(conn, alice, live, market.now())
        delete_volume(conn, alice, lost, market.now())  # gone: nothing more to bill
    assert row(market, live)["spend"] == 2_000_000  # a day of 10 GB at 0.0002
    assert row(market, lost)["spend"] == 0


def test_a_currency_the_server_does_not_price_stores_for_free(market: Market) -> None:
    host = market.user()
    sid = storage_server(market, host)
    alice = market.user_id(market.user(bitcoin="1"))
    renters = (alice, market.user_id(host))
    with market.db.write() as conn:  # a currency the operator added after they signed up
        conn.execute(
            delete(accounts).where(
                accounts.c.key.in_([account_key("wallet", "CLORE-Blockchain", u) for u in renters])
            )
        )
    vid = make(market, alice, sid, currency="CLORE-Blockchain")
    assert row(market, vid)["rate"] == 0
    with market.db.read() as conn:
        for uid in renters:
            wallet = conn.execute(
                select(accounts.c.deposit_address).where(
                    accounts.c.key == account_key("wallet", "CLORE-Blockchain", uid)
                )
            ).scalar_one()
            assert wallet == deposit_address(
                market.settings.address_secret, uid, "CLORE-Blockchain"
            )


def test_the_name_refusal_reads_exactly(market: Market) -> None:
    sid = storage_server(market, market.user())
    with pytest.raises(InvalidInput) as bad:
        make(market, market.user_id(market.user(bitcoin="1")), sid, name="")
    assert str(bad.value) == "name: 1 to 64 letters, digits, '_', '.' or '-'"


def test_a_gone_volume_shows_why(market: Market) -> None:
    sid = agent_server(market, market.user())
    alice = market.user_id(market.user(bitcoin="1"))
    vid = make(market, alice, sid)
    with market.db.write() as conn:
        apply_volume_reports(
            conn, sid, [VolumeStatus(docker_name(vid), ok=False, error="disk full")], market.now()
        )
        (view,) = my_volumes(conn, alice)["volumes"]
    assert view["state"] == "gone" and view["error"] == "disk full"

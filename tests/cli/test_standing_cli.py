"""Standing orders in the CLI (SPEC §8) against a real openclore server over real HTTP:
standing place (filled at once, or when a server appears), list, cancel; refusals one line."""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import update

from openclore.store.schema import servers
from test_client_cli import Cli

from support import Market


def test_place_list_and_cancel(market: Market, tmp_path: Path) -> None:
    host = market.user("host")
    sid = market.server(host, "rig", online=False)
    renter = Cli(market, tmp_path, market.user("renter", bitcoin="0.01"))
    line = renter(
        "standing",
        "place",
        "0.00002",
        "--where",
        "gpu=3090",
        "--image",
        "ubuntu",
        "--port",
        "22:tcp",
        "--expires-in",
        "3600",
    ).stdout.strip()
    assert line.endswith(": open, 0 of 1 filled"), line
    spare = renter.json("standing", "place", "0.00002", "-w", "country=CZ", "--image", "ubuntu")
    assert spare["state"] == "open" and spare["query"] == {"country": "CZ"}
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(online=True))
    listed = renter.json("standing", "list")
    assert [s["state"] for s in listed] == ["open", "filled"]
    assert listed[1]["expires_at"] == market.now() + 3600
    table = renter("standing", "list").stdout
    assert "2 standing order(s)" in table and "gpu=3090" in table and "1/1" in table
    done = renter("standing", "cancel", str(spare["id"])).stdout.strip()
    assert done == f"standing order {spare['id']} cancelled (0 filled)"
    assert "standing_order_not_open" in renter.error("standing", "cancel", str(spare["id"]))
    assert "needs --image or --template" in renter.error("standing", "place", "0.1")
    assert "expected FILTER=VALUE" in renter.error(
        "standing", "place", "0.1", "-w", "gpu", "--image", "ubuntu"
    )
    assert "max_price_per_day" in renter.error("standing", "place", "0", "--image", "ubuntu")

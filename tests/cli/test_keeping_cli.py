"""Keeping work in the CLI (SPEC §8) against a real openclore server over real HTTP: a host
offers disk and prices storage, a renter rents with a disk, a volume and timers, stops and starts,
restarts, resets (after asking), extends, and manages volumes; each refusal is one line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import Result

from openclore.cli.commands.keeping import parse_duration, parse_volumes
from openclore.cli.main import app
from test_client_cli import IMAGE, Cli

from support import Market

DAY = 86400


@pytest.fixture
def keeping(market: Market, tmp_path: Path) -> tuple[Cli, Cli, int]:
    """A renter's and a host's CLI, and the host's server offering 50 GB at 0.0002 a GB-day."""
    host = market.user("host")
    renter = market.user("renter", bitcoin="1")
    sid = market.server(host, "keeper", on_demand="0.0001", spot="0.00001", mrl=720)
    host_cli = Cli(market, tmp_path, host)
    done = host_cli.json("server", "set", "keeper", "--disk", "50", "--storage-price", "0.0002")
    assert done == {"name": "keeper", "currency": None, "disk_gb": 50, "storage_price": 0.0002}
    return Cli(market, tmp_path, renter), host_cli, sid


def answered(cli: Cli, answer: str, *args: str, code: int = 0) -> Result:
    """A command that asks first, with ``answer`` typed in."""
    result = cli.runner.invoke(app, list(args), env=cli.env, input=answer)
    assert result.exit_code == code, (args, result.stdout, result.stderr)
    assert "Traceback" not in result.output
    return result


def test_stop_start_restart_reset_extend(keeping: tuple[Cli, Cli, int], market: Market) -> None:
    cli, _, sid = keeping
    rented = cli("rent", str(sid), "--image", IMAGE).stdout
    assert "disk 50 GB, kept when stopped for 0.01 bitcoin/day" in rented
    (order,) = cli.json("orders")
    oid = str(order["id"])
    assert order["state"] == "running" and order["disk_gb"] == 50

    assert cli("stop", oid).stdout.strip() == (
        f"order {oid} is stopped (user), storage 0.01 bitcoin/day"
    )
    assert "order_already_stopped" in cli.error("stop", oid)
    market.advance(DAY)
    table = cli("orders").stdout
    assert "stopped (user)" in table and "50 GB" in table and "paid 0.01" in table
    started = cli.json("start", oid)
    assert started["state"] == "running" and started["storage_spend"] == 0.01
    assert "order_not_stopped" in cli.error("start", oid)

    assert cli.json("restart", oid) == {"id": order["id"], "restart": 1}
    assert cli("restart", oid).stdout.strip() == f"order {oid}: restart 2 asked of its host"
    # reset asks first: no, then yes, then --yes
    refused = answered(cli, "n\n", "reset", oid, code=1)
    assert "not reset" in refused.stderr and "keeps its files" in refused.stderr
    asked = answered(cli, "y\n", "reset", oid)
    assert "Reset order" in asked.stderr and f"order {oid}: reset 1" in asked.stdout
    assert cli.json("reset", oid, "--yes") == {"id": order["id"], "generation": 2}

    extended = cli.json("extend", oid, "--hours", "5")
    assert extended["mrl"] == 725 * 3600 and extended["ends_at"] == order["ct"] + 725 * 3600
    assert "5 h more (mrl 730 h)" in cli("extend", oid, "--hours", "5").stdout
    cli("extend", oid, "--hours", "0", code=2)  # a usage error, refused before any request
    too_long = cli.error("extend", oid, "--hours", "1000")
    assert "extend_out_of_range" in too_long and "Hours allowed at most: " in too_long
    cli("stop", oid)
    assert "order_not_running" in cli.error("restart", oid)
    assert "order_dont_exist" in cli.error("stop", "999999")


def test_volumes_disk_and_timers(keeping: tuple[Cli, Cli, int], market: Market) -> None:
    cli, host, sid = keeping
    made = cli.json("volume", "create", str(sid), "--size", "20", "--name", "datasets")
    vid = str(made["id"])
    assert made["size_gb"] == 20 and made["price_per_day"] == 0.004 and made["state"] == "ready"
    line = cli("volume", "create", str(sid), "--size", "5", "--name", "scratch").stdout
    assert "5 GB on server" in line and "0.001 bitcoin/day, ready" in line
    assert "disk_gb_out_of_range" in cli.error(
        "volume", "create", str(sid), "--size", "60", "--name", "big"
    )
    order = cli.json(
        "rent",
        str(sid),
        "--image",
        IMAGE,
        "--disk",
        "30",
        "--volume",
        f"{vid}:/data",
        "--stop-after",
        "1h",
        "--terminate-after",
        "2d",
    )
    assert order["disk_gb"] == 30 and order["volumes"] == [{"id": int(vid), "path": "/data"}]
    assert order["stop_at"] == market.now() + 3600 and order["mrl"] == 2 * DAY
    listed = cli.json("volume", "list")
    assert [(v["name"], v["mounted_by"]) for v in listed] == [
        ("scratch", []),
        ("datasets", [order["id"]]),
    ]
    table = cli("volume", "list").stdout
    assert "datasets" in table and str(order["id"]) in table and "20 GB" in table
    in_use = cli.error("volume", "delete", vid)
    assert "volume_in_use" in in_use and f"Mounted by orders: {order['id']} " in in_use
    market.advance(3600)  # the stop timer
    assert "stopped (timer)" in cli("orders").stdout
    cli("cancel", str(order["id"]))
    assert cli.json("volume", "delete", vid) == {"id": int(vid), "deleted": True}
    assert [v["name"] for v in cli.json("volume", "list")] == ["scratch"]
    assert "deleted" in cli("volume", "list", "--all").stdout
    assert "volume_dont_exist" in cli.error("volume", "delete", vid)
    # what is refused before any request
    assert "VOLUME_ID:/path" in cli.error("rent", str(sid), "--image", IMAGE, "--volume", "x")
    assert "duration" in cli.error("rent", str(sid), "--image", IMAGE, "--stop-after", "soon")
    # a server without disk
    host("server", "set", "keeper", "--disk", "0")
    assert "disk_not_offered" in cli.error("rent", str(sid), "--image", IMAGE, "--disk", "10")


def test_parsing_durations_and_volumes() -> None:
    assert [parse_duration(t, "--x") for t in ("90", "45m", "12h", "7d", " 2H ")] == [
        90,
        2700,
        43200,
        604800,
        7200,
    ]
    assert parse_volumes(["12:/data", "007:/scratch/a"]) == {"12": "/data", "7": "/scratch/a"}

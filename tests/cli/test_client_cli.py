"""The client commands of the ``openclore`` CLI against a real openclore server over real HTTP."""

from __future__ import annotations

import email.utils
import json
import os
import re
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
from rich.cells import cell_len
from sqlalchemy import select, update
from typer.testing import CliRunner, Result

from openclore.api.app import create_app
from openclore.cli.main import app
from openclore.client import Client
from openclore.engine.clock import SandboxClock
from openclore.store.schema import orders, servers

from support import Market, free_port

IMAGE = "cloreai/ubuntu20.04-jupyter"


class Cli:
    def __init__(self, market: Market, tmp_path: Path, token: str | None) -> None:
        self.market = market
        self.env: dict[str, str | None] = {
            "OPENCLORE_URL": market.url,
            "OPENCLORE_API_KEY": token,
            "OPENCLORE_CONFIG": str(tmp_path / "config.toml"),
            "OPENCLORE_PROFILE": None,
            "COLUMNS": "200",
        }
        self.runner = CliRunner()

    def run(self, args: tuple[str, ...], code: int, env: dict[str, str | None]) -> Result:
        result = self.runner.invoke(app, list(args), env={**self.env, **env})
        assert result.exit_code == code, (args, result.stdout, result.stderr, result.exception)
        assert "Traceback" not in result.output
        return result

    def __call__(self, *args: str, code: int = 0, **env: str | None) -> Result:
        return self.run(args, code, env)

    def json(self, *args: str, **env: str | None) -> Any:
        return json.loads(self.run((*args, "--json"), 0, env).stdout)

    def error(self, *args: str, code: int = 1, **env: str | None) -> str:
        result = self.run(args, code, env)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1, result.stderr  # one clear line
        assert lines[0].startswith("error: ")
        return lines[0]


@pytest.fixture
def world(market: Market, tmp_path: Path) -> tuple[Cli, Cli, int]:
    """A renter's and a host's CLI, and an online server of the host."""
    host = market.user("host")
    renter = market.user("renter", bitcoin="0.01")
    sid = market.server(
        host,
        "rig",
        on_demand="0.00001",
        spot="0.000001",
        specs={
            "gpu": "2x NVIDIA GeForce RTX 3090",
            "gpuram": 24,
            "ram": 64,
            "cpus": "16/32",
            "net": {"cc": "CZ"},
        },
    )
    return Cli(market, tmp_path, renter), Cli(market, tmp_path, host), sid


def set_gpus(market: Market, server_id: int, names: list[str]) -> None:
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == server_id).values(gpu_array=names))


def test_market_filters_and_sorts(world: tuple[Cli, Cli, int], market: Market) -> None:
    cli, _, sid = world
    other = market.user("other host")
    cheap = market.server(
        other,
        "cheap",
        on_demand="0.000002",
        spot="0.000001",
        specs={
            "gpu": "1x NVIDIA GeForce GTX 1080 Ti",
            "gpuram": 11,
            "ram": 32,
            "net": {"cc": "DE"},
        },
    )
    set_gpus(market, sid, ["NVIDIA GeForce RTX 3090"] * 2)
    set_gpus(market, cheap, ["NVIDIA GeForce GTX 1080 Ti"])
    rows = cli.json("market")
    assert [r["id"] for r in rows] == [cheap, sid]  # price ascending
    assert rows[1]["price"]["on_demand"]["bitcoin"] == 0.00001
    assert [r["id"] for r in cli.json("market", "--sort", "vram")] == [sid, cheap]
    assert [r["id"] for r in cli.json("market", "--gpu", "3090")] == [sid]
    assert [r["id"] for r in cli.json("market", "--vram", "20")] == [sid]
    assert [r["id"] for r in cli.json("market", "--ram", "48")] == [sid]
    assert [r["id"] for r in cli.json("market", "--country", "de")] == [cheap]
    assert [r["id"] for r in cli.json("market", "--max-price", "0.000005")] == [cheap]
    hourly = ["market", "--per-hour", "--max-price", "0.0000004"]
    assert [r["id"] for r in cli.json(*hourly)] == [cheap]  # 0.00001/24 > 0.0000004
    assert cli.json("market", "--currency", "USD-Blockchain") == []
    assert [r["id"] for r in cli.json("market", "--min-reliability", "0.5", "--limit", "1")] == [
        cheap
    ]
    Client(cli.env["OPENCLORE_API_KEY"], base_url=market.url, rate_limit=False).create_order(
        sid, IMAGE
    )
    assert [r["id"] for r in cli.json("market", "--available-only")] == [cheap]
    assert [r["id"] for r in cli.json("market", "--sort", "gpus")] == [sid, cheap]
    # the listing needs no token, and the text table shows the columns
    text = cli("market", "--per-hour", OPENCLORE_API_KEY=None).stdout
    assert "2x RTX 3090" in text and "per hour" in text and "yes" in text
    # the filters ran on the server: it answered only the match, and counted it
    assert "1 of 1 servers" in cli("market", "--gpu", "3090").stdout
    cli.error("market", "--max-price", "cheap", code=1)
    # nothing matches: it says so on stderr and exits non-zero (JSON stays an empty list)
    assert "no servers match" in cli.error("market", "--gpu", "NOSUCHGPU")
    assert cli.json("market", "--gpu", "NOSUCHGPU") == []
    assert cli("market", "--sort", "nonsense", code=2).exit_code == 2


def test_rent_wait_orders_ssh_cancel(world: tuple[Cli, Cli, int]) -> None:
    cli, _, sid = world
    result = cli(
        "rent",
        str(sid),
        "--image",
        IMAGE,
        "--wait",
        "--env",
        "A=1",
        "--port",
        "22:tcp",
        "--port",
        "8888:http",
    )
    lines = result.stdout.strip().splitlines()
    assert lines[0].startswith("order ") and "on-demand 0.00001 bitcoin/day" in lines[0]
    ssh_line = next(line for line in lines if line.startswith("ssh -p "))
    assert ssh_line.endswith("root@localhost")
    (order,) = cli.json("orders")
    assert order["si"] == sid and order["tcp_ports"] and order["http_port"] == "8888"
    assert ssh_line == f"ssh -p {order['tcp_ports'][0].split(':')[1]} root@localhost"
    assert cli("ssh", str(order["id"]), "--print").stdout.strip() == ssh_line
    logs = cli("logs", str(order["id"]), "--tail", "5").stdout.splitlines()
    assert logs[0] == f"[simulated] order {order['id']}: container started from {IMAGE}"
    assert cli.json("logs", str(order["id"]))["logs"][:1] == logs[:1]
    assert cli.json("ssh", str(order["id"]))["argv"][:2] == ["ssh", "-p"]
    assert str(order["id"]) in cli("orders").stdout
    assert cli.json("cancel", str(order["id"]), "--issue", "GPU #1 overheats") == {
        "id": order["id"],
        "cancelled": True,
    }
    assert cli.json("orders") == []
    (ended,) = cli.json("orders", "--all")
    assert ended["id"] == order["id"] and ended["expired"] is True
    assert "order_not_active" in cli.error("cancel", str(order["id"]))
    assert "no active order" in cli.error("ssh", str(order["id"]), "--print")


def test_rent_spot_json_and_bid_rules(world: tuple[Cli, Cli, int], tmp_path: Path) -> None:
    cli, _, sid = world
    key = tmp_path / "id.pub"
    key.write_text("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIExample user@host\n")
    order = cli.json(
        "rent",
        str(sid),
        "--image",
        IMAGE,
        "--spot",
        "0.0000042",
        "--currency",
        "bitcoin",
        "--ssh-key",
        str(key),
        "--ssh-password",
        "secret123",
        "--jupyter-token",
        "tok",
        "--command",
        "echo hi",
        "--wait",
    )
    assert order["spot"] is True and order["price"] == 0.0000042
    assert order["ssh_command"].startswith("ssh -p ")
    oid = str(order["id"])
    book = cli.json("spot", str(sid))
    assert book["exists"] and book["market"]["offers"][0]["offer_id"] == order["id"]
    assert "0.0000042" in cli("spot", str(sid)).stdout

    step = cli.error("bid", oid, "0.000002")
    assert "exceeded_max_step" in step and "one step" in step and "0.0000032" in step
    assert cli.json("bid", oid, "0.0000032") == {"id": order["id"], "bid": 0.0000032}
    wait = cli.error("bid", oid, "0.0000022")
    assert "can_lower_every_600_seconds" in wait and "600 s" in wait and "in 600 s" in wait
    assert "bid is now 0.00001" in cli("bid", oid, "0.00001").stdout
    assert "order_dont_exist" in cli.error("bid", "999999", "1")
    assert "not a number" in cli.error("bid", oid, "cheap")  # refused before any request
    assert "spot market" in cli.error("spot", "987654")


def test_wallets_servers_and_hosting(world: tuple[Cli, Cli, int]) -> None:
    cli, host, sid = world
    wallets = {w["name"]: w for w in cli.json("wallets")}
    assert wallets["bitcoin"]["balance"] == 0.01
    assert "bitcoin" in cli("wallets").stdout

    (server,) = host.json("servers")
    assert server["id"] == sid and server["name"] == "rig" and server["online"] is True
    added = host.json("server", "add", "second rig")
    assert len(added["init_token"]) == 48
    text = host("servers").stdout
    assert "second rig" in text and added["init_token"] in text

    done = host.json(
        "server",
        "set",
        "rig",
        "--price",
        "0.00002",
        "--spot",
        "0.0000015",
        "--mrl",
        "96",
        "--hidden",
    )
    assert done == {
        "name": "rig",
        "currency": None,
        "on_demand": 0.00002,
        "spot": 0.0000015,
        "mrl": 96,
        "availability": False,
    }
    h = Client(host.env["OPENCLORE_API_KEY"], base_url=host.market.url, rate_limit=False)
    config = h.server_config("rig")
    assert config.pricing["bitcoin"] == Decimal("0.00002") and config.mrl == 96
    assert config.visibility == "hidden"
    assert "availability = True" in host("server", "set", "rig", "--available").stdout
    host("server", "set", "rig", "--currency", "CLORE-Blockchain", "--price", "12.5")
    assert h.server_config("rig").pricing["CLORE-Blockchain"] == Decimal("12.5")
    assert "nothing to change" in host.error("server", "set", "rig")
    assert "server_dont_exist" in host.error("server", "set", "nope", "--mrl", "5")
    assert "server_name_taken" in host.error("server", "add", "rig")


def test_wait_shows_progress_until_the_ssh_port_answers(
    world: tuple[Cli, Cli, int], market: Market
) -> None:
    """--wait waits for the ports, then for an SSH server answering on the published port."""
    cli, _, sid = world
    with market.db.write() as conn:  # a server with a real (here: scripted) agent
        conn.execute(update(servers).where(servers.c.id == sid).values(simulated=False))
    port = free_port()
    listener: list[socket.socket] = []

    def agent_publishes_then_sshd_starts() -> None:
        published = False
        deadline = time.monotonic() + 20
        while not published and time.monotonic() < deadline:
            time.sleep(0.5)
            with market.db.write() as conn:
                published = bool(
                    conn.execute(
                        update(orders)
                        .where(orders.c.server_id == sid)
                        .values(
                            tcp_ports=[f"22:{port}"],
                            pub_cluster=["127.0.0.1"],
                            runtime_state="running",
                        )
                    ).rowcount
                )
        time.sleep(1.5)  # published, but nothing answers yet: --wait keeps waiting
        server = socket.create_server(("127.0.0.1", port))
        listener.append(server)
        conn_, _ = server.accept()
        with conn_:
            conn_.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")

    agent = threading.Thread(target=agent_publishes_then_sshd_starts, daemon=True)
    agent.start()
    started = time.monotonic()
    result = cli("rent", str(sid), "--image", IMAGE, "--wait", "--timeout", "30")
    agent.join(10)
    for sock in listener:
        sock.close()
    assert time.monotonic() - started >= 1.9
    assert result.stdout.strip().splitlines()[-1] == f"ssh -p {port} root@127.0.0.1"


def test_wait_gives_up_after_the_timeout(world: tuple[Cli, Cli, int], market: Market) -> None:
    cli, _, sid = world
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(simulated=False))
    line = cli.error("rent", str(sid), "--image", IMAGE, "--wait", "--timeout", "1")
    assert "not ready after 1 s (running; waiting for the host to publish its SSH port)" in line
    (order,) = cli.json("orders")  # it keeps running
    assert "publishes no SSH port" in cli.error("ssh", str(order["id"]))


def test_errors_are_one_line_and_exit_non_zero(world: tuple[Cli, Cli, int]) -> None:
    cli, _, sid = world
    assert "invalid API token" in cli.error("wallets", OPENCLORE_API_KEY="wrong")
    assert "no API key" in cli.error("orders", OPENCLORE_API_KEY=None)
    # the sentence a person reads, then the name scripts match on
    assert cli.error("rent", "999999", "--image", IMAGE) == (
        "error: This server is not on the market. (server-dont-exist)"
    )
    bad_image = cli.error("rent", str(sid), "--image", "not an image!")
    assert "image" in bad_image and "Value error" not in bad_image
    assert "--port" in cli.error("rent", str(sid), "--image", IMAGE, "--port", "22:udp")
    assert "--env" in cli.error("rent", str(sid), "--image", IMAGE, "--env", "NOVALUE")
    assert "--ssh-key" in cli.error("rent", str(sid), "--image", IMAGE, "--ssh-key", "/nope")
    poor = Cli(cli.market, Path(str(cli.env["OPENCLORE_CONFIG"])).parent, cli.market.user())
    assert poor.error("rent", str(sid), "--image", IMAGE) == (
        "error: Your wallet does not hold enough for this. (not_enough_balance)"
    )
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{sock.getsockname()[1]}"
    line = cli.error("wallets", OPENCLORE_URL=dead)
    assert "cannot reach" in line and dead in line
    assert "unsupported protocol" in cli.error("wallets", OPENCLORE_URL="ftp://example.net")


def test_configuration_profiles(world: tuple[Cli, Cli, int], tmp_path: Path) -> None:
    cli, host, _ = world
    renter_key = str(cli.env["OPENCLORE_API_KEY"])
    host_key = str(host.env["OPENCLORE_API_KEY"])
    config = tmp_path / "config.toml"
    config.write_text(
        f'profile = "renter"\n\n[profiles.renter]\nurl = "{cli.market.url}"\n'
        f'api_key = "{renter_key}"\n\n[profiles.host]\nurl = "{cli.market.url}"\n'
        f'api_key = "{host_key}"\n'
    )
    bare: dict[str, str | None] = {"OPENCLORE_URL": None, "OPENCLORE_API_KEY": None}
    assert cli.json("servers", **bare) == []  # the file's default profile: the renter
    assert [s["name"] for s in cli.json("servers", "--profile", "host", **bare)] == ["rig"]
    as_host = {**bare, "OPENCLORE_PROFILE": "host"}
    assert [s["name"] for s in cli.json("servers", **as_host)] == ["rig"]
    # the environment overrides the profile, and --api-key overrides both
    assert [s["name"] for s in cli.json("servers", OPENCLORE_URL=None)] == []
    servers_as_host = cli.json("servers", "--api-key", host_key)
    assert [s["name"] for s in servers_as_host] == ["rig"]
    assert "no profile 'nope'" in cli.run(("servers", "--profile", "nope"), 1, bare).stderr
    config.write_text("this is [not toml")
    assert "cannot read" in cli.run(("servers",), 1, bare).stderr
    config.write_text(f'url = "{cli.market.url}"\napi_key = "{host_key}"\n')
    assert [s["name"] for s in cli.json("servers", **bare)] == ["rig"]


def test_ssh_execs_ssh(world: tuple[Cli, Cli, int], tmp_path: Path) -> None:
    cli, _, sid = world
    order = cli.json("rent", str(sid), "--image", IMAGE)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    fake = bin_dir / "ssh"
    record = tmp_path / "argv.json"
    fake.write_text(
        f"#!{sys.executable}\nimport json, sys\n"
        f"json.dump(sys.argv[1:], open({str(record)!r}, 'w'))\n"
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    env = {k: v for k, v in os.environ.items() if not k.startswith("OPENCLORE_")}
    env.update(
        {k: v for k, v in cli.env.items() if v is not None},
        PATH=f"{bin_dir}{os.pathsep}{env.get('PATH', '')}",
    )
    openclore = Path(sys.executable).parent / "openclore"
    done = subprocess.run(
        [str(openclore), "ssh", str(order["id"])],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    (listed,) = [o for o in cli.json("orders") if o["id"] == order["id"]]
    port = listed["tcp_ports"][0].split(":")[1]
    assert json.loads(record.read_text()) == ["-p", port, "root@localhost"]


# ----------------------------------------------------------------------------- terminal widths

HOST = "n17.fra1.example.net"  # a public hostname as long as real ones


def row_of(text: str, first: str) -> str:
    """The one line of a table whose first cell is ``first`` (cells are two spaces apart)."""
    (line,) = [line for line in text.splitlines() if line.strip().split("  ")[0] == first]
    return line


@pytest.mark.parametrize("columns", [80, 120])
def test_tables_fit_the_terminal_and_ages_follow_the_market_clock(
    world: tuple[Cli, Cli, int], market: Market, columns: int
) -> None:
    cli, _, sid = world
    market.switch.app = create_app(  # the sandbox clock: the database offset over the test's
        market.settings, db=market.db, clock=SandboxClock(market.db.engine, base=market.clock)
    )
    big = market.server(
        market.user("big host"),
        "big",
        on_demand="0.0005",
        specs={
            "gpu": "8x NVIDIA A100-SXM4-80GB",
            "gpuram": 80,
            "ram": 1024,
            "cpus": "128/256",
            "net": {"cc": "US"},
        },
    )
    set_gpus(market, sid, ["NVIDIA GeForce RTX 3090"] * 2)
    set_gpus(market, big, ["NVIDIA A100-SXM4-80GB"] * 8)
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(pub_cluster=[HOST]))

    text = cli("market", COLUMNS=str(columns)).stdout
    assert max(cell_len(line) for line in text.splitlines()) <= columns
    for server_id, gpu, price in (
        (sid, "2x RTX 3090", "0.00001"),
        (big, "8x A100-SXM4-80GB", "0.0005"),
    ):
        line = row_of(text, str(server_id))
        assert gpu in line and price in line  # the GPU and the price, whole, on the server's line
    assert ("left out at 80 columns" in text) == (columns == 80)

    order = cli.json("rent", str(sid), "--image", IMAGE, "--wait")
    ssh = order["ssh_command"]
    assert ssh.endswith(f"root@{HOST}")
    assert "0m" in row_of(cli("orders", COLUMNS=str(columns)).stdout, str(order["id"]))
    advanced = cli("sandbox", "advance", "1d").stdout
    assert "advanced 1d; market time is now 20" in advanced and " UTC" in advanced
    text = cli("orders", COLUMNS=str(columns)).stdout
    assert max(cell_len(line) for line in text.splitlines()) <= columns
    line = row_of(text, str(order["id"]))
    assert ssh in line  # the connect command whole, on the order's line
    assert "1d0h" in line.split()  # the market's clock, not this machine's
    assert "0.00001 bitcoin" in line and "running" in line
    if columns == 120:
        assert str(sid) in line.split() and "on-demand" in line and "left out" not in text


def test_narrow_terminals_fold_rather_than_squeeze(capsys: pytest.CaptureFixture[str]) -> None:
    from openclore.cli.commands.orders import ORDER_COLUMNS
    from openclore.cli.output import fit_columns, print_table

    row = ["7", "3", "on-demand", "0.00001 bitcoin", "0.0000042", "running", "50 GB", "1d0h"]
    ssh = f"ssh -p 40001 root@{HOST}"
    # the least important columns go first: spent, server, type, storage, then age and state
    assert [ORDER_COLUMNS[i].name for i in fit_columns(ORDER_COLUMNS, [[*row, ssh]], 70)] == [
        "id",
        "price/day",
        "state",
        "connect",
    ]
    print_table("narrow", ORDER_COLUMNS, [[*row, ssh]], width=30)
    text = capsys.readouterr().out
    assert max(cell_len(line) for line in text.splitlines()) <= 30
    assert "7" in text.split() and "price/day," in text  # nothing squeezed to nothing
    assert ssh.replace(" ", "") in "".join(text.split())  # the command folds, whole


def test_market_clock_is_the_servers_date() -> None:
    from openclore.cli.commands.common import MarketClock
    from openclore.cli.output import age

    clock = MarketClock()
    ahead = email.utils.formatdate(time.time() + 86400, usegmt=True)
    clock.observe(httpx.Response(200, headers={"Date": ahead}))
    assert abs(clock.now() - (time.time() + 86400)) < 3
    clock.observe(httpx.Response(200, headers={"Date": "not a date"}))  # ignored
    assert abs(clock.now() - (time.time() + 86400)) < 3
    clock.observe(httpx.Response(200, headers={"Date": email.utils.formatdate(1_000_000)}))
    assert abs(clock.now() - 1_000_000) < 3
    assert age(1_000_000 - 90061, 1_000_000) == "1d1h"
    assert age(1_000_000 - 3720, 1_000_000) == "1h02m"
    assert age(None, 1_000_000) == "-"


def test_api_answers_are_dated_with_the_market_clock(market: Market) -> None:
    """A sandbox that travelled a day dates its answers a day ahead, errors included."""
    market.clock.set(1_700_000_000)
    for path in ("/v1/marketplace", "/v1/wallets"):
        answer = market.client().get(path)
        dates = answer.headers.get_list("date")
        assert len(dates) == 1
        assert email.utils.parsedate_to_datetime(dates[0]).timestamp() == 1_700_000_000


def test_orders_on_a_market_without_the_sandbox(
    world: tuple[Cli, Cli, int], market: Market
) -> None:
    cli, _, sid = world
    market.reconfigure(sandbox=False)  # /sandbox/* answers "invalid endpoint"
    market.clock.set(time.time())  # a market whose clock is the wall clock, as in production
    order = cli.json("rent", str(sid), "--image", IMAGE, "--wait")
    line = row_of(cli("orders", COLUMNS="80").stdout, str(order["id"]))
    assert "0m" in line.split() and order["ssh_command"] in line  # the Date of the answer


def test_fees_rating_and_registry_login(world: tuple[Cli, Cli, int], market: Market) -> None:
    cli, _, sid = world
    out = cli("fees").stdout
    assert re.search(r"bitcoin\s+5\s+0\.0000003\s+2\.5\s+0\.0000001", out), out
    assert cli.json("fees")["renter_fees"]["spot"]["base"]["bitcoin"] == 2.5
    order = cli.json("rent", str(sid), "--image", IMAGE, "--registry-login", "bob:pw")
    from openclore.store.schema import orders

    with market.db.read() as conn:
        stored = conn.execute(select(orders.c.dockerhub_auth).where(orders.c.id == order["id"]))
        assert stored.scalar() == "bob:pw"  # until the pull (the demo host has none)
    assert "rated 4" in cli("cancel", str(order["id"]), "--rating", "4").stdout
    assert "order_already_rated" in cli.error("cancel", str(order["id"]), "--rating", "5")
    cli("cancel", str(order["id"]), "--rating", "9", code=2)


MARKUP = "[/] [bold red]x[/] [link=http://evil]"
BTC = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"


def test_markup_in_stored_text_is_printed_as_it_is(market: Market, tmp_path: Path) -> None:
    """Server names, the GPU models an agent reported, images, memos and reasons are anyone's
    text: printed literally by every table and line, never read as rich markup (``[/]`` ended
    the command with a MarkupError; ``[link=…]`` made a link)."""
    host = market.user("host")
    token = market.user("renter", bitcoin="0.01")
    sid = market.server(
        host, f"rig {MARKUP}", specs={"gpu": f"1x NVIDIA GeForce RTX 4090 {MARKUP}", "gpuram": 24}
    )
    set_gpus(market, sid, [f"NVIDIA GeForce RTX 4090 {MARKUP}"])
    renter, hoster = Cli(market, tmp_path, token), Cli(market, tmp_path, host)
    order = renter.json("rent", str(sid), "--image", IMAGE)
    with market.db.write() as conn:
        conn.execute(update(orders).where(orders.c.id == order["id"]).values(image=MARKUP))
    withdrawal = renter.json("withdraw", "bitcoin", "0.001", BTC)
    admin_env = {"OPENCLORE_DATABASE_URL": market.db.url}
    renter("admin", "refund", "renter", "bitcoin", "0.0001", "--reason", MARKUP, **admin_env)
    renter("admin", "withdrawals", "reject", str(withdrawal["id"]), "--reason", MARKUP, **admin_env)
    for cli, args in [
        (renter, ("market",)),
        (renter, ("transactions",)),
        (renter, ("statement", time.strftime("%Y-%m", time.gmtime()))),  # (the admin's time)
        (renter, ("withdrawals",)),
        (hoster, ("servers",)),
        (renter, ("admin", "withdrawals", "list")),
        (renter, ("admin", "audit")),
    ]:
        env = admin_env if args[0] == "admin" else {}
        text = " ".join(cli(*args, **env).stdout.split())  # (a cell may fold)
        assert MARKUP in text or MARKUP.replace(" ", "") in text.replace(" ", ""), (args, text)
    assert f"1x RTX 4090 {MARKUP}" in " ".join(renter("market").stdout.split())
    for args in (("orders",), ("orders", "--all"), ("spot", str(sid)), ("wallets",)):
        renter(*args)  # (the image shows with --json only)


def test_every_commands_help_reads_cleanly_at_80_columns() -> None:
    """No option's help loses words (rich took ``[default: …]`` for markup and left a stray
    space before the full stop) or splits one mid-word (a long list of choices as the metavar)."""
    import typer
    from typer.testing import CliRunner

    from openclore.cli.main import app

    root = typer.main.get_command(app)
    runner = CliRunner()

    def leaves(command: Any, path: list[str]) -> Iterator[tuple[list[str], Any]]:
        if isinstance(getattr(command, "commands", None), dict):  # a group (typer's own click)
            for name, sub in command.commands.items():
                yield from leaves(sub, [*path, name])
        else:
            yield path, command

    checked = 0
    for path, command in leaves(root, []):
        result = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"}, terminal_width=80)
        assert result.exit_code == 0, (path, result.output)
        # (a line may break after a hyphen, as text wrapping does)
        compact = re.sub(r"-\s+", "-", " ".join(result.output.replace("│", " ").split()))
        stray = re.findall(r".{20}\s[.,](?:\s|$)", compact)  # a space before a full stop
        assert stray == [], (path, stray)
        for param in command.params:
            text = getattr(param, "help", None)
            if text:
                expected = re.sub(r"-\s+", "-", " ".join(text.split()))
                assert expected in compact, (path, param.name, compact)
        checked += 1
    assert checked > 40


def test_what_wait_says_it_waits_for() -> None:
    from openclore.cli.commands.orders import waiting_for
    from openclore.client import Order

    base = {"id": 7, "si": 3, "currency": "bitcoin", "price": 1, "mrl": 3600, "ct": 0}
    starting = Order.model_validate({**base, "running": False})
    assert waiting_for(starting, True).startswith("waiting for the host to start it")
    unpublished = Order.model_validate({**base, "running": True})
    assert waiting_for(unpublished, True) == "running; waiting for the host to publish its SSH port"
    published = Order.model_validate(
        {**base, "running": True, "tcp_ports": ["22:40022"], "pub_cluster": ["gw.example"]}
    )
    assert waiting_for(published, True) == "running; waiting for SSH to answer on gw.example:40022"
    assert waiting_for(unpublished, False) == "waiting for it to run"


def test_orders_say_which_connections_are_simulated(
    world: tuple[Cli, Cli, int], market: Market
) -> None:
    """A demo server's order: nothing answers on its published ports, and its row says so."""
    cli, _, sid = world
    order = cli.json("rent", str(sid), "--image", IMAGE, "--port", "22:tcp", "--wait")
    for columns in ("200", "80"):
        text = cli("orders", COLUMNS=columns).stdout
        line = row_of(text, str(order["id"]))
        assert order["ssh_command"] in line  # whole, on the order's line; the mark under it
        below = text.splitlines()[text.splitlines().index(line) + 1]
        assert below.strip() == "(simulated)"
        assert below.index("(simulated)") == line.index(order["ssh_command"])
    with market.db.write() as conn:  # the same order on a server with a real agent
        conn.execute(update(servers).where(servers.c.id == sid).values(simulated=False))
    text = cli("orders").stdout
    assert order["ssh_command"] in row_of(text, str(order["id"])) and "simulated" not in text
    cli.json("cancel", str(order["id"]))
    assert "simulated" not in cli("orders", "--all").stdout

"""Keeping work in the console (SPEC §8): over plain HTTP, a host offers disk and prices storage,
a renter rents with a disk, a volume and timers, stops, starts, restarts, resets and extends
after confirmation pages, each refusal in the registry's words and each action in the audit log;
in Chromium, in the demo world and in both languages, an order stopped and started and a volume
created and deleted."""

from __future__ import annotations

import http.server
import os
import re
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, ViewportSize, expect, sync_playwright
from sqlalchemy import update

from openclore.market.audit import entries
from openclore.market.demo import RENTER_TOKEN, seed
from openclore.store.schema import gateways, orders, servers
from test_console import CHROMIUM, VIEWPORTS, Console, _serve_console, _too_wide
from test_console_http import Browserless

from support import IN_CI, Market, free_port, ok, order_body

DAY = 86400


@pytest.fixture
def served(market: Market) -> Market:
    _serve_console(market)
    return market


def _keeper(market: Market, host_token: str, name: str = "keeper") -> tuple[int, Browserless]:
    """A server whose host sets, in the console, 50 GB a rental at 0.0002 BTC a GB-day."""
    sid = market.server(host_token, name, on_demand="0.0001", spot="0.00001", mrl=720)
    host = Browserless(market, host_token)
    page = host.client.get(f"/host/servers/{name}").text
    assert 'name="disk_gb"' in page and 'name="bitcoin_storage"' in page
    where, message = host.post(
        f"/host/servers/{name}",
        availability="on",
        mrl="720",
        disk_gb="50",
        bitcoin_storage="0.0002",
    )
    assert (where, message) == (f"/host/servers/{name}", "Settings saved.")
    page = host.client.get(f"/host/servers/{name}").text
    assert 'name="disk_gb" type="number" min="0" value="50"' in page
    assert 'name="bitcoin_storage" inputmode="decimal" value="0.0002"' in page
    return sid, host


def _order(market: Market, token: str) -> dict[str, object]:
    (order,) = ok(market.client(token).post("/v1/my_orders", json={}))["orders"]
    assert isinstance(order, dict)
    return order


def test_the_console_keeps_work_over_http(served: Market) -> None:
    market = served
    host_token = market.user("host")
    sid, _ = _keeper(market, host_token)
    renter_token = market.user("renter", bitcoin="1")
    renter = Browserless(market, renter_token)
    server_page = renter.client.get(f"/servers/{sid}").text
    assert "up to 50 GB of disk" in server_page and "0.0002 bitcoin per GB per day" in server_page
    assert f'href="/volumes?server={sid}"' in server_page

    # a volume on the volumes page, then the rent form mounts it
    assert f'value="{sid}"' in renter.client.get(f"/volumes?server={sid}").text
    where, message = renter.post(
        "/volumes", server_id=str(sid), size_gb="20", name="datasets", currency="bitcoin"
    )
    assert where == "/volumes" and re.fullmatch(r"Volume #\d+ created\.", message)
    vid = int(message.split("#")[1].split()[0])
    volumes = renter.client.get("/volumes").text
    assert "datasets" in volumes and "0.004 bitcoin" in volumes and "20 GB" in volumes
    assert renter.post("/volumes", server_id=str(sid), size_gb="99", name="big")[1] == (
        "That is more disk than the host offers. GB allowed at most: 50"
    )
    assert f'name="volume_{vid}"' in renter.client.get(f"/servers/{sid}").text
    where, _ = renter.post(
        f"/servers/{sid}/rent",
        image="ubuntu",
        currency="bitcoin",
        disk_gb="30",
        stop_after_hours="2",
        terminate_after_hours="48",
        **{f"volume_{vid}": "/data"},
    )
    assert where == "/orders"
    order = _order(market, renter_token)
    oid = order["id"]
    assert order["disk_gb"] == 30 and order["volumes"] == [{"id": vid, "path": "/data"}]
    assert order["stop_at"] == market.now() + 7200 and order["mrl"] == 48 * 3600
    board = renter.client.get("/orders").text
    assert "30 GB" in board and f"#{vid}</a> → <code>/data</code>" in board
    assert f'href="/orders/{oid}/stop"' in board and "Its timer stops it" in board
    assert renter.post(f"/volumes/{vid}/delete")[1] == (
        f"A live order mounts this volume; end it first. Mounted by orders: #{oid}"
    )

    # stop: the confirmation names what stopping costs, then the post stops it
    confirm = renter.client.get(f"/orders/{oid}/stop").text
    assert f'action="/orders/{oid}/stop"' in confirm and "Stop this order?" in confirm
    assert "30 GB kept for 0.006 bitcoin a day while stopped" in confirm
    assert renter.post(f"/orders/{oid}/stop") == ("/orders", "Order stopped: its files are kept.")
    assert _order(market, renter_token)["state"] == "stopped"
    board = renter.client.get("/orders").text
    assert f'href="/orders/{oid}/start"' in board and f'href="/orders/{oid}/stop"' not in board
    assert "0.006 a day while stopped" in board
    market.advance(DAY)
    assert "storage paid: 0.006" in renter.client.get("/orders/rows").text
    assert renter.post(f"/orders/{oid}/stop")[1] == "This order is stopped already."
    assert renter.post(f"/orders/{oid}/restart")[1] == "This order is not running."

    # someone else rents the whole server: the start is refused in the registry's words
    other = market.user("other", bitcoin="1")
    theirs = Browserless(market, other)
    theirs.post(f"/servers/{sid}/rent", image="ubuntu", currency="bitcoin")
    refused = renter.post(f"/orders/{oid}/start")[1]
    assert refused == "Its GPUs are rented by someone else now; the order stays stopped."
    renter.client.cookies.set("lang", "zh-CN")
    assert renter.post(f"/orders/{oid}/start")[1] == "它的 GPU 此刻已被他人租用；订单保持停止状态。"
    renter.client.cookies.set("lang", "en")
    theirs.post(f"/orders/{_order(market, other)['id']}/cancel")
    assert renter.post(f"/orders/{oid}/start") == ("/orders", "Order started.")

    assert renter.post(f"/orders/{oid}/restart")[1] == "Restart asked of the host."
    assert "A new container is made" in renter.client.get(f"/orders/{oid}/reset").text
    assert renter.post(f"/orders/{oid}/reset")[1] == "Reset asked of the host."
    assert 'name="hours"' in renter.client.get(f"/orders/{oid}/extend").text
    before = _order(market, renter_token)["mrl"]
    assert renter.post(f"/orders/{oid}/extend", hours="5")[1] == "Order extended."
    assert _order(market, renter_token)["mrl"] == before + 5 * 3600  # type: ignore[operator]
    assert renter.post(f"/orders/{oid}/extend", hours="lots")[1].startswith("Invalid input:")
    assert renter.post(f"/orders/{oid}/extend", hours="1000")[1].startswith(
        "That is longer than the host's maximum rental length allows. Hours allowed at most:"
    )
    done = _order(market, renter_token)
    assert done["restarts"] == 1 and done["resets"] == 1

    # someone else's order and volume are not theirs to touch
    stranger = Browserless(market, market.user("stranger"))
    assert stranger.post(f"/orders/{oid}/stop")[1] == "No such order."
    asked = stranger.client.get(f"/orders/{oid}/stop")
    assert asked.status_code == 303 and asked.headers["location"] == "/orders"
    assert stranger.post(f"/volumes/{vid}/delete")[1] == "No such volume."

    renter.post(f"/orders/{oid}/cancel")
    assert f'action="/volumes/{vid}/delete"' in renter.client.get(f"/volumes/{vid}/delete").text
    assert renter.post(f"/volumes/{vid}/delete") == ("/volumes", "Volume deleted.")
    assert "datasets" not in renter.client.get("/volumes").text
    assert "datasets" in renter.client.get("/volumes?all=1").text

    with market.db.read() as conn:
        seen = {(e.action, e.target, e.detail.get("via")) for e in entries(conn)}
    for action in ("order.stop", "order.start", "order.restart", "order.reset", "order.extend"):
        assert (action, f"order:{oid}", "session") in seen, action
    for action in ("volume.create", "volume.delete"):
        assert (action, f"volume:{vid}", "session") in seen, action


def test_a_server_without_disk_says_so(served: Market) -> None:
    market = served
    sid = market.server(market.user("host"), "bare")
    renter = Browserless(market, market.user("renter", bitcoin="1"))
    assert "This host offers no disk to keep" in renter.client.get(f"/servers/{sid}").text
    where, message = renter.post(
        f"/servers/{sid}/rent", image="ubuntu", currency="bitcoin", disk_gb="10"
    )
    assert where == f"/servers/{sid}" and message == "This server offers no disk to choose."
    assert renter.post("/volumes", server_id=str(sid), size_gb="1", name="x")[1] == (
        "This server offers no disk to choose."
    )
    assert renter.post("/volumes", server_id="x1", size_gb="1", name="x")[1].startswith(
        "Invalid input:"
    )


# ----------------------------------------------------------------------------- in Chromium


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} missing: apt-get install -y --no-install-recommends chromium"
        if IN_CI:
            pytest.fail(message)
        pytest.skip(message)
    with sync_playwright() as p:
        launched = p.chromium.launch(
            executable_path=str(CHROMIUM), args=["--no-sandbox", "--disable-gpu"]
        )
        yield launched
        launched.close()


def _flash_ok(page: Page) -> None:
    flash = page.locator(".flash")
    assert "ok" in (flash.get_attribute("class") or ""), flash.inner_text()


def _shots(page: Page, tmp_path: Path, lang: str, name: str) -> None:
    """The page at each viewport (the table scrolls in its box, the page never sideways),
    screenshots in $OPENCLORE_SCREENSHOTS (default: the test's tmp_path)."""
    shots = Path(os.environ.get("OPENCLORE_SCREENSHOTS", tmp_path))
    shots.mkdir(parents=True, exist_ok=True)
    for size in VIEWPORTS:
        page.set_viewport_size(ViewportSize(width=size["width"], height=size["height"]))
        assert _too_wide(page) == [], (lang, name, size)
        path = shots / f"keeping-{lang}-{name}-{size['width']}.png"
        page.screenshot(path=str(path), full_page=True)


def _confirm(page: Page, link: str) -> None:
    """Click an action's link, then the confirmation page's button."""
    page.click(link)
    page.wait_for_selector("#confirm")
    page.click("#confirm button[type=submit]")
    page.wait_for_url(re.compile(r".*/(orders|volumes)$"))
    _flash_ok(page)


def test_demo_world_stop_start_and_a_volume_in_both_languages(
    market: Market, browser: Browser, tmp_path: Path
) -> None:
    with market.db.write() as conn:
        world = seed(conn, market.settings, market.now())
    _serve_console(market)
    console = Console(market, browser)
    # server 6's host offers disk and prices storage on its settings page
    host = console.sign_in(world.tokens["host michael"])
    host.goto(console.url + "/host/servers/michael-1080ti")
    host.fill("#settings input[name=disk_gb]", "50")
    host.fill("#settings input[name=bitcoin_storage]", "0.0002")
    host.click("#settings button[type=submit]")
    _flash_ok(host)
    api = market.client(RENTER_TOKEN)

    for lang in ("zh-CN", "en-US"):
        page = console.sign_in(RENTER_TOKEN, lang)
        page.goto(console.url + "/servers/6")
        assert page.inner_text("#disk-offer") == "50 GB"
        page.click("#keep a[href='/volumes?server=6']")
        page.wait_for_url(re.compile(r".*/volumes\?server=6$"))
        page.fill("#create-volume input[name=size_gb]", "20")
        page.fill("#create-volume input[name=name]", f"data-{lang}")
        page.click("#create-volume button[type=submit]")
        _flash_ok(page)
        (volume,) = ok(api.post("/v1/volumes", json={}))["volumes"]
        assert volume["name"] == f"data-{lang}" and volume["state"] == "ready"
        row = page.locator(f"#volumes tr[data-id='{volume['id']}']")
        assert "20 GB" in row.inner_text()

        page.goto(console.url + "/servers/6")
        page.fill("#rent input[name=disk_gb]", "30")
        page.fill(f"#rent input[name=volume_{volume['id']}]", "/data")
        page.click("#rent button[type=submit]")
        page.wait_for_url(re.compile(r".*/orders$"))
        _flash_ok(page)
        (order,) = ok(api.post("/v1/my_orders", json={}))["orders"]
        oid = order["id"]
        assert order["disk_gb"] == 30 and order["volumes"] == [
            {"id": volume["id"], "path": "/data"}
        ]
        assert "30 GB" in page.inner_text(f"#order-rows tr[data-id='{oid}'] .storage")

        _confirm(page, f"#actions-{oid} a.stop")
        assert ok(api.post("/v1/my_orders", json={}))["orders"][0]["state"] == "stopped"
        state = page.locator(f"#order-rows tr[data-id='{oid}'] .state")
        assert state.locator(".tag.busy").count() == 1
        _confirm(page, f"#actions-{oid} a.start")
        assert ok(api.post("/v1/my_orders", json={}))["orders"][0]["state"] == "running"
        assert state.locator(".tag.free").count() == 1
        _shots(page, tmp_path, lang, "orders")
        page.set_viewport_size(ViewportSize(width=1366, height=768))
        with page.expect_navigation():  # the page is /orders already: wait for the answer
            page.click(f"#actions-{oid} form.cancel button")
        _flash_ok(page)

        with page.expect_navigation():
            page.click("header nav a[href='/volumes']")
        page.wait_for_url(re.compile(r".*/volumes$"))
        _shots(page, tmp_path, lang, "volumes")
        _confirm(page, f"#volumes tr[data-id='{volume['id']}'] a.danger")
        assert ok(api.post("/v1/volumes", json={}))["volumes"] == []
        if lang == "zh-CN":
            assert "存储卷" in page.inner_text("header nav")
    assert console.catalogs_missing() == set()
    for context in console.contexts:
        context.close()
    assert console.errors == []


# ----------------------------------------------------------------------------- the Connect panel


class _Banner(socketserver.BaseRequestHandler):
    def handle(self) -> None:
        self.request.sendall(b"SSH-2.0-OpenSSH_9.6\r\n")


class _Jupyter(http.server.BaseHTTPRequestHandler):
    def do_HEAD(self) -> None:
        self.send_response(200)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def _listen(server: socketserver.TCPServer) -> socketserver.TCPServer:
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def test_connect_panel_probes_the_published_ports_in_chromium(
    served: Market, browser: Browser, tmp_path: Path
) -> None:
    """A running order's SSH line and its Jupyter port through the gateway's URL, each probed
    from the market (real listeners here); a demo server's order says "simulated"."""
    market = served
    host = market.user("host")
    real = market.server(host, "real")
    demo = market.server(host, "demo")
    renter = market.user("renter", bitcoin="1")
    api = market.client(renter)
    oid = ok(api.post("/v1/create_order", json=order_body(real)))["order_id"]
    did = ok(api.post("/v1/create_order", json=order_body(demo)))["order_id"]
    jupyter = _listen(http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Jupyter))
    ssh_port = free_port()  # nothing listens on it yet
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == real).values(simulated=False))
        conn.execute(
            gateways.insert().values(
                name="127.0.0.1",
                ssh_address="127.0.0.1:2222",
                host_key="-",
                host_key_public="-",
                http_url=f"http://127.0.0.1:{jupyter.server_address[1]}/{{order}}/{{port}}/",
            )
        )
        for order_id, port in ((oid, ssh_port), (did, 40022)):
            conn.execute(
                update(orders)
                .where(orders.c.id == order_id)
                .values(
                    pub_cluster=["127.0.0.1"],
                    tcp_ports=[f"22:{port}"],
                    http_port="8888",
                    running=True,
                    runtime_state="running",
                )
            )
    sshd: list[socketserver.TCPServer] = []
    console = Console(market, browser)
    try:
        page = console.sign_in(renter)
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.goto(console.url + "/orders")
        row = page.locator(f"#order-rows tr[data-id='{oid}']")
        ssh = row.locator(".endpoint.ssh")
        assert ssh.locator("code.ssh").inner_text() == f"ssh root@127.0.0.1 -p {ssh_port}"
        assert ssh.locator(".probe").inner_text() == "not yet"
        opener = row.locator(".endpoint.http a.open")
        assert opener.inner_text() == "Open Jupyter"
        assert opener.get_attribute("target") == "_blank"
        assert "noopener" in (opener.get_attribute("rel") or "").split()
        href = opener.get_attribute("href") or ""
        assert href.startswith(f"http://127.0.0.1:{jupyter.server_address[1]}/") and href.endswith(
            "/8888/"
        )
        assert row.locator(".endpoint.http .probe").inner_text() == "answering"
        ssh.locator("button.copy").click()
        expect(ssh.locator("button.copy")).to_have_text("Copied")
        demo_row = page.locator(f"#order-rows tr[data-id='{did}']")
        assert demo_row.locator(".probe").all_inner_texts() == ["simulated", "simulated"]
        assert demo_row.locator("code.ssh").inner_text() == "ssh root@127.0.0.1 -p 40022"

        # sshd starts: the rows' 5-second refresh says so once the kept result is stale
        sshd.append(_listen(socketserver.ThreadingTCPServer(("127.0.0.1", ssh_port), _Banner)))
        expect(ssh.locator(".probe")).to_have_text("answering", timeout=20_000)
        assert "simulated" not in row.inner_text()
        _shots(page, tmp_path, "en-US", "connect")

        # in Chinese, and stopped: not probed, the endpoints say "stopped"
        zh = Browserless(market, renter)
        rows = zh.client.get("/orders/rows", headers={"Accept-Language": "zh-CN"}).text
        assert "打开 Jupyter" in rows and "有应答" in rows and "模拟" in rows
        with market.db.write() as conn:
            conn.execute(update(orders).where(orders.c.id == oid).values(stopped=True))
        rows = zh.client.get("/orders/rows").text
        assert rows.count('class="probe stopped"') == 2
        assert f'href="{href}"' not in rows and "ssh root@127.0.0.1 -p " + str(ssh_port) in rows
    finally:
        for server in (jupyter, *sshd):
            server.shutdown()
            server.server_close()
        for context in console.contexts:
            context.close()
    assert console.catalogs_missing() == set()
    assert console.errors == []

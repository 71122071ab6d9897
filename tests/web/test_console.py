"""The web console in a real Chromium (Debian's ``chromium``, driven by Playwright), on both
databases: sign-in both ways and its refusals, a renter's rent/run/logs/cancel and spot bid, a
host's new server and prices, an operator's credit, every page in zh-CN without a missing
translation (with screenshots in both languages), no browser console errors, CSRF refusals."""

from __future__ import annotations

import os
import re
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

import httpx
import pytest
from babel.messages.extract import extract_from_dir, extract_python
from babel.messages.pofile import read_po
from playwright.sync_api import Browser, BrowserContext, ConsoleMessage, Page, sync_playwright

from openclore.api.app import create_app
from openclore.domain.money import to_units
from openclore.engine.clock import Clock, SandboxClock
from openclore.market.accounts import find_user, set_password, set_role
from openclore.store.schema import api_tokens, servers
from openclore.web.app import install_console
from openclore.web.i18n import LOCALE_DIR

from support import IN_CI, Market, ok, spot_body

CHROMIUM = Path("/usr/bin/chromium")
ROOT = Path(__file__).resolve().parents[2]
# the documentation's screenshots are rewritten only when asked for; otherwise they go to a
# scratch folder (still taken: a page that cannot render fails the test), and a test run leaves
# the working tree as it found it
SCREENSHOTS = (
    ROOT / "docs" / "screenshots"
    if os.environ.get("OPENCLORE_UPDATE_SCREENSHOTS") == "1"
    else Path(tempfile.gettempdir()) / f"openclore-screenshots-{os.getpid()}"
)
PASSWORD = "correct horse battery"


@pytest.fixture(scope="module")  # playwright holds an event loop while it runs
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


@dataclass
class Console:
    market: Market
    browser: Browser
    errors: list[str] = field(default_factory=list)
    contexts: list[BrowserContext] = field(default_factory=list)
    expected: set[int] = field(default_factory=set)  # refusal statuses a test provokes

    def _console(self, page: Page, msg: ConsoleMessage) -> None:
        if msg.type != "error":
            return
        text: str = msg.text
        # Chromium logs a refused page load (401, 403) as an error: fine where a test asks
        # for the refusal, an error anywhere else
        status = re.search(r"status of (\d+)", text)
        if (
            text.startswith("Failed to load resource")
            and status
            and int(status.group(1)) in (self.expected)
        ):
            return
        self.errors.append(f"{page.url}: {text}")

    @property
    def url(self) -> str:
        return self.market.url

    def page(self, lang: str = "en-US") -> Page:
        context = self.browser.new_context(locale=lang)
        self.contexts.append(context)
        page = context.new_page()
        page.set_default_timeout(10_000)
        page.on("console", lambda msg: self._console(page, msg))
        page.on("pageerror", lambda exc: self.errors.append(f"{page.url}: {exc}"))
        return page

    def sign_in(self, token: str, lang: str = "en-US") -> Page:
        page = self.page(lang)
        page.goto(self.url + "/signin")
        page.fill("#token-form input[name=token]", token)
        page.click("#token-form button[type=submit]")
        page.wait_for_url(re.compile(r".*/market$"))
        return page

    def catalogs_missing(self) -> set[str]:
        missing: set[str] = self.market.switch.app.state.console.catalogs.missing
        return missing


def _serve_console(market: Market, clock: Clock | None = None) -> None:
    app = create_app(market.settings, db=market.db, clock=clock or market.clock)
    install_console(app)
    market.switch.app = app


@pytest.fixture
def console(market: Market, browser: Browser) -> Iterator[Console]:
    _serve_console(market)
    c = Console(market, browser)
    yield c
    for context in c.contexts:
        context.close()
    assert c.errors == [], "browser console errors"


def _password_user(market: Market, name: str, admin: bool = False) -> str:
    token = market.user(name)
    with market.db.write() as conn:
        uid = find_user(conn, name)
        set_password(conn, uid, PASSWORD)
        if admin:
            set_role(conn, uid, "admin")
    return token


# ----------------------------------------------------------------------------- sign-in


def test_sign_in_with_token_and_password_and_refusals(console: Console) -> None:
    market = console.market
    token = _password_user(market, "alice")
    console.expected.add(401)  # the refused sign-ins answer 401
    page = console.page()
    page.goto(console.url + "/")
    page.wait_for_url(re.compile(".*/signin"))
    # a wrong token and a wrong password are refused
    page.fill("#token-form input[name=token]", "not-a-token")
    page.click("#token-form button[type=submit]")
    assert "Unknown or revoked API token." in page.inner_text("main")
    page.fill("#password-form input[name=username]", "alice")
    page.fill("#password-form input[name=password]", "wrong password")
    page.click("#password-form button[type=submit]")
    assert "Wrong username or password." in page.inner_text("main")
    assert "/signin" in page.url
    # the token signs in
    page.fill("#token-form input[name=token]", token)
    page.click("#token-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/market$"))
    cookies = {c["name"]: c for c in page.context.cookies()}
    session = cookies["oc_session"]
    assert session["httpOnly"] is True and session["sameSite"] == "Lax"
    assert session["secure"] is False  # plain HTTP here; Secure behind HTTPS (test below)
    # sign out, then the password signs in
    page.click("header form[action='/signout'] button")
    page.wait_for_url(re.compile(".*/signin"))
    page.goto(console.url + "/orders")
    page.wait_for_url(re.compile(".*/signin"))
    page.fill("#password-form input[name=username]", "alice")
    page.fill("#password-form input[name=password]", PASSWORD)
    page.click("#password-form button[type=submit]")
    page.wait_for_url(re.compile(r".*/orders$"))
    assert "alice" in page.inner_text("header")


def _signin_form(client: httpx.Client) -> str:
    page = client.get("/signin")
    match = re.search(r'name="csrf" value="([^"]+)"', page.text)
    assert match is not None
    return match.group(1)


def test_sign_in_attempts_are_rate_limited_and_secure_behind_https(market: Market) -> None:
    _serve_console(market)
    token = market.user("bob")
    with httpx.Client(base_url=market.url) as client:
        csrf = _signin_form(client)
        codes = [
            client.post("/signin", data={"csrf": csrf, "token": f"wrong-{i}"}).status_code
            for i in range(6)
        ]
        assert codes[:5] == [401] * 5 and codes[5] == 429
        refused = client.post("/signin", data={"csrf": csrf, "token": token})
        assert refused.status_code == 429  # even the right token waits
    # behind an HTTPS proxy the cookie is Secure
    with market.db.write() as conn:
        conn.exec_driver_sql("DELETE FROM rate_limits")
    with httpx.Client(base_url=market.url, headers={"X-Forwarded-Proto": "https"}) as other:
        form = other.get("/signin")
        assert "Secure" in form.headers["set-cookie"]  # the sign-in form's CSRF cookie too
        csrf = form.cookies["oc_csrf"]  # a Secure cookie: sent back by hand over plain HTTP
        answer = other.post(
            "/signin",
            data={"csrf": csrf, "token": token},
            headers={"Cookie": f"oc_csrf={csrf}"},
        )
        assert answer.status_code == 303
        cookie = answer.headers["set-cookie"]
        assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=lax" in cookie


def test_csrf_less_posts_are_refused(market: Market) -> None:
    _serve_console(market)
    host = market.user("host")
    sid = market.server(host, "rig")
    renter = market.user("renter", bitcoin="1")
    with httpx.Client(base_url=market.url) as client:
        # the sign-in form itself needs its token
        assert client.post("/signin", data={"token": renter}).status_code == 403
        csrf = _signin_form(client)
        assert client.post("/signin", data={"csrf": "forged", "token": renter}).status_code == 403
        assert client.post("/signin", data={"csrf": csrf, "token": renter}).status_code == 303
        page = client.get("/market").text
        match = re.search(r'name="csrf" value="([^"]+)"', page)
        assert match is not None
        session_csrf = match.group(1)
        form = {"image": "cloreai/ubuntu20.04-jupyter", "currency": "bitcoin"}
        for data in (form, {**form, "csrf": csrf}, {**form, "csrf": "x" * 32}):
            refused = client.post(f"/servers/{sid}/rent", data=data)
            assert refused.status_code == 403 and "refused" in refused.text
        assert ok(market.client(renter).get("/v1/my_orders"))["orders"] == []
        for path in ("/signout", "/host/add", "/admin/credit", "/sandbox/advance"):
            assert client.post(path, data={}).status_code == 403
        # with the session's token the same post goes through
        done = client.post(f"/servers/{sid}/rent", data={**form, "csrf": session_csrf})
        assert done.status_code == 303 and done.headers["location"] == "/orders"
        assert len(ok(market.client(renter).get("/v1/my_orders"))["orders"]) == 1


# ----------------------------------------------------------------------------- renter


def _two_servers(market: Market) -> tuple[int, int]:
    host = market.user("host")
    s3090 = market.server(host, "rig-3090", on_demand="0.00002", spot="0.000001")
    s4090 = market.server(
        host,
        "rig-4090",
        on_demand="0.00005",
        spot="0.000002",
        specs={"gpu": "2x NVIDIA GeForce RTX 4090", "gpuram": 24, "net": {"cc": "DE"}},
    )
    _gpus(market, s4090, ["NVIDIA GeForce RTX 4090"] * 2)
    return s3090, s4090


def _gpus(market: Market, server_id: int, names: list[str]) -> None:
    """The GPU names as the agent reports them (the helper's server says one 3090)."""
    with market.db.write() as conn:
        conn.execute(servers.update().where(servers.c.id == server_id).values(gpu_array=names))


def test_renter_filters_rents_sees_running_opens_logs_and_cancels(console: Console) -> None:
    market = console.market
    s3090, s4090 = _two_servers(market)
    renter = market.user("renter", bitcoin="0.01")
    page = console.sign_in(renter)
    rows = page.locator("#servers tbody tr[data-id]")
    assert rows.count() == 2
    page.fill("#filters input[name=gpu]", "4090")
    page.select_option("#filters select[name=sort]", "price")
    page.click("#filters button[type=submit]")
    page.wait_for_url(re.compile(r".*gpu=4090.*"))
    assert rows.count() == 1
    row = page.locator(f"#servers tr[data-id='{s4090}']")
    assert "0.00005" in row.inner_text()  # per day
    assert "0.000002" in row.inner_text()  # per hour (0.00005 / 24, in units)
    row.locator("a").click()
    page.wait_for_url(re.compile(f".*/servers/{s4090}$"))
    quote = page.inner_text("#quote")
    assert "per hour" in quote and "your wallet lasts" in quote
    page.click("#rent button[type=submit]")
    page.wait_for_url(re.compile(r".*/orders$"))
    assert "Order created." in page.inner_text(".flash")
    (order,) = ok(market.client(renter).get("/v1/my_orders"))["orders"]
    state = page.locator(f"#order-rows tr[data-id='{order['id']}'] .state")
    assert "running" in state.inner_text()
    # the connect box once the agent published its ports (the simulated runtime's answer)
    page.goto(console.url + f"/orders/{order['id']}/logs")
    # a demo (simulated) server's container output, through the market's order_logs use case
    logs = page.inner_text("#logs")
    assert f"order {order['id']}: container started from cloreai/ubuntu20.04-jupyter" in logs
    page.goto(console.url + "/orders")
    page.fill(f"#actions-{order['id']} input[name=issue]", "too slow")
    page.click(f"#actions-{order['id']} form.cancel button")
    page.wait_for_url(re.compile(r".*/orders$"))
    assert "Order cancelled." in page.inner_text(".flash")
    assert ok(market.client(renter).get("/v1/my_orders"))["orders"] == []
    assert s3090 != s4090


def test_spot_bid_lowered_once_shows_the_countdown(console: Console) -> None:
    market = console.market
    _, s4090 = _two_servers(market)
    renter = market.user("renter", bitcoin="0.01")
    page = console.sign_in(renter)
    page.goto(console.url + f"/servers/{s4090}")
    page.check("#rent input[name=type][value=spot]")
    page.fill("#rent input[name=spotprice]", "0.00001")
    page.click("#rent button[type=submit]")
    page.wait_for_url(re.compile(r".*/orders$"))
    (order,) = ok(market.client(renter).get("/v1/my_orders"))["orders"]
    actions = page.locator(f"#actions-{order['id']}")
    # before trying: the lowest allowed bid (one minimum spot price below) and no wait
    assert actions.locator(".lowest").inner_text() == "0.000008"
    assert "You may lower it now." in actions.locator(".countdown").inner_text()
    actions.locator("input[name=price]").fill("0.000008")
    actions.locator("form.bid button").click()
    page.wait_for_url(re.compile(r".*/orders$"))
    assert "Bid changed." in page.inner_text(".flash")
    (order,) = ok(market.client(renter).get("/v1/my_orders"))["orders"]
    assert order["price"] == 0.000008
    countdown = actions.locator(".countdown")
    text = countdown.inner_text()
    seconds = int(_number(text))
    assert 590 <= seconds <= 600
    page.wait_for_timeout(1200)
    later = int(_number(countdown.inner_text()))
    assert later < seconds  # it counts down in the page
    # a second lowering inside the window is refused with the wait
    actions.locator("input[name=price]").fill("0.000006")
    actions.locator("form.bid button").click()
    page.wait_for_url(re.compile(r".*/orders$"))
    flash = page.inner_text(".flash")
    assert "once every 600 seconds" in flash and "Seconds left: 600" in flash


def _number(text: str) -> str:
    found = re.search(r"(\d+) s", text)
    assert found is not None, text
    return found.group(1)


# ----------------------------------------------------------------------------- host, operator


def test_host_adds_a_server_and_changes_its_prices(console: Console) -> None:
    market = console.market
    host = market.user("host")
    page = console.sign_in(host)
    page.click("header nav a[href='/host']")
    page.fill("#add-server input[name=name]", "garage-rig")
    page.click("#add-server button")
    token = page.inner_text("#init-token")
    assert len(token) == 48
    command = page.inner_text("#agent-command")
    assert command == (
        f"sudo /opt/openclore/venv/bin/openclore agent --server-url {console.url} "
        f"--init-token {token}"
    )
    page.click("text=Set its prices")
    page.fill("#settings input[name=bitcoin_on_demand]", "0.00002")
    page.fill("#settings input[name=bitcoin_spot]", "0.000003")
    page.fill("#settings input[name=mrl]", "48")
    page.click("#settings button[type=submit]")
    assert "Settings saved." in page.inner_text(".flash")
    config = ok(market.client(host).post("/v1/server_config", json={"server_name": "garage-rig"}))[
        "config"
    ]
    assert config["pricing"]["bitcoin"] == 0.00002
    assert config["spot_pricing"]["bitcoin"] == 0.000003
    assert config["mrl"] == 48
    page.goto(console.url + "/host")
    row = page.locator("#my-servers tr[data-name='garage-rig']")
    assert "0.00002 bitcoin" in row.inner_text()


def test_admin_credits_a_wallet_and_others_may_not(console: Console) -> None:
    market = console.market
    admin = _password_user(market, "operator", admin=True)
    renter = market.user("renter")
    plain = console.sign_in(renter)
    console.expected.add(403)
    plain.goto(console.url + "/admin")
    assert "refused" in plain.inner_text("main")
    assert plain.locator("header nav a[href='/admin']").count() == 0
    page = console.sign_in(admin)
    page.click("header nav a[href='/admin']")
    page.fill("#credit input[name=user]", "renter")
    page.select_option("#credit select[name=currency]", "bitcoin")
    page.fill("#credit input[name=amount]", "0.25")
    page.click("#credit button")
    assert "Wallet credited." in page.inner_text(".flash")
    wallets = ok(market.client(renter).get("/v1/wallets"))["wallets"]
    assert [w["balance"] for w in wallets if w["name"] == "bitcoin"] == [0.25]


# ----------------------------------------------------------------------------- languages


def _busy_market(market: Market) -> tuple[str, str, str, int]:
    """A market with something on every page: servers, a running order, a bid, spend."""
    host = _password_user(market, "host")
    s3090, s4090 = _two_servers_for(market, host)
    renter = market.user("renter", bitcoin="0.01")
    r = market.client(renter)
    ok(
        r.post(
            "/v1/create_order",
            json={
                "currency": "bitcoin",
                "image": "cloreai/ubuntu20.04-jupyter",
                "type": "on-demand",
                "renting_server": s3090,
                "ports": {"22": "tcp", "8888": "http"},
            },
        )
    )
    ok(r.post("/v1/create_order", json=spot_body(s4090, "0.00001")))
    market.advance(7200)
    admin = _password_user(market, "operator", admin=True)
    return host, renter, admin, s4090


def _two_servers_for(market: Market, host: str) -> tuple[int, int]:
    a = market.server(host, "rig-3090", on_demand="0.00002", spot="0.000001")
    b = market.server(
        host,
        "rig-4090",
        on_demand="0.00005",
        spot="0.000002",
        specs={"gpu": "2x NVIDIA GeForce RTX 4090", "gpuram": 24, "net": {"cc": "DE"}},
    )
    _gpus(market, b, ["NVIDIA GeForce RTX 4090"] * 2)
    return a, b


def test_every_page_in_both_languages_without_missing_translations(
    console: Console, backend: str
) -> None:
    market = console.market
    host, renter, admin, s4090 = _busy_market(market)
    order_id = ok(market.client(renter).get("/v1/my_orders"))["orders"][0]["id"]
    pages = {
        "market": "/market",
        "server": f"/servers/{s4090}",
        "orders": "/orders",
        "logs": f"/orders/{order_id}/logs",
        "wallets": "/wallets",
        "host": "/host",
        "host-server": "/host/servers/rig-4090",
        "admin": "/admin",
    }
    who = {"host": host, "host-server": host, "admin": admin}
    # what each page exists for, in words that are data (the same in both languages)
    shows = {
        "market": ["RTX 4090", "RTX 3090"],
        "server": [f"#{s4090}", "RTX 4090", "DE"],
        "orders": [f"#{order_id}", "bitcoin", "ssh root@"],
        "logs": [f"order {order_id}", "[simulated]"],
        "wallets": ["bitcoin"],
        "host": ["rig-3090", "rig-4090"],
        "host-server": ["rig-4090"],
        "admin": ["renter", "operator", "rig-4090"],
    }
    shots = backend == "sqlite"  # one set of screenshots per run
    for lang, tag in (("zh-CN", "zh-CN"), ("en-US", "en")):
        signin = console.page(lang)
        signin.goto(console.url + "/signin")
        assert signin.locator("html").get_attribute("lang") == tag
        if lang == "zh-CN":
            assert "API 令牌" in signin.inner_text("#token-form")
        if shots:
            _shot(signin, tag, "signin")
        tabs: dict[str, Page] = {}
        for name, path in pages.items():
            token = who.get(name, renter)
            if token not in tabs:
                tabs[token] = console.sign_in(token, lang)
            page = tabs[token]
            answer = page.goto(console.url + path)
            assert answer is not None and answer.status == 200, name
            assert page.locator("html").get_attribute("lang") == tag, name
            page.wait_for_load_state("networkidle")
            headers = answer.headers
            assert "default-src 'self'" in headers.get("content-security-policy", ""), name
            assert headers.get("x-frame-options") == "DENY", name
            text = page.inner_text("main")
            missing = [word for word in shows[name] if word not in text]
            assert missing == [], (name, lang, missing)
            if shots:
                _shot(page, tag, name)
        if shots:  # the marketplace on a phone
            phone = tabs[renter]
            phone.set_viewport_size({"width": 390, "height": 844})
            phone.goto(console.url + "/market")
            phone.screenshot(path=str(SCREENSHOTS / tag / "market-phone.png"), full_page=False)
            phone.set_viewport_size({"width": 1280, "height": 800})
            phone.goto(console.url + "/prefs?theme=dark&next=/orders")
            phone.screenshot(path=str(SCREENSHOTS / tag / "orders-dark.png"), full_page=True)
    assert console.catalogs_missing() == set()
    # switching language by the header link
    page = console.sign_in(renter)
    page.click("header a[lang='zh-CN']")
    assert "市场" in page.inner_text("header nav")


PHONE = {"width": 390, "height": 844}
# the wide table of each page whose rows are cards on a phone
CARD_TABLES = {
    "orders": "#orders",
    "market": "#servers",
    "server": "#prices",
    "host": "#my-servers",
}


def _cards(page: Page, table: str) -> dict[str, object]:
    """How the table's first row is shown: its head's display and its row's, how many columns have
    a heading, for each labelled cell the label its ``::before`` shows next to its column's
    heading, and how many cells stick out of the window."""
    found: dict[str, object] = page.evaluate(
        """table => {
             const t = document.querySelector(table);
             const heads = Array.from(t.querySelectorAll('thead th'), th => th.textContent.trim());
             const row = t.querySelector('tbody tr');
             const cells = Array.from(row.querySelectorAll('td'));
             return {
               thead: getComputedStyle(t.querySelector('thead')).display,
               row: getComputedStyle(row).display,
               headed: heads.filter(Boolean).length,
               labels: cells.filter(td => td.dataset.label !== undefined).map(td => [
                 getComputedStyle(td, '::before').content, heads[td.cellIndex]]),
               overflowing: cells.filter(td => td.getBoundingClientRect().right
                                                > window.innerWidth + 1).length,
             };
           }""",
        table,
    )
    return found


def _out_of_cards(page: Page) -> list[str]:
    """The tables (by id) that stick out of the card holding them, with by how many pixels."""
    found: list[str] = page.evaluate(
        """Array.from(document.querySelectorAll('.card table'))
             .map(t => [t, t.closest('.card').getBoundingClientRect()])
             .filter(([t, card]) => t.getBoundingClientRect().right > card.right - 1)
             .map(([t, card]) => t.id + ' ' + Math.round(t.getBoundingClientRect().right
                                                           - card.right) + 'px')"""
    )
    return found


def test_on_a_phone_wide_tables_are_cards_and_charts_follow_their_box(
    console: Console, backend: str
) -> None:
    market = console.market
    host, renter, _, s4090 = _busy_market(market)
    with open(LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "messages.po", "rb") as f:
        chinese = {m.id: m.string for m in read_po(f) if m.id}
    paths = {
        "orders": "/orders",
        "market": "/market",
        "server": f"/servers/{s4090}",
        "host": "/host",
    }
    for lang, first in (("zh-CN", chinese["Order"]), ("en-US", "Order")):
        tabs = {renter: console.sign_in(renter, lang), host: console.sign_in(host, lang)}
        for name, path in paths.items():
            page = tabs[host if name == "host" else renter]
            page.set_viewport_size(PHONE)
            page.goto(console.url + path)
            page.wait_for_load_state("networkidle")
            assert page.evaluate("document.documentElement.scrollWidth") <= 390, (name, lang)
            assert _too_wide(page) == [], (name, lang)
            cards = _cards(page, CARD_TABLES[name])
            assert cards["thead"] == "none" and cards["row"] == "block", (name, lang, cards)
            assert cards["overflowing"] == 0, (name, lang)
            labels = cards["labels"]
            assert isinstance(labels, list) and len(labels) == cards["headed"], (name, lang)
            # each cell is labelled with its column's heading, in the page's language
            assert all(shown == f'"{heading}"' for shown, heading in labels), (name, lang, labels)
            if name == "orders":
                assert labels[0] == [f'"{first}"', first], lang
                assert page.locator("#orders td.connect code.ssh").first.is_visible()
        # a button in a card still works: the SSH line's copy button says it copied
        page = tabs[renter]
        page.context.grant_permissions(["clipboard-read", "clipboard-write"])
        page.goto(console.url + "/orders")
        copy = page.locator("#orders td.connect button.copy").first
        copy.click()
        page.wait_for_selector("#orders td.connect button.copy.copied")
        assert "ssh root@" in page.evaluate("navigator.clipboard.readText()")
        # wide again, the tables are tables, inside their boxes
        page.set_viewport_size({"width": 1366, "height": 768})
        page.goto(console.url + f"/servers/{s4090}")
        assert _cards(page, "#prices")["thead"] == "table-header-group"
        assert _out_of_cards(page) == [], lang
        # a chart drawn wide follows its box when the window narrows
        page = tabs[host]
        page.set_viewport_size({"width": 1366, "height": 768})
        page.goto(console.url + "/host")
        canvas = page.locator(".chart canvas").first
        canvas.wait_for()
        wide = canvas.bounding_box()
        assert wide is not None and wide["width"] > 400, wide
        page.set_viewport_size(PHONE)
        page.wait_for_function(
            """() => {
                 const chart = document.querySelector('.chart');
                 const canvas = chart.querySelector('canvas');
                 return canvas.getBoundingClientRect().width <= chart.clientWidth;
               }"""
        )
        narrow = canvas.bounding_box()
        assert narrow is not None and narrow["width"] < wide["width"]
        assert _too_wide(page) == [], lang
    assert console.catalogs_missing() == set()


def _shot(page: Page, lang: str, name: str) -> None:
    folder = SCREENSHOTS / lang
    folder.mkdir(parents=True, exist_ok=True)
    page.set_viewport_size({"width": 1280, "height": 800})
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)


def test_catalog_translates_every_string_of_the_console() -> None:
    """Every string the templates and the console's code mark is in the zh-CN catalog, with a
    translation (a page not walked above still cannot show English to a Chinese reader)."""
    web = ROOT / "src" / "openclore" / "web"
    method_map = [("**.py", "python"), ("**/templates/**.html", "jinja2")]
    options = {"**/templates/**.html": {"extensions": "jinja2.ext.i18n"}}
    keywords = {"_": None, "gettext": None, "N_": None, "t": (2,)}
    marked = {
        msgid
        for _, _, msgid, _, _ in extract_from_dir(
            str(web), method_map, options_map=options, keywords=keywords
        )
    }
    # the error registry's sentences, shown by the console
    with open(ROOT / "src" / "openclore" / "domain" / "errors.py", "rb") as source:
        marked |= {msgid for _, _, msgid, _ in extract_python(source, ["N_"], [], {}) if msgid}
    with open(LOCALE_DIR / "zh_CN" / "LC_MESSAGES" / "messages.po", "rb") as f:
        catalog = read_po(f)
    translated = {m.id: m.string for m in catalog if m.id}
    assert len(marked) > 150
    assert sorted(m for m in marked if not translated.get(m)) == []


# ----------------------------------------------------------------------------- sandbox


def test_sandbox_banner_moves_the_market_clock(market: Market, browser: Browser) -> None:
    _serve_console(market, SandboxClock(market.db.engine))
    c = Console(market, browser)
    host = market.user("host")
    sid = market.server(host, "rig", on_demand="0.00024")
    renter = market.user("renter", bitcoin="0.01")
    ok(
        market.client(renter).post(
            "/v1/create_order",
            json={
                "currency": "bitcoin",
                "image": "cloreai/ubuntu20.04-jupyter",
                "type": "on-demand",
                "renting_server": sid,
            },
        )
    )
    page = c.sign_in(renter)
    before = page.inner_text(".sandbox time")
    page.click(".sandbox button[value='3600']")
    assert "clock moved forward" in page.inner_text(".flash")
    after = page.inner_text(".sandbox time")
    assert after != before
    (order,) = ok(market.client(renter).get("/v1/my_orders"))["orders"]
    # one hour at 0.00024 a day, plus the few real seconds the sandbox clock also runs
    spend = to_units(Decimal(str(order["spend"])))
    assert 10_000 <= spend < 10_100
    for context in c.contexts:
        context.close()
    assert c.errors == []


# ----------------------------------------------------------------------------- console parity

BTC_ADDRESS = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
VIEWPORTS = ({"width": 1366, "height": 768}, {"width": 390, "height": 844})


def _too_wide(page: Page) -> list[str]:
    """Empty when no page is wider than the window (tables scroll inside their own box); else
    what sticks out, to say where."""
    if not page.evaluate(
        "document.documentElement.scrollWidth > window.innerWidth"
        " || document.body.scrollWidth > window.innerWidth"
    ):
        return []
    found: list[str] = page.evaluate(
        """Array.from(document.querySelectorAll('body *'))
             .filter(e => e.getBoundingClientRect().right > window.innerWidth + 1)
             .slice(0, 5)
             .map(e => e.tagName.toLowerCase() + (e.id ? '#' + e.id : '')
                       + ' ' + Math.round(e.getBoundingClientRect().right) + 'px')"""
    )
    return ["the page scrolls sideways", *found]


def test_money_self_service_and_operator_pages_in_both_languages(
    console: Console, backend: str
) -> None:
    market = console.market
    console.expected.add(404)  # the unknown page walked on purpose
    host, renter, admin, s4090 = _busy_market(market)
    r = market.client(renter)
    hook = ok(r.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/hook"}))["id"]
    ok(r.post("/v1/ping_webhook", json={"id": hook}))
    withdrawal = ok(
        r.post(
            "/v1/withdraw", json={"currency": "bitcoin", "amount": 0.001, "address": BTC_ADDRESS}
        )
    )["withdrawal"]["id"]
    with market.db.read() as conn:
        prefix = (
            conn.execute(
                api_tokens.select().where(api_tokens.c.user_id == find_user(conn, "renter"))
            )
            .first()
            .prefix
        )
    pages = {
        "market": "/market",
        "orders": "/orders",
        "wallets": "/wallets",
        "host": "/host",
        "server": f"/servers/{s4090}",
        "transactions": "/money/transactions",
        "transactions-all": "/money/transactions?all=1&kind=spend",
        "statement": "/money/statement",
        "deposits": "/money/deposits",
        "withdrawals": "/money/withdrawals",
        "keys": "/account/keys",
        "key-revoke": f"/account/keys/{prefix}/revoke",
        "ssh-keys": "/account/ssh-keys",
        "templates": "/account/templates",
        "standing": "/account/standing",
        "webhooks": "/account/webhooks",
        "webhook": f"/account/webhooks/{hook}",
        "webhook-delete": f"/account/webhooks/{hook}/delete",
        "events": "/account/events",
        "sandbox-reset": "/sandbox/world/reset",
        "admin-overview": "/admin",
        "admin-withdrawals": "/admin/withdrawals",
        "admin-reject": f"/admin/withdrawals/{withdrawal}/reject",
        "admin-deposits": "/admin/deposits",
        "admin-audit": "/admin/audit?action=withdrawal",
        "not-found": "/no/such/page",
    }
    shows = {
        "transactions": ["bitcoin", "0.01"],
        "statement": ["bitcoin", "PDF"],
        "deposits": ["0.01"],
        "withdrawals": [BTC_ADDRESS],
        "keys": [prefix],
        "key-revoke": [prefix],
        "webhooks": ["127.0.0.1:9/hook"],
        "webhook": ["127.0.0.1:9/hook"],
        "webhook-delete": [f"#{hook}"],
        "events": ["webhook.ping"],
        "admin-overview": ["renter", "operator"],
        "admin-withdrawals": [BTC_ADDRESS, "renter"],
        "admin-reject": [f"#{withdrawal}"],
        "admin-deposits": ["renter", "0.01"],
        "admin-audit": ["withdrawal.request"],
    }
    for lang, tag in (("zh-CN", "zh-CN"), ("en-US", "en")):
        tabs = {renter: console.sign_in(renter, lang), admin: console.sign_in(admin, lang)}
        for name, path in pages.items():
            page = tabs[admin if name.startswith("admin") else renter]
            for size in VIEWPORTS:
                page.set_viewport_size(size)
                answer = page.goto(console.url + path)
                assert answer is not None, name
                assert answer.status == (404 if name == "not-found" else 200), (name, lang)
                assert page.locator("html").get_attribute("lang") == tag, name
                page.wait_for_load_state("networkidle")
                assert _too_wide(page) == [], (name, lang, size)
            text = page.inner_text("main")
            missing = [word for word in shows.get(name, []) if word not in text]
            assert missing == [], (name, lang, missing)
            if backend == "sqlite" and name in ("transactions", "keys", "admin-withdrawals"):
                _shot(page, tag, name)
    assert console.catalogs_missing() == set()
    # a key made and revoked in the browser, with the confirmation step
    page = console.sign_in(host)
    page.goto(console.url + "/account/keys")
    page.click("#create-key button[type=submit]")
    secret = page.inner_text("#secret").strip()
    ok(market.client(secret).get("/v1/wallets"))
    page.click("text=Done")
    page.click(f"tr[data-prefix='{secret[:8]}'] a.danger")
    page.click("#confirm button[type=submit]")
    assert "API key revoked." in page.inner_text(".flash")
    assert market.client(secret).get("/v1/wallets").json()["code"] == 3
    # a withdrawal asked for in the browser, refused with the registry's sentence
    page.goto(console.url + "/money/withdrawals")
    page.fill("#withdraw input[name=amount]", "0.0001")
    page.fill("#withdraw input[name=address]", "not-an-address")
    page.click("#withdraw button[type=submit]")
    assert "That is not a valid address for this currency." in page.inner_text(".flash")

"""The console's forms over plain HTTP (no browser): the operator's actions, refusals shown as
messages, the money-over-time read models with a moved clock, and the CLI's password users."""

from __future__ import annotations

import base64
import json
import re
import subprocess
import sys
import time
from decimal import Decimal

import httpx
import pytest
from sqlalchemy import select

from openclore.api.app import create_app
from openclore.engine.clock import ManualClock
from openclore.market import read_models as console_service
from openclore.market.accounts import (
    check_password,
    find_user,
    issue_token,
    revoke_token,
    set_password,
    set_role,
)
from openclore.store.schema import api_tokens, gateways, orders, servers
from openclore.web.app import install_console
from openclore.web.i18n import negotiate

from support import Market, ok, order_body, spot_body

PASSWORD = "correct horse battery"


class Browserless:
    """A signed-in session of the console driven with httpx (cookies kept by the client)."""

    def __init__(self, market: Market, token: str) -> None:
        self.client = httpx.Client(base_url=market.url, timeout=30)
        market.clients.append(self.client)
        form = self.client.get("/signin").text
        signed = self.client.post("/signin", data={"csrf": _csrf(form), "token": token})
        assert signed.status_code == 303
        self.csrf = _csrf(self.client.get("/market").text)

    def post(self, path: str, **data: str) -> tuple[str, str]:
        """Post a form; returns where it redirected and the one-time message shown there."""
        answer = self.client.post(path, data={"csrf": self.csrf, **data})
        assert answer.status_code == 303, answer.text
        flash = answer.cookies.get("flash")
        message = json.loads(base64.urlsafe_b64decode(flash))["text"] if flash else ""
        return answer.headers["location"], message


def _csrf(page: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', page)
    assert found is not None
    return found.group(1)


def _serve_console(market: Market) -> Market:
    app = create_app(market.settings, db=market.db, clock=market.clock)
    install_console(app)
    market.switch.app = app
    return market


@pytest.fixture
def served(market: Market) -> Market:
    return _serve_console(market)


def _operator(market: Market) -> str:
    token = market.user("operator")
    with market.db.write() as conn:
        uid = find_user(conn, "operator")
        set_role(conn, uid, "admin")
    return token


def test_operator_hides_removes_issues_and_revokes(served: Market) -> None:
    market = served
    admin = Browserless(market, _operator(market))
    host = market.user("host")
    hidden = market.server(host, "one")
    removed = market.server(host, "two")
    renter = market.user("renter", bitcoin="1")
    ok(market.client(renter).post("/v1/create_order", json=order_body(removed)))
    assert admin.post(f"/admin/servers/{hidden}/hide") == ("/admin", "Server hidden.")
    assert admin.post(f"/admin/servers/{removed}/remove") == ("/admin", "Server removed.")
    listed = [s["id"] for s in ok(market.client().get("/v1/marketplace"))["servers"]]
    assert hidden not in listed and removed not in listed
    # the removed server's order ended now
    assert ok(market.client(renter).get("/v1/my_orders"))["orders"] == []
    assert admin.post(f"/admin/servers/{removed}/remove")[1] == "No such server."
    # a token issued to the renter works, is shown once, and can be revoked by its prefix
    _, message = admin.post("/admin/token", user="renter")
    assert message == "Token issued."
    page = admin.client.get("/admin").text
    issued = re.search(r'<code id="issued">([A-Za-z0-9]+)</code>', page)
    assert issued is not None
    new_token = issued.group(1)
    ok(market.client(new_token).get("/v1/wallets"))
    assert admin.post("/admin/revoke", user="renter", prefix=new_token[:8])[1] == "Token revoked."
    assert market.client(new_token).get("/v1/wallets").json()["code"] == 3
    assert admin.post("/admin/token", user="nobody")[1] == "No such user."
    assert admin.post("/admin/credit", user="renter", currency="bitcoin", amount="x")[1] == (
        "Enter a price as a positive number."
    )
    # the operator pages are the operator's only
    other = Browserless(market, renter)
    assert other.client.get("/admin").status_code == 403
    assert other.client.post(
        "/admin/token", data={"csrf": other.csrf, "user": "x"}
    ).status_code == (403)


def test_market_refusals_come_back_as_messages(served: Market) -> None:
    market = served
    host = market.user("host")
    sid = market.server(host, "rig", on_demand="0.001")
    renter = Browserless(market, market.user("poor"))
    image = "cloreai/ubuntu20.04-jupyter"
    where, message = renter.post(f"/servers/{sid}/rent", image=image, currency="bitcoin")
    assert where == f"/servers/{sid}"
    assert message == "Your wallet does not hold enough for this."
    where, message = renter.post(f"/servers/{sid}/rent", image="bad image!", currency="bitcoin")
    assert message.startswith("Invalid input:")
    own = Browserless(market, host)
    assert own.post(f"/servers/{sid}/rent", image=image)[1] == "You cannot rent your own server."
    assert own.post("/host/servers/nope", mrl="5")[1] == "No such server."
    assert own.post("/host/servers/rig", mrl="five")[1] == (
        "Enter the maximum rental length in whole hours."
    )
    assert own.post("/host/add", name="rig")[1] == "You have a server with this name already."
    # the Chinese reader gets the same refusal in Chinese
    own.client.cookies.set("lang", "zh-CN")
    assert own.post("/host/add", name="rig")[1] == "您已有同名服务器。"
    for huge in ("1e30", "-1", "NaN", "one"):
        assert own.post("/host/servers/rig", bitcoin_on_demand=huge)[1] == "请输入正数价格。"
    # a polled part asked for after signing out sends the page to the sign-in
    gone = httpx.get(market.url + "/orders/rows", headers={"HX-Request": "true"})
    assert gone.status_code == 204 and gone.headers["HX-Redirect"] == "/signin"
    # bad marketplace filters are shown, not a failure
    page = renter.client.get("/market?min_gpus=lots")
    assert page.status_code == 200 and "Invalid input: min_gpus" in page.text
    # ... and list nothing, rather than the whole market as if there were no filter
    assert "No server matches these filters." in page.text and 'data-id="' not in page.text
    assert renter.client.get("/servers/99999").status_code == 404


def test_money_over_time_follows_the_ledger(served: Market) -> None:
    market = served
    host = market.user("host")
    sid = market.server(host, "rig", on_demand="0.0024", spot="0.0001")
    renter = market.user("renter", bitcoin="1")
    ok(market.client(renter).post("/v1/create_order", json=order_body(sid)))
    market.advance(86400)
    now = market.now()
    with market.db.read() as conn:
        renter_id = find_user(conn, "renter")
        host_id = find_user(conn, "host")
        spent = console_service.spend_series(conn, renter_id, "bitcoin", now, days=3)
        earned = console_service.earnings_series(conn, host_id, "bitcoin", now, days=3)
        revenue = console_service.platform_revenue(conn, "bitcoin", now, days=3)
        nothing = console_service.spend_series(conn, renter_id, "nocoin", now, days=2)
    assert len(spent) == 3 and [t for t, _ in spent] == sorted(t for t, _ in spent)
    total_spent = sum(v for _, v in spent)
    total_earned = sum(v for _, v in earned[sid])
    total_fees = sum(v for _, v in revenue)
    # a day at 0.0024 plus the creation fee, split between host and platform
    assert total_spent == total_earned + total_fees
    assert total_earned + total_fees >= 2_400_000
    assert nothing == [(t, 0) for t, _ in nothing] and len(nothing) == 2
    page = Browserless(market, renter).client.get("/wallets").text
    assert "<svg" in page and "data-chart=" in page  # QR code and spend chart


def test_spot_board_shows_the_wait_and_the_step(served: Market) -> None:
    market = served
    host = market.user("host")
    sid = market.server(host, "rig", spot="0.000002")
    renter = market.user("renter", bitcoin="1")
    ok(market.client(renter).post("/v1/create_order", json=spot_body(sid, "0.00001")))
    with market.db.read() as conn:
        (bid,) = console_service.order_board(
            conn, find_user(conn, "renter"), market.settings, market.now()
        )
    assert bid["lower_in"] == 0 and bid["lowest_bid"] == 8_000 and bid["min_spot"] == 2_000


def test_a_server_without_a_gpu_is_off_the_market_page_and_its_host_is_told(
    served: Market,
) -> None:
    """Issue #26: the marketplace page leaves out a server whose agent reports no GPU; My
    servers says why, in the reader's language; the operator's list still has it."""
    market = served
    host = market.user("host")
    with_gpu = market.server(host, "gpu")
    without = market.server(host, "cpu-only", specs={"gpu": "0x", "gpuram": 0}, gpu_array=[])
    renter = Browserless(market, market.user("renter"))
    for query in ("", "?min_gpus=0&sort=gpus"):
        page = renter.client.get("/market" + query).text
        assert f'data-id="{with_gpu}"' in page and f'data-id="{without}"' not in page
    own = Browserless(market, host)
    rows = {
        name: row
        for name, row in re.findall(
            r'<tr data-name="([^"]+)">(.*?)</tr>', own.client.get("/host").text, re.S
        )
    }
    assert "not listed: no GPU" in rows["cpu-only"] and "not listed" not in rows["gpu"]
    own.client.cookies.set("lang", "zh-CN")
    assert "未上架：没有 GPU" in own.client.get("/host").text
    admin = Browserless(market, _operator(market))
    listed = re.findall(r"<tr><td>#(\d+) (.*?)</tr>", admin.client.get("/admin").text, re.S)
    reasons = {int(sid): "not listed: no GPU" in row for sid, row in listed}
    assert reasons[with_gpu] is False and reasons[without] is True


def test_the_bid_help_line_is_one_sentence_in_each_language(served: Market) -> None:
    """The spot bid's "largest step down" is one translated sentence with its own brackets and
    stop, full-width in Chinese (it was English punctuation around a Chinese phrase)."""
    market = served
    sid = market.server(market.user("host"), spot="0.000002")
    token = market.user("renter", bitcoin="0.01")
    ok(market.client(token).post("/v1/create_order", json=spot_body(sid, "0.00001")))
    renter = Browserless(market, token)
    step = r'<span class="step">([0-9.]+)</span>'
    english = re.search(
        r"\(largest step down: " + step + r"\)\.", renter.client.get("/orders").text
    )
    assert english is not None and english.group(1) == "0.000002"
    renter.client.cookies.set("lang", "zh-CN")
    chinese = re.search("（最大降幅：" + step + "）。", renter.client.get("/orders").text)
    assert chinese is not None and chinese.group(1) == "0.000002"


def test_accept_language_picks_the_page_language() -> None:
    assert negotiate("zh-CN,zh;q=0.9,en;q=0.8") == "zh-CN"
    assert negotiate("en-US,en;q=0.9,zh-CN;q=0.8") == "en"
    assert negotiate("de-DE, zh-TW;q=0.5") == "zh-CN"
    assert negotiate("fr, de") == "en"
    assert negotiate("") == "en"
    assert negotiate("zh;q=bad, en;q=0.1") == "en"


def test_cli_adds_an_operator_with_a_password(market: Market) -> None:
    env = {"OPENCLORE_NEW_PASSWORD": PASSWORD, "OPENCLORE_DATABASE_URL": market.db.url}
    run = subprocess.run(
        [sys.executable, "-m", "openclore", "admin", "user", "add", "ops", "--password", "--admin"],
        capture_output=True,
        text=True,
        env={**_base_env(), **env},
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert "token" in run.stdout
    with market.db.read() as conn:
        uid = find_user(conn, "ops")
        assert check_password(conn, "ops", PASSWORD) == uid
        assert check_password(conn, "ops", "wrong") is None
        assert check_password(conn, "nobody", PASSWORD) is None
    short = subprocess.run(
        [sys.executable, "-m", "openclore", "admin", "user", "password", "ops"],
        capture_output=True,
        text=True,
        env={**_base_env(), **env, "OPENCLORE_NEW_PASSWORD": "short"},
        check=False,
    )
    assert short.returncode != 0 and "at least 8" in short.stdout + short.stderr
    role = subprocess.run(
        [sys.executable, "-m", "openclore", "admin", "user", "role", "ops", "user"],
        capture_output=True,
        text=True,
        env={**_base_env(), **env},
        check=False,
    )
    assert role.returncode == 0, role.stderr
    with market.db.write() as conn:
        set_password(conn, uid, "another password")
        assert check_password(conn, "ops", PASSWORD) is None


def _base_env() -> dict[str, str]:
    import os

    return {k: v for k, v in os.environ.items() if not k.startswith("OPENCLORE_")}


def test_orders_show_the_ssh_line_and_http_pub_links(served: Market) -> None:
    market = served
    host = market.user("host")
    sid = market.server(host, "rig")
    renter = market.user("renter", bitcoin="1")
    order_id = ok(market.client(renter).post("/v1/create_order", json=order_body(sid)))["order_id"]
    with market.db.write() as conn:
        conn.execute(
            gateways.insert().values(
                name="gw.example",
                ssh_address="gw.example:2222",
                host_key="-",
                host_key_public="-",
                http_url="https://{order}-{port}.gw.example",
            )
        )
        conn.execute(
            orders.update()
            .where(orders.c.id == order_id)
            .values(pub_cluster=["gw.example"], tcp_ports=["22:40022"], http_port="8888")
        )
    with market.db.read() as conn:
        label = conn.execute(select(orders.c.http_label).where(orders.c.id == order_id)).scalar()
    rows = Browserless(market, renter).client.get("/orders/rows").text
    assert "ssh root@gw.example -p 40022" in rows
    assert f'href="https://{label}-8888.gw.example"' in rows
    assert f"https://{order_id}-8888" not in rows  # the sequential id names no URL
    listed = ok(market.client(renter).get("/v1/my_orders"))["orders"]
    assert listed[0]["http_pub"] == f"https://{label}-8888.gw.example"


def test_accounts_sessions_and_messages_edge_cases(market: Market) -> None:
    from openclore.domain.errors import MarketError, RateLimited
    from openclore.market import sessions
    from openclore.web.i18n import Catalogs
    from openclore.web.messages import error_text

    market.user("tokenonly")
    with market.db.write() as conn:
        uid = find_user(conn, "tokenonly")
        with pytest.raises(ValueError):
            set_role(conn, uid, "king")
        with pytest.raises(ValueError):
            set_password(conn, uid, "short")
        assert check_password(conn, "tokenonly", "anything at all") is None  # no password set
        sid = sessions.start_session(conn, uid, int(time.time()) - sessions.SESSION_SECONDS - 1)
        assert sessions.session_for(conn, sid, int(time.time())) is None  # expired
        assert sessions.session_for(conn, "x" * 200, int(time.time())) is None
        assert sessions.session_for(conn, "", int(time.time())) is None
        assert console_service.platform_revenue(conn, "nocoin", market.now(), days=2)[0][1] == 0
    catalogs = Catalogs()
    zh = catalogs.get("zh-CN")
    assert zh.gettext("Sign in") == "登录"
    assert zh.gettext("no such msgid") == "no such msgid"
    assert "no such msgid" in catalogs.missing  # (the console uses no plural forms)

    def t(_request: object, message: str) -> str:
        return message

    request = None
    assert error_text(t, request, RateLimited(1.0)).startswith("Too many requests")  # type: ignore[arg-type]
    text = error_text(
        t,
        request,  # type: ignore[arg-type]
        MarketError("can_lower_every_600_seconds", time_to_lowering=42, max_step=1, min_price=2),
    )
    assert "Seconds left: 42" in text and "Lowest allowed now: 1" in text and "Minimum: 2" in text
    assert error_text(t, request, MarketError("brand_new_error")).endswith("brand_new_error")  # type: ignore[arg-type]


def test_logs_view_asks_the_agent_and_says_when_it_cannot(served: Market) -> None:
    market = served
    host = market.user("host")
    sid = market.server(host, "rig")
    with market.db.write() as conn:  # a real host's server whose agent is not connected now
        conn.execute(servers.update().where(servers.c.id == sid).values(simulated=False))
    renter = market.user("renter", bitcoin="1")
    order_id = ok(market.client(renter).post("/v1/create_order", json=order_body(sid)))["order_id"]
    view = Browserless(market, renter)
    started = time.monotonic()
    lines = view.client.get(f"/orders/{order_id}/logs/lines").text
    assert "did not answer in time" in lines and time.monotonic() - started < 8
    ok(market.client(renter).post("/v1/cancel_order", json={"id": order_id}))
    assert "This order has ended." in view.client.get(f"/orders/{order_id}/logs").text
    assert "No such order." in view.client.get("/orders/99999/logs/lines").text


def test_operator_actions_are_in_the_audit_log(served: Market) -> None:
    from openclore.store.schema import audit_log

    market = served
    admin = Browserless(market, _operator(market))
    market.user("renter")
    admin.post("/admin/credit", user="renter", currency="bitcoin", amount="0.5")
    with market.db.read() as conn:
        (entry,) = conn.execute(
            audit_log.select().where(audit_log.c.action == "admin.deposit")
        ).all()
    assert entry.actor == "admin:operator" and entry.source.startswith("web@")
    assert entry.detail == {"user": "renter", "currency": "bitcoin", "amount": "0.5"}


# ----------------------------------------------------------------------------- sessions end


def _signed_in(market: Market, **form: str) -> httpx.Client:
    client = httpx.Client(base_url=market.url, timeout=30)
    market.clients.append(client)
    page = client.get("/signin").text
    answer = client.post("/signin", data={"csrf": _csrf(page), **form})
    assert answer.status_code == 303, answer.text
    assert client.get("/orders").status_code == 200
    return client


def _signed_out(client: httpx.Client) -> bool:
    answer = client.get("/orders")
    return answer.status_code in (303, 401) or "/signin" in str(answer.url)


def test_a_console_session_ends_with_the_token_it_was_started_with(served: Market) -> None:
    market = served
    token = market.user("leaky")
    with market.db.write() as conn:
        uid = find_user(conn, "leaky")
        second, third = (issue_token(conn, uid, market.now()) for _ in range(2))
    by_token = _signed_in(market, token=token)
    by_second = _signed_in(market, token=second)
    by_third = _signed_in(market, token=third)
    bystander = _signed_in(market, token=market.user("bystander"))  # another user's session
    with market.db.write() as conn:
        assert revoke_token(conn, token, market.now())
    assert _signed_out(by_token)
    assert not _signed_out(bystander)  # one token's revocation ends only its own sessions
    assert not _signed_out(by_second)  # the user's other tokens' sessions stay
    # the operator's revoke (by prefix, in the console) ends that token's sessions too
    admin = Browserless(market, _operator(market))
    assert admin.post("/admin/revoke", user=str(uid), prefix=second[:8]) == (
        "/admin",
        "Token revoked.",
    )
    assert _signed_out(by_second)
    assert not _signed_out(by_third)
    # however a token comes to be revoked (here a plain UPDATE, which ends no session itself),
    # its sessions are refused from then on
    with market.db.write() as conn:
        conn.execute(
            api_tokens.update().where(api_tokens.c.prefix == third[:8]).values(revoked_at=1)
        )
    assert _signed_out(by_third)


def test_a_password_change_ends_password_sessions_and_an_operator_ends_all(
    served: Market,
) -> None:
    market = served
    token = market.user("carol")
    with market.db.write() as conn:
        set_password(conn, find_user(conn, "carol"), PASSWORD)
    by_password = _signed_in(market, username="carol", password=PASSWORD)
    by_token = _signed_in(market, token=token)
    with market.db.write() as conn:
        set_password(conn, find_user(conn, "carol"), PASSWORD + " 2")
    assert _signed_out(by_password)
    assert not _signed_out(by_token)  # a token's session lives as long as its token
    again = _signed_in(market, username="carol", password=PASSWORD + " 2")
    admin = Browserless(market, _operator(market))
    with market.db.read() as conn:
        carol = find_user(conn, "carol")
    assert admin.post("/admin/signout", user=str(carol)) == ("/admin", "Sessions ended.")
    assert _signed_out(again) and _signed_out(by_token)
    assert not _signed_out(admin.client)  # the operator's own session is untouched


# ----------------------------------------------------------------------------- hostile text

EVIL = "<script>alert(1)</script><img src=x onerror=alert(2)>\"'&"
EVIL_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;&lt;img src=x onerror=alert(2)&gt;"


def _security_headers(answer: httpx.Response) -> None:
    csp = answer.headers.get("content-security-policy", "")
    assert "default-src 'self'" in csp and "frame-ancestors 'none'" in csp, answer.url
    assert "script-src" not in csp or "'unsafe-inline'" not in csp.split("script-src")[1]
    assert answer.headers.get("x-frame-options") == "DENY", answer.url


def test_text_hosts_and_containers_control_is_escaped_and_pages_carry_security_headers(
    served: Market,
) -> None:
    import threading

    from openclore.market.logs import record_answer
    from openclore.store.schema import agent_requests

    market = served
    host = market.user("host")
    sid = market.server(
        host, "rig", specs={"gpu": f"1x {EVIL}", "gpuram": 24, "cpu": EVIL, "mb": EVIL}
    )
    renter = market.user("renter", bitcoin="1")
    oid = ok(market.client(renter).post("/v1/create_order", json=order_body(sid)))["order_id"]
    with market.db.write() as conn:  # an agent's server now: its container's output is asked
        conn.execute(servers.update().where(servers.c.id == sid).values(simulated=False))

    def answer_logs() -> None:  # the agent: lines its container printed
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with market.db.write() as conn:
                asked = conn.execute(
                    select(agent_requests.c.id).where(agent_requests.c.answered_at.is_(None))
                ).scalar()
                if asked is not None:
                    message = {"req": int(asked), "lines": [f"line {EVIL}"]}
                    record_answer(conn, sid, message, int(time.time()))
                    return
            time.sleep(0.05)

    as_renter = Browserless(market, renter)
    agent = threading.Thread(target=answer_logs, daemon=True)
    agent.start()
    logs = as_renter.client.get(f"/orders/{oid}/logs")
    agent.join(25)
    pages = {
        "market": as_renter.client.get("/market"),
        "server": as_renter.client.get(f"/servers/{sid}"),
        "orders": as_renter.client.get("/orders"),
        "logs": logs,
    }
    for name, page in pages.items():
        assert page.status_code == 200, name
        _security_headers(page)
        assert "<script>alert" not in page.text and "onerror=alert(2)>" not in page.text, name
    assert EVIL_ESCAPED in pages["server"].text  # the GPU name is shown, as text
    assert EVIL_ESCAPED in pages["logs"].text  # the container's line is shown, as text
    # every other page a person reaches carries the headers too
    for path in ("/signin", "/wallets", "/host"):
        _security_headers(as_renter.client.get(path))
    _security_headers(Browserless(market, _operator(market)).client.get("/admin"))


def test_password_guessing_is_rate_limited_like_token_guessing(market: Market) -> None:
    # the limiter's clock stands still: hashing six guesses on a busy machine frees no slot
    app = create_app(market.settings, db=market.db, clock=market.clock, rate_clock=ManualClock())
    install_console(app)
    market.switch.app = app
    market.user("victim")
    with market.db.write() as conn:
        set_password(conn, find_user(conn, "victim"), PASSWORD)
    client = httpx.Client(base_url=market.url, timeout=30)
    market.clients.append(client)
    csrf = _csrf(client.get("/signin").text)
    codes = [
        client.post(
            "/signin", data={"csrf": csrf, "username": "victim", "password": f"guess {i}"}
        ).status_code
        for i in range(6)
    ]
    assert codes[:5] == [401] * 5 and codes[5] == 429, codes
    right = client.post("/signin", data={"csrf": csrf, "username": "victim", "password": PASSWORD})
    assert right.status_code == 429  # even the right password waits


# ----------------------------------------------------------------------------- bad text


CONSOLE_GETS = [
    "/market",
    "/orders",
    "/orders/rows",
    "/wallets",
    "/money/transactions",
    "/money/statement",
    "/money/deposits",
    "/money/withdrawals",
    "/account/keys",
    "/account/ssh-keys",
    "/account/templates",
    "/account/standing",
    "/account/webhooks",
    "/account/events",
    "/sandbox/world/reset",
    "/host",
    "/admin",
    "/admin/withdrawals",
    "/admin/deposits",
    "/admin/audit",
    "/prefs",
]
CONSOLE_FORMS = [
    "/signout",
    "/servers/1/rent",
    "/orders/1/cancel",
    "/orders/1/bid",
    "/host/add",
    "/host/servers/rig",
    "/admin/credit",
    "/admin/token",
    "/admin/revoke",
    "/admin/signout",
    "/admin/servers/1/hide",
    "/admin/servers/1/remove",
    "/admin/withdrawals/1/approve",
    "/admin/withdrawals/1/reject",
    "/money/withdrawals",
    "/account/keys",
    "/account/keys/abcdefgh/revoke",
    "/account/ssh-keys",
    "/account/ssh-keys/1/delete",
    "/account/templates",
    "/account/templates/1/delete",
    "/account/standing",
    "/account/standing/1/cancel",
    "/account/webhooks",
    "/account/webhooks/1/ping",
    "/account/webhooks/1/delete",
    "/account/alerts",
    "/admin/users/add",
    "/admin/users/password",
    "/admin/users/role",
    "/admin/adjust",
    "/admin/rates",
    "/admin/rates/clear",
    "/sandbox/advance",
    "/sandbox/credit",
    "/sandbox/world/reset",
]


def test_nul_in_a_path_query_or_form_is_a_400_page_never_a_500(served: Market) -> None:
    market = served
    market.user("alice")
    with market.db.write() as conn:
        set_password(conn, find_user(conn, "alice"), PASSWORD)
    # the sign-in form, before any session (its double-submit CSRF cookie and field)
    client = httpx.Client(base_url=market.url, timeout=30)
    market.clients.append(client)
    csrf = _csrf(client.get("/signin").text)
    for form in (
        {"username": "al\x00ice", "password": PASSWORD},
        {"username": "alice", "password": "pass\x00word"},
        {"token": "tok\x00en"},
        {"username": "alice", "password": PASSWORD, "next": "/market\x00"},
    ):
        answer = client.post("/signin", data={"csrf": csrf, **form})
        assert answer.status_code == 400, (form, answer.text)
        assert "not allowed" in answer.text
    assert client.get("/signin?next=%2Fmarket%00").status_code == 400
    # signed in as an operator: every page and every form
    admin = Browserless(market, _operator(market))
    market.server(market.user("host"), "rig")
    for path in ("/host/servers/a%00b", "/host/servers/rig%00", *CONSOLE_GETS):
        query = "" if "%00" in path else "?currency=bit%00coin&q=a%00b"
        answer = admin.client.get(path + query)
        assert answer.status_code == 400, (path, answer.status_code, answer.text[:200])
        assert "not allowed" in answer.text
    for path in ["/host/servers/a%00b", *CONSOLE_FORMS]:
        for field in ("name", "user", "issue", "price", "amount", "prefix", "mrl", "next"):
            answer = admin.client.post(path, data={"csrf": admin.csrf, field: "x\x00y"})
            assert answer.status_code == 400, (path, field, answer.status_code)
    assert admin.client.get("/market").status_code == 200  # still signed in, nothing broke


def test_the_operator_page_shows_no_secret(market: Market) -> None:
    secrets_set = {
        "address_secret": "addr-secret-4f1c9e",
        "payments_webhook_secret": "whsec-9d2b7a61",
        "metrics_token": "metrics-token-77e0c3",
        "gateway_tls_key": "/etc/openclore/tls-key-3b8d.pem",
    }
    settings = market.settings.model_copy(
        update={
            **secrets_set,
            "database_url": "postgresql://market:pg-pass-51aa@db.internal:5432/market"
            "?sslpassword=ssl-pass-c0ffee",
            "gateway_http_url": "https://gw:gw-pass-8e8e@{order}-{port}.gpu.example.com",
        }
    )
    app = create_app(settings, db=market.db, clock=market.clock)
    install_console(app)
    market.switch.app = app
    admin = Browserless(market, _operator(market))
    page = admin.client.get("/admin").text
    for secret in [*secrets_set.values(), "pg-pass-51aa", "ssl-pass-c0ffee", "gw-pass-8e8e"]:
        assert secret not in page
    rows = dict(re.findall(r"<tr><th>([a-z_]+)</th><td><code>([^<]*)</code>", page))
    for name in secrets_set:
        assert rows[name] == '"set"', (name, rows[name])
    assert "db.internal" in rows["database_url"] and "***" in rows["database_url"]
    assert "gpu.example.com" in rows["gateway_http_url"]
    assert rows["gateway_name"] == '"localhost"'


# ----------------------------------------------------------------------------- audit


def test_every_state_changing_console_action_has_its_audit_entry(served: Market) -> None:
    """The use cases record their own entries: the console's sign-ins, rents, bids, cancels,
    server additions and saves land in the audit log as the API's do, naming the credential."""
    from openclore.market.audit import entries

    market = served
    host_token = market.user("hoster")
    with market.db.write() as conn:
        set_password(conn, find_user(conn, "hoster"), PASSWORD)
    renter_token = market.user("tenant", bitcoin="1")
    sid = market.server(host_token, "rig-a")
    spot_sid = market.server(host_token, "rig-b")
    with market.db.read() as conn:
        host_id, renter_id = find_user(conn, "hoster"), find_user(conn, "tenant")
        started = len(entries(conn))

    renter = Browserless(market, renter_token)  # a sign-in with a token
    assert renter.post(f"/servers/{sid}/rent", image="ubuntu", currency="bitcoin")[0] == "/orders"
    renter.post(
        f"/servers/{spot_sid}/rent",
        image="ubuntu",
        currency="bitcoin",
        type="spot",
        spotprice="0.00001",
    )
    with market.db.read() as conn:
        ids = sorted(
            int(i)
            for i in conn.execute(
                select(orders.c.id).where(orders.c.user_id == renter_id)
            ).scalars()
        )
    on_demand, spot = ids
    renter.post(f"/orders/{spot}/bid", price="0.00002")
    renter.post(f"/orders/{on_demand}/cancel")
    host = _signed_in(market, username="hoster", password=PASSWORD)  # a sign-in with a password
    form = host.get("/host").text
    csrf = _csrf(form)
    assert host.post("/host/add", data={"csrf": csrf, "name": "rig-c"}).status_code == 200
    saved = host.post("/host/servers/rig-a", data={"csrf": csrf, "availability": "on", "mrl": "48"})
    assert saved.status_code == 303

    with market.db.read() as conn:
        new = entries(conn)[started:]
    seen = [(e.actor, e.action, e.detail.get("via"), e.source.startswith("web@")) for e in new]
    renter_actor, host_actor = f"user:{renter_id}", f"user:{host_id}"
    assert (renter_actor, "sign_in", f"token:{renter_token[:8]}", True) in seen
    assert (host_actor, "sign_in", "password", True) in seen
    for action in ("order.create", "order.spot_price", "order.cancel"):
        assert (renter_actor, action, "session", True) in seen, (action, seen)
    for action in ("server.add", "server.settings"):
        assert (host_actor, action, "session", True) in seen, (action, seen)
    targets = {(e.action, e.target) for e in new}
    assert {
        ("order.create", f"order:{on_demand}"),
        ("order.create", f"order:{spot}"),
        ("order.spot_price", f"order:{spot}"),
        ("order.cancel", f"order:{on_demand}"),
        ("server.settings", "server:rig-a"),
    } <= targets


def test_sizes_measured_by_the_agent_are_rounded_for_people(served: Market) -> None:
    """Agents report RAM and VRAM as measured; the server page shows them to one decimal."""
    market = served
    host, renter = market.user(), market.user()
    sid = market.server(
        host,
        "rig",
        specs={
            "gpu": "1x NVIDIA GeForce RTX 4090",
            "gpuram": 23.98828125,
            "ram": 62.67348861694336,
        },
    )
    console = Browserless(market, renter).client
    page = console.get(f"/servers/{sid}").text
    assert "62.7 GB" in page and "24 GB" in page
    assert "62.673" not in page and "23.98" not in page
    listed = console.get("/market").text  # the marketplace's VRAM column too
    assert "24 GB" in listed and "23.98" not in listed


def test_my_orders_show_dollars_per_hour_beside_the_coin_price(market: Market) -> None:
    market.settings = market.settings.model_copy(update={"usd_rates": {"bitcoin": Decimal(60000)}})
    _serve_console(market)
    host, renter = market.user(), market.user(bitcoin="1")
    sid = market.server(host, "rig", on_demand="0.00001")
    ok(market.client(renter).post("/v1/create_order", json=order_body(sid)))
    rows = Browserless(market, renter).client.get("/orders/rows").text
    # 0.00001 bitcoin a day at 60,000 USD per bitcoin: $0.60 a day, $0.025 an hour
    cell = re.search(r'<td class="num usd"[^>]*>(.*?)</td>', rows, re.S)
    assert cell is not None and "<strong>$0.025</strong>" in cell.group(1), rows
    assert "0.00001 bitcoin" in rows

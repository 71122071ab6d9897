"""The console's parity with the API and the CLI, over plain HTTP: the money pages
(transactions, statements and their PDF, deposits, withdrawals), API keys and webhooks, the
operator's withdrawal queue, deposits and audit log; each for the right user only, each action
with its audit entry, refusals in the registry's words; the HTML 404 and gzip."""

from __future__ import annotations

import json
import re
import time

import httpx
import pytest

from openclore.api.app import create_app
from openclore.store.schema import servers
from openclore.web.app import install_console
from test_console_http import PASSWORD, Browserless, _csrf, _operator, _security_headers

from support import Market, ok, order_body


@pytest.fixture
def served(market: Market) -> Market:
    app = create_app(market.settings, db=market.db, clock=market.clock)
    install_console(app)
    market.switch.app = app
    return market


BTC_ADDRESS = "bc1qar0srrr7xfkvy5l643lydnw9re59gtzzwf5mdq"
OTHER_ADDRESS = "bc1qxy2kgdygjrsqtzq2n0yrf2493p83kkfjhx0wlh"


def _audit_seen(market: Market) -> list[tuple[str, str, str, str | None]]:
    from openclore.market.audit import entries

    with market.db.read() as conn:
        return [(e.actor, e.action, e.target, e.detail.get("via")) for e in entries(conn)]


def test_money_pages_show_the_users_own_ledger_statement_and_withdrawals(served: Market) -> None:
    market = served
    host = market.user("host")
    sid = market.server(host, "rig", on_demand="0.0024")
    alice_token = market.user("alice", bitcoin="0.1234567")
    bob_token = market.user("bob", bitcoin="0.7654321")
    ok(market.client(alice_token).post("/v1/create_order", json=order_body(sid)))
    for _ in range(8):  # ticks on two days
        market.advance(6 * 3600)
    alice, bob = Browserless(market, alice_token), Browserless(market, bob_token)
    grouped = alice.client.get("/money/transactions").text
    assert "0.1234567" in grouped and "0.7654321" not in grouped
    assert re.search(r"\d+ charges", grouped)  # a rental's ticks summed per order, day, kind
    every = alice.client.get("/money/transactions?all=1").text
    assert every.count("<tr data-kind=") > grouped.count("<tr data-kind=")
    kinds = re.findall(
        r'<tr data-kind="([a-z_]+)"',
        alice.client.get("/money/transactions?kind=deposit&currency=bitcoin").text,
    )
    assert kinds == ["deposit"]
    assert 'data-kind="spend"' not in alice.client.get("/money/transactions?order=99999").text
    assert "Invalid input:" in alice.client.get("/money/transactions?since=yesterday").text
    assert "0.7654321" in bob.client.get("/money/deposits").text
    assert "0.1234567" not in bob.client.get("/money/deposits").text
    # the month's statement, and its PDF (what `openclore statement --pdf` writes)
    page = alice.client.get("/money/statement").text
    assert "Opening balance" in page and "0.1234567" in page
    pdf = alice.client.get(
        re.search(r'href="(/money/statement\.pdf[^"]+)"', page).group(1).replace("&amp;", "&")
    )
    assert pdf.status_code == 200 and pdf.headers["content-type"] == "application/pdf"
    assert pdf.content.startswith(b"%PDF")
    assert "Invalid input:" in alice.client.get("/money/statement?month=2026-13").text
    # withdrawals: the API's validation and errors, its audit entry
    where, message = bob.post(
        "/money/withdrawals", currency="bitcoin", amount="0.01", address=BTC_ADDRESS
    )
    assert where == "/money/withdrawals" and re.fullmatch(r"Withdrawal #\d+ requested\.", message)
    assert BTC_ADDRESS in bob.client.get("/money/withdrawals").text
    assert BTC_ADDRESS not in alice.client.get("/money/withdrawals").text
    assert bob.post("/money/withdrawals", currency="bitcoin", amount="0.01", address="nope")[1] == (
        "That is not a valid address for this currency."
    )
    assert bob.post("/money/withdrawals", currency="bitcoin", amount="5", address=BTC_ADDRESS)[
        1
    ] == ("Your wallet does not hold enough for this.")
    refused = bob.post("/money/withdrawals", currency="bitcoin", amount="lots", address=BTC_ADDRESS)
    assert refused[1].startswith("Invalid input:")
    bob.client.cookies.set("lang", "zh-CN")
    assert bob.post("/money/withdrawals", currency="bitcoin", amount="5", address=BTC_ADDRESS)[
        1
    ] == ("您的钱包余额不足。")
    bob_id = market.user_id(bob_token)
    requests = [s for s in _audit_seen(market) if s[1] == "withdrawal.request"]
    assert len(requests) == 1 and requests[0][0] == f"user:{bob_id}"
    assert requests[0][3] == "session"


def test_api_keys_and_webhooks_are_self_service(served: Market) -> None:
    market = served
    alice_token, bob_token = market.user("alice"), market.user("bob")
    alice, bob = Browserless(market, alice_token), Browserless(market, bob_token)
    alice_id = market.user_id(alice_token)
    created = alice.client.post("/account/keys", data={"csrf": alice.csrf})
    assert created.status_code == 200
    secret = re.search(r'<code class="secret" id="secret">([A-Za-z0-9]+)</code>', created.text)
    assert secret is not None
    key = secret.group(1)
    ok(market.client(key).get("/v1/wallets"))
    assert key not in alice.client.get("/account/keys").text  # shown once
    assert f"<code>{key[:8]}…</code>" in alice.client.get("/account/keys").text
    assert key[:8] not in bob.client.get("/account/keys").text
    confirm = alice.client.get(f"/account/keys/{key[:8]}/revoke").text
    assert f'action="/account/keys/{key[:8]}/revoke"' in confirm
    assert bob.post(f"/account/keys/{key[:8]}/revoke")[1] == "No such API key."
    ok(market.client(key).get("/v1/wallets"))  # another user cannot revoke it
    assert alice.post(f"/account/keys/{key[:8]}/revoke") == ("/account/keys", "API key revoked.")
    assert market.client(key).get("/v1/wallets").json()["code"] == 3
    seen = _audit_seen(market)
    made = [
        t
        for a, act, t, via in seen
        if (a, act, via) == (f"user:{alice_id}", "api_key.create", "session")
    ]
    assert len(made) == 1 and made[0].startswith("api_key:")
    assert (f"user:{alice_id}", "token.revoke", f"user:{alice_id}", "session") in seen
    # webhooks: create (secret once), list, log, test, delete
    answer = alice.client.post(
        "/account/webhooks",
        data={"csrf": alice.csrf, "url": "http://127.0.0.1:9/hook", "events": ["order.ended"]},
    )
    assert answer.status_code == 200 and "whsec_" in answer.text
    (hook,) = ok(market.client(alice_token).get("/v1/webhooks"))["webhooks"]
    assert hook["events"] == ["order.ended"]
    assert "127.0.0.1:9/hook" in alice.client.get("/account/webhooks").text
    assert "127.0.0.1:9/hook" not in bob.client.get("/account/webhooks").text
    foreign = bob.client.get(f"/account/webhooks/{hook['id']}")  # another's: not found
    assert foreign.headers["location"] == "/account/webhooks" and "127.0.0.1" not in foreign.text
    assert bob.post(f"/account/webhooks/{hook['id']}/ping")[1] == "No such webhook."
    assert alice.post(f"/account/webhooks/{hook['id']}/ping")[1] == (
        "Test event sent; see the delivery log."
    )
    log = alice.client.get(f"/account/webhooks/{hook['id']}").text
    assert "Nothing sent yet." not in log and "<td>pending</td>" in log
    assert bob.post(f"/account/webhooks/{hook['id']}/delete")[1] == "No such webhook."
    assert (
        f'action="/account/webhooks/{hook["id"]}/delete"'
        in alice.client.get(f"/account/webhooks/{hook['id']}/delete").text
    )
    assert alice.post(f"/account/webhooks/{hook['id']}/delete")[1] == "Webhook deleted."
    assert ok(market.client(alice_token).get("/v1/webhooks"))["webhooks"] == []
    assert alice.post("/account/webhooks", url="http://10.0.0.7/hook")[1] == (
        "Webhooks cannot be sent to that address."
    )
    assert alice.post("/account/webhooks", url="ftp://x")[1].startswith("Invalid input:")
    seen = _audit_seen(market)
    for action in ("webhook.create", "webhook.ping", "webhook.delete"):
        assert (f"user:{alice_id}", action, f"webhook:{hook['id']}", "session") in seen, action
    # without the form's token nothing happens
    assert alice.client.post("/account/keys").status_code == 403


def test_a_scoped_key_with_a_limit_from_the_console(served: Market) -> None:
    market = served
    token = market.user("alice", bitcoin="1")
    alice = Browserless(market, token)
    fields = {
        "csrf": alice.csrf,
        "scoped": "1",
        "name": "agent",
        "scope_read": "1",
        "scope_rent": "1",
        "expires_days": "7",
        "limit_bitcoin": "0.001",
    }
    created = alice.client.post("/account/keys", data=fields)
    assert created.status_code == 200
    found = re.search(r'<code class="secret" id="secret">([A-Za-z0-9]+)</code>', created.text)
    assert found is not None
    key = ok(market.client(found.group(1)).get("/v1/api_key"))["key"]
    assert key["scopes"] == ["read", "rent"] and key["name"] == "agent"
    assert key["spend_limit"] == {"bitcoin": 0.001}
    assert key["expires_at"] == market.now() + 7 * 86400
    page = alice.client.get("/account/keys").text
    assert "read, rent" in page and "0.001 bitcoin" in page and "agent" in page
    # a read key cannot rent through the API, nor sign in to the console (whose pages can)
    assert market.client(found.group(1)).post("/v1/withdraw", json={}).json()["scope"] == "money"
    with httpx.Client(base_url=market.url, timeout=30) as signin:
        form = signin.get("/signin").text
        refused = signin.post("/signin", data={"csrf": _csrf(form), "token": found.group(1)})
    assert refused.status_code == 403 and "This API key is limited" in refused.text
    # bad forms are refused with a message, and make nothing
    assert alice.post("/account/keys", scoped="1")[1].startswith("Invalid input:")
    assert alice.post("/account/keys", scoped="1", scope_read="1", expires_days="x")[1] == (
        "Invalid input: expires_days: whole days, 1 to 3650"
    )
    assert alice.post("/account/keys", scoped="1", scope_read="1", limit_bitcoin="-1")[
        1
    ].startswith("Invalid input:")
    assert len(ok(market.client(token).get("/v1/api_keys"))["keys"]) == 2


def test_operator_decides_withdrawals_and_searches_deposits_and_the_audit_log(
    served: Market,
) -> None:
    market = served
    admin = Browserless(market, _operator(market))
    renter = market.user("renter", bitcoin="1")
    market.user("saver", bitcoin="0.3333333")
    c = market.client(renter)
    body = {"currency": "bitcoin", "amount": 0.01, "address": BTC_ADDRESS}
    first = ok(c.post("/v1/withdraw", json=body))["withdrawal"]["id"]
    second = ok(c.post("/v1/withdraw", json={**body, "address": OTHER_ADDRESS}))["withdrawal"]["id"]
    queue = admin.client.get("/admin/withdrawals").text
    assert f'<code class="addr full-address">{BTC_ADDRESS}</code>' in queue
    assert f'<code class="addr full-address">{OTHER_ADDRESS}</code>' in queue
    approve = f"/admin/withdrawals/{first}/approve"
    assert admin.post(approve, txid="") == (
        "/admin/withdrawals",
        "Give the payout's transaction id.",
    )
    assert admin.post(approve, txid="tx-77") == ("/admin/withdrawals", "Withdrawal approved.")
    assert admin.post(approve, txid="tx-78")[1] == "This withdrawal was decided already."
    reject = f"/admin/withdrawals/{second}/reject"
    assert 'name="reason"' in admin.client.get(reject).text  # asked first
    assert admin.post(reject, reason=" ")[1] == "Give a reason."
    assert admin.post(reject, reason="wrong chain <script>alert(1)</script>")[1] == (
        "Withdrawal rejected; the money is back in the wallet."
    )
    states = {w["id"]: w["state"] for w in ok(c.get("/v1/withdrawals"))["withdrawals"]}
    assert states == {first: "approved", second: "rejected"}
    assert "tx-77" in admin.client.get("/admin/withdrawals?state=approved").text
    # the operator's reason reaches the renter's page as text, never as markup
    shown = Browserless(market, renter).client.get("/money/withdrawals").text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in shown and "<script>alert" not in shown
    seen = _audit_seen(market)
    assert ("admin:operator", "admin.withdrawal.approve", f"withdrawal:{first}", None) in seen
    assert ("admin:operator", "admin.withdrawal.reject", f"withdrawal:{second}", None) in seen
    # deposits: everyone's, or one user's
    every = admin.client.get("/admin/deposits").text
    assert "0.3333333" in every and "renter" in every
    assert "0.3333333" not in admin.client.get("/admin/deposits?user=renter").text
    assert "No such user." in admin.client.get("/admin/deposits?user=nobody").text
    # the audit log, searched
    found = admin.client.get("/admin/audit?action=withdrawal.reject").text
    assert f"withdrawal:{second}" in found and f"withdrawal:{first}" not in found
    assert "wrong chain" in admin.client.get("/admin/audit?actor=admin%3A&user=renter").text
    assert "No entries match." in admin.client.get("/admin/audit?target=nothing-like-it").text
    assert "No such user." in admin.client.get("/admin/audit?user=nobody").text
    assert "Invalid input:" in admin.client.get("/admin/audit?since=soon").text
    today = time.strftime("%Y-%m-%d", time.gmtime())
    assert (
        f"withdrawal:{first}" in admin.client.get(f"/admin/audit?since={today}&until={today}").text
    )
    # the operator's other destructive actions ask first too, on a page posting to the same path
    sid = market.server(market.user("host"), "rig")
    asks = {
        f"/admin/revoke?user=2&prefix={renter[:8]}": ['name="prefix" value="' + renter[:8]],
        "/admin/signout?user=2": ['name="user" value="2"'],
        f"/admin/servers/{sid}/remove": [f'action="/admin/servers/{sid}/remove"'],
    }
    for path, words in asks.items():
        page = admin.client.get(path).text
        assert 'id="confirm"' in page and all(w in page for w in words), path
    ok(market.client(renter).get("/v1/wallets"))  # asking revoked nothing
    # the operator's pages are the operator's only
    other = Browserless(market, renter)
    for path in ("/admin/withdrawals", "/admin/deposits", "/admin/audit", reject, *asks):
        assert other.client.get(path).status_code == 403, path
    assert other.client.post(approve, data={"csrf": other.csrf, "txid": "x"}).status_code == 403


def test_unknown_console_paths_are_an_html_404_and_pages_are_gzipped(served: Market) -> None:
    import gzip

    market = served
    renter = Browserless(market, market.user("renter"))
    for lang, words in (("en", "Page not found"), ("zh-CN", "页面不存在")):
        renter.client.cookies.set("lang", lang)
        missing = renter.client.get("/no/such/page")
        assert missing.status_code == 404 and missing.headers["content-type"].startswith(
            "text/html"
        )
        assert words in missing.text
        _security_headers(missing)
    renter.client.cookies.set("lang", "en")
    wrong_method = renter.client.get("/money/withdrawals/1/nothing")
    assert wrong_method.status_code == 404 and "<html" in wrong_method.text
    form_by_get = renter.client.get("/account/webhooks/1/ping")  # a POST-only path
    assert form_by_get.status_code == 405 and "<html" in form_by_get.text
    anonymous = httpx.get(market.url + "/nothing-here")
    assert anonymous.status_code == 404 and "<html" in anonymous.text
    for path in ("/v1/no_such_endpoint", "/agent/v1/nothing"):
        answer = httpx.get(market.url + path)
        assert answer.headers["content-type"].startswith("application/json"), path
        assert answer.json()["code"] == 4, path
    # gzip for the console's pages and assets, when asked
    for path in ("/market", "/money/transactions", "/static/console.css"):
        page = renter.client.get(path, headers={"Accept-Encoding": "gzip"})
        assert page.status_code == 200 and page.headers.get("content-encoding") == "gzip", path
    plain = renter.client.get("/market", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers and "<html" in plain.text
    # the listing comes gzipped by the API already: compressed once, never twice
    market.server(market.user("host"), "rig")
    with httpx.stream(
        "GET", market.url + "/v1/marketplace", headers={"Accept-Encoding": "gzip"}
    ) as raw:
        assert raw.headers["content-encoding"] == "gzip"
        body = b"".join(raw.iter_raw())
    assert json.loads(gzip.decompress(body))["code"] == 0


def test_operator_tools_and_the_low_balance_alert(served: Market) -> None:
    from openclore.market.accounts import check_password, find_user

    market = served
    admin = Browserless(market, _operator(market))
    renter_token = market.user("renter", bitcoin="0.5")
    # a user added with a password and the operator role; its first token shown once
    assert admin.post("/admin/users/add", name="dora", password="short")[1] == (
        "A password has at least 8 characters."
    )
    assert admin.post("/admin/users/add", name="dora", password=PASSWORD, admin="on") == (
        "/admin",
        "User added.",
    )
    issued = re.search(r'<code id="issued">([A-Za-z0-9]+)</code>', admin.client.get("/admin").text)
    assert issued is not None
    ok(market.client(issued.group(1)).get("/v1/wallets"))
    assert admin.post("/admin/users/add", name="dora")[1] == "A user with this name exists already."
    assert admin.post("/admin/users/add", name="123")[1].startswith("Give a name")
    assert admin.post("/admin/users/password", user="renter", password=PASSWORD + "!") == (
        "/admin",
        "Password set.",
    )
    assert admin.post("/admin/users/role", user="renter", role="king")[1] == (
        "Choose a role: user or operator."
    )
    assert admin.post("/admin/users/role", user="dora", role="user")[1] == "Role set."
    with market.db.read() as conn:
        assert check_password(conn, "renter", PASSWORD + "!") == find_user(conn, "renter")
    # refunds and adjustments, with the reason the user reads
    assert admin.post(
        "/admin/adjust", user="renter", currency="bitcoin", amount="-0.1", reason="correction"
    ) == ("/admin", "Wallet adjusted.")
    assert admin.post(
        "/admin/adjust", user="renter", currency="bitcoin", amount="-9", reason="too much"
    )[1] == ("Your wallet does not hold enough for this.")
    assert admin.post(
        "/admin/adjust", user="renter", currency="bitcoin", amount="lots", reason="x"
    )[1] == ("Enter an amount as a number of coins.")
    assert admin.post("/admin/adjust", user="renter", currency="bitcoin", amount="1", reason="")[
        1
    ] == ("Give a reason.")
    wallet = ok(market.client(renter_token).get("/v1/wallets"))["wallets"]
    assert [str(w["balance"]) for w in wallet if w["name"] == "bitcoin"] == ["0.4"]
    # exchange rates, stored and cleared
    assert admin.post("/admin/rates", currency="bitcoin", usd="60000")[1] == (
        "Exchange rate stored."
    )
    assert "bitcoin = 60000 USD" in admin.client.get("/admin").text
    assert admin.post("/admin/rates", currency="bitcoin", usd="-1")[1] == (
        "Enter a rate as a positive number of dollars."
    )
    assert admin.post("/admin/rates/clear", currency="bitcoin")[1] == "Exchange rate cleared."
    assert admin.post("/admin/rates/clear", currency="bitcoin")[1] == (
        "No rate is stored for this currency."
    )
    seen = _audit_seen(market)
    for action in ("user.add", "user.password", "user.role", "adjust", "rates.set"):
        assert any(s[0] == "admin:operator" and s[1] == "admin." + action for s in seen), action
    with market.db.read() as conn:
        from openclore.market.audit import entries

        assert all("password" not in e.detail for e in entries(conn))  # never recorded
    # the renter's low-balance alert: the API's set_alerts
    renter = Browserless(market, renter_token)
    assert renter.post("/account/alerts", hours="12") == ("/account/webhooks", "Alert saved.")
    alerts = ok(market.client(renter_token).get("/v1/alerts"))
    assert alerts["low_balance_seconds"] == 12 * 3600
    assert 'value="12"' in renter.client.get("/account/webhooks").text
    assert renter.post("/account/alerts", hours="-1")[1].startswith("Invalid input:")
    assert renter.post("/account/alerts", hours="")[1] == "Alert saved."
    assert ok(market.client(renter_token).get("/v1/alerts"))["low_balance_seconds"] is None
    assert any(s[1] == "alerts.set" for s in _audit_seen(market))
    for path in ("/admin/users/add", "/admin/adjust", "/admin/rates"):
        other = renter.client.post(path, data={"csrf": renter.csrf, "name": "x"})
        assert other.status_code == 403, path


def test_events_fees_and_the_sandbox_controls(served: Market) -> None:
    market = served
    host = market.user("host")
    sid = market.server(host, "rig")
    alice_token = market.user("alice", bitcoin="0.2")
    market.user("bob", bitcoin="0.3")
    ok(market.client(alice_token).post("/v1/create_order", json=order_body(sid)))
    alice = Browserless(market, alice_token)
    events = alice.client.get("/account/events").text
    assert "order.created" in events or "order.started" in events
    assert "deposit.credited" in events and "0.3" not in events  # bob's deposit is not hers
    assert "No events yet." in Browserless(market, host).client.get("/account/events").text
    # the rent dialog says the fees (/v1/renter_fees)
    fees = ok(market.client().get("/v1/renter_fees"))["renter_fees"]["on_demand"]["base"]
    page = alice.client.get(f"/servers/{sid}").text
    assert f"takes {fees['bitcoin']} percent of on-demand spend" in page
    # sandbox: play money, and a reset that asks first (refused outside the demo world)
    assert alice.post("/sandbox/credit", currency="bitcoin", amount="0.05", next="/wallets") == (
        "/wallets",
        "Play money credited.",
    )
    wallets = ok(market.client(alice_token).get("/v1/wallets"))["wallets"]
    assert any(w["name"] == "bitcoin" and str(w["balance"]).startswith("0.2") for w in wallets)
    assert alice.post("/sandbox/credit", currency="bitcoin", amount="-1")[1] == (
        "Enter a price as a positive number."
    )
    assert 'action="/sandbox/world/reset"' in alice.client.get("/sandbox/world/reset").text
    assert alice.post("/sandbox/world/reset")[1] == "This market is not the demo world."


def test_the_console_rents_some_of_a_servers_gpus(served: Market) -> None:
    """The marketplace says which servers rent per GPU and how many GPUs are free; the rent form
    asks how many GPUs (the whole server by default)."""
    from sqlalchemy import update

    from openclore.store.schema import servers

    market = served
    host = market.user("host")
    sid = market.server(host, "quad", on_demand="0.0024")
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(gpu_array=["RTX"] * 4))
    body = {"name": "quad", "partial_gpu_rental": True, "min_gpus": 2}
    ok(market.client(host).post("/v1/set_server_settings", json=body))
    renter_token = market.user("renter", bitcoin="1")
    renter = Browserless(market, renter_token)
    listing = renter.client.get("/market").text
    assert "per GPU: 4 of 4 free" in listing
    assert "0.000025 per GPU per hour" in listing  # 0.0024 a day ÷ 4 GPUs ÷ 24 h
    page = renter.client.get(f"/servers/{sid}").text
    options = re.findall(r'<option value="(\d*)">', page.split('name="gpu_count"')[1])
    assert options[:3] == ["", "2", "3"]  # the whole server, then 2 and 3 (min_gpus 2)
    where, _ = renter.post(
        f"/servers/{sid}/rent", type="on-demand", currency="bitcoin", image="busybox", gpu_count="2"
    )
    assert where == "/orders"
    (order,) = ok(market.client(renter_token).post("/v1/my_orders", json={}))["orders"]
    assert order["gpu_count"] == 2 and len(order["gpus"]) == 2 and order["price"] == 0.0012
    assert "per GPU: 2 of 4 free" in renter.client.get("/market").text
    refused = renter.client.post(
        f"/servers/{sid}/rent",
        data={"csrf": renter.csrf, "type": "on-demand", "image": "busybox", "gpu_count": "1"},
    )
    assert refused.status_code == 303 and "/servers/" in refused.headers["location"]
    chinese = renter.client.get("/market", headers={"Accept-Language": "zh-CN"}).text
    assert "按 GPU 出租：4 块中 2 块空闲" in chinese


def test_a_host_turns_per_gpu_rental_on_in_the_console(served: Market) -> None:
    from sqlalchemy import update

    from openclore.store.schema import servers

    market = served
    host_token = market.user("host")
    sid = market.server(host_token, "quad")
    market.server(host_token, "single")  # one GPU: nothing to rent one by one
    with market.db.write() as conn:
        conn.execute(update(servers).where(servers.c.id == sid).values(gpu_array=["RTX"] * 4))
    host = Browserless(market, host_token)
    assert 'name="partial_gpu_rental"' not in host.client.get("/host/servers/single").text
    page = host.client.get("/host/servers/quad").text
    assert 'name="partial_gpu_rental"' in page and 'name="min_gpus"' in page
    form = {"availability": "on", "mrl": "72", "per_gpu_form": "1"}
    where, _ = host.post("/host/servers/quad", **form, partial_gpu_rental="on", min_gpus="2")
    assert where == "/host/servers/quad"
    api = market.client(host_token)
    config = ok(api.post("/v1/server_config", json={"server_name": "quad"}))["config"]
    assert config["partial_gpu_rental"] is True and config["min_gpus"] == 2
    host.post("/host/servers/quad", **form, min_gpus="2")  # the box unticked: rented whole
    config = ok(api.post("/v1/server_config", json={"server_name": "quad"}))["config"]
    assert config["partial_gpu_rental"] is False
    where, _ = host.post("/host/servers/quad", **form, partial_gpu_rental="on", min_gpus="9")
    assert where == "/host/servers/quad"  # refused: the page shows why, nothing changed
    config = ok(api.post("/v1/server_config", json={"server_name": "quad"}))["config"]
    assert config["partial_gpu_rental"] is False and config["min_gpus"] == 2


def test_ssh_keys_and_templates_from_the_console(served: Market) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    market = served
    token = market.user("alice", bitcoin="1")
    alice, bob = Browserless(market, token), Browserless(market, market.user("bob"))
    public = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
        .decode()
    )
    assert alice.post("/account/ssh-keys", public_key=public + " alice@laptop") == (
        "/account/ssh-keys",
        "SSH key added.",
    )
    (key,) = ok(market.client(token).get("/v1/ssh_keys"))["keys"]
    assert key["name"] == "alice@laptop"
    page = alice.client.get("/account/ssh-keys").text
    assert (
        key["fingerprint"] in page
        and key["fingerprint"] not in bob.client.get("/account/ssh-keys").text
    )
    assert alice.post("/account/ssh-keys", public_key="ssh-rsa AAAA broken")[1].startswith(
        "That is not an SSH public key"
    )
    assert alice.post("/account/ssh-keys", public_key=public)[1] == (
        "This key is already on your account."
    )
    assert "Delete this SSH key?" in alice.client.get(f"/account/ssh-keys/{key['id']}/delete").text
    assert bob.post(f"/account/ssh-keys/{key['id']}/delete")[1] == "No such SSH key."

    # a template, then a rental from it in the server page's form
    sid = market.server(market.user("host"), "rig")
    made = alice.post(
        "/account/templates",
        name="Torch",
        image="pytorch/pytorch:latest",
        ports="22:tcp\n8888:http",
        env="MODE=train",
        public="1",
    )
    assert made == ("/account/templates", "Template created.")
    (template,) = [
        t for t in ok(market.client(token).get("/v1/templates"))["templates"] if t["mine"]
    ]
    assert template["ports"] == {"22": "tcp", "8888": "http"} and template["public"] is True
    assert "<code>pytorch/pytorch:latest</code>" in bob.client.get("/account/templates?q=tor").text
    assert (
        "<code>pytorch/pytorch:latest</code>" not in bob.client.get("/account/templates?q=zzz").text
    )
    assert bob.post(f"/account/templates/{template['id']}/delete")[1] == (
        "Only its owner can delete a template."
    )
    assert alice.post("/account/templates", name="", image="x")[1].startswith("Invalid input:")
    server_page = alice.client.get(f"/servers/{sid}").text
    assert f'<option value="{template["id"]}">Torch · pytorch/pytorch:latest</option>' in (
        server_page
    )
    rented = alice.post(
        f"/servers/{sid}/rent",
        currency="bitcoin",
        type="on-demand",
        template_id=str(template["id"]),
        image="ignored/by-the-template",
        ports="22:tcp",
        env="",
    )
    assert rented == ("/orders", "Order created.")
    (order,) = ok(market.client(token).get("/v1/my_orders"))["orders"]
    assert order["image"] == "pytorch/pytorch:latest" and order["template_id"] == template["id"]
    assert alice.post(f"/account/templates/{template['id']}/delete")[1] == "Template deleted."
    assert alice.post(f"/account/ssh-keys/{key['id']}/delete")[1] == "SSH key deleted."
    assert ok(market.client(token).get("/v1/ssh_keys"))["keys"] == []


def test_standing_orders_from_the_console(served: Market) -> None:
    market = served
    token = market.user("alice", bitcoin="1")
    alice, bob = Browserless(market, token), Browserless(market, market.user("bob"))
    host = market.user("host")
    sid = market.server(host, "rig", on_demand="0.00001", online=False)
    placed = alice.post(
        "/account/standing",
        gpu="3090",
        currency="bitcoin",
        max_price_per_day="0.00002",
        type="on-demand",
        count="1",
        image="cloreai/ubuntu20.04-jupyter",
        ports="22:tcp",
        expires_hours="24",
    )
    assert placed == (
        "/account/standing",
        "Standing order placed; it rents as soon as a server matches.",
    )
    (so,) = ok(market.client(token).get("/v1/standing_orders"))["standing_orders"]
    assert so["query"] == {"gpu": "3090"} and so["state"] == "open"
    assert so["expires_at"] == market.now() + 24 * 3600
    page = alice.client.get("/account/standing").text
    assert "<code>gpu=3090</code>" in page and f"/account/standing/{so['id']}/cancel" in page
    assert "gpu=3090" not in bob.client.get("/account/standing").text
    # the server comes online: the standing order rents it in that same transaction
    with market.db.write() as conn:
        conn.execute(servers.update().where(servers.c.id == sid).values(online=True))
    (filled,) = ok(market.client(token).get("/v1/standing_orders"))["standing_orders"]
    assert filled["state"] == "filled" and len(filled["order_ids"]) == 1
    assert f"#{filled['order_ids'][0]}" in alice.client.get("/account/standing").text
    # refusals come back as messages; a cancel asks first
    refused = alice.post("/account/standing", currency="bitcoin", max_price_per_day="x")
    assert refused[1] == "Enter a price as a positive number."
    assert alice.post(
        "/account/standing", currency="bitcoin", max_price_per_day="1", expires_hours="-2"
    )[1] == ("Invalid input: expires_hours: whole hours, 1 to 8760")
    second = ok(
        market.client(token).post(
            "/v1/create_standing_order",
            json={"max_price_per_day": 0.00002, "currency": "bitcoin", "image": "ubuntu"},
        )
    )["standing_order"]
    assert second["state"] == "open", second
    assert (
        "Cancel this standing order?"
        in alice.client.get(f"/account/standing/{second['id']}/cancel").text
    )
    assert bob.post(f"/account/standing/{second['id']}/cancel")[1] == "No such standing order."
    assert alice.post(f"/account/standing/{second['id']}/cancel")[1] == (
        "Standing order cancelled."
    )

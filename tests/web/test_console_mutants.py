"""What every console page shares (web/context.py), tested directly, each value written out:
the rendering and its headers, the CSRF check of a form, the session lookup, the one-time
message a redirect leaves, the language, and the filters the templates format money, sizes and
times with. Written to kill mutants (``scripts/mutation console``)."""

from __future__ import annotations

import base64
import json
import time
from collections.abc import Iterator
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import select

from openclore.domain.errors import RateLimited
from openclore.domain.money import Coins
from openclore.market import sessions
from openclore.market.accounts import find_user, set_role
from openclore.store.schema import users, web_sessions
from openclore.web import context
from openclore.web.common import PRE_CSRF_COOKIE, SESSION_COOKIE, Refused
from openclore.web.context import Console, _duration, _flash, _fmt_coins, _gb, _usd_hour

from console_direct import make_console as _console
from console_direct import request as _request
from console_direct import run as _run
from console_direct import set_cookies as _set_cookies
from support import Market

CSP = (
    "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; "
    "frame-ancestors 'none'; form-action 'self'"
)


@pytest.fixture
def console(market: Market) -> Iterator[Console]:
    yield _console(market)


def _session(market: Market, name: str = "alice", admin: bool = False) -> tuple[str, str]:
    """A signed-in user's session cookie and CSRF token."""
    market.user(name)
    with market.db.write() as conn:
        uid = find_user(conn, name)
        assert uid is not None
        if admin:
            set_role(conn, uid, "admin")
        sid = sessions.start_session(conn, uid, int(time.time()))  # the wall clock, as the console
        csrf = conn.execute(select(web_sessions.c.csrf)).scalars().all()[-1]
    return sid, str(csrf)


# ----------------------------------------------------------------------------- render


def test_a_page_carries_the_console_headers_and_every_value_of_its_context(
    console: Console, market: Market
) -> None:
    sid, csrf = _session(market)
    found = _run(console.session(_request(cookies={SESSION_COOKIE: sid})))
    assert found is not None and found.name == "alice" and found.csrf == csrf
    request = _request("/orders", cookies={SESSION_COOKIE: sid, "theme": "dark"})
    page = console.render(request, "probe.html", found, extra="x<y")
    assert page.status_code == 200
    assert page.headers["Content-Language"] == "en"
    assert page.headers["X-Frame-Options"] == "DENY"
    assert page.headers["Content-Security-Policy"] == CSP
    assert page.headers["Cache-Control"] == "no-store"
    assert _set_cookies(page) == []  # a session, no flash: no cookie at all
    body = page.body.decode()
    assert body == (
        f"path=/orders|lang=en|theme=dark|user=alice|csrf={csrf}|sandbox=True"
        f"|now={market.now()}|flash=None|currencies={','.join(market.settings.currencies)}"
        "|extra=x&lt;y|req=/orders"
    )


def test_a_page_without_a_session_hands_out_the_sign_in_forms_csrf_cookie_once(
    console: Console,
) -> None:
    page = console.render(_request("/signin"), "probe.html", None, 401)
    assert page.status_code == 401
    (cookie,) = _set_cookies(page)
    token = page.body.decode().split("|csrf=")[1].split("|")[0]
    assert len(token) == 32  # token_urlsafe(24)
    assert cookie == f"{PRE_CSRF_COOKIE}={token}; HttpOnly; Path=/; SameSite=strict"
    assert "theme=auto|user=-" in page.body.decode()
    # over HTTPS (or behind a proxy that says so) the cookie is Secure
    for request in (
        _request("/signin", scheme="https"),
        _request("/signin", headers={"X-Forwarded-Proto": "https"}),
    ):
        (cookie,) = _set_cookies(console.render(request, "probe.html", None))
        assert cookie.endswith("; Secure")
    # the browser already has one: the page uses it and sets none
    kept = console.render(_request("/signin", cookies={PRE_CSRF_COOKIE: "abc"}), "probe.html", None)
    assert _set_cookies(kept) == [] and "|csrf=abc|" in kept.body.decode()


def test_a_flash_is_shown_once_and_a_market_not_a_sandbox_says_so(market: Market) -> None:
    console = _console(market, sandbox=False, demo=False)
    sid, _ = _session(market)
    found = _run(console.session(_request(cookies={SESSION_COOKIE: sid})))
    flash = base64.urlsafe_b64encode(json.dumps({"ok": True, "text": "Done."}).encode()).decode()
    page = console.render(
        _request(cookies={SESSION_COOKIE: sid, "flash": flash}), "probe.html", found
    )
    body = page.body.decode()
    assert "|sandbox=False|" in body
    assert "|flash={&#39;ok&#39;: True, &#39;text&#39;: &#39;Done.&#39;}|" in body
    (deleted,) = _set_cookies(page)  # read once: deleted
    assert deleted.startswith('flash=""; expires=') and "; Max-Age=0; Path=/;" in deleted


def test_the_language_comes_from_its_cookie_then_the_browser(console: Console) -> None:
    assert console.lang(_request(cookies={"lang": "zh-CN"})) == "zh-CN"
    assert console.lang(_request(cookies={"lang": "en"}, headers={"Accept-Language": "zh"})) == "en"
    assert console.lang(_request(cookies={"lang": "fr"}, headers={"Accept-Language": "zh"})) == (
        "zh-CN"
    )
    assert console.lang(_request(headers={"Accept-Language": "zh-CN,zh;q=0.9"})) == "zh-CN"
    assert console.lang(_request()) == "en"
    zh = _request(cookies={"lang": "zh-CN"})
    page = console.render(zh, "probe.html", None)
    assert page.headers["Content-Language"] == "zh-CN" and "|lang=zh-CN|" in page.body.decode()
    assert console.t(zh, "Wrong username or password.") == "用户名或密码错误。"
    assert console.t(_request(), "Wrong username or password.") == "Wrong username or password."


# ----------------------------------------------------------------------------- sessions


def test_a_session_is_found_by_its_cookie_and_refused_without_one(
    console: Console, market: Market
) -> None:
    assert _run(console.session(_request())) is None
    assert _run(console.session(_request(cookies={SESSION_COOKIE: ""}))) is None
    assert _run(console.session(_request(cookies={SESSION_COOKIE: "forged"}))) is None
    with pytest.raises(Refused) as refused:
        _run(console.signed_in(_request()))
    assert (refused.value.status, refused.value.message) == (401, "sign in")
    sid, _ = _session(market)
    request = _request(cookies={SESSION_COOKIE: sid})
    assert _run(console.signed_in(request)).name == "alice"
    with pytest.raises(Refused) as refused:
        _run(console.signed_in(request, admin=True))
    assert (refused.value.status, refused.value.message) == (403, "operators only")
    admin_sid, _ = _session(market, "root", admin=True)
    assert _run(console.signed_in(_request(cookies={SESSION_COOKIE: admin_sid}), True)).admin


def test_a_session_is_looked_up_at_the_wall_clocks_second(
    console: Console, market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    sid, _ = _session(market)
    with market.db.read() as conn:
        expires = conn.execute(select(web_sessions.c.expires_at)).scalar_one()
    request = _request(cookies={SESSION_COOKIE: sid})
    # the console module's clock only (the process's stays as it is)
    monkeypatch.setattr(context, "time", SimpleNamespace(time=lambda: expires - 0.5))
    assert _run(console.session(request)) is not None  # its last second
    monkeypatch.setattr(context, "time", SimpleNamespace(time=lambda: float(expires)))
    assert _run(console.session(request)) is None


def test_db_runs_a_read_or_a_write_and_answers_its_value(
    console: Console, market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    market.user("bob")

    def rename(conn: Any) -> str:
        conn.execute(users.update().where(users.c.name == "bob").values(name="robert"))
        return "renamed"

    def names(conn: Any) -> list[str]:
        return list(conn.execute(select(users.c.name).order_by(users.c.name)).scalars())

    writes: list[Any] = []
    db_write = console.state.db_write
    monkeypatch.setattr(
        console.state, "db_write", lambda fn, *a: writes.append(fn) or db_write(fn, *a)
    )
    assert _run(console.db(rename, write=True)) == "renamed"
    assert writes == [rename]
    assert _run(console.db(names)) == ["robert"]
    assert writes == [rename]  # a read is no write transaction


# ----------------------------------------------------------------------------- forms


def test_a_form_needs_its_csrf_token_and_answers_its_text_fields(
    console: Console, market: Market
) -> None:
    sid, csrf = _session(market)
    found = _run(console.session(_request(cookies={SESSION_COOKIE: sid})))

    def post(form: dict[str, str], session: Any = found, **kw: Any) -> dict[str, str]:
        return _run(console.form(_request(method="POST", form=form, **kw), session))  # type: ignore[no-any-return]

    assert post({"csrf": csrf, "amount": "1", "note": ""}) == {"amount": "1", "note": ""}
    # the token in a header (htmx) does as well
    assert post({"amount": "2"}, headers={"X-CSRF-Token": csrf}) == {"amount": "2"}
    for form, kw in (
        ({"amount": "1"}, {}),
        ({"csrf": csrf + "x", "amount": "1"}, {}),
        ({"csrf": "", "amount": "1"}, {"headers": {"X-CSRF-Token": "wrong"}}),
    ):
        with pytest.raises(Refused) as refused:
            post(form, **kw)
        assert (refused.value.status, refused.value.message) == (403, "csrf")
    # before sign-in: the double-submit cookie's token, and never an empty one
    assert post({"csrf": "pre", "a": "b"}, None, cookies={PRE_CSRF_COOKIE: "pre"}) == {"a": "b"}
    for cookies in ({}, {PRE_CSRF_COOKIE: ""}):
        for sent in ("", "XXXX", "None"):
            with pytest.raises(Refused):
                post({"csrf": sent, "a": "b"}, None, cookies=cookies)
    # a NUL is refused as bad text before anything else
    with pytest.raises(Refused) as refused:
        post({"csrf": csrf, "name": "a\x00b"})
    assert refused.value.status == 400


# ----------------------------------------------------------------------------- redirects


def test_a_redirect_leaves_its_message_for_one_page(console: Console) -> None:
    answer = console.redirect(_request(), "/orders", "Order created.")
    assert answer.status_code == 303 and answer.headers["location"] == "/orders"
    (cookie,) = _set_cookies(answer)
    value = cookie.split(";")[0].removeprefix("flash=")
    assert json.loads(base64.urlsafe_b64decode(value)) == {"ok": True, "text": "Order created."}
    assert cookie.endswith("; HttpOnly; Max-Age=60; Path=/; SameSite=lax")
    (secure,) = _set_cookies(console.redirect(_request(scheme="https"), "/", "x", ok=False))
    assert secure.endswith("; Secure")
    value = secure.split(";")[0].removeprefix("flash=")
    assert json.loads(base64.urlsafe_b64decode(value)) == {"ok": False, "text": "x"}
    for message in (None, ""):
        plain = console.redirect(_request(), "/wallets", message)
        assert plain.status_code == 303 and _set_cookies(plain) == []
    failed = console.failed(_request(cookies={"lang": "zh-CN"}), "/market", RateLimited(1.0))
    value = _set_cookies(failed)[0].split(";")[0].removeprefix("flash=")
    shown = json.loads(base64.urlsafe_b64decode(value))
    assert failed.headers["location"] == "/market"
    assert shown == {"ok": False, "text": "请求过于频繁，请稍候再试。"}


def test_a_flash_cookie_is_read_only_when_it_is_well_formed() -> None:
    def enc(value: Any) -> str:
        return base64.urlsafe_b64encode(json.dumps(value).encode()).decode()

    assert _flash(enc({"ok": True, "text": "hi"})) == {"ok": True, "text": "hi"}
    assert _flash(enc({"text": "no ok"})) == {"ok": False, "text": "no ok"}
    assert _flash(enc({"ok": 1, "text": ""})) == {"ok": True, "text": ""}
    for bad in (None, "", "%%%", enc([1]), enc({"ok": True}), enc({"text": 3}), "bm90IGpzb24="):
        assert _flash(bad) is None, bad
    # up to 4096 characters
    longest = enc({"ok": True, "text": "a" * 3048})
    assert len(longest) == 4096 and _flash(longest) is not None
    assert _flash(enc({"ok": True, "text": "a" * 3049})) is None
    # one character more (one the decoder would skip) is over the bound
    assert _flash(longest + "!") is None
    assert _flash("\udcff") is None  # not even ASCII


# ----------------------------------------------------------------------------- filters


def test_prices_per_hour_in_usd_read_as_people_write_them() -> None:
    assert _usd_hour(24_000_000_000) == "$1.00"
    assert _usd_hour(Coins(48_000_000_000)) == "$2.00"
    assert _usd_hour(24_000_000_000 * 1500) == "$1,500.00"
    assert _usd_hour(23_999_999_999) == "$1"  # 0.99999…: three significant digits round up
    assert _usd_hour(1_000_000_000) == "$0.0417"
    assert _usd_hour(12_000_000_000) == "$0.5"
    assert _usd_hour(2_962_962_962) == "$0.123"
    assert _usd_hour(0) == "$0" and _usd_hour(-24_000_000_000) == "$0"
    assert _usd_hour(240_000) == "$0.00001"  # fixed-point, never "1e-05"
    assert _usd_hour(1_234_567) == "$0.0000514"  # three significant digits at any size
    assert _usd_hour(24) == "$0.000000001"
    assert _usd_hour(48_000_000_000, 2) == "$1.00" and _usd_hour(48_000_000_000, 4) == "$0.5"
    assert _usd_hour(24_000_000_000, 0) == "$1.00"  # no GPU reported: the whole price


def test_coins_are_shown_exactly() -> None:
    assert _fmt_coins(1_500_000_000) == "1.5" and _fmt_coins(Coins(1)) == "0.000000001"
    assert _fmt_coins(10_000_000_000) == "10" and _fmt_coins(0) == "0"
    assert _fmt_coins(Coins(-2_500_000_000)) == "-2.5" and _fmt_coins("7") == "0.000000007"


def test_sizes_show_one_decimal_at_most() -> None:
    assert _gb(62.67348861694336) == "62.7" and _gb("62.67348861694336") == "62.7"
    assert _gb(24) == "24" and _gb(24.0) == "24" and _gb(23.96) == "24" and _gb(0.04) == "0"
    assert _gb("n/a") == "n/a" and _gb(None) == "None" and _gb([1]) == "[1]"


def test_durations_in_days_hours_or_minutes_in_the_pages_language() -> None:
    def en(message: str) -> str:
        return message

    assert _duration(0, en) == "0 min" and _duration(-5, en) == "0 min"
    assert _duration(59, en) == "0 min" and _duration(60, en) == "1 min"
    assert _duration(3599, en) == "59 min" and _duration(3600, en) == "1 h 0 min"
    assert _duration(2 * 3600 + 61, en) == "2 h 1 min"
    assert _duration(86399, en) == "23 h 59 min" and _duration(86400, en) == "1 d 0 h"
    assert _duration(3 * 86400 + 5 * 3600 + 59 * 60, en) == "3 d 5 h"


def test_the_templates_filters_and_globals(console: Console) -> None:
    def show(source: str, lang: str = "en", **values: Any) -> str:
        return console.envs[lang].from_string(source).render(**values)

    assert show("{{ v|coins }}", v=1_500_000_000) == "1.5"
    assert show("{{ v|per_hour }}", v=24_000_000_000) == "1"
    assert show("{{ v|per_hour }}", v=Coins(2_400_000_000)) == "0.1"
    assert show("{{ v|per_hour }}", v=47) == "0.000000001"  # 47 // 24
    # exact at any size (a float division would round past 2**53 units)
    assert show("{{ v|per_hour }}", v=24 * 9_007_199_254_740_993) == "9007199.254740993"
    assert show("{{ v|usd_hour }}", v=24_000_000_000) == "$1.00"
    assert show("{{ v|gb }}", v=7.95) == "8"
    assert show("{{ v|utc }}", v=86400 * 365 + 3661) == "1971-01-01 01:01 UTC"
    assert show("{{ v|duration }}", v=90061) == "1 d 1 h"
    assert show("{{ v|duration }}", "zh-CN", v=90061) == "1 天 1 小时"
    assert show("{{ v|duration }}", "zh-CN", v=3660) == "1 小时 1 分钟"
    assert show("{{ _('Wrong username or password.') }}", "zh-CN") == "用户名或密码错误。"
    server = {
        "gpu_array": ["NVIDIA GeForce RTX 4090"] * 2,
        "specs": {"gpu": "2x NVIDIA GeForce RTX 4090", "net": {"cc": "DE"}},
    }
    assert show("{{ gpu_name(s) }}/{{ gpu_count(s) }}", s=server) == "NVIDIA GeForce RTX 4090/2"
    assert show("{{ country_of(s) }}", s=server) == "DE"
    # html templates escape; the probe template above is one
    assert "&lt;b&gt;" in console.render(_request(), "probe.html", None, extra="<b>").body.decode()


def test_the_sign_in_limiter_and_the_endpoint_prober_are_set_from_the_settings(
    market: Market,
) -> None:
    console = _console(
        market,
        public_hostnames=["Market.Example.", "gpu.example"],
        gateway_name="GW.example",
        connect_probe_private=True,
        sandbox=True,
    )
    assert console.signin_limiter._tolerance == context.SIGNIN_INTERVAL * 4 == 8.0
    reach = console.probes.reach
    assert reach.trusted == frozenset({"market.example", "gpu.example", "gw.example"})
    assert reach.allow_private is True and reach.allow_loopback is True
    plain = _console(market, connect_probe_private=False, sandbox=False, demo=False)
    assert plain.probes.reach.allow_private is False and plain.probes.reach.allow_loopback is False
    assert set(plain.envs) == {"en", "zh-CN"}
    assert plain.settings is plain.state.settings

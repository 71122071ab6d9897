"""Sign-in, sign-out and the language/theme link (web/pages/signin.py), each handler called
directly with a built request: every refusal with its status and words, the session cookie's
attributes, the audit entry of a sign-in, the limiter's key and interval, where each answer
sends the browser. Written to kill mutants (``scripts/mutation signin``)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from sqlalchemy import select

from openclore.engine.clock import ManualClock
from openclore.market import api_keys, sessions
from openclore.market.accounts import find_user, issue_token, revoke_token, set_password
from openclore.market.audit import SYSTEM
from openclore.store.schema import api_tokens, audit_log, rate_limits, web_sessions
from openclore.web.common import PRE_CSRF_COOKIE, SESSION_COOKIE, Refused
from openclore.web.context import Console
from openclore.web.pages.signin import ROUTES, home, prefs, signin, signin_page, signout

from console_direct import make_console, request, run, set_cookies
from support import Market

PASSWORD = "correct horse battery "  # its trailing space is part of it
PRE = "pre-csrf-token"
LIMITED = "This API key is limited (scopes, a spend limit or an expiry). "
LIMITED += "Sign in with a full key or your password."


@pytest.fixture
def rate() -> ManualClock:
    return ManualClock(1000.0)


@pytest.fixture
def console(market: Market, rate: ManualClock) -> Console:
    return make_console(market, rate_clock=rate)


def _user(market: Market, name: str = "alice") -> tuple[int, str]:
    token = market.user(name)
    with market.db.write() as conn:
        uid = find_user(conn, name)
        set_password(conn, uid, PASSWORD)
    return uid, token


def _post(console: Console, handler: Any, form: dict[str, str], **kw: Any) -> Any:
    cookies = {PRE_CSRF_COOKIE: PRE, **kw.pop("cookies", {})}
    built = request("/signin", method="POST", form={"csrf": PRE, **form}, cookies=cookies, **kw)
    return run(handler(console, built))


def _cookie(answer: Any, name: str) -> str:
    (found,) = [c for c in set_cookies(answer) if c.startswith(name + "=")]
    return found


def _sid(answer: Any) -> str:
    return _cookie(answer, SESSION_COOKIE).split(";")[0].split("=", 1)[1]


def _sessions(market: Market) -> list[Any]:
    with market.db.read() as conn:
        return list(conn.execute(select(web_sessions)).all())


def _sign_ins(market: Market) -> list[Any]:
    with market.db.read() as conn:
        return list(
            conn.execute(select(audit_log).where(audit_log.c.action == sessions.SIGN_IN)).all()
        )


def test_the_routes() -> None:
    assert [(r.path, r.handler, r.methods) for r in ROUTES] == [
        ("/", home, ("GET",)),
        ("/signin", signin_page, ("GET",)),
        ("/signin", signin, ("POST",)),
        ("/signout", signout, ("POST",)),
        ("/prefs", prefs, ("GET",)),
    ]


def test_home_sends_a_visitor_to_sign_in_and_a_signed_in_person_to_the_market(
    console: Console, market: Market
) -> None:
    uid, _ = _user(market)
    for cookies, to in (({}, "/signin"), ({SESSION_COOKIE: "forged"}, "/signin")):
        answer = run(home(console, request("/", cookies=cookies)))
        assert (answer.status_code, answer.headers["location"]) == (303, to)
    with market.db.write() as conn:
        sid = sessions.start_session(conn, uid, int(time.time()))
    answer = run(home(console, request("/", cookies={SESSION_COOKIE: sid})))
    assert (answer.status_code, answer.headers["location"]) == (303, "/market")


def test_the_sign_in_page_keeps_where_to_go_next(console: Console) -> None:
    page = run(signin_page(console, request("/signin", query="next=%2Forders%3Fa%3D1")))
    assert page.status_code == 200
    assert page.body.decode().count('name="next" value="/orders?a=1"') == 2
    plain = run(signin_page(console, request("/signin"))).body.decode()
    assert plain.count('name="next" value=""') == 2


def test_a_token_signs_in_with_a_session_cookie_its_audit_entry_and_its_token(
    console: Console, market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid, token = _user(market)
    # the session starts in a write transaction (the write lock first on SQLite, retried on a
    # deadlock), as every change does
    writes = []
    db_write = console.state.db_write
    monkeypatch.setattr(
        console.state, "db_write", lambda fn, *a: writes.append(fn) or db_write(fn, *a)
    )
    before = int(time.time())
    answer = _post(console, signin, {"token": f"  {token} ", "next": "/orders"})
    after = int(time.time())
    assert len(writes) == 1
    assert (answer.status_code, answer.headers["location"]) == (303, "/orders")
    sid = _sid(answer)
    assert _cookie(answer, SESSION_COOKIE) == (
        f"{SESSION_COOKIE}={sid}; HttpOnly; Max-Age={sessions.SESSION_SECONDS}; Path=/; "
        "SameSite=lax"
    )
    (row,) = _sessions(market)
    with market.db.read() as conn:
        token_id = conn.execute(select(api_tokens.c.id)).scalars().one()
        assert sessions.session_for(conn, sid, after) is not None
    assert row.user_id == uid and row.token_id == token_id
    assert before <= row.created_at <= after  # the wall clock's second
    (entry,) = _sign_ins(market)
    assert (entry.actor, entry.user_id, entry.target, entry.source) == (
        f"user:{uid}",
        uid,
        f"user:{uid}",
        "web@203.0.113.9",
    )
    assert entry.detail == {"into": "console", "via": f"token:{token[:8]}"}
    # its session ends with the token
    with market.db.write() as conn:
        revoke_token(conn, token, market.now())
        assert sessions.session_for(conn, sid, after) is None


def test_a_password_signs_in_as_itself_and_over_https_the_cookie_is_secure(
    console: Console, market: Market
) -> None:
    uid, _ = _user(market)
    answer = _post(console, signin, {"username": " alice ", "password": PASSWORD}, scheme="https")
    assert (answer.status_code, answer.headers["location"]) == (303, "/market")
    assert _cookie(answer, SESSION_COOKIE).endswith("; SameSite=lax; Secure")
    (row,) = _sessions(market)
    assert row.user_id == uid and row.token_id is None
    (entry,) = _sign_ins(market)
    assert entry.detail == {"into": "console", "via": "password"}
    # the password is taken as typed: without its trailing space it is another one
    wrong = _post(console, signin, {"username": "alice", "password": PASSWORD.strip()})
    assert wrong.status_code == 401


@pytest.mark.parametrize("nxt", ["//evil.example/x", "https://evil.example/", "orders", ""])
def test_a_sign_in_never_sends_the_browser_to_another_site(
    console: Console, market: Market, nxt: str
) -> None:
    _, token = _user(market)
    answer = _post(console, signin, {"token": token, "next": nxt})
    assert answer.headers["location"] == "/market"


def test_each_refusal_of_a_sign_in_says_why(
    console: Console, market: Market, rate: ManualClock
) -> None:
    uid, token = _user(market)

    def refused(form: dict[str, str], lang: str = "en") -> tuple[int, str]:
        rate.advance(10)  # the limiter is tested below
        answer = _post(console, signin, {"next": "/wallets", **form}, cookies={"lang": lang})
        assert set_cookies(answer) == []  # no session
        body = answer.body.decode()
        assert 'name="next" value="/wallets"' in body
        error = body.split('role="alert">')[1].split("</p>")[0]
        return answer.status_code, error

    assert refused({"token": "not-a-token"}) == (401, "Unknown or revoked API token.")
    assert refused({"token": "not-a-token"}, "zh-CN") == (401, "API 令牌无效或已被吊销。")
    # a token comes first: a right password beside an unknown token does not sign in
    unknown = {"token": "x", "username": "alice", "password": PASSWORD}
    assert refused(unknown) == (401, "Unknown or revoked API token.")
    wrong = (401, "Wrong username or password.")
    assert refused({"username": "alice", "password": "nope"}) == wrong
    assert refused({"username": "bob", "password": PASSWORD}) == wrong
    assert refused({"username": "alice"}) == wrong
    assert refused({"password": PASSWORD}) == wrong
    assert refused({"username": "alice", "password": ""}) == wrong
    assert refused({}) == wrong
    assert refused({"token": "   "}) == wrong  # spaces are no token
    assert refused({}, "zh-CN") == (401, "用户名或密码错误。")
    # a limited key may not start a console session; a full key may
    secrets = []
    with market.db.write() as conn:
        for scopes, limit, expires in (
            (frozenset({"read"}), None, None),
            (api_keys.ALL_SCOPES, (("bitcoin", 1000),), None),
            (api_keys.ALL_SCOPES, None, market.now() + 3600),
            (api_keys.ALL_SCOPES, None, None),  # full: every scope, no limit, no expiry
        ):
            _, secret = api_keys.create_key(
                conn,
                uid,
                name=None,
                scopes=scopes,
                expires_at=expires,
                spend_limit=limit,
                now=market.now(),
                creator=None,
                actor=SYSTEM,
            )
            secrets.append(secret)
        *limited, full = secrets
        second = issue_token(conn, uid, market.now())
    for secret in limited:
        assert refused({"token": secret}) == (403, LIMITED)
    assert _sessions(market) == [] and _sign_ins(market) == []
    for good in (full, second, token):
        rate.advance(10)
        assert _post(console, signin, {"token": good}).status_code == 303
    # the form's CSRF token is checked first
    with pytest.raises(Refused):
        run(signin(console, request("/signin", method="POST", form={"token": token})))


def test_sign_ins_are_limited_per_address_five_at_once_then_one_each_two_seconds(
    console: Console, market: Market, rate: ManualClock
) -> None:
    _, token = _user(market)

    def attempt(form: dict[str, str], client: str = "198.51.100.7") -> int:
        return int(_post(console, signin, form, client=client).status_code)

    assert [attempt({"token": "wrong"}) for _ in range(5)] == [401] * 5
    blocked = _post(console, signin, {"token": token, "next": "/orders"}, client="198.51.100.7")
    assert blocked.status_code == 429 and set_cookies(blocked) == []
    body = blocked.body.decode()
    error = body.split('role="alert">')[1].split("</p>")[0]
    assert error == "Too many sign-in attempts. Wait a few seconds and try again."
    assert 'name="next" value="/orders"' in body
    assert attempt({"username": "alice", "password": PASSWORD}) == 429
    # another address has its own budget
    assert attempt({"token": token}, client="198.51.100.8") == 303
    rate.advance(1.9)
    assert attempt({"token": token}) == 429
    rate.advance(0.1)  # two seconds: one more
    assert attempt({"token": token}) == 303
    assert attempt({"token": token}) == 429
    with market.db.read() as conn:
        keys = set(conn.execute(select(rate_limits.c.key)).scalars())
    assert {"signin:198.51.100.7", "signin:198.51.100.8"} <= keys


def test_a_request_without_a_client_address_is_limited_and_audited_as_unknown(
    console: Console, market: Market
) -> None:
    _, token = _user(market)
    assert _post(console, signin, {"token": token}, client=None).status_code == 303
    (entry,) = _sign_ins(market)
    assert entry.source == "web@unknown"
    with market.db.read() as conn:
        assert list(conn.execute(select(rate_limits.c.key)).scalars()) == ["signin:unknown"]


def test_sign_out_ends_the_session_and_its_cookie(
    console: Console, market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid, _ = _user(market)
    with market.db.write() as conn:
        sid = sessions.start_session(conn, uid, int(time.time()))
        other = sessions.start_session(conn, uid, int(time.time()))
        csrf = sessions.session_for(conn, sid, int(time.time())).csrf  # type: ignore[union-attr]

    def out(form: dict[str, str], cookies: dict[str, str]) -> Any:
        built = request("/signout", method="POST", form=form, cookies=cookies)
        return run(signout(console, built))

    with pytest.raises(Refused) as refused:
        out({"csrf": "forged"}, {SESSION_COOKIE: sid})
    assert refused.value.status == 403 and len(_sessions(market)) == 2
    with pytest.raises(Refused) as refused:
        out({"csrf": csrf}, {})
    assert refused.value.status == 401
    # the session ends in a write transaction (the write lock first on SQLite, retried on a
    # deadlock), as every change does
    writes = []
    db_write = console.state.db_write
    monkeypatch.setattr(
        console.state, "db_write", lambda fn, *a: writes.append(fn) or db_write(fn, *a)
    )
    answer = out({"csrf": csrf}, {SESSION_COOKIE: sid})
    assert len(writes) == 1
    assert (answer.status_code, answer.headers["location"]) == (303, "/signin")
    cookie = _cookie(answer, SESSION_COOKIE)
    assert cookie.startswith(f'{SESSION_COOKIE}=""; expires=')
    assert cookie.endswith("; Max-Age=0; Path=/; SameSite=lax")
    with market.db.read() as conn:
        assert sessions.session_for(conn, sid, int(time.time())) is None
        assert sessions.session_for(conn, other, int(time.time())) is not None  # the other stays


@pytest.mark.parametrize("lang", ["en", "zh-CN"])
def test_the_language_link_sets_a_years_cookie_and_goes_back(console: Console, lang: str) -> None:
    answer = run(prefs(console, request("/prefs", query=f"lang={lang}&next=/orders")))
    assert (answer.status_code, answer.headers["location"]) == (303, "/orders")
    assert set_cookies(answer) == [f"lang={lang}; Max-Age=31536000; Path=/; SameSite=lax"]


@pytest.mark.parametrize("theme", ["light", "dark", "auto"])
def test_the_theme_link_sets_a_years_cookie(console: Console, theme: str) -> None:
    answer = run(prefs(console, request("/prefs", query=f"theme={theme}")))
    assert (answer.status_code, answer.headers["location"]) == (303, "/")
    assert set_cookies(answer) == [f"theme={theme}; Max-Age=31536000; Path=/; SameSite=lax"]


def test_the_link_sets_both_and_ignores_what_it_does_not_know(console: Console) -> None:
    both = run(prefs(console, request("/prefs", query="lang=zh-CN&theme=dark&next=/host")))
    assert both.headers["location"] == "/host"
    assert [c.split(";")[0] for c in set_cookies(both)] == ["lang=zh-CN", "theme=dark"]
    for query in ("lang=fr&theme=blue", "lang=EN&theme=Dark", "", "next=//evil.example"):
        answer = run(prefs(console, request("/prefs", query=query)))
        assert answer.headers["location"] == "/" and set_cookies(answer) == [], query

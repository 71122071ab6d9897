"""The signed deposit webhook over HTTP on both databases: credited exactly once by external id;
a bad signature, a stale timestamp or a webhook switched off writes nothing."""

from __future__ import annotations

import json
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
from sqlalchemy import func, select

from openclore.ledger.addresses import deposit_address
from openclore.market.payments import sign
from openclore.store.schema import accounts, transfers

from support import Market

SECRET = "whsec-test-0123456789"


def post(
    market: Market, body: dict[str, Any], *, secret: str = SECRET, at: float | None = None
) -> httpx.Response:
    raw = json.dumps(body).encode()
    header = sign(secret, int(time.time() if at is None else at), raw)
    return market.client().post(
        "/payments/deposit",
        content=raw,
        headers={"Openclore-Signature": header, "Content-Type": "application/json"},
    )


def transfer_count(market: Market) -> int:
    with market.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(transfers)).scalar_one())


def wallet(market: Market, token: str, currency: str = "bitcoin") -> int:
    with market.db.read() as conn:
        return int(
            conn.execute(
                select(accounts.c.balance).where(
                    accounts.c.key == f"wallet:{currency}:{market.user_id(token)}"
                )
            ).scalar_one()
        )


def test_a_replayed_deposit_credits_once(market: Market) -> None:
    market.reconfigure(payments_webhook_secret=SECRET)
    token = market.user("alice")
    body: dict[str, Any] = {
        "external_id": "btcpay-inv-42",
        "currency": "bitcoin",
        "amount": "0.0015",
        "user": "alice",
    }
    first = post(market, body)
    assert first.status_code == 200 and first.json()["credited"] is True, first.text
    for _ in range(3):
        again = post(market, body)
        assert again.status_code == 200 and again.json()["credited"] is False
    assert wallet(market, token) == 1_500_000
    # concurrent deliveries of one new payment: one credit
    body = {**body, "external_id": "btcpay-inv-43", "amount": 0.0005}
    with ThreadPoolExecutor(max_workers=8) as pool:
        answers = list(pool.map(lambda _: post(market, body).json(), range(8)))
    assert Counter(a["credited"] for a in answers) == {True: 1, False: 7}, answers
    assert wallet(market, token) == 2_000_000
    with market.db.read() as conn:
        row = conn.execute(
            select(transfers.c.actor).where(transfers.c.key == "deposit:ext:btcpay-inv-42")
        ).one()
        assert row.actor == "payments-webhook"
        assert conn.execute(select(func.sum(accounts.c.balance))).scalar() == 0


def test_a_deposit_by_address_and_a_conflicting_replay(market: Market) -> None:
    market.reconfigure(payments_webhook_secret=SECRET)
    token = market.user("bob")
    address = deposit_address(
        market.settings.address_secret, market.user_id(token), "CLORE-Blockchain"
    )
    body = {
        "external_id": "bank-1",
        "currency": "CLORE-Blockchain",
        "amount": 25,
        "address": address,
    }
    assert post(market, body).json()["credited"] is True
    conflict = post(market, {**body, "amount": 26})
    assert (conflict.status_code, conflict.json()["error"]) == (409, "deposit_conflict")
    wrong_coin = post(market, {**body, "external_id": "bank-2", "currency": "bitcoin"})
    assert (wrong_coin.status_code, wrong_coin.json()["error"]) == (404, "unknown_account")
    unknown = post(market, {**body, "external_id": "bank-3", "address": None, "user": "nobody"})
    assert unknown.status_code == 404
    assert wallet(market, token, "CLORE-Blockchain") == 25 * 10**9


def test_bad_signatures_and_stale_timestamps_write_nothing(market: Market) -> None:
    market.reconfigure(payments_webhook_secret=SECRET)
    market.user("carol")
    before = transfer_count(market)
    body = {"external_id": "x-1", "currency": "bitcoin", "amount": 1, "user": "carol"}
    cases = {
        "bad_signature": post(market, body, secret="not-the-secret"),
        # a minute outside the 300 s window: a loaded machine's delay stays well inside that
        "timestamp_outside_window": post(market, body, at=time.time() - 360),
        "timestamp_outside_window ": post(market, body, at=time.time() + 360),
    }
    for name, r in cases.items():
        assert (r.status_code, r.json()["code"], r.json()["error"]) == (401, 3, name.strip())
    raw = json.dumps(body).encode()
    tampered = raw.replace(b'"amount": 1', b'"amount": 9')
    header = sign(SECRET, int(time.time()), raw)
    r = market.client().post(
        "/payments/deposit", content=tampered, headers={"Openclore-Signature": header}
    )
    assert r.json()["error"] == "bad_signature"
    for headers in ({}, {"Openclore-Signature": "t=abc,v1=00"}, {"Openclore-Signature": "x" * 600}):
        r = market.client().post("/payments/deposit", content=raw, headers=headers)
        assert (r.status_code, r.json()["error"]) == (401, "missing_signature")
    assert transfer_count(market) == before


def test_signed_but_malformed_deliveries_are_400_and_the_webhook_can_be_off(
    market: Market,
) -> None:
    market.user("dave")
    off = post(market, {"external_id": "a", "currency": "bitcoin", "amount": 1, "user": "dave"})
    assert (off.status_code, off.json()["code"]) == (404, 4)
    market.reconfigure(payments_webhook_secret=SECRET)
    before = transfer_count(market)
    for body in (
        {"external_id": "a b", "currency": "bitcoin", "amount": 1, "user": "dave"},
        {"external_id": "a", "currency": "bitcoin", "amount": "1e3", "user": "dave"},
        {"external_id": "a", "currency": "bitcoin", "amount": -1, "user": "dave"},
        {"external_id": "a", "currency": "bitcoin", "amount": 1},
        {"external_id": "a", "currency": "bitcoin", "amount": 1, "user": "dave", "address": "x"},
    ):
        r = post(market, body)
        assert (r.status_code, r.json()["code"]) == (400, 2), (body, r.text)
    r = post(market, {"external_id": "a", "currency": "doge", "amount": 1, "user": "dave"})
    assert r.json()["error"] == "currency-not-allowed"
    assert transfer_count(market) == before


def test_the_deposit_signature_matches_its_known_answer() -> None:
    """The scheme a payment processor's adapter implements, written out once: HMAC-SHA256 of
    "<t>.<body>" (not the body alone), hex, under t=…,v1=…; the timestamp is signed too."""
    from openclore.market.payments import SignatureError, verify

    body = b'{"external_id":"tx-1","amount":"0.5"}'
    header = "t=1764222000,v1=a90860b901c385630f39c5419967327199749971245baf2b6cc90fba09517c62"
    assert sign(SECRET, 1764222000, body) == header
    verify(SECRET, header, body, now=1764222000 + 10, tolerance=300)
    for bad in (
        header.replace("t=1764222000", "t=1764222001"),  # the same MAC under another time
        header[:-1] + "3",
    ):
        try:
            verify(SECRET, bad, body, now=1764222000, tolerance=300)
        except SignatureError:
            continue
        raise AssertionError(f"accepted {bad}")

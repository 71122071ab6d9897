"""The Idempotency-Key's pure parts (api/idempotency.py) driven directly: the canonical text a
request body is compared by, exact number texts at every size and sign, the key header's bounds,
the request hash (path, query and body), and a stored answer's headers.

Written to kill mutants of `scripts/mutation idempotency` that the HTTP tests
(test_idempotency.py) cannot reach quickly, and to have them die in milliseconds instead of
behind a 20-second wait."""

from __future__ import annotations

import hashlib
import json
import threading
import time
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import insert, select, update
from starlette.requests import Request
from starlette.responses import Response

from openclore.api import idempotency
from openclore.api.idempotency import (
    MAX_KEY_LENGTH,
    _number,
    _stored,
    bind,
    canonical,
    key_of,
    request_hash,
    run_once,
    success_body,
)
from openclore.domain.errors import (
    CloreError,
    InternalError,
    InvalidInput,
    InvalidToken,
    MarketError,
)
from openclore.market.accounts import create_user
from openclore.store.db import run_write
from openclore.store.idempotency import KeyLost
from openclore.store.schema import idempotency_keys

from support import Market

pytestmark = pytest.mark.origin("mutant")


def request(path: str = "/v1/create_order", query: str = "", key: str | None = None) -> Request:
    headers = [] if key is None else [(b"idempotency-key", key.encode("latin-1"))]
    scope: dict[str, Any] = {
        "type": "http",
        "method": "POST",
        "path": path,
        "raw_path": path.encode(),
        "query_string": query.encode(),
        "headers": headers,
        "scheme": "http",
        "server": ("testserver", 80),
    }
    return Request(scope)


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0, "0"),
        (0.0, "0"),
        (Decimal("-0.000"), "0"),
        (1, "1e0"),
        (1.0, "1e0"),
        (Decimal("1.000"), "1e0"),
        (10, "1e1"),
        (100, "1e2"),
        (120, "12e1"),
        (-120, "-12e1"),
        (Decimal("0.0010"), "1e-3"),
        (0.001, "1e-3"),
        (Decimal("1E-3"), "1e-3"),
        (Decimal("-2.50"), "-25e-1"),
        (12345678901234567890123, "12345678901234567890123e0"),
        (Decimal("1e400"), "1e400"),
        (Decimal("Infinity"), "Infinity"),
        (Decimal("-Infinity"), "-Infinity"),
        (Decimal("NaN"), "NaN"),
    ],
)
def test_a_number_is_its_exact_value_in_one_text(value: Any, text: str) -> None:
    assert _number(value) == text


def test_the_canonical_text_of_a_body() -> None:
    assert canonical(None) == "null" and canonical(True) == "true" and canonical(False) == "false"
    assert canonical('a"b') == '"a\\"b"' and canonical("é") == '"\\u00e9"'
    assert canonical("1") == '"1"' != canonical(1)  # a string is never a number
    assert canonical(True) != canonical(1)
    assert canonical([1, "x", None]) == '[1e0,"x",null]'
    assert canonical((1, 2)) == "[1e0,2e0]"
    assert canonical([]) == "[]" and canonical({}) == "{}"
    body = {"b": [1.0, {"z": 0, "a": "s"}], "a": 2, "c": None}
    assert canonical(body) == '{"a":2e0,"b":[1e0,{"a":"s","z":0}],"c":null}'
    assert canonical({"a": 2, "b": 1}) == canonical({"b": 1, "a": 2.0})
    assert canonical({1: "x"}) == '{"1":"x"}'
    with pytest.raises(TypeError, match="not a JSON value: set"):
        canonical({1, 2})


def test_the_key_header_is_one_to_255_printable_ascii_characters() -> None:
    assert MAX_KEY_LENGTH == 255
    assert key_of(request()) is None
    assert key_of(request(key="  abc  ")) == "abc"
    assert key_of(request(key="k" * 255)) == "k" * 255
    assert key_of(request(key="a b-c_d.e~!")) == "a b-c_d.e~!"
    for bad in ("", "   ", "k" * 256, "tab\there", "caf\xe9"):
        with pytest.raises(InvalidInput) as refused:
            key_of(request(key=bad))
        assert refused.value.message == ("Idempotency-Key: 1 to 255 printable ASCII characters"), (
            bad
        )


def test_the_request_hash_covers_the_path_the_query_and_the_body() -> None:
    body = {"id": 1}
    digest = request_hash(request("/v1/cancel_order", "a=1"), body)
    expected = hashlib.sha256(b'/v1/cancel_order?a=1\n{"id":1e0}').hexdigest()
    assert digest == expected
    assert (
        request_hash(request("/v1/cancel_order"), body)
        == hashlib.sha256(b'/v1/cancel_order?\n{"id":1e0}').hexdigest()
    )
    assert request_hash(request("/v1/cancel_order", "a=2"), body) != digest
    assert request_hash(request("/v1/create_order", "a=1"), body) != digest
    assert request_hash(request("/v1/cancel_order", "a=1"), {"id": 2}) != digest
    # a lone surrogate in a body is hashed (JSON escapes it), not an error
    assert len(request_hash(request(), {"s": "\ud800"})) == 64


def test_a_stored_answer_says_whether_it_is_replayed() -> None:
    assert success_body({"order_id": 5}) == b'{"order_id":5,"code":0}'
    first = _stored(b'{"code":0}', 200, replayed=False)
    assert first.body == b'{"code":0}' and first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert first.headers["content-type"] == "application/json"
    again = _stored(b'{"code":2}', 400, replayed=True)
    assert again.status_code == 400 and again.headers["idempotent-replayed"] == "true"


# ------------------------------------------------------------------ run_once and bind, directly


def person(market: Market) -> int:
    with market.db.write() as conn:
        return create_user(conn, f"u{time.monotonic_ns()}", 1_000_000, market.settings)


def once(
    market: Market, uid: int, handler: Any, body: dict[str, Any] | None = None, mode: str = "clore"
) -> Any:
    return run_once(
        market.db, request(), "create_order", "k1", uid, body or {"a": 1}, mode, 3600.0, handler
    )


def stored(market: Market, uid: int) -> Any:
    with market.db.read() as conn:
        return conn.execute(
            select(idempotency_keys).where(idempotency_keys.c.user_id == uid)
        ).first()


def write_through_bind(market: Market, result: dict[str, Any], answer: Any = None) -> Any:
    """What AppState.db_write does: the use case in a transaction that stores the answer."""
    run, committed = bind(lambda conn: result, answer)
    out = run_write(market.db, run)
    committed()
    return out


def test_an_answer_stored_after_the_fact_and_replayed(market: Market) -> None:
    uid = person(market)
    calls: list[int] = []

    def handler() -> dict[str, Any]:  # nothing written through db_write
        calls.append(1)
        return {"x": 1}

    first = once(market, uid, handler)
    assert (first.status_code, first.body) == (200, b'{"x":1,"code":0}')
    assert "idempotent-replayed" not in first.headers
    row = stored(market, uid)
    assert (row.state, row.status, row.response, row.endpoint) == (
        "done",
        200,
        '{"x":1,"code":0}',
        "create_order",
    )
    again = once(market, uid, handler)
    assert (again.status_code, again.body) == (200, first.body) and calls == [1]
    assert again.headers["idempotent-replayed"] == "true"
    with pytest.raises(InvalidInput) as other:
        once(market, uid, handler, body={"a": 2})
    assert other.value.message == (
        "Idempotency-Key was already used with a different request (another endpoint or body); "
        "send a new key for a new request"
    )


def test_a_response_the_endpoint_made_itself_gives_the_key_back(market: Market) -> None:
    uid = person(market)
    made = Response(b"raw", status_code=202)
    assert once(market, uid, lambda: made) is made
    assert stored(market, uid) is None  # a retry runs again


def test_the_answer_is_stored_in_the_use_cases_own_transaction(market: Market) -> None:
    uid = person(market)

    def handler() -> dict[str, Any]:
        write_through_bind(market, {"raw": 1}, answer=lambda out: {"order_id": 7})
        write_through_bind(market, {"second": 2})  # a second write stores nothing more
        return {"raw": 1}  # the answer stored in the transaction is what is sent

    first = once(market, uid, handler)
    assert (first.status_code, first.body) == (200, b'{"order_id":7,"code":0}')
    assert stored(market, uid).status == 200
    replayed = once(market, uid, handler)
    assert (replayed.status_code, replayed.body) == (200, first.body)

    other = person(market)

    def plain() -> dict[str, Any]:  # no answer function: the use case's own dict
        write_through_bind(market, {"a": 1})
        return {"ignored": True}

    assert once(market, other, plain).body == b'{"a":1,"code":0}'
    # a use case whose result is not a dict answers an empty object
    third = person(market)
    assert once(market, third, lambda: write_through_bind(market, [1]) and {"n": 1}).body == (
        b'{"code":0}'
    )
    # outside a request with a key nothing is stored
    write_through_bind(market, {"free": 1})
    assert stored(market, person(market)) is None


def test_a_rolled_back_use_case_stores_nothing_and_frees_the_key(market: Market) -> None:
    uid = person(market)

    def failing() -> dict[str, Any]:
        run, _ = bind(lambda conn: {"a": 1}, None)

        def then_fail(conn: Any) -> Any:
            run(conn)
            raise RuntimeError("after the answer was written")

        run_write(market.db, then_fail)
        return {}

    with pytest.raises(RuntimeError):
        once(market, uid, failing)
    assert stored(market, uid) is None


@pytest.mark.parametrize(
    ("error", "status"),
    [(InvalidInput("bad"), 400), (MarketError("server-dont-exist"), 404)],
)
def test_refusals_are_answers_and_are_replayed(
    market: Market, error: CloreError, status: int
) -> None:
    uid = person(market)

    def refuse() -> dict[str, Any]:
        raise error

    with pytest.raises(CloreError):
        once(market, uid, refuse, mode="rest")
    row = stored(market, uid)
    assert (row.state, row.status) == ("done", status)
    replayed = once(market, uid, refuse, mode="rest")
    assert replayed.status_code == status and replayed.headers["idempotent-replayed"] == "true"
    assert json.loads(replayed.body)["code"] == error.code


def test_an_internal_error_or_a_refused_token_frees_the_key(market: Market) -> None:
    for error in (InternalError("boom"), InvalidToken("invalid token")):
        uid = person(market)

        def fail(error: CloreError = error) -> dict[str, Any]:
            raise error

        with pytest.raises(CloreError):
            once(market, uid, fail)
        assert stored(market, uid) is None, error


def complete_as_another(market: Market, uid: int, body: bytes) -> None:
    with market.db.write() as conn:
        conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.user_id == uid)
            .values(owner="someone-else", state="done", status=200, response=body.decode())
        )


def test_a_retry_waits_for_the_first_attempt_and_answers_as_it_does(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    uid = person(market)
    digest = request_hash(request(), {"a": 1})
    now = time.time()
    with market.db.write() as conn:
        conn.execute(
            insert(idempotency_keys).values(
                user_id=uid,
                key="k1",
                endpoint="create_order",
                request_hash=digest,
                owner="first",
                state="running",
                started_at=now,
                created_at=now,
            )
        )
    monkeypatch.setattr(idempotency, "WAIT_FOR_FIRST", 0.3)
    started = time.monotonic()
    with pytest.raises(MarketError) as busy:
        once(market, uid, lambda: pytest.fail("ran while the first attempt runs"))
    assert busy.value.name == "idempotency_key_in_use"
    assert 0.3 <= time.monotonic() - started < 5
    monkeypatch.setattr(idempotency, "WAIT_FOR_FIRST", 10.0)
    timer = threading.Timer(0.3, complete_as_another, (market, uid, b'{"first":1,"code":0}'))
    timer.start()
    try:
        answer = once(market, uid, lambda: pytest.fail("ran while the first attempt runs"))
    finally:
        timer.join()
    assert answer.body == b'{"first":1,"code":0}'
    assert answer.headers["idempotent-replayed"] == "true"


def test_an_attempt_whose_key_was_taken_over_answers_as_the_taker_did(market: Market) -> None:
    uid = person(market)
    tries: list[int] = []

    def handler() -> dict[str, Any]:
        tries.append(1)
        complete_as_another(market, uid, b'{"taker":1,"code":0}')
        raise KeyLost("k1")

    answer = once(market, uid, handler)
    assert answer.body == b'{"taker":1,"code":0}' and tries == [1]
    assert answer.headers["idempotent-replayed"] == "true"

"""The Idempotency-Key's pure parts (api/idempotency.py) driven directly: the canonical text a
request body is compared by, exact number texts at every size and sign, the key header's bounds,
the request hash (path, query and body), and a stored answer's headers.

Written to kill mutants of `scripts/mutation idempotency` that the HTTP tests
(test_idempotency.py) cannot reach quickly, and to have them die in milliseconds instead of
behind a 20-second wait."""

from __future__ import annotations

import hashlib
from decimal import Decimal
from typing import Any

import pytest
from starlette.requests import Request

from openclore.api.idempotency import (
    MAX_KEY_LENGTH,
    _number,
    _stored,
    canonical,
    key_of,
    request_hash,
    success_body,
)
from openclore.domain.errors import InvalidInput

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
    # a lone surrogate in a body is hashed, not an error
    assert len(request_hash(request(), {"s": "\ud800"})) == 64


def test_a_stored_answer_says_whether_it_is_replayed() -> None:
    assert success_body({"order_id": 5}) == b'{"order_id":5,"code":0}'
    first = _stored(b'{"code":0}', 200, replayed=False)
    assert first.body == b'{"code":0}' and first.status_code == 200
    assert "idempotent-replayed" not in first.headers
    assert first.headers["content-type"] == "application/json"
    again = _stored(b'{"code":2}', 400, replayed=True)
    assert again.status_code == 400 and again.headers["idempotent-replayed"] == "true"

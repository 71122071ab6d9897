"""SPEC §1: transport — paths, auth, lenient JSON, compact bodies, codes and HTTP statuses."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from support import Market, ok, order_body

ENDPOINTS = [
    "wallets",
    "my_servers",
    "server_config",
    "marketplace",
    "my_orders",
    "spot_marketplace",
    "set_server_settings",
    "set_spot_price",
    "cancel_order",
    "create_order",
]
AUTH_REQUIRED = [e for e in ENDPOINTS if e not in ("marketplace", "spot_marketplace")]


def test_unknown_endpoint_is_code_4(market: Market) -> None:
    c = market.client(market.user())
    for path in ("/v1/nope", "/v1/", "/v2/wallets", "/", "/v1/wallets/extra"):
        r = c.get(path)
        assert r.status_code == 200, path
        assert r.json()["code"] == 4, path
    r = c.request("DELETE", "/v1/wallets")
    assert r.json()["code"] == 4


@pytest.mark.parametrize("endpoint", AUTH_REQUIRED)
def test_missing_or_unknown_token_is_code_3(market: Market, endpoint: str) -> None:
    anonymous = market.client()
    assert anonymous.post(f"/v1/{endpoint}", json={}).json() == {
        "error": "invalid api token",
        "code": 3,
    }
    stranger = market.client("not-a-token")
    assert stranger.post(f"/v1/{endpoint}", json={}).json()["code"] == 3


def test_revoked_token_is_refused(market: Market) -> None:
    from openclore.market.accounts import revoke_token

    token = market.user()
    c = market.client(token)
    ok(c.get("/v1/wallets"))
    with market.db.write() as conn:
        assert revoke_token(conn, token, market.now())
    assert c.get("/v1/wallets").json()["code"] == 3


def test_marketplace_and_spot_marketplace_answer_anonymously(market: Market) -> None:
    host = market.user()
    sid = market.server(host)
    anonymous = market.client()
    body = ok(anonymous.get("/v1/marketplace"))
    assert [s["id"] for s in body["servers"]] == [sid]
    assert body["my_servers"] == []
    assert ok(anonymous.get(f"/v1/spot_marketplace?market={sid}"))["exists"] is True
    # a wrong token on an anonymous endpoint is still an invalid token, not silently anonymous
    assert market.client("bogus").get("/v1/marketplace").json()["code"] == 3


def test_bare_success_is_compact_code_0_byte_for_byte(market: Market) -> None:
    host = market.user()
    sid = market.server(host)
    renter = market.client(market.user(bitcoin="0.01"))
    oid = ok(renter.post("/v1/create_order", json=order_body(sid)))["order_id"]
    r = renter.post("/v1/cancel_order", json={"id": oid})
    assert r.content == b'{"code":0}'
    assert r.headers["content-type"].startswith("application/json")


def test_trailing_commas_as_in_the_seed_are_accepted(market: Market) -> None:
    host = market.user()
    sid = market.server(host)
    renter = market.client(market.user(bitcoin="0.01"))
    raw = (
        '{\n "currency":"bitcoin",\n "image":"cloreai/ubuntu20.04-jupyter",\n'
        f' "renting_server":{sid},\n "type":"on-demand",\n'
        ' "ports":{\n "22":"tcp",\n "8888":"http"\n },\n'
        ' "env":{\n "VARIABLE_NAME":"VARIABLE_VALUE",\n },\n'
        ' "command":"#!/bin/sh\\napt update -y && apt install htop",\n}'
    )
    r = renter.post("/v1/create_order", content=raw, headers={"Content-type": "application/json"})
    assert ok(r)["order"]["image"] == "cloreai/ubuntu20.04-jupyter"


@pytest.mark.parametrize(
    "raw",
    [
        b"{",
        b'{"id": }',
        b'{"id": 1,,}',
        b"[1,2]",
        b'"text"',
        b"{'id': 1}",
        b'{"id": NaN}',
        b'{"id": Infinity}',
        b"\xff\xfe\x00",
        b'{"id": 1} trailing',
        b"[" * 5000 + b"]" * 5000,
        b'{"a":' * 100 + b"1" + b"}" * 100,
        b'{"id": ' + b"9" * 5000 + b"}",
    ],
)
def test_malformed_json_is_code_2(market: Market, raw: bytes) -> None:
    c = market.client(market.user())
    r = c.post("/v1/cancel_order", content=raw, headers={"Content-type": "application/json"})
    assert r.status_code == 200
    body = r.json()
    assert body["code"] == 2, body
    assert body["error"]


def test_trailing_comma_inside_strings_is_kept(market: Market) -> None:
    """Only a comma before } or ] outside strings is dropped: data is never rewritten."""
    host_token = market.user()
    c = market.client(host_token)
    body = ok(c.post("/v1/add_server", content=b'{"name": "a,}b",}'))
    assert body["init_token"]
    names = [s["name"] for s in ok(c.get("/v1/my_servers"))["servers"]]
    assert names == ["a,}b"]


def test_oversized_body_is_refused_before_reading(market: Market) -> None:
    c = market.client(market.user())
    big = b'{"id": 1, "issue": "' + b"x" * (market.settings.max_body_bytes + 10) + b'"}'
    r = c.post("/v1/cancel_order", content=big)
    assert r.status_code == 413
    assert r.json()["code"] == 2

    def chunks() -> Iterator[bytes]:
        for _ in range(100):
            yield b"x" * 4096

    r = c.post("/v1/cancel_order", content=chunks())  # chunked, no Content-Length
    assert r.status_code == 413
    assert r.json()["code"] == 2


def test_server_config_accepts_get_body_query_and_post(market: Market) -> None:
    host = market.user()
    market.server(host, "rig-a")
    c = market.client(host)
    by_body = c.request(
        "GET",
        "/v1/server_config",
        content=b'{"server_name":"rig-a"}',
        headers={"Content-type": "application/json"},
    )
    assert ok(by_body)["config"]["name"] == "rig-a"
    assert ok(c.get("/v1/server_config", params={"server_name": "rig-a"}))["config"]["name"] == (
        "rig-a"
    )
    assert ok(c.post("/v1/server_config", json={"server_name": "rig-a"}))["config"]["name"] == (
        "rig-a"
    )


def test_rest_http_status_mode(market: Market) -> None:
    market.reconfigure(http_status="rest")
    token = market.user()
    c = market.client(token)
    assert c.get("/v1/nope").status_code == 404
    assert market.client().get("/v1/wallets").status_code == 401
    assert c.post("/v1/cancel_order", content=b"{").status_code == 400
    r = c.post("/v1/cancel_order", json={"id": 999})
    assert (r.status_code, r.json()["error"]) == (404, "order_dont_exist")
    host = market.user()
    sid = market.server(host)
    r = market.client(host).post("/v1/create_order", json=order_body(sid))
    assert (r.status_code, r.json()["error"]) == (403, "cant_rent_from_yourself")


def test_default_mode_keeps_http_200_for_errors(market: Market) -> None:
    c = market.client(market.user())
    assert c.get("/v1/nope").status_code == 200
    assert market.client().get("/v1/wallets").status_code == 200
    assert c.post("/v1/cancel_order", json={"id": 999}).status_code == 200


def test_internal_errors_never_leak_a_traceback(market: Market) -> None:
    token = market.user()
    c = market.client(token)
    from sqlalchemy import text

    # break the database under the app (then mend it): every authenticated query now fails
    with market.db.engine.begin() as conn:
        conn.execute(text("ALTER TABLE api_tokens RENAME TO api_tokens_gone"))
    try:
        r = c.get("/v1/wallets")
    finally:
        with market.db.engine.begin() as conn:
            conn.execute(text("ALTER TABLE api_tokens_gone RENAME TO api_tokens"))
    assert r.status_code == 500
    assert r.json() == {"error": "internal error", "code": 1}
    assert "Traceback" not in r.text
    ok(c.get("/v1/wallets"))


def test_gzip_marketplace_for_clients_that_ask(market: Market) -> None:
    host = market.user()
    sid = market.server(host)
    r = httpx.get(market.url + "/v1/marketplace", headers={"Accept-Encoding": "gzip"})
    assert r.headers.get("content-encoding") == "gzip"
    assert [s["id"] for s in r.json()["servers"]] == [sid]  # decoded by the client
    plain = httpx.get(market.url + "/v1/marketplace", headers={"Accept-Encoding": "identity"})
    assert "content-encoding" not in plain.headers
    assert plain.json() == r.json()


def test_openapi_describes_every_endpoint(market: Market) -> None:
    spec = ok_json(market.client().get("/openapi.json"))
    for endpoint in ENDPOINTS:
        assert f"/v1/{endpoint}" in spec["paths"], endpoint
    create = spec["paths"]["/v1/create_order"]["post"]
    ref = create["requestBody"]["content"]["application/json"]["schema"]["$ref"]
    schema = spec["components"]["schemas"][ref.rsplit("/", 1)[1]]
    assert {"currency", "renting_server", "type"} <= set(schema["required"])
    # image is required unless template_id is given (openclore templates): the handler says so
    assert {"image", "template_id"} <= set(schema["properties"])
    assert "ErrorEnvelope" in spec["components"]["schemas"]
    assert market.client().get("/docs").status_code == 200


def ok_json(response: httpx.Response) -> dict[str, Any]:
    assert response.status_code == 200
    data: dict[str, Any] = response.json()
    return data

"""The event endpoints (api/event_endpoints.py) pinned where the event and webhook flow tests do
not look: who the webhook and alert changes are audited as, and how the delivery log reads its
webhook id and page size from a query string or a body, at their bounds.

Written to kill mutants of `scripts/mutation events`."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import httpx
import pytest

from openclore.api.event_endpoints import STREAM_BATCH, _read, _set_soon

from event_support import credit, hook
from support import Market, audit_entries, ok

pytestmark = pytest.mark.origin("mutant")

URL = "http://127.0.0.1:9/"  # the sandbox allows loopback receivers


def test_webhook_and_alert_changes_are_audited_as_the_caller(market: Market) -> None:
    token = market.user()
    client = market.client(token)
    uid = market.user_id(token)
    made = hook(market, token, URL)
    ok(client.post("/v1/ping_webhook", json={"id": made["id"]}))
    ok(client.post("/v1/set_alerts", json={"low_balance_seconds": 3600}))
    ok(client.post("/v1/delete_webhook", json={"id": made["id"]}))
    for action in ("webhook.create", "webhook.ping", "alerts.set", "webhook.delete"):
        assert [e["actor"] for e in audit_entries(market, action)] == [f"user:{uid}"], action


def deliveries(market: Market, token: str, **params: Any) -> httpx.Response:
    return market.client(token).get("/v1/webhook_deliveries", params=params)


def test_the_delivery_log_pages_and_reads_its_id_from_a_query_or_a_body(market: Market) -> None:
    token = market.user()
    made = hook(market, token, URL)
    client = market.client(token)
    for _ in range(52):
        ok(client.post("/v1/ping_webhook", json={"id": made["id"]}))
    assert len(ok(deliveries(market, token, id=made["id"]))["deliveries"]) == 50  # the default
    assert len(ok(deliveries(market, token, id=made["id"], limit=1))["deliveries"]) == 1
    assert len(ok(deliveries(market, token, id=made["id"], limit=0))["deliveries"]) == 1
    assert len(ok(deliveries(market, token, id=made["id"], limit=1000))["deliveries"]) == 52
    too_many = deliveries(market, token, id=made["id"], limit=1001).json()
    assert too_many == {"code": 2, "error": "limit: a whole number from 0 to 1000"}
    # the id in a body (POST), no query string
    body = ok(client.post("/v1/webhook_deliveries", json={"id": made["id"], "limit": 3}))
    assert len(body["deliveries"]) == 50  # a body's limit is not the query's
    # a query's id is read as a 64-bit integer, then checked as a webhook id
    assert deliveries(market, token, id=2**63 - 1).json() == {
        "code": 2,
        "error": "id: Input should be less than or equal to 2147483647",
    }
    assert deliveries(market, token, id=2**63).json() == {
        "code": 2,
        "error": "id: a whole number from 0 to 9223372036854775807",
    }


def test_a_stream_reads_its_batch_of_the_types_asked(market: Market) -> None:
    token = market.user()
    uid = market.user_id(token)
    made = hook(market, token, URL)
    client = market.client(token)
    for _ in range(STREAM_BATCH + 1):
        ok(client.post("/v1/ping_webhook", json={"id": made["id"]}))
    credit(market, token, 1)
    batch = _read(market.db, uid, 0, None)
    assert len(batch) == STREAM_BATCH
    assert [e.type for e in _read(market.db, uid, 0, ["deposit.credited"])] == ["deposit.credited"]


def test_a_wake_up_from_another_thread_sets_the_streams_flag() -> None:
    loop = asyncio.new_event_loop()
    try:
        flag = asyncio.Event()
        thread = threading.Thread(target=_set_soon, args=(loop, flag))
        thread.start()
        thread.join()
        loop.run_until_complete(asyncio.wait_for(flag.wait(), 5))
        assert flag.is_set()
    finally:
        loop.close()
    _set_soon(loop, asyncio.Event())  # the loop closed meanwhile: nothing to wake, no error

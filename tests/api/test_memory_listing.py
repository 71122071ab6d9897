"""The plain listing held in memory is answered in front of the application (api/listing.py's
MemoryListing): the same answer, byte for byte and header for header, as the application gives,
counted in the metrics; every other request goes through the application."""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.requests import Request

from openclore.api import metrics
from openclore.api.pipeline import Pipeline
from openclore.store import freshness

from support import Market, ok


def _count() -> float:
    series = metrics.REQUESTS.labels("/v1/marketplace", "GET", "200", "0")
    return float(series._value.get())


def test_the_listing_in_memory_is_answered_before_the_application_as_it_would(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    host = market.user(name="host")
    market.server(host)
    clients = {"anonymous": market.client(), "owner": market.client(host)}
    for client in clients.values():  # the first requests fill the caches
        ok(client.get("/v1/marketplace"))
    monkeypatch.setattr(freshness, "RECHECK_SECONDS", 3600.0)  # no versions' re-read meanwhile
    if market.backend == "postgresql":  # trusted once the notifications are listened to
        deadline = time.time() + 10
        while not market.db.freshness.listening:
            assert time.time() < deadline
            time.sleep(0.05)
    runs: list[str] = []
    run = Pipeline.run

    async def counted(self: Pipeline, ep: Any, request: Request) -> Any:
        runs.append(ep.name)
        return await run(self, ep, request)

    monkeypatch.setattr(Pipeline, "run", counted)

    def ask() -> dict[tuple[str, str], Any]:
        return {
            (who, encoding): client.get(
                "/v1/marketplace", headers={"Accept-Encoding": encoding, "X-Request-Id": "r-1"}
            )
            for who, client in clients.items()
            for encoding in ("gzip", "identity")
        }

    before = _count()
    fast = ask()
    assert runs == [] and _count() == before + 4
    monkeypatch.setattr(Pipeline, "listing_here", lambda _self, _request: None)
    slow = ask()
    assert runs == ["marketplace"] * 4
    for key, answer in fast.items():
        assert answer.status_code == slow[key].status_code == 200, key
        assert answer.content == slow[key].content, key
        assert answer.headers.multi_items() == slow[key].headers.multi_items(), key
        assert answer.headers["x-request-id"] == "r-1"
    assert fast["anonymous", "gzip"].headers["content-encoding"] == "gzip"


def test_anything_but_a_plain_listing_goes_through_the_application(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    client = market.client()
    ok(client.get("/v1/marketplace"))
    seen: list[Request] = []
    here = Pipeline.listing_here

    def watched(self: Pipeline, request: Request) -> Any:
        seen.append(request)
        return here(self, request)

    monkeypatch.setattr(Pipeline, "listing_here", watched)
    ok(client.get("/v1/marketplace?gpu=3090"))
    ok(client.post("/v1/marketplace", json={}))
    ok(client.request("GET", "/v1/marketplace", content=b"{}"))
    client.get("/v1/spot_marketplace")
    assert seen == []
    ok(client.get("/v1/marketplace", headers={"Content-Length": "0"}))
    assert len(seen) == 1

"""Property-based fuzzing over the OpenAPI schema: any input gets a documented Clore answer.

Schemathesis generates valid and invalid requests for every operation and checks that none is a
server error and that every response matches the documented shapes (success or error envelope).
"""

from __future__ import annotations

from typing import Any

import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from openclore.api.app import create_app
from openclore.config import Settings

from support import Market


def _schema() -> Any:
    app = create_app(Settings(database_url="sqlite://"))
    return schemathesis.openapi.from_dict(app.openapi())


schema = _schema()


@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=list(HealthCheck),
)
def test_every_operation_answers_in_the_documented_shape(case: Any, market: Market) -> None:
    if not hasattr(market, "fuzz_token"):
        token = market.user(bitcoin="0.5", CLORE_Blockchain="100")
        market.server(market.user(), "rig")
        market.fuzz_token = token  # type: ignore[attr-defined]
    headers = dict(case.headers or {})
    headers.setdefault("auth", market.fuzz_token)  # type: ignore[attr-defined]
    case.headers = headers
    if case.path == "/v1/events":  # without ?after it is an endless event stream (test_events)
        query = dict(case.query or {})
        query.setdefault("after", "0")
        case.query = query
    response = case.call(base_url=market.url)
    if response.status_code == 400 and response.text == "Invalid HTTP request received.":
        # raw non-ASCII in the request line (e.g. ?until=²) is not HTTP: the server's HTTP
        # parser refuses it before the application sees it
        assert any(not str(v).isascii() for v in (case.query or {}).values()), case.query
        return
    assert response.status_code != 500, response.text
    content_type = response.headers.get("content-type") or ""
    if isinstance(content_type, list):  # schemathesis' response keeps every value
        content_type = content_type[0] if content_type else ""
    if str(content_type).startswith("text/event-stream"):
        # the events stream (GET /v1/events without ?after): server-sent events, not JSON
        assert response.status_code == 200
        assert all(
            not line or line.startswith((":", "id:", "event:", "data:", "retry:"))
            for line in response.text.splitlines()
        ), response.text[:500]
        return
    body = response.json()
    assert isinstance(body, dict) and isinstance(body.get("code"), int), response.text
    assert body["code"] != 1, response.text
    if body["code"] == 2:
        assert isinstance(body.get("error"), str) and body["error"], response.text
    # Clore's HTTP mode answers invalid input and tokens with HTTP 200 + code: the checks that
    # expect 4xx for negative data or missing auth do not apply; shapes and statuses do.
    case.validate_response(
        response,
        checks=[
            not_a_server_error,
            response_schema_conformance,
            content_type_conformance,
            status_code_conformance,
        ],
    )

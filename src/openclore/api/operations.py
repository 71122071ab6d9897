"""Operations, outside the Clore API: ``/healthz``, ``/readyz`` and ``/metrics``."""

from __future__ import annotations

import asyncio
import hmac
import logging
from typing import Any

from fastapi import FastAPI
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from openclore.api import metrics
from openclore.api.state import AppState
from openclore.api.wire import dumps
from openclore.store.migrate import current_revision, head_revision

log = logging.getLogger("openclore.api")

METRICS_TOKEN_REQUIRED = "metrics token required: send 'Authorization: Bearer <token>'"
METRICS_OFF = (
    "metrics are not public: set OPENCLORE_METRICS_TOKEN and scrape with 'Authorization: Bearer "
    "<token>', or set OPENCLORE_METRICS_PUBLIC=1 to serve them to anyone"
)
READY_TIMEOUT = 5.0
_HEAD: list[str | None] = []  # the migrations' head, read once per process


def _schema_head() -> str | None:
    if not _HEAD:
        _HEAD.append(head_revision())
    return _HEAD[0]


def install_operations(app: FastAPI, state: AppState) -> None:
    """``/healthz`` (the process answers), ``/readyz`` (its database answers and is migrated to
    this code's head) and ``/metrics`` (Prometheus), outside the Clore API."""

    def plain(status: int, body: dict[str, Any]) -> Response:
        return Response(dumps(body), status_code=status, media_type="application/json")

    async def healthz(_request: Request) -> Response:
        return plain(200, {"status": "ok"})

    def _readiness() -> tuple[bool, str]:
        try:
            current = current_revision(state.db)
        except Exception as exc:
            log.warning("readiness: database unreachable: %s", str(exc).splitlines()[0])
            return False, "database unreachable"
        head = _schema_head()
        if current != head:
            return False, f"database schema at {current}, this code needs {head}"
        return True, "ready"

    async def readyz(_request: Request) -> Response:
        try:
            ready, reason = await asyncio.wait_for(run_in_threadpool(_readiness), READY_TIMEOUT)
        except TimeoutError:
            ready, reason = False, "database did not answer in time"
        if ready:
            return plain(200, {"status": "ready"})
        return plain(503, {"status": "not ready", "reason": reason})

    async def metrics_endpoint(request: Request) -> Response:
        # the figures include every wallet's total and the platform's revenue: a scraper shows
        # the token, unless the operator made them public
        token = state.settings.metrics_token
        if token:
            given = request.headers.get("authorization", "")
            expected = f"Bearer {token}"
            if not hmac.compare_digest(given.encode(), expected.encode()):
                answer = plain(401, {"error": METRICS_TOKEN_REQUIRED})
                answer.headers["WWW-Authenticate"] = 'Bearer realm="metrics"'
                return answer
        elif not state.settings.metrics_public:
            return plain(403, {"error": METRICS_OFF})
        try:
            body, content_type = await run_in_threadpool(metrics.render, state.figures)
        except Exception:
            log.exception("metrics could not be read")
            return plain(503, {"error": "metrics unavailable"})
        return Response(body, media_type=content_type)

    app.add_api_route("/healthz", healthz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/readyz", readyz, methods=["GET"], include_in_schema=False)
    app.add_api_route("/metrics", metrics_endpoint, methods=["GET"], include_in_schema=False)

"""One function renders every error body (and its HTTP status and headers)."""

from __future__ import annotations

import math

from starlette.responses import Response

from openclore.api.wire import dumps
from openclore.domain.errors import CloreError, RateLimited, http_status


def error_response(exc: CloreError, mode: str) -> Response:
    body = exc.body()
    headers: dict[str, str] = {}
    if isinstance(exc, RateLimited):
        headers["Retry-After"] = str(max(1, math.ceil(exc.retry_after)))
    return Response(
        dumps(body),
        status_code=http_status(exc.code, body.get("error"), mode),
        media_type="application/json",
        headers=headers,
    )

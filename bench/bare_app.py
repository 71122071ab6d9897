"""The ceiling: a raw ASGI app returning pre-serialized bytes (the file BENCH_BODY_FILE names, else
``{"code":0}``)."""

from __future__ import annotations

import os
from typing import Any

_PATH = os.environ.get("BENCH_BODY_FILE")
_BODY = open(_PATH, "rb").read() if _PATH else b'{"code":0}'  # noqa: SIM115
_HEADERS = [
    (b"content-type", b"application/json"),
    (b"content-length", str(len(_BODY)).encode()),
]


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": _BODY})

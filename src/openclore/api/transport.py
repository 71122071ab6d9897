"""What the HTTP server does before a request reaches the market: body and frame caps, header and
keep-alive timeouts, a connection cap. Used by ``openclore serve`` and by the test harness alike.

uvicorn closes idle keep-alive connections, but a client that sends its request headers one byte
at a time holds a connection (and a file descriptor) forever: :class:`HeaderTimeout` closes any
connection whose request headers are not complete ``header_timeout`` seconds after the first byte
(or after the connection opened).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from email.utils import formatdate
from typing import Any, ClassVar

from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from openclore.api.wire import dumps
from openclore.config import Settings

log = logging.getLogger("openclore.api")

# The largest WebSocket frame accepted (agents' messages are a few KiB): uvicorn refuses larger
# frames before buffering them.
MAX_WS_FRAME_BYTES = 65536


class BodyTooLarge(Exception):
    """Raised by BodyLimit's receive while a chunked body grows past the limit."""


def too_large(max_bytes: int) -> Response:
    body = dumps({"error": f"request body larger than {max_bytes} bytes", "code": 2})
    return Response(body, status_code=413, media_type="application/json")


# A body over the cap is read and thrown away (up to this much more, within DRAIN_SECONDS)
# before the 413 goes out: a client still sending when the server answers and closes would see a
# connection reset instead of the answer. Larger bodies are refused at once.
DRAIN_LIMIT_BYTES = 16 * 1024 * 1024
DRAIN_SECONDS = 30.0


async def _drain(receive: Receive, budget: int) -> None:
    """Read and discard the rest of a request body, up to ``budget`` bytes."""

    async def run() -> None:
        left = budget
        while left >= 0:
            message = await receive()
            if message["type"] != "http.request":
                return
            left -= len(message.get("body", b""))
            if not message.get("more_body", False):
                return

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(run(), DRAIN_SECONDS)


class BodyLimit:
    """Refuse bodies over ``max_bytes`` before they are read into memory (code 2, HTTP 413)."""

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length: int | None = None
        expects_continue = False
        for name, value in scope.get("headers", []):
            if name == b"content-length":
                try:
                    length = int(value)
                except ValueError:
                    length = -1
            elif name == b"expect" and value.lower() == b"100-continue":
                expects_continue = True
        if length is not None and (length < 0 or length > self.max_bytes):
            # a client waiting for "100 Continue" has sent nothing: answer without reading
            if not expects_continue and 0 <= length <= self.max_bytes + DRAIN_LIMIT_BYTES:
                await _drain(receive, length)
            await too_large(self.max_bytes)(scope, receive, send)
            return
        seen = 0

        async def limited_receive() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body", False):
                        await _drain(receive, DRAIN_LIMIT_BYTES)
                    raise BodyTooLarge
            return message

        await self.app(scope, limited_receive, send)


# the status an answer to a client that went away gets in logs and metrics (nobody reads it),
# as nginx logs it
CLIENT_GONE = 499


def client_gone(name: str) -> Response:
    """What a request whose client closed its connection before its body had come answers with:
    nothing was done, and it is no fault of the server's (logged as such, no traceback)."""
    log.info("client went away before its request to %s had arrived", name)
    return Response(status_code=CLIENT_GONE)


class DateHeader:
    """One ``Date`` per answer: the one the endpoint set (the market's time, see the API), else
    the wall clock. uvicorn's own is switched off (:func:`server_options`)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_dated(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                if not any(name.lower() == b"date" for name, _ in headers):
                    headers.append((b"date", formatdate(time.time(), usegmt=True).encode()))
                    message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_dated)


REFUSED_LINGER = 1.0
_REFUSAL = (
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-type: text/plain; charset=utf-8\r\n"
    b"content-length: 19\r\nconnection: close\r\n\r\nService Unavailable"
)


class _HeaderTimeoutMixin:
    """Close a connection whose request headers take longer than ``header_timeout`` seconds, and
    refuse a connection at once (503) when the process holds ``limit_concurrency`` connections or
    its client address ``max_per_client`` (0: no per-address cap).

    uvicorn checks its own cap only once a request's headers are complete, so clients that never
    finish their headers would otherwise each hold a connection until the header timeout."""

    header_timeout: float = 10.0
    max_per_client: int = 0
    # open HTTP connections per client address, in this process (its event loop's thread)
    per_client: ClassVar[dict[str, int]] = {}
    _header_timer: asyncio.TimerHandle | None = None
    _in_headers: bool = False  # a request's headers have begun and not ended
    _counted: str | None = None
    _refused: bool = False

    def connection_made(self, transport: Any) -> None:
        super().connection_made(transport)  # type: ignore[misc]
        limit = getattr(self, "limit_concurrency", None)
        connections = getattr(self, "connections", ())
        client = getattr(self, "client", None)
        host = str(client[0]) if client else None
        if limit is not None and len(connections) > limit:
            self._refuse(transport)
            return
        if self.max_per_client > 0 and host is not None:
            held = self.per_client.get(host, 0)
            if held >= self.max_per_client:
                self._refuse(transport)
                return
            self.per_client[host] = held + 1
            self._counted = host
        self._arm()

    def _refuse(self, transport: Any) -> None:
        """Answer 503 at once; close when the client's request has come in (closing before
        would reset the connection under the answer) or after REFUSED_LINGER seconds."""
        self._refused = True
        transport.write(_REFUSAL)
        loop: asyncio.AbstractEventLoop = self.loop  # type: ignore[attr-defined]
        loop.call_later(REFUSED_LINGER, transport.close)

    def _release(self) -> None:
        host, self._counted = self._counted, None
        if host is not None:
            held = self.per_client.get(host, 1) - 1
            if held > 0:
                self.per_client[host] = held
            else:
                self.per_client.pop(host, None)

    def on_message_begin(self) -> None:  # httptools: a request's first byte
        self._in_headers = True
        super().on_message_begin()  # type: ignore[misc]

    def on_headers_complete(self) -> None:
        self._in_headers = False
        super().on_headers_complete()  # type: ignore[misc]

    def data_received(self, data: bytes) -> None:
        if self._refused:  # answered already: the request is read and dropped
            transport = self.transport  # type: ignore[attr-defined]
            transport.close()
            return
        super().data_received(data)  # type: ignore[misc]
        if self._upgraded():  # a WebSocket now: its own protocol owns the connection
            self._disarm()
            self._release()
            return
        # only a request whose headers have begun and not ended is timed: bytes that belong to a
        # request being answered (or answered already: the rest of a body the endpoint did not
        # read) are not, and an idle keep-alive connection is uvicorn's keep-alive timeout's
        if not self._in_headers:
            self._disarm()
        elif self._header_timer is None:
            self._arm()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm()
        self._release()
        super().connection_lost(exc)  # type: ignore[misc]

    def _arm(self) -> None:
        self._disarm()
        loop: asyncio.AbstractEventLoop = self.loop  # type: ignore[attr-defined]
        self._header_timer = loop.call_later(self.header_timeout, self._expired)

    def _disarm(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _upgraded(self) -> bool:
        transport = getattr(self, "transport", None)
        return transport is not None and transport.get_protocol() is not self

    def _expired(self) -> None:
        # armed at connection (nothing sent yet) or when a request's headers began; data_received
        # disarms it once they are complete
        self._header_timer = None
        if self._upgraded():
            return
        transport = self.transport  # type: ignore[attr-defined]
        if not transport.is_closing():
            transport.close()


# httptools (uvicorn[standard] brings it): the header timeout follows its parser's callbacks
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol as _Base  # noqa: E402


class HeaderTimeoutProtocol(_HeaderTimeoutMixin, _Base):
    """uvicorn's HTTP protocol (httptools) with a header timeout. A module-level class, so that
    uvicorn can hand it to worker processes; each worker sets ``header_timeout`` from its
    settings (:func:`configure_protocol`)."""


def configure_protocol(settings: Settings) -> None:
    HeaderTimeoutProtocol.header_timeout = settings.header_timeout
    HeaderTimeoutProtocol.max_per_client = settings.max_connections_per_client


def server_options(settings: Settings) -> dict[str, Any]:
    """The uvicorn options every openclore HTTP server runs with."""
    configure_protocol(settings)
    return {
        "http": HeaderTimeoutProtocol,
        "timeout_keep_alive": settings.keep_alive_timeout,
        "limit_concurrency": settings.max_connections,
        "ws_max_size": MAX_WS_FRAME_BYTES,
        "ws_max_queue": 16,
        # agents' frames are small JSON (a heartbeat is 20 bytes): compressing them costs CPU
        # on every frame and two zlib contexts per connection (bench/agents.py: 92 KiB of server
        # memory per connected agent with them, 53 KiB without), for nothing
        "ws_per_message_deflate": False,
        "proxy_headers": False,
        "server_header": False,
        "date_header": False,  # DateHeader sets it: the market's time on API answers
    }

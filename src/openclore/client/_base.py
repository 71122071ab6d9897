"""Settings shared by :class:`Client` and :class:`AsyncClient`."""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from collections.abc import Mapping

from openclore.client._calls import (
    DEFAULT_BASE_URL,
    ApiCall,
    RetryPolicy,
    headers,
    normalize_base_url,
)
from openclore.client._errors import CloreError
from openclore.client._pacing import NoPacing, Pacer


class BaseClient:
    """Configuration: where to go, with which token, how fast, and how hard to retry."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        base_url: str | None = None,
        timeout: float = 30.0,
        rate_limit: bool = True,
        interval: float = 1.0,
        create_order_interval: float = 5.0,
        pacer: Pacer | None = None,
        max_retries: int = 3,
        retry_rate_limited: bool = True,
        retry_backoff: float = 0.5,
        lookup_attempts: int = 3,
        extra_headers: Mapping[str, str] | None = None,
    ) -> None:
        if api_key is None:
            api_key = os.environ.get("OPENCLORE_API_KEY") or None
        if base_url is None:
            base_url = os.environ.get("OPENCLORE_URL") or DEFAULT_BASE_URL
        self.api_key = api_key
        self.base_url = normalize_base_url(base_url)
        self.timeout = timeout
        if pacer is None:
            pacer = Pacer(interval, create_order_interval) if rate_limit else NoPacing()
        self.pacer = pacer
        self.retry = RetryPolicy(
            max_retries=max_retries,
            retry_rate_limited=retry_rate_limited,
            backoff_base=retry_backoff,
        )
        self.lookup_attempts = max(1, lookup_attempts)
        self._headers = headers(api_key, extra_headers)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self.base_url!r})"

    def _url(self, call: ApiCall[object]) -> str:
        return self.base_url + call.path

    def _request_headers(self, has_body: bool) -> dict[str, str]:
        if has_body:
            return {**self._headers, "Content-Type": "application/json"}
        return self._headers

    def _rate_wait(self, error: CloreError) -> float:
        retry_after = getattr(error, "retry_after", None)
        if isinstance(retry_after, int | float):
            return float(retry_after)
        return max(self.pacer.interval, 1.0)


def _banner_line(data: bytes) -> str | None:
    line = data.split(b"\n", 1)[0].strip()
    return line.decode("ascii", "replace") if line.startswith(b"SSH-") else None


def ssh_banner(host: str, port: int, timeout: float = 3.0) -> str | None:
    """The SSH server's identification line (``SSH-2.0-…``) at host:port, or None."""
    try:
        with socket.create_connection((host, port), timeout=timeout) as sock:
            sock.settimeout(timeout)
            data = b""
            while b"\n" not in data and len(data) < 256:
                chunk = sock.recv(256)
                if not chunk:
                    break
                data += chunk
    except OSError:
        return None
    return _banner_line(data)


async def ssh_banner_async(host: str, port: int, timeout: float = 3.0) -> str | None:
    """:func:`ssh_banner` without blocking the event loop."""
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return None
    try:
        data = await asyncio.wait_for(reader.readline(), timeout)
    except (OSError, TimeoutError, ValueError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    return _banner_line(data)

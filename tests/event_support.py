"""Helpers for the event tests: a webhook receiver (a real HTTP server on loopback that records
every POST and can be told to fail the first N, or to answer slowly) and `openclore serve`
processes on a test's database."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx

from openclore.domain.money import to_units
from openclore.engine.webhooks import Deliverer
from openclore.market.wallets import deposit

from support import Market, ok


@dataclass
class Received:
    at: float
    headers: dict[str, str]
    body: bytes
    status: int

    @property
    def event(self) -> dict[str, Any]:
        value: dict[str, Any] = json.loads(self.body)
        return value


@dataclass
class Receiver:
    fail_first: int = 0  # answer 500 to this many POSTs
    delay: float = 0.0  # seconds before answering
    received: list[Received] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    server: ThreadingHTTPServer | None = None

    def start(self) -> str:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(length)
                if len(body) < length:  # the sender died mid-request: nothing was delivered
                    self.close_connection = True
                    return
                if receiver.delay:
                    time.sleep(receiver.delay)
                with receiver.lock:
                    status = 500 if receiver.fail_first > 0 else 200
                    receiver.fail_first -= status == 500
                    receiver.received.append(
                        Received(time.time(), dict(self.headers.items()), body, status)
                    )
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *_args: Any) -> None:
                pass

        class Server(ThreadingHTTPServer):
            request_queue_size = 256  # deliverers open up to 64 connections each at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return f"http://127.0.0.1:{self.server.server_address[1]}/hook"

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()

    def ok_events(self) -> list[dict[str, Any]]:
        with self.lock:
            return [r.event for r in self.received if r.status == 200]

    def wait_for(self, count: int, timeout: float = 15) -> None:
        deadline = time.monotonic() + timeout
        while len({e["id"] for e in self.ok_events()}) < count:
            assert time.monotonic() < deadline, f"{len(self.ok_events())} of {count} delivered"
            time.sleep(0.05)


def serve(market: Market, port: int, **env: str) -> subprocess.Popen[bytes]:
    """An `openclore serve` process on the test's database (it delivers webhooks)."""
    full = {
        **os.environ,
        "OPENCLORE_DATABASE_URL": market.db.url,
        "OPENCLORE_SANDBOX": "1",
        "OPENCLORE_TICK_INTERVAL": "0",
        "OPENCLORE_RATE_LIMIT_INTERVAL": "0",
        "OPENCLORE_CREATE_ORDER_INTERVAL": "0",
        **env,
    }
    proc = subprocess.Popen(
        [sys.executable, "-m", "openclore", "serve", "--port", str(port)],
        env=full,
        stdout=subprocess.DEVNULL,
        stderr=open(os.environ.get("OPENCLORE_TEST_SERVER_LOG", os.devnull), "ab"),  # noqa: SIM115
    )
    deadline = time.time() + 30
    while True:
        try:
            httpx.get(f"http://127.0.0.1:{port}/openapi.json", timeout=1)
            return proc
        except httpx.HTTPError:
            assert time.time() < deadline and proc.poll() is None, "server did not start"
            time.sleep(0.1)


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def hook(market: Market, token: str, url: str, **extra: Any) -> dict[str, Any]:
    """A webhook of ``token``'s user."""
    return ok(market.client(token).post("/v1/webhooks", json={"url": url, **extra}))


def credit(market: Market, token: str, n: int) -> None:
    """n deposits, each a deposit.credited event, in one transaction per deposit."""
    uid = market.user_id(token)
    for _ in range(n):
        with market.db.write() as conn:
            deposit(conn, uid, "bitcoin", to_units(Decimal(1)), market.settings, market.now())


def deliver_due(d: Deliverer, timeout: float = 30) -> int:
    """One ``Deliverer.deliver_due()`` round, waiting for every attempt."""

    async def run() -> int:
        try:
            return await d.deliver_due()
        finally:
            await d.aclose()

    # a thread of its own: other tests (the browser console's) may leave a loop in this one
    with ThreadPoolExecutor(1) as pool:
        return pool.submit(asyncio.run, run()).result(timeout=timeout)

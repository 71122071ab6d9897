"""Webhook receivers that misbehave cost the market a bounded amount, on both databases: an answer
that never ends is read for its first few KiB only, an answer that trickles is cut at the attempt's
deadline, one user's slow receivers leave slots for other users, a slow attempt keeps its lease,
and two users' webhooks each get only their own user's events."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import pytest
from sqlalchemy import select

from openclore.engine.webhooks import MAX_ANSWER_BYTES, Deliverer, Policy, claim
from openclore.store.schema import webhook_deliveries

from event_support import Receiver, credit, deliver_due, hook
from support import Market, ok

LOOPBACK = {"allow_private": False, "allow_loopback": True}


@contextmanager
def running(d: Deliverer) -> Iterator[None]:
    """``Deliverer.run()`` on a loop of its own thread, cancelled on exit."""
    loop = asyncio.new_event_loop()
    task: asyncio.Task[None] | None = None
    started = threading.Event()

    def main() -> None:
        nonlocal task
        asyncio.set_event_loop(loop)
        task = loop.create_task(d.run())
        started.set()
        try:
            loop.run_until_complete(task)
        except asyncio.CancelledError:
            pass
        finally:
            loop.close()

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    started.wait(5)
    try:
        yield
    finally:
        assert task is not None
        loop.call_soon_threadsafe(task.cancel)
        thread.join(15)


@dataclass
class RawServer:
    """A loopback TCP server whose every connection is handled by ``answer(conn)``."""

    answer: Any
    sent: int = 0

    def __post_init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.stopped = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}/hook"

    def _accept(self) -> None:
        while not self.stopped.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(10)
            try:
                conn.recv(65536)  # the request (small: one event)
                self.answer(self, conn)
            except OSError:
                pass  # the deliverer closed the connection: what these tests want

    def stop(self) -> None:
        self.stopped.set()
        self.sock.close()


def endless(server: RawServer, conn: socket.socket) -> None:
    """200 and a chunked body that never ends (until the client goes away, or 2 GiB)."""
    conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
    chunk = b"10000\r\n" + b"x" * 0x10000 + b"\r\n"
    while not server.stopped.is_set() and server.sent < 2 << 30:
        conn.sendall(chunk)
        server.sent += len(chunk)


def trickle(server: RawServer, conn: socket.socket) -> None:
    """One byte of the status line every 0.3 s, for ever."""
    for byte in b"HTTP/1.1 200 OK\r\n" * 1000:
        if server.stopped.is_set():
            return
        conn.sendall(bytes([byte]))
        server.sent += 1
        time.sleep(0.3)


def test_an_answer_that_never_ends_is_read_for_a_few_kib(market: Market) -> None:
    token = market.user()
    server = RawServer(endless)
    try:
        hook(market, token, server.url)
        credit(market, token, 1)
        d = Deliverer(market.db, Policy(**LOOPBACK, timeout=20))
        started = time.monotonic()
        assert deliver_due(d) == 1
        took = time.monotonic() - started
    finally:
        server.stop()
    with market.db.read() as conn:
        row = conn.execute(select(webhook_deliveries)).one()
    # the 200 counts at once; the body was dropped after its prefix (what the kernel's socket
    # buffers took before the close is all the server could send)
    assert (row.state, row.last_status) == ("delivered", 200), row.last_error
    assert took < 10, took
    assert server.sent < 64 * 2**20, server.sent
    assert MAX_ANSWER_BYTES <= 8192


def test_a_trickling_answer_is_cut_at_the_attempts_deadline(market: Market) -> None:
    token = market.user()
    server = RawServer(trickle)
    try:
        hook(market, token, server.url)
        credit(market, token, 1)
        # each byte comes well inside the per-read timeout; the attempt's deadline still ends it
        d = Deliverer(market.db, Policy(**LOOPBACK, timeout=1.5))
        started = time.monotonic()
        assert deliver_due(d, timeout=20) == 1
        took = time.monotonic() - started
    finally:
        server.stop()
    assert 1.4 < took < 6, took
    with market.db.read() as conn:
        row = conn.execute(select(webhook_deliveries)).one()
    assert row.state == "pending" and row.last_status is None
    assert row.last_error.startswith("timed out"), row.last_error


def test_one_users_slow_receivers_leave_slots_for_the_others(market: Market) -> None:
    slow, fast = Receiver(delay=10.0), Receiver()
    try:
        hogger, other = market.user(), market.user()
        for _ in range(3):  # three webhooks, each sent every event: 30 deliveries
            hook(market, hogger, slow.start() if slow.server is None else _url(slow))
        credit(market, hogger, 10)
        hook(market, other, fast.start())
        credit(market, other, 1)
        pol = Policy(**LOOPBACK, timeout=30, concurrency=6, user_concurrency=3, hook_concurrency=2)
        d = Deliverer(market.db, pol)
        with running(d):
            deadline = time.monotonic() + 7  # well before the first slow answer
            while not fast.received:
                assert time.monotonic() < deadline, "the other user's delivery waited"
                time.sleep(0.05)
            assert len(d.in_flight.ids) <= 4  # the hogger's 3, and at most the other's one
            assert d.in_flight.users[market.user_id(hogger)] <= 3
            assert all(n <= 2 for n in d.in_flight.hooks.values())
    finally:
        slow.stop()
        fast.stop()


def _url(r: Receiver) -> str:
    assert r.server is not None
    return f"http://127.0.0.1:{r.server.server_address[1]}/hook"


def test_fair_share_claims_see_past_one_users_backlog(market: Market) -> None:
    """A single claim with one user's long backlog due first still takes the other user's row."""
    first, second = market.user(), market.user()
    for n in range(6):  # six webhooks: 12 rows due at two per webhook, more than one claim takes
        hook(market, first, f"http://127.0.0.1:9/a{n}")
    credit(market, first, 30)
    hook(market, second, "http://127.0.0.1:9/b")
    credit(market, second, 1)
    pol = Policy(**LOOPBACK, user_concurrency=2, hook_concurrency=2)
    taken = claim(market.db, time.time() + 1, 10, 60, pol)
    by_user: dict[int, int] = {}
    for due in taken:
        by_user[due.user_id] = by_user.get(due.user_id, 0) + 1
    assert by_user == {market.user_id(first): 2, market.user_id(second): 1}


def test_a_slow_attempt_keeps_its_lease(market: Market) -> None:
    receiver = Receiver(delay=6.0)
    try:
        token = market.user()
        hook(market, token, receiver.start())
        credit(market, token, 1)
        d = Deliverer(market.db, Policy(**LOOPBACK, timeout=20, lease=1.5))
        with running(d):
            deadline = time.monotonic() + 5
            while not d.in_flight.ids:
                assert time.monotonic() < deadline
                time.sleep(0.02)
            time.sleep(4)  # more than two leases: renewed, so no other process takes it
            assert claim(market.db, time.time(), 10, 60) == []
            deadline = time.monotonic() + 20
            while not receiver.received:
                assert time.monotonic() < deadline
                time.sleep(0.05)
            time.sleep(0.5)
        assert len(receiver.received) == 1
    finally:
        receiver.stop()
    with market.db.read() as conn:
        assert conn.execute(select(webhook_deliveries.c.state)).scalar_one() == "delivered"


def test_two_users_webhooks_each_get_only_their_own_events(market: Market) -> None:
    mine, theirs = Receiver(), Receiver()
    try:
        alice, bob = market.user(), market.user()
        hook(market, alice, mine.start())
        hook(market, bob, theirs.start())
        credit(market, alice, 2)
        credit(market, bob, 3)
        assert deliver_due(Deliverer(market.db, Policy(**LOOPBACK))) == 5
    finally:
        mine.stop()
        theirs.stop()
    alice_ids = {e["id"] for e in ok(market.client(alice).get("/v1/events?after=0"))["events"]}
    bob_ids = {e["id"] for e in ok(market.client(bob).get("/v1/events?after=0"))["events"]}
    assert len(alice_ids) == 2 and len(bob_ids) == 3 and not alice_ids & bob_ids
    assert {e["id"] for e in mine.ok_events()} == alice_ids
    assert {e["id"] for e in theirs.ok_events()} == bob_ids


@pytest.mark.parametrize("n", [40])
def test_the_webhook_limit_holds_under_concurrent_creates(market: Market, n: int) -> None:
    token = market.user()
    market.reconfigure(max_webhooks_per_user=10)
    client = market.client(token)

    def create(_: int) -> int:
        return int(client.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/x"}).json()["code"])

    with ThreadPoolExecutor(n) as pool:
        codes = list(pool.map(create, range(n)))
    assert codes.count(0) == 10, codes
    listed = ok(client.get("/v1/webhooks"))["webhooks"]
    assert len(listed) == 10


def test_events_of_two_users_written_in_one_transaction_go_to_their_own_hooks(
    market: Market,
) -> None:
    """A server going offline tells its host (server.offline) and its renter (order.paused) in
    one transaction: one flush writes events for both users."""
    from sqlalchemy import update

    from openclore.store.schema import servers

    from support import order_body

    mine, theirs = Receiver(), Receiver()
    try:
        host, renter = market.user(), market.user(bitcoin="1")
        sid = market.server(host)
        ok(market.client(renter).post("/v1/create_order", json=order_body(sid)))
        market.advance(1)
        hook(market, host, mine.start())
        hook(market, renter, theirs.start())
        with market.db.write() as conn:  # an agent's server, last heard of long ago
            conn.execute(update(servers).where(servers.c.id == sid).values(simulated=False))
        market.advance(120)  # no heartbeat for longer than agent_timeout
        assert deliver_due(Deliverer(market.db, Policy(**LOOPBACK))) >= 2
    finally:
        mine.stop()
        theirs.stop()
    assert [e["type"] for e in mine.ok_events()] == ["server.offline"]
    assert [e["type"] for e in theirs.ok_events()] == ["order.paused"]

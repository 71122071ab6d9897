"""The webhook deliverer's parts pinned where the delivery flow tests do not look: what a receiver's
check (``verify``) refuses and takes at its bounds, the fair-share bookkeeping of what is in
flight, lease renewal, the network backend's refusals, one claim's size, and waking the
deliverer from another thread.

Written to kill the mutants `scripts/mutation webhooks` found alive."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from typing import Any

import httpcore
import httpx
import pytest
from sqlalchemy import insert, select

from openclore.engine import notify as wake
from openclore.engine import webhooks
from openclore.engine.webhooks import (
    Deliverer,
    Due,
    InFlight,
    Outcome,
    PinnedBackend,
    PinnedTransport,
    Policy,
    address_refusal_async,
    record,
    renew,
    resolve,
    signature,
    verify,
)
from openclore.store.schema import webhook_deliveries
from test_webhook_fairness import RawServer, running

from event_support import Receiver, credit, deliver_due, hook
from support import Market, ok

pytestmark = pytest.mark.origin("mutant")

SECRET = "whsec_test"
BODY = b'{"type":"webhook.ping"}'
T = 1_700_000_000


# ----------------------------------------------------------------------------- verify


def test_a_header_without_its_time_or_its_signature_is_refused() -> None:
    good = signature(SECRET, T, BODY)
    assert verify(SECRET, good, BODY, now=T)
    mac = good.split(",", 1)[1]
    assert not verify(SECRET, mac, BODY, now=T)  # no t=
    assert not verify(SECRET, f"t={T}", BODY, now=T)  # no v1=
    assert not verify(SECRET, f"t={T},v1=", BODY, now=T)
    assert not verify(SECRET, "t=soon," + mac, BODY, now=T)


def test_a_signature_is_taken_up_to_its_tolerance_and_not_a_second_past_it() -> None:
    header = signature(SECRET, T, BODY)
    for now in (T - 300, T + 300, T + 10.5):
        assert verify(SECRET, header, BODY, now=now), now
    for now in (T - 301, T + 300.5):
        assert not verify(SECRET, header, BODY, now=now), now
    assert verify(SECRET, header, BODY, now=T + 60, tolerance=60)
    assert not verify(SECRET, header, BODY, now=T + 61, tolerance=60)


# ----------------------------------------------------------------------------- in flight


def due(id_: int, user: int, hook_id: int) -> Due:
    return Due(id_, hook_id, None, "{}", 1, T, "http://127.0.0.1:9/", SECRET, user_id=user)


def test_what_is_in_flight_is_counted_per_user_and_webhook_and_forgotten_at_zero() -> None:
    busy = InFlight()
    a, b, c = due(1, 7, 70), due(2, 7, 70), due(3, 7, 71)
    for d in (a, b, c):
        busy.add(d)
    assert (dict(busy.users), dict(busy.hooks), busy.ids) == ({7: 3}, {70: 2, 71: 1}, {1, 2, 3})
    busy.remove(a)
    assert (dict(busy.users), dict(busy.hooks), busy.ids) == ({7: 2}, {70: 1, 71: 1}, {2, 3})
    busy.remove(c)
    assert (dict(busy.users), dict(busy.hooks), busy.ids) == ({7: 1}, {70: 1}, {2})
    busy.remove(b)
    assert (dict(busy.users), dict(busy.hooks), busy.ids) == ({}, {}, set())


# ----------------------------------------------------------------------------- leases


def deliveries(market: Market, rows: list[dict[str, Any]]) -> list[int]:
    token = market.user()
    webhook_id = hook(market, token, "http://127.0.0.1:9/")["id"]
    made = []
    with market.db.write() as conn:
        for row in rows:
            values = {
                "webhook_id": webhook_id,
                "body": "{}",
                "attempts": 1,
                "created_at": T,
                **row,
            }
            made.append(
                int(
                    conn.execute(insert(webhook_deliveries).values(**values)).inserted_primary_key[
                        0
                    ]
                )
            )
    return made


def lease_ends(market: Market, ids: list[int]) -> list[float]:
    d = webhook_deliveries
    with market.db.read() as conn:
        found = dict(conn.execute(select(d.c.id, d.c.next_attempt_at).where(d.c.id.in_(ids))).all())
    return [found[i] for i in ids]


def test_a_lease_is_renewed_only_for_what_is_still_pending_here_and_never_shortened(
    market: Market,
) -> None:
    mine, later, done, other = deliveries(
        market,
        [
            {"state": "pending", "next_attempt_at": T + 10},
            {"state": "pending", "next_attempt_at": T + 100},  # its lease already lasts longer
            {"state": "delivered", "next_attempt_at": T + 10},
            {"state": "pending", "next_attempt_at": T + 10},  # not in flight here
        ],
    )
    renew(market.db, {mine, later, done}, T + 60)
    assert lease_ends(market, [mine, later, done, other]) == [T + 60, T + 100, T + 10, T + 10]
    renew(market.db, {mine}, T + 60)  # at its end already: unchanged
    assert lease_ends(market, [mine]) == [T + 60]
    renew(market.db, set(), T + 1000)  # nothing in flight: nothing renewed
    assert lease_ends(market, [mine, later, done, other]) == [T + 60, T + 100, T + 10, T + 10]


# ----------------------------------------------------------------------------- one round


def test_one_round_claims_at_most_the_concurrency(market: Market) -> None:
    now = time.time()
    ids = deliveries(market, [{"state": "pending", "next_attempt_at": now - 1} for _ in range(5)])
    d = Deliverer(market.db, Policy(allow_loopback=True, concurrency=2, hook_concurrency=4))
    assert deliver_due(d) == 2
    with market.db.read() as conn:
        attempted = conn.execute(
            select(webhook_deliveries.c.id).where(webhook_deliveries.c.last_error.is_not(None))
        ).scalars()
        assert sorted(attempted) == ids[:2]


# ----------------------------------------------------------------------------- the network


def test_the_backend_refuses_unix_sockets_and_sleeps_as_asked() -> None:
    backend = PinnedBackend(Policy())

    async def run() -> float:
        with pytest.raises(httpcore.ConnectError) as refused:
            await backend.connect_unix_socket("/run/docker.sock")
        assert str(refused.value) == "webhooks are delivered over TCP only"
        started = time.monotonic()
        await backend.sleep(0.05)
        return time.monotonic() - started

    assert asyncio.run(run()) >= 0.04


def test_a_wake_up_from_another_thread_sets_a_loops_flag() -> None:
    loop = asyncio.new_event_loop()
    try:
        flag = asyncio.Event()
        thread = threading.Thread(target=wake.set_soon, args=(loop, flag))
        thread.start()
        thread.join()
        loop.run_until_complete(asyncio.wait_for(flag.wait(), 5))
        assert flag.is_set()
    finally:
        loop.close()
    wake.set_soon(loop, asyncio.Event())  # the loop closed meanwhile: nothing to wake, no error


# ----------------------------------------------------------------------------- the run loop


def test_a_running_deliverer_is_woken_by_a_new_event_not_by_its_next_poll(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its poll made ten minutes long: a new event still goes out at once (the commit wakes
    it), and so do the next ones; each is recorded once, also when several attempts end
    together (they are recorded in one batch)."""
    monkeypatch.setattr(webhooks, "POLL_INTERVAL", 600.0)
    receiver = Receiver()
    try:
        token = market.user()
        hook(market, token, receiver.start())
        d = Deliverer(market.db, Policy(allow_loopback=True))
        credit(market, token, 6)  # due before it starts: claimed and sent at once
        with running(d):
            receiver.wait_for(6, timeout=10)
            time.sleep(0.3)  # it waits now
            credit(market, token, 1)
            receiver.wait_for(7, timeout=10)
            credit(market, token, 2)
            receiver.wait_for(9, timeout=10)
            deadline = time.monotonic() + 10
            while d.in_flight.ids or recorded(market) < 9:
                assert time.monotonic() < deadline, (d.in_flight.ids, recorded(market))
                time.sleep(0.02)
    finally:
        receiver.stop()
    assert len(receiver.received) == 9
    d_ = webhook_deliveries
    with market.db.read() as conn:
        assert conn.execute(select(d_.c.state, d_.c.attempts)).all() == [("delivered", 1)] * 9


def recorded(market: Market) -> int:
    d = webhook_deliveries
    with market.db.read() as conn:
        return len(conn.execute(select(d.c.id).where(d.c.state == "delivered")).all())


def test_a_running_deliverer_keeps_to_its_concurrency_and_claims_again_as_slots_free(
    market: Market,
) -> None:
    receiver = Receiver(delay=0.3)
    try:
        token = market.user()
        hook(market, token, receiver.start())
        credit(market, token, 5)
        d = Deliverer(market.db, Policy(allow_loopback=True, concurrency=2, hook_concurrency=4))
        most = 0
        with running(d):
            deadline = time.monotonic() + 20
            while recorded(market) < 5:
                most = max(most, len(d.in_flight.ids))
                assert time.monotonic() < deadline, (recorded(market), d.in_flight.ids)
                time.sleep(0.01)
    finally:
        receiver.stop()
    assert most == 2 and len(receiver.received) == 5


def test_a_failing_claim_or_renewal_is_logged_and_the_deliverer_goes_on(
    market: Market, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[str] = []

    def broken(name: str) -> Any:
        def fail(*_args: Any) -> Any:
            calls.append(name)
            raise RuntimeError(f"{name}: the database went away")

        return fail

    monkeypatch.setattr(webhooks, "claim", broken("claim"))
    monkeypatch.setattr(webhooks, "renew", broken("renew"))
    monkeypatch.setattr(webhooks, "POLL_INTERVAL", 0.05)
    d = Deliverer(market.db, Policy(lease=0.15))
    with caplog.at_level("ERROR", logger="openclore.webhooks"), running(d):
        deadline = time.monotonic() + 10
        while calls.count("claim") < 2 or calls.count("renew") < 2:
            assert time.monotonic() < deadline, calls
            time.sleep(0.02)
    messages = {r.getMessage() for r in caplog.records if r.name == "openclore.webhooks"}
    assert messages == {
        "claiming webhook deliveries failed",
        "renewing webhook delivery leases failed",
    }


# ----------------------------------------------------------------------------- resolving


def test_resolving_a_name_gives_each_address_once_and_an_address_needs_no_resolver(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    found = asyncio.run(resolve("localhost", 8080))
    assert "127.0.0.1" in found and len(found) == len(set(found)), found

    async def no_resolver(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("an address was sent to the resolver")

    monkeypatch.setattr(asyncio.BaseEventLoop, "getaddrinfo", no_resolver)
    assert asyncio.run(resolve("10.0.0.7", 80)) == ["10.0.0.7"]
    assert asyncio.run(resolve("::1", 80)) == ["::1"]


def test_the_backend_asks_for_the_urls_port_and_says_why_a_name_has_no_address() -> None:
    asked: list[tuple[str, int]] = []

    def resolver(answer: list[str] | OSError) -> Any:
        async def resolve_(host: str, port: int) -> list[str]:
            asked.append((host, port))
            if isinstance(answer, OSError):
                raise answer
            return answer

        return resolve_

    async def refusal(answer: list[str] | OSError) -> str:
        backend = PinnedBackend(Policy(allow_loopback=True), resolver(answer))
        with pytest.raises(httpcore.ConnectError) as refused:
            await backend.connect_tcp("hooks.example", 8443)
        return str(refused.value)

    assert asyncio.run(refusal([])) == "cannot resolve hooks.example: no address"
    assert asyncio.run(refusal(OSError(-2, "Name or service not known"))) == (
        "cannot resolve hooks.example: Name or service not known"
    )
    assert asyncio.run(refusal(OSError("resolver down"))) == (
        "cannot resolve hooks.example: resolver down"
    )
    assert asked == [("hooks.example", 8443)] * 3


def test_the_backend_connects_with_the_options_and_local_address_asked() -> None:
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(1)
    port = server.getsockname()[1]

    async def resolve_(host: str, port_: int) -> list[str]:
        return ["127.0.0.1"]

    async def connect() -> tuple[int, str]:
        backend = PinnedBackend(Policy(allow_loopback=True), resolve_)
        stream = await backend.connect_tcp(
            "hooks.example",
            port,
            timeout=5,
            local_address="127.0.0.2",
            socket_options=[(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)],
        )
        try:
            sock = stream.get_extra_info("socket")
            return sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE), sock.getsockname()[0]
        finally:
            await stream.aclose()

    try:
        assert asyncio.run(connect()) == (1, "127.0.0.2")
    finally:
        server.close()


def test_an_answer_in_small_pieces_is_read_for_a_few_kib_only(market: Market) -> None:
    """An endless answer sent a hundred bytes at a time: the attempt ends as soon as its first
    few KiB are read (not at its deadline)."""

    def small_pieces(server: RawServer, conn: socket.socket) -> None:
        conn.sendall(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        while not server.stopped.is_set():
            conn.sendall(b"64\r\n" + b"x" * 100 + b"\r\n")
            server.sent += 100
            time.sleep(0.001)

    token = market.user()
    server = RawServer(small_pieces)
    try:
        hook(market, token, server.url)
        credit(market, token, 1)
        d = Deliverer(market.db, Policy(allow_loopback=True, timeout=15))
        started = time.monotonic()
        assert deliver_due(d) == 1
        took = time.monotonic() - started
    finally:
        server.stop()
    with market.db.read() as conn:
        row = conn.execute(select(webhook_deliveries)).one()
    assert (row.state, row.last_status) == ("delivered", 200), row.last_error
    assert took < 10, took


# ----------------------------------------------------------------------------- recording


def test_an_attempt_is_recorded_at_its_time_and_retried_up_to_the_windows_end(
    market: Market,
) -> None:
    """A retry due exactly at the window's end is still made; one a second past it is not."""
    ok_, again, last = deliveries(
        market, [{"state": "pending", "next_attempt_at": T, "attempts": 1} for _ in range(3)]
    )
    policy = Policy(retry_base=10, retry_window=100)

    def result(id_: int, attempts: int, outcome: Outcome, at: float) -> Any:
        return (
            Due(id_, 0, None, "{}", attempts, T, "http://127.0.0.1:9/", SECRET),
            outcome,
            at,
        )

    failed = Outcome(None, "HTTP 500")
    record(
        market.db,
        [
            result(ok_, 1, Outcome(200, None), T + 5.5),
            result(again, 1, failed, T + 90),  # retried at T + 100: the window's end
            result(last, 1, failed, T + 91),  # T + 101: past it
        ],
        policy,
    )
    d = webhook_deliveries
    with market.db.read() as conn:
        rows = {
            r.id: r
            for r in conn.execute(select(d.c.id, d.c.state, d.c.delivered_at, d.c.next_attempt_at))
        }
    assert (rows[ok_].state, rows[ok_].delivered_at) == ("delivered", T + 5.5)
    assert (rows[again].state, rows[again].next_attempt_at) == ("pending", T + 100)
    assert rows[last].state == "failed"


def test_the_address_check_asks_for_the_urls_host_and_port() -> None:
    asked: list[tuple[str, int]] = []

    async def resolver(host: str, port: int) -> list[str]:
        asked.append((host, port))
        if host == "gone.example":
            raise OSError(-2, "Name or service not known")
        return ["127.0.0.1"]

    async def check(url: str) -> str | None:
        return await address_refusal_async(url, Policy(allow_loopback=True), resolver)

    assert asyncio.run(check("https://hooks.example:8443/x")) is None
    assert asyncio.run(check("http:///x")) is None
    assert asyncio.run(check("https://gone.example/")) == (
        "cannot resolve gone.example: Name or service not known"
    )
    assert asked == [("hooks.example", 8443), ("", 80), ("gone.example", 443)]


# ----------------------------------------------------------------------------- the client


def test_a_redirect_is_not_followed_and_no_proxy_from_the_environment_is_used(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    def moved(server: RawServer, conn: socket.socket) -> None:
        conn.sendall(
            b"HTTP/1.1 302 Found\r\nLocation: http://127.0.0.1:9/\r\nContent-Length: 0\r\n\r\n"
        )

    token = market.user()
    server = RawServer(moved)
    try:
        hook(market, token, server.url)
        credit(market, token, 1)
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "all_proxy"):
            monkeypatch.setenv(name, "http://127.0.0.1:9")  # nothing listens there
        monkeypatch.delenv("NO_PROXY", raising=False)
        monkeypatch.delenv("no_proxy", raising=False)
        assert deliver_due(Deliverer(market.db, Policy(allow_loopback=True))) == 1
    finally:
        server.stop()
    with market.db.read() as conn:
        row = conn.execute(select(webhook_deliveries)).one()
    assert (row.state, row.last_status, row.last_error) == ("pending", 302, "HTTP 302")


def test_the_pinned_pool_has_the_limits_asked_and_verifies_certificates() -> None:
    limits = httpx.Limits(max_connections=7, max_keepalive_connections=3, keepalive_expiry=9.5)
    pool = PinnedTransport(Policy(), limits)._pool
    assert (pool._max_connections, pool._max_keepalive_connections, pool._keepalive_expiry) == (
        7,
        3,
        9.5,
    )
    assert pool._ssl_context is not None
    assert pool._ssl_context.verify_mode == ssl.CERT_REQUIRED and pool._ssl_context.check_hostname


def test_a_delivery_goes_through_the_transport_given_as_json(market: Market) -> None:
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(204, stream=httpx.ByteStream(b""))

    token = market.user()
    hook(market, token, "http://127.0.0.1:9/hook")
    credit(market, token, 1)
    d = Deliverer(market.db, Policy(allow_loopback=True), transport=httpx.MockTransport(answer))
    assert deliver_due(d) == 1
    (request,) = seen
    assert request.method == "POST"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "openclore-webhooks/1"
    d_ = webhook_deliveries
    with market.db.read() as conn:
        row = conn.execute(select(d_.c.id, d_.c.event_id, d_.c.last_status)).one()
    assert row.last_status == 204 and row.event_id is not None
    assert request.headers["openclore-delivery"] == str(row.id)
    assert request.headers["openclore-event-id"] == str(row.event_id)


@pytest.mark.parametrize(
    ("failure", "error"),
    [
        (httpx.ConnectError("connection refused"), "ConnectError: connection refused"),
        (httpx.ConnectError("refused: a private address"), "refused: a private address"),
        (httpx.ReadError("reset"), "ReadError: reset"),
        (httpx.ConnectError("x" * 600), "ConnectError: " + "x" * 486),
        (httpx.ConnectError("refused: " + "y" * 600), "refused: " + "y" * 491),
        (httpx.ReadError("z" * 600), "ReadError: " + "z" * 489),
    ],
)
def test_a_failed_connection_is_logged_in_five_hundred_characters_at_most(
    market: Market, failure: Exception, error: str
) -> None:
    def answer(request: httpx.Request) -> httpx.Response:
        raise failure

    token = market.user()
    made = hook(market, token, "http://127.0.0.1:9/hook")
    ok(market.client(token).post("/v1/ping_webhook", json={"id": made["id"]}))
    d = Deliverer(market.db, Policy(allow_loopback=True), transport=httpx.MockTransport(answer))
    assert deliver_due(d) == 1
    d_ = webhook_deliveries
    with market.db.read() as conn:
        row = conn.execute(select(d_.c.event_id, d_.c.last_status, d_.c.last_error)).one()
    assert (row.last_status, row.last_error) == (None, error) and len(error) <= 500


class _Answer:
    """A receiver's answer body in chunks, counting how many were read."""

    def __init__(self, sizes: list[int]) -> None:
        self.sizes = sizes
        self.read = 0

    async def aiter_raw(self) -> Any:
        for size in self.sizes:
            self.read += 1
            yield b"x" * size


@pytest.mark.parametrize(
    ("sizes", "limit", "read", "chunks"),
    [
        ([], 10, 0, 0),
        ([3, 3], 10, 6, 2),
        ([4, 6, 5], 10, 10, 2),  # exactly the limit: the next chunk is never asked for
        ([4, 7, 5], 10, 11, 2),
        ([20, 5], 10, 20, 1),
        ([9, 1, 1], 11, 11, 3),
    ],
)
def test_an_answer_is_read_until_its_limit_and_no_further(
    sizes: list[int], limit: int, read: int, chunks: int
) -> None:
    answer = _Answer(sizes)
    assert asyncio.run(webhooks._read_at_most(answer, limit)) == read  # type: ignore[arg-type]
    assert answer.read == chunks


def test_a_webhook_url_is_refused_for_its_form_with_the_reason() -> None:
    assert webhooks.url_problem("https://hooks.example/x?y=1") is None
    assert webhooks.url_problem("http://hooks.example:8080/") is None
    assert webhooks.url_problem("https://" + "a" * 2040) is None  # 2048 characters
    assert webhooks.url_problem("https://" + "a" * 2041) == "url: at most 2048 characters"
    bad_form = "url: must be an http:// or https:// URL with a host"
    for url in ("ftp://hooks.example/", "hooks.example/x", "https:///x", "", "HTTPS//x"):
        assert webhooks.url_problem(url) == bad_form, url
    for url in ("https://hooks.example:99999/", "https://hooks.example:x/", "http://[::1/"):
        assert webhooks.url_problem(url) == "url: not a valid URL", url
    credentials = "url: credentials in the URL are not allowed (use the signature)"
    for url in ("https://me@hooks.example/", "https://:pw@hooks.example/", "https://a:b@h.example"):
        assert webhooks.url_problem(url) == credentials, url


def test_the_port_a_webhook_url_is_delivered_to() -> None:
    assert webhooks._port("https://hooks.example/") == 443
    assert webhooks._port("http://hooks.example/") == 80
    assert webhooks._port("https://hooks.example:8443/") == 8443
    assert webhooks._port("http://hooks.example:443/") == 443


def test_every_address_of_a_name_is_checked_and_the_first_refused_one_says_why(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    asked: list[tuple[str, Any]] = []
    answers = {
        "mixed.example": ["93.184.216.34", "169.254.169.254", "10.0.0.1"],
        "public.example": ["93.184.216.34", "2606:2800:220:1::1"],
        "zoned.example": ["fe80::1%eth0"],
        "local.example": ["127.0.0.1"],
    }

    def getaddrinfo(host: str, port: Any, type: int = 0) -> list[Any]:
        asked.append((host, port))
        if host not in answers:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET, type, 6, "", (a, port)) for a in answers[host]]

    monkeypatch.setattr(webhooks.socket, "getaddrinfo", getaddrinfo)
    strict = Policy()
    assert webhooks.address_refusal("https://public.example/", strict) is None
    assert webhooks.address_refusal("https://mixed.example:8443/", strict) == (
        "169.254.169.254 is a private address"
    )
    assert asked[-1] == ("mixed.example", 8443)
    assert webhooks.address_refusal("http://zoned.example/", strict) == (
        "fe80::1 is a private address"
    )
    assert webhooks.address_refusal("http://local.example/", strict) == (
        "127.0.0.1 is a loopback address"
    )
    assert webhooks.address_refusal("http://local.example/", Policy(allow_loopback=True)) is None
    assert webhooks.address_refusal("http://mixed.example/", Policy(allow_loopback=True)) == (
        "169.254.169.254 is a private address"
    )
    assert webhooks.address_refusal("http://mixed.example/", Policy(allow_private=True)) is None
    assert webhooks.address_refusal("http://zoned.example/", Policy(allow_private=True)) is None
    assert webhooks.address_refusal("http://gone.example/", strict) == (
        "cannot resolve gone.example: Name or service not known"
    )
    assert asked[-1] == ("gone.example", 80)

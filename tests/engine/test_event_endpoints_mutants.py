"""The event endpoints (api/event_endpoints.py) pinned where the event and webhook flow tests do
not look: who the webhook and alert changes are audited as, and how the delivery log reads its
webhook id and page size from a query string or a body, at their bounds.

Written to kill mutants of `scripts/mutation events`."""

from __future__ import annotations

import asyncio
import contextlib
import gc
from collections.abc import Callable
from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from sqlalchemy import event as sa_event

from openclore.api import event_endpoints
from openclore.api.event_endpoints import STREAM_BATCH, _read, _token_live, stream
from openclore.engine import notify as wake
from openclore.engine.outbox import events_after, user_wake_id
from openclore.market.accounts import revoke_token
from openclore.store.schema import events as events_table

from event_support import credit, hook
from support import Market, audit_entries, ok

pytestmark = pytest.mark.origin("mutant")

URL = "http://127.0.0.1:9/"  # the sandbox allows loopback receivers


def test_webhook_and_alert_changes_are_audited_as_the_caller(market: Market) -> None:
    token = market.user()
    client = market.client(token)
    uid = market.user_id(token)
    made = hook(market, token, URL)
    ok(client.post("/v1/ping_webhook", json={"id": made["id"]}))
    ok(client.post("/v1/set_alerts", json={"low_balance_seconds": 3600}))
    ok(client.post("/v1/delete_webhook", json={"id": made["id"]}))
    for action in ("webhook.create", "webhook.ping", "alerts.set", "webhook.delete"):
        assert [e["actor"] for e in audit_entries(market, action)] == [f"user:{uid}"], action


def test_a_get_lists_the_webhooks_whatever_its_body_and_a_bodiless_post_too(
    market: Market,
) -> None:
    token = market.user()
    client = market.client(token)
    made = hook(market, token, URL)
    listed = ok(client.request("GET", "/v1/webhooks", json={"url": "http://127.0.0.1:10/"}))
    assert [w["id"] for w in listed["webhooks"]] == [made["id"]]
    assert [w["id"] for w in ok(client.post("/v1/webhooks"))["webhooks"]] == [made["id"]]


def deliveries(market: Market, token: str, **params: Any) -> httpx.Response:
    return market.client(token).get("/v1/webhook_deliveries", params=params)


def test_the_delivery_log_pages_and_reads_its_id_from_a_query_or_a_body(market: Market) -> None:
    token = market.user()
    made = hook(market, token, URL)
    client = market.client(token)
    for _ in range(52):
        ok(client.post("/v1/ping_webhook", json={"id": made["id"]}))
    assert len(ok(deliveries(market, token, id=made["id"]))["deliveries"]) == 50  # the default
    assert len(ok(deliveries(market, token, id=made["id"], limit=1))["deliveries"]) == 1
    assert len(ok(deliveries(market, token, id=made["id"], limit=0))["deliveries"]) == 1
    assert len(ok(deliveries(market, token, id=made["id"], limit=1000))["deliveries"]) == 52
    too_many = deliveries(market, token, id=made["id"], limit=1001).json()
    assert too_many == {"code": 2, "error": "limit: a whole number from 0 to 1000"}
    # the id in a body (POST), no query string
    body = ok(client.post("/v1/webhook_deliveries", json={"id": made["id"], "limit": 3}))
    assert len(body["deliveries"]) == 50  # a body's limit is not the query's
    # a query's id is read as a 64-bit integer, then checked as a webhook id
    assert deliveries(market, token, id=2**63 - 1).json() == {
        "code": 2,
        "error": "id: Input should be less than or equal to 2147483647",
    }
    assert deliveries(market, token, id=2**63).json() == {
        "code": 2,
        "error": "id: a whole number from 0 to 9223372036854775807",
    }


def polled(market: Market, token: str, **params: Any) -> httpx.Response:
    """A polling answer; one that comes as an event stream fails at once (a stream is never
    read to its end)."""
    with market.client(token).stream("GET", "/v1/events", params=params) as answer:
        assert answer.headers["content-type"] == "application/json", answer.headers
        answer.read()
    return answer


def test_polling_pages_a_hundred_by_default_and_takes_several_types(market: Market) -> None:
    token = market.user()
    credit(market, token, 101)
    assert len(ok(polled(market, token, after=0))["events"]) == 100
    assert len(ok(polled(market, token, after=0, limit=0))["events"]) == 1
    assert len(ok(polled(market, token, after=0, limit=""))["events"]) == 100  # the default
    made = hook(market, token, URL)
    ok(market.client(token).post("/v1/ping_webhook", json={"id": made["id"]}))
    both = ok(polled(market, token, after=100, types="deposit.credited, webhook.ping"))
    assert [e["type"] for e in both["events"]] == ["deposit.credited", "webhook.ping"]


def test_polling_after_the_largest_64_bit_id_and_past_it(market: Market) -> None:
    token = market.user()
    top = 2**63 - 1
    assert ok(polled(market, token, after=top)) == {"events": [], "last_id": top, "code": 0}
    assert polled(market, token, after=top + 1).json() == {
        "code": 2,
        "error": f"after: a whole number from 0 to {top}",
    }


def first_frame_id(market: Market, token: str, headers: dict[str, str], **params: Any) -> int:
    """The id of the first event a new stream sends (within ten seconds)."""
    client = httpx.Client(base_url=market.url, timeout=httpx.Timeout(10, read=10))
    market.clients.append(client)
    with client.stream(
        "GET", "/v1/events", headers={"auth": token, **headers}, params=params
    ) as answer:
        for line in answer.iter_lines():
            if line.startswith("id: "):
                return int(line[4:])
    raise AssertionError("the stream ended without an event")


def test_a_stream_resumes_after_the_id_in_its_header_or_its_query(market: Market) -> None:
    token = market.user()
    credit(market, token, 3)
    first, second, third = (e.id for e in outbox(market, market.user_id(token)))
    assert first_frame_id(market, token, {"Last-Event-ID": str(first)}) == second
    assert first_frame_id(market, token, {}, last_event_id=f" {second} ") == third
    # the header wins over the query
    assert first_frame_id(market, token, {"Last-Event-ID": str(first)}, last_event_id=second) == (
        second
    )
    bad = market.client(token).get("/v1/events", headers={"Last-Event-ID": "x1"})
    assert bad.json() == {"code": 2, "error": "Last-Event-ID: an event id"}


def test_a_stream_sends_only_the_types_asked(market: Market) -> None:
    token = market.user()
    made = hook(market, token, URL)
    credit(market, token, 1)
    ok(market.client(token).post("/v1/ping_webhook", json={"id": made["id"]}))
    _deposit, ping = outbox(market, market.user_id(token))
    assert first_frame_id(market, token, {}, last_event_id=0, types="webhook.ping") == ping.id


def opened(market: Market, token: str) -> httpx.Response:
    with market.client(token).stream("GET", "/v1/events") as answer:
        return answer


def test_a_stream_refused_past_the_cap_is_told_to_retry_in_five_seconds(market: Market) -> None:
    market.reconfigure(max_event_streams_per_user=1)
    token = market.user()
    with market.client(token).stream("GET", "/v1/events") as held:
        assert held.headers["content-type"].startswith("text/event-stream")
        # nothing between the market and the client may keep or buffer the stream
        assert held.headers["cache-control"] == "no-cache"
        assert held.headers["x-accel-buffering"] == "no"
        refused = opened(market, token)
        assert refused.status_code == 429 and refused.headers["Retry-After"] == "5"


def test_a_stream_whose_connection_broke_before_it_started_gives_its_slot_back(
    market: Market,
) -> None:
    """The response's start could not be sent (the client went): the stream never ran, and its
    slot comes back all the same."""
    market.reconfigure(max_event_streams_per_user=1)
    token = market.user()
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/v1/events",
        "raw_path": b"/v1/events",
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"market"), (b"auth", token.encode())],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 80),
    }
    started: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            started.append(message["status"])
            raise OSError("connection reset by peer")

    async def request() -> None:
        with contextlib.suppress(Exception):
            await market.switch.app(scope, receive, send)

    asyncio.run(request())
    gc.collect()
    assert started[:1] == [200]
    assert opened(market, token).headers["content-type"].startswith("text/event-stream")


def test_a_streams_token_check_is_answered_from_memory_once_read(market: Market) -> None:
    """The check reads the token once after a revocation anywhere (the versions moved), then
    answers from memory again: no connection is taken for it."""
    state = market.switch.app.state.openclore
    token, other = market.user(), market.user()
    uid = market.user_id(token)
    checkouts: list[int] = []

    def count(*_args: Any) -> None:
        checkouts.append(1)

    def taken(check: Callable[[], bool]) -> tuple[bool, int]:
        """The check's answer, and the connections it took (on PostgreSQL the versions may be
        read themselves while its listener is not current: only SQLite's count is asserted)."""
        checkouts.clear()
        sa_event.listen(market.db.engine, "checkout", count)
        try:
            return check(), len(checkouts) if market.db.is_sqlite else 0
        finally:
            sa_event.remove(market.db.engine, "checkout", count)

    def live() -> bool:
        return _token_live(state, token, uid)

    live()  # read once
    assert taken(live) == (True, 0)
    with market.db.write() as conn:
        revoke_token(conn, other, market.now())
    state.db.freshness.invalidate()  # as the revocation's notification does
    assert taken(live)[0] is True
    assert taken(live) == (True, 0)
    assert _token_live(state, token, uid + 1) is False
    assert _token_live(state, other, market.user_id(token) + 1) is False


def test_a_stream_reads_its_batch_of_the_types_asked(market: Market) -> None:
    token = market.user()
    uid = market.user_id(token)
    made = hook(market, token, URL)
    client = market.client(token)
    for _ in range(STREAM_BATCH + 1):
        ok(client.post("/v1/ping_webhook", json={"id": made["id"]}))
    credit(market, token, 1)
    batch = _read(market.db, uid, 0, None)
    assert len(batch) == STREAM_BATCH
    assert [e.type for e in _read(market.db, uid, 0, ["deposit.credited"])] == ["deposit.credited"]


# ----------------------------------------------------------------------------- the stream's loop
#
# The stream is driven directly, its timers made short (sixteenths of a second, exact in binary)
# and its polls counted (each wait for a wake-up that runs out is one), so that the tests say
# after which poll a keep-alive, a token check or a read comes, whatever the machine's speed.

POLL = 1 / 16


class Polls:
    """The stream's ``asyncio`` with its wait for a wake-up counted: ``count`` polls have run
    out so far; ``at[n]`` runs when the n-th does. ``version`` is what SQLite's
    ``data_version`` answers (a change of it is the sign to read)."""

    def __init__(self, at: dict[int, Callable[[], None]] | None = None) -> None:
        self.count = 0
        self.version = 0
        self.at = at or {}

    def __getattr__(self, name: str) -> Any:
        return getattr(asyncio, name)

    async def wait_for(self, waiting: Any, timeout: float) -> Any:
        try:
            return await asyncio.wait_for(waiting, timeout)
        except TimeoutError:
            self.count += 1
            if self.count in self.at:
                self.at[self.count]()
            raise

    def data_version(self) -> int:
        return self.version


@pytest.fixture
def polls(market: Market, monkeypatch: pytest.MonkeyPatch) -> Polls:
    """Short timers: a poll every sixteenth of a second, a keep-alive after four quiet polls,
    the token checked every second poll."""
    counted = Polls()
    monkeypatch.setattr(event_endpoints, "POLL_INTERVAL", POLL)
    monkeypatch.setattr(event_endpoints, "KEEPALIVE", 4 * POLL)
    monkeypatch.setattr(event_endpoints, "TOKEN_CHECK", 2 * POLL)
    monkeypatch.setattr(event_endpoints, "asyncio", counted)
    monkeypatch.setattr(market.db.freshness, "data_version", counted.data_version)
    return counted


class Stream:
    """One stream of ``uid``'s events after ``cursor``; each frame is kept with the number of
    polls made before it."""

    def __init__(
        self,
        market: Market,
        uid: int,
        cursor: int,
        polls: Polls | None = None,
        live: Callable[[], bool] = lambda: True,
        types: list[str] | None = None,
    ) -> None:
        self.polls = polls or Polls()
        self.loop = asyncio.new_event_loop()  # one loop for the stream's whole life
        self.released = 0
        self.frames: list[tuple[int, bytes]] = []
        self.frames_of = stream(market.db, uid, cursor, types, live, self._release)

    def _release(self) -> None:
        self.released += 1

    def until(self, done: Callable[[list[bytes]], bool], timeout: float = 10) -> list[bytes]:
        async def pull() -> None:
            deadline = asyncio.get_running_loop().time() + timeout
            while not done([f for _, f in self.frames]):
                left = deadline - asyncio.get_running_loop().time()
                assert left > 0, f"frames so far: {self.frames}"
                frame = await asyncio.wait_for(self.frames_of.__anext__(), left)
                self.frames.append((self.polls.count, frame))

        self.loop.run_until_complete(pull())
        return [f for _, f in self.frames]

    def ended(self) -> bool:
        async def next_frame() -> bool:
            try:
                await asyncio.wait_for(self.frames_of.__anext__(), 5)
            except StopAsyncIteration:
                return True
            return False

        return self.loop.run_until_complete(next_frame())

    def close(self) -> None:
        try:
            self.loop.run_until_complete(self.frames_of.aclose())
        finally:
            self.loop.close()

    def polls_before(self, frame: bytes) -> list[int]:
        return [n for n, f in self.frames if f == frame]


KEEPALIVE = b": keepalive\n\n"


def frame_of(event: Any) -> bytes:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.json}\n\n".encode()


def outbox(market: Market, uid: int, after: int = 0) -> list[Any]:
    with market.db.read() as conn:
        return events_after(conn, uid, after, 10_000)


class Watched:
    """A stream's subscription to wake-ups, with whether it was closed."""

    def __init__(self, subscription: Any) -> None:
        self.subscription = subscription
        self.closed = False

    def wait_ready(self, timeout: float) -> bool:
        return bool(self.subscription.wait_ready(timeout))

    def close(self) -> None:
        self.closed = True
        self.subscription.close()


def test_a_stream_opens_with_its_retry_then_sends_the_events_after_its_cursor(
    market: Market, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = market.user()
    uid = market.user_id(token)
    credit(market, token, 3)
    first, *rest = outbox(market, uid)
    watched: list[tuple[int, Watched]] = []

    def subscribe(engine: Any, wake_id: int, callback: Callable[[], None]) -> Watched:
        watched.append((wake_id, Watched(wake.subscribe(engine, wake_id, callback))))
        return watched[-1][1]

    monkeypatch.setattr(event_endpoints, "wake", SimpleNamespace(subscribe=subscribe))
    frames = Stream(market, uid, first.id)
    got = frames.until(lambda f: len(f) == 3)
    assert got == [b"retry: 1000\n\n", *(frame_of(e) for e in rest)]
    assert frames.polls_before(got[-1]) == [0]  # read at once, before any poll
    ((wake_id, subscription),) = watched
    assert wake_id == user_wake_id(uid) and not subscription.closed
    frames.close()
    assert frames.released == 1 and subscription.closed


def test_a_quiet_stream_keeps_alive_after_its_quiet_polls(market: Market, polls: Polls) -> None:
    uid = market.user_id(market.user())
    quiet = Stream(market, uid, 0, polls)
    quiet.until(lambda f: f.count(KEEPALIVE) == 2)
    assert quiet.polls_before(KEEPALIVE) == [4, 8]
    quiet.close()


def test_an_event_starts_the_quiet_count_again(market: Market, polls: Polls) -> None:
    token = market.user()
    uid = market.user_id(token)
    polls.at = {2: lambda: credit(market, token, 1)}  # heard at the second poll
    woken = Stream(market, uid, 0, polls)
    got = woken.until(lambda f: KEEPALIVE in f)
    (event,) = outbox(market, uid)
    assert got == [b"retry: 1000\n\n", frame_of(event), KEEPALIVE]
    assert woken.polls_before(frame_of(event)) == [2]
    assert woken.polls_before(KEEPALIVE) == [6]
    woken.close()


def test_on_sqlite_a_changed_database_is_read_at_the_next_poll_and_only_then(
    market: Market, polls: Polls
) -> None:
    """A write in another process wakes no stream here: the database's ``data_version`` moving
    is the sign to read (here: an event written without waking anyone, then the version moved
    at the third poll)."""
    if not market.db.is_sqlite:
        pytest.skip("SQLite's data_version")
    uid = market.user_id(market.user())

    def write_quietly() -> None:
        with market.db.write() as conn:
            conn.execute(
                events_table.insert().values(
                    user_id=uid, type="deposit.credited", created_at=market.now(), data="{}"
                )
            )

    def move() -> None:
        polls.version += 1

    polls.at = {1: write_quietly, 3: move}
    frames = Stream(market, uid, 0, polls)
    got = frames.until(lambda f: len(f) == 2)
    (event,) = outbox(market, uid)
    assert got[1] == frame_of(event) and frames.polls_before(got[1]) == [3]
    frames.close()


def test_a_streams_token_is_checked_every_other_poll_and_a_revoked_one_ends_it(
    market: Market, polls: Polls
) -> None:
    uid = market.user_id(market.user())
    checks: list[int] = []

    def live() -> bool:
        checks.append(polls.count)
        return len(checks) < 4

    frames = Stream(market, uid, 0, polls, live)
    got = frames.until(lambda f: f[-1:] == [b"event: revoked\ndata: {}\n\n"])
    assert checks == [0, 2, 4, 6]
    assert got == [b"retry: 1000\n\n", KEEPALIVE, b"event: revoked\ndata: {}\n\n"]
    assert frames.polls_before(got[-1]) == [6]
    assert frames.ended() and frames.released == 1
    frames.close()


def test_a_long_backlog_is_sent_in_batches_without_waiting(market: Market) -> None:
    token = market.user()
    uid = market.user_id(token)
    made = hook(market, token, URL)
    client = market.client(token)
    for _ in range(STREAM_BATCH + 2):
        ok(client.post("/v1/ping_webhook", json={"id": made["id"]}))
    frames = Stream(market, uid, 0, types=["webhook.ping"])
    got = frames.until(lambda f: len(f) == STREAM_BATCH + 3)
    assert got[1:] == [frame_of(e) for e in outbox(market, uid)]
    assert frames.polls_before(got[-1]) == [0]
    frames.close()

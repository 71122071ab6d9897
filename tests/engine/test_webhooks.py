"""Webhooks on both databases: registration and the SSRF policy, signed deliveries, retries with
backoff, the delivery log and pings, two replicas delivering each event once, and a delivering
process killed -9 losing nothing."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import os
import signal
import time
from collections import Counter
from collections.abc import Iterator

import pytest
from sqlalchemy import func, select, update

from openclore.domain.netpolicy import address_class, refusal
from openclore.engine.webhooks import Deliverer, Policy, backoff, verify
from openclore.market.webhooks import policy
from openclore.store.schema import webhook_deliveries, webhooks

from event_support import Receiver, credit, deliver_due, hook, serve, stop
from support import Market, error, free_port, ok, order_body


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.stop()


class FakeWall:
    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now


def deliverer(market: Market, clock: FakeWall | None = None) -> Deliverer:
    return Deliverer(market.db, policy(market.settings), clock=clock or time.time)


def test_register_list_delete_and_the_ssrf_policy(market: Market, receiver: Receiver) -> None:
    token = market.user()
    c = market.client(token)
    made = hook(market, token, receiver.start(), events=["order.ended", "deposit.credited"])
    assert made["secret"].startswith("whsec_") and len(made["secret"]) == 54
    listed = ok(c.get("/v1/webhooks"))["webhooks"]
    assert [(w["id"], w["events"]) for w in listed] == [
        (made["id"], ["deposit.credited", "order.ended"])
    ]
    assert "secret" not in listed[0]
    for url in (
        "http://10.0.0.7/hook",
        "http://192.168.1.1/",
        "http://172.16.5.4/",
        "http://169.254.169.254/latest/meta-data",
        "http://100.64.0.1/",
        "http://[fd00::1]/",
        "http://0.0.0.0:8080/",
        "http://[2002:7f00:1::]/",  # 6to4 of 127.0.0.1
        "http://[fec0::1]/",  # site-local
    ):
        refused = c.post("/v1/webhooks", json={"url": url}).json()
        assert refused["error"] == "webhook_url_not_allowed", (url, refused)
    for url in ("ftp://example.com/", "http:///nohost", "http://u:p@example.com/", "x" * 3000):
        assert c.post("/v1/webhooks", json={"url": url}).json()["code"] == 2, url
    assert (
        c.post("/v1/webhooks", json={"url": "http://127.0.0.1/", "events": ["no"]}).json()["code"]
        == 2
    )
    # outside the sandbox loopback is the operator's network too, unless the operator allows it
    market.reconfigure(sandbox=False)
    assert error(c.post("/v1/webhooks", json={"url": "http://127.0.0.1:9/"})) == (
        "webhook_url_not_allowed"
    )
    market.reconfigure(sandbox=False, webhook_allow_private=True)
    ok(c.post("/v1/webhooks", json={"url": "http://10.0.0.7/hook"}))
    ok(c.post("/v1/delete_webhook", json={"id": made["id"]}))
    assert error(c.post("/v1/delete_webhook", json={"id": made["id"]})) == "webhook_dont_exist"
    other = market.user()
    assert error(market.client(other).post("/v1/ping_webhook", json={"id": 2})) == (
        "webhook_dont_exist"
    )


def test_deliveries_are_signed_filtered_and_logged(market: Market, receiver: Receiver) -> None:
    token = market.user()
    made = hook(market, token, receiver.start(), events=["deposit.credited"])
    credit(market, token, 2)
    market.advance(1)  # a tick: no order events to filter out here, but nothing else is sent
    ok(market.client(token).post("/v1/ping_webhook", json={"id": made["id"]}))
    assert deliver_due(deliverer(market)) == 3
    assert len(receiver.received) == 3
    for got in receiver.received:
        signature = got.headers["Openclore-Signature"]
        assert verify(made["secret"], signature, got.body, now=time.time())
        assert not verify("whsec_wrong", signature, got.body, now=time.time())
        assert not verify(made["secret"], signature, got.body + b" ", now=time.time())
        assert not verify(made["secret"], signature, got.body, now=time.time() + 3600)
    types = [r.event["type"] for r in receiver.received]
    assert sorted(types) == ["deposit.credited", "deposit.credited", "webhook.ping"]
    polled = ok(market.client(token).get("/v1/events", params={"after": 0}))["events"]
    assert sorted(r.body.decode() for r in receiver.received) == sorted(
        __import__("json").dumps(e, separators=(",", ":")) for e in polled
    )  # the webhook body is the event exactly as the stream and polling carry it
    log = ok(market.client(token).get("/v1/webhook_deliveries", params={"id": made["id"]}))
    assert [d["state"] for d in log["deliveries"]] == ["delivered"] * 3
    assert all(d["attempts"] == 1 and d["last_status"] == 200 for d in log["deliveries"])
    assert deliver_due(deliverer(market)) == 0  # nothing is sent twice
    for bad in ({"id": "abc"}, {"id": "-1"}, {}):
        refused = market.client(token).get("/v1/webhook_deliveries", params=bad).json()
        assert refused["code"] == 2 and refused["error"].startswith("id"), (bad, refused)


def test_a_receiver_failing_three_times_gets_each_event_once_it_recovers(
    market: Market, receiver: Receiver
) -> None:
    token = market.user()
    hook(market, token, receiver.start())
    credit(market, token, 3)
    receiver.fail_first = 9  # three rounds of three failures
    wall = FakeWall()
    d = deliverer(market, wall)
    pol = policy(market.settings)
    for attempt in range(1, 4):
        assert deliver_due(d) == 3
        wall.now += backoff(attempt, pol) - 1
        assert deliver_due(d) == 0  # not before its backoff
        wall.now += 1
    assert deliver_due(d) == 3
    ok_ids = [e["id"] for e in receiver.ok_events()]
    assert sorted(ok_ids) == sorted(set(ok_ids)) and len(ok_ids) == 3
    assert len(receiver.received) == 12
    with market.db.read() as conn:
        rows = conn.execute(select(webhook_deliveries)).all()
    assert [(r.state, r.attempts, r.last_status) for r in rows] == [("delivered", 4, 200)] * 3
    assert [backoff(n, pol) for n in (1, 2, 3, 20)] == [10, 20, 40, 21600]


def test_retries_stop_after_the_window_not_before_a_day(market: Market) -> None:
    token = market.user()
    hook(market, token, "http://127.0.0.1:9/refused")  # nothing listens on the discard port
    credit(market, token, 1)
    wall = FakeWall()
    start = wall.now
    d = deliverer(market, wall)
    attempts = 0
    while deliver_due(d):
        attempts += 1
        wall.now += backoff(attempts, policy(market.settings))
    with market.db.read() as conn:
        row = conn.execute(select(webhook_deliveries)).one()
    assert row.state == "failed" and row.attempts == attempts
    assert row.last_attempt_at - start >= 86400  # retried for more than a day
    assert "ConnectError" in row.last_error


class Rebinding:
    """A name server whose answers change between two lookups of the same name."""

    def __init__(self, *answers: list[str]) -> None:
        self.answers = list(answers)
        self.asked: list[str] = []

    async def __call__(self, host: str, port: int) -> list[str]:
        self.asked.append(host)
        return self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


def test_the_connection_goes_to_the_address_checked_not_a_rebound_one(
    market: Market, receiver: Receiver
) -> None:
    token = market.user()
    url = receiver.start()
    port = int(url.split(":")[2].split("/")[0])
    made = hook(market, token, url)
    with market.db.write() as conn:  # a name only the test's name server knows
        conn.execute(
            update(webhooks)
            .where(webhooks.c.id == made["id"])
            .values(url=f"http://hooks.rebind.test:{port}/hook")
        )
    credit(market, token, 1)
    outside = Policy(allow_private=False, allow_loopback=False)  # a market outside the sandbox
    # public to the check, loopback to the connection: refused, nothing reaches the receiver
    dns = Rebinding(["93.184.216.34"], ["127.0.0.1"])
    assert deliver_due(Deliverer(market.db, outside, resolver=dns)) == 1
    assert dns.asked == ["hooks.rebind.test", "hooks.rebind.test"]
    assert receiver.received == []
    with market.db.read() as conn:
        row = conn.execute(select(webhook_deliveries)).one()
    assert row.state == "pending" and row.last_error.startswith("refused: "), row.last_error
    with market.db.write() as conn:
        conn.execute(update(webhook_deliveries).values(next_attempt_at=0))
    # where loopback is allowed, the connection goes to the address the name server gave (the
    # system's resolver does not know the name) and the request still names the host
    allowed = Policy(allow_private=False, allow_loopback=True)
    assert deliver_due(Deliverer(market.db, allowed, resolver=Rebinding(["127.0.0.1"]))) == 1
    assert len(receiver.received) == 1
    assert receiver.received[0].headers["Host"] == f"hooks.rebind.test:{port}"


# ----------------------------------------------------------------------------- processes


@pytest.mark.slow
def test_two_replicas_deliver_each_event_once(market: Market, receiver: Receiver) -> None:
    token = market.user()
    hook(market, token, receiver.start())
    replicas = [serve(market, free_port()), serve(market, free_port())]
    try:
        credit(market, token, 120)
        receiver.wait_for(120)
        time.sleep(1.5)  # time for a duplicate, were one coming
    finally:
        for proc in replicas:
            stop(proc)
    counts = Counter(e["id"] for e in receiver.ok_events())
    assert len(counts) == 120 and set(counts.values()) == {1}
    with market.db.read() as conn:
        states = conn.execute(
            select(webhook_deliveries.c.state, func.count()).group_by(webhook_deliveries.c.state)
        ).all()
    assert [tuple(s) for s in states] == [("delivered", 120)]


EVENTS = 150


@pytest.mark.slow
def test_kill_9_of_the_delivering_process_loses_no_event(
    market: Market, receiver: Receiver
) -> None:
    token = market.user()
    hook(market, token, receiver.start())
    receiver.delay = 0.3  # deliveries are in flight when the process dies
    first = serve(market, free_port(), OPENCLORE_WEBHOOK_LEASE="2")
    try:
        credit(market, token, EVENTS)
        deadline = time.monotonic() + 15
        while len(receiver.received) < 5:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=10)
    finally:
        stop(first)
    assert pending_deliveries(market)  # it died with work left (in flight, or not claimed yet)
    second = serve(market, free_port(), OPENCLORE_WEBHOOK_LEASE="2")
    try:
        receiver.wait_for(EVENTS, timeout=30)
        # and the deliveries the killed process had sent but not recorded are sent and recorded
        deadline = time.monotonic() + 20
        while pending_deliveries(market):
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        stop(second)
    counts = Counter(e["id"] for e in receiver.ok_events())
    assert len(counts) == EVENTS  # every event, at least once
    # at most what was in flight at the kill is delivered twice
    assert sum(n - 1 for n in counts.values()) <= 64
    with market.db.read() as conn:
        states = conn.execute(select(webhook_deliveries.c.state).distinct()).scalars().all()
    assert states == ["delivered"]


def pending_deliveries(market: Market) -> int:
    with market.db.read() as conn:
        return int(
            conn.execute(
                select(func.count()).where(webhook_deliveries.c.state == "pending")
            ).scalar_one()
        )


# ----------------------------------------------------------------------------- known answers

KNOWN_SECRET = "whsec_000102030405060708090a0b0c0d0e0f1011121314151617"
KNOWN_BODY = b'{"id":7,"type":"deposit.credited"}'
# HMAC-SHA256(secret, "1764222000." + body), worked out once and written down: the scheme the docs
# give receivers, independent of the code under test
KNOWN_HEADER = "t=1764222000,v1=c1d8dbc019804ed7df3980e63bcbb36bf816b08250f640e03a072a2521d85021"


def test_the_signature_scheme_matches_its_known_answer() -> None:
    from openclore.engine.webhooks import signature

    assert signature(KNOWN_SECRET, 1764222000, KNOWN_BODY) == KNOWN_HEADER
    assert verify(KNOWN_SECRET, KNOWN_HEADER, KNOWN_BODY, now=1764222000 + 299)
    assert not verify(KNOWN_SECRET, KNOWN_HEADER, KNOWN_BODY, now=1764222000 + 301)
    # the timestamp is signed: the same MAC under another t is refused
    assert not verify(
        KNOWN_SECRET,
        KNOWN_HEADER.replace("t=1764222000", "t=1764222001"),
        KNOWN_BODY,
        now=1764222000,
    )


def test_a_late_retry_is_signed_at_its_send_time_not_the_events(
    market: Market, receiver: Receiver
) -> None:
    """A retry hours after the event must still verify at a receiver's 5-minute tolerance."""
    token = market.user()
    made = hook(market, token, receiver.start())
    credit(market, token, 1)
    wall = FakeWall()
    wall.now += 7 * 3600  # the delivery goes out seven hours after the event was written
    assert deliver_due(deliverer(market, wall)) == 1
    (got,) = receiver.received
    header = got.headers["Openclore-Signature"]
    t = int(header.split(",")[0].removeprefix("t="))
    assert t == int(wall.now)
    expected = hmac.new(
        made["secret"].encode(), f"{t}.".encode() + got.body, hashlib.sha256
    ).hexdigest()
    assert header == f"t={t},v1={expected}"  # over "<t>.<body>", not the body alone


def test_a_name_with_one_private_address_among_public_ones_is_refused(
    market: Market, receiver: Receiver
) -> None:
    token = market.user()
    url = receiver.start()
    port = int(url.split(":")[2].split("/")[0])
    made = hook(market, token, url)
    with market.db.write() as conn:
        conn.execute(
            update(webhooks)
            .where(webhooks.c.id == made["id"])
            .values(url=f"http://mixed.rebind.test:{port}/hook")
        )
    credit(market, token, 1)
    outside = Policy(allow_private=False, allow_loopback=False)
    for answer in (
        ["93.184.216.34", "169.254.169.254"],  # the private one second: every one is checked
        ["93.184.216.34", "127.0.0.1"],
        ["2606:2800:220:1::1", "fd00::1"],
    ):
        with market.db.write() as conn:
            conn.execute(update(webhook_deliveries).values(next_attempt_at=0))
        assert deliver_due(Deliverer(market.db, outside, resolver=Rebinding(answer))) == 1
        with market.db.read() as conn:
            row = conn.execute(select(webhook_deliveries)).one()
        assert row.last_error.startswith("refused: "), (answer, row.last_error)
    assert receiver.received == []


def test_the_event_type_filter_holds_back_other_types(market: Market, receiver: Receiver) -> None:
    token = market.user(bitcoin="1")
    hook(market, token, receiver.start(), events=["order.ended"])
    host = market.user()
    sid = market.server(host, "rig")
    c = market.client(token)
    order_id = ok(c.post("/v1/create_order", json=order_body(sid)))["order_id"]
    credit(market, token, 1)  # deposit.credited: filtered out
    ok(c.post("/v1/cancel_order", json={"id": order_id}))  # order.ended: sent
    produced = {e["type"] for e in ok(c.get("/v1/events", params={"after": 0}))["events"]}
    assert {"order.created", "deposit.credited", "order.ended"} <= produced
    deliver_due(deliverer(market))
    assert [r.event["type"] for r in receiver.received] == ["order.ended"]


# (address, its class): IPv4 carried inside IPv6 is judged by the IPv4 rules
ADDRESS_CLASSES = [
    ("93.184.216.34", "public"),
    ("2606:4700::1111", "public"),
    ("127.0.0.1", "loopback"),
    ("::1", "loopback"),
    ("10.0.0.7", "private"),
    ("100.64.0.1", "private"),
    ("::", "private"),
    ("fec0::1", "private"),  # deprecated site-local
    ("feff:ffff::1", "private"),  # (the end of fec0::/10)
    ("fe80::1", "private"),
    ("fd00::1", "private"),
    # IPv4-mapped: the IPv4 address itself
    ("::ffff:127.0.0.1", "loopback"),
    ("::ffff:10.0.0.7", "private"),
    ("::ffff:169.254.169.254", "private"),
    ("::ffff:100.64.0.1", "private"),
    ("::ffff:93.184.216.34", "public"),
    # 6to4 (2002:a.b.c.d::/48)
    ("2002:7f00:1::", "private"),  # 127.0.0.1: a tunnelled loopback is never this machine
    ("2002:7f00:1:1::5", "private"),
    ("2002:a00:7::1", "private"),  # 10.0.0.7
    ("2002:c0a8:101::", "private"),  # 192.168.1.1
    ("2002:a9fe:a9fe::", "private"),  # 169.254.169.254
    ("2002:6440:1::", "private"),  # 100.64.0.1
    ("2002::", "private"),  # 0.0.0.0
    # Teredo: 2001:0:<server>:<flags>:<port>:<client, inverted>
    ("2001:0:7f00:1:8000:63bf:3fff:fdd2", "private"),  # server 127.0.0.1
    ("2001:0:4136:e378:8000:63bf:f5ff:fff8", "private"),  # client 10.0.0.7
    ("2001:0:4136:e378:8000:63bf:3f57:fefe", "private"),  # client 192.168.1.1
    # NAT64 well-known prefix and IPv4-compatible addresses
    ("64:ff9b::7f00:1", "private"),
    ("64:ff9b::a00:7", "private"),
    ("64:ff9b::a9fe:a9fe", "private"),
    ("64:ff9b:1::a00:7", "private"),  # local-use NAT64
    ("::7f00:1", "private"),
    ("::a00:7", "private"),
]


@pytest.mark.parametrize(("address", "kind"), ADDRESS_CLASSES, ids=[a for a, _ in ADDRESS_CLASSES])
def test_the_address_policy_sees_ipv4_inside_ipv6(address: str, kind: str) -> None:
    parsed = ipaddress.ip_address(address)
    assert address_class(parsed) == kind
    outside = refusal(parsed, allow_private=False, allow_loopback=False)
    sandbox = refusal(parsed, allow_private=False, allow_loopback=True)
    assert (outside is None) == (kind == "public")
    assert (sandbox is None) == (kind in ("public", "loopback"))
    assert refusal(parsed, allow_private=True, allow_loopback=False) is None

"""Idempotency-Key on both databases: the first answer replayed byte for byte without acting
again (also to a twin running at the same time on another process), code 2 for a key reused
with another request, and keys that died with their process or outlived their time."""

from __future__ import annotations

import threading
import time

import httpx
import pytest
from sqlalchemy import func, select, update

from openclore.store import idempotency as keys
from openclore.store.schema import idempotency_keys, orders

from event_support import serve, stop
from support import Market, error, free_port, ok, order_body


def count_orders(market: Market) -> int:
    with market.db.read() as conn:
        return int(conn.execute(select(func.count()).select_from(orders)).scalar_one())


def test_same_key_same_body_replays_the_first_answer(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="1")
    sid = market.server(host)
    c = market.client(renter)
    first = c.post("/v1/create_order", json=order_body(sid), headers={"Idempotency-Key": "k1"})
    ok(first)
    market.clock.advance(30)  # a later retry: the answer is still the first one
    again = c.post("/v1/create_order", json=order_body(sid), headers={"Idempotency-Key": "k1"})
    assert again.content == first.content
    assert again.headers["Idempotent-Replayed"] == "true"
    assert "Idempotent-Replayed" not in first.headers
    assert count_orders(market) == 1
    # the same body under a new key acts (and here meets the market's own rule)
    assert (
        error(c.post("/v1/create_order", json=order_body(sid), headers={"Idempotency-Key": "k2"}))
        == "server-already-rented"
    )
    # keys are the caller's own: another user's k1 is another request
    other = market.client(market.user(bitcoin="1"))
    sid2 = market.server(host, "two")
    ok(other.post("/v1/create_order", json=order_body(sid2), headers={"Idempotency-Key": "k1"}))
    assert count_orders(market) == 2


def test_same_key_another_request_is_code_2(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="1")
    sid = market.server(host)
    c = market.client(renter)
    ok(c.post("/v1/create_order", json=order_body(sid), headers={"Idempotency-Key": "k"}))
    other_body = c.post(
        "/v1/create_order", json=order_body(sid, image="busybox"), headers={"Idempotency-Key": "k"}
    ).json()
    assert other_body["code"] == 2 and "Idempotency-Key" in other_body["error"]
    other_endpoint = c.post("/v1/cancel_order", json={"id": 1}, headers={"Idempotency-Key": "k"})
    assert other_endpoint.json()["code"] == 2
    # the same JSON with keys in another order and other spacing is the same request
    reordered = dict(reversed(list(order_body(sid).items())))
    assert (
        c.post("/v1/create_order", json=reordered, headers={"Idempotency-Key": "k"}).headers.get(
            "Idempotent-Replayed"
        )
        == "true"
    )
    for bad in ("", "x" * 256):
        r = c.post("/v1/cancel_order", json={"id": 1}, headers={"Idempotency-Key": bad})
        assert r.json()["code"] == 2, bad


def test_numbers_are_compared_by_value(market: Market) -> None:
    """As the docs say, after parsing: 0.0010 and 0.001 (or 2 and 2.0) are the same request; a
    different amount is another one."""
    host, renter = market.user(), market.user(bitcoin="1")
    sid = market.server(host)
    c = market.client(renter)

    def send(spot: str, mrl: str = "72", key: str = "bid") -> httpx.Response:
        body = f'{{"renting_server": {sid}, "image": "cloreai/ubuntu", "type": "spot", '
        body += f'"currency": "bitcoin", "spotprice": {spot}, "ports": {{}}, "mrl": {mrl}}}'
        headers = {"Idempotency-Key": key, "Content-Type": "application/json"}
        return c.post("/v1/create_order", content=body.encode(), headers=headers)

    first = send("0.0010")
    ok(first)
    for spot, mrl in (("0.001", "72"), ("0.00100000", "72.0"), ("1e-3", "7.2e1"), ("1.0E-3", "72")):
        again = send(spot, mrl)
        assert again.headers.get("Idempotent-Replayed") == "true", (spot, mrl, again.text)
        assert again.content == first.content
    for spot, mrl in (("0.0011", "72"), ("0.001", "73"), ('"0.001"', "72"), ("0.001", '"72"')):
        refused = send(spot, mrl).json()
        assert refused["code"] == 2 and "Idempotency-Key" in refused["error"], (spot, mrl)
    assert count_orders(market) == 1


def test_every_mutating_endpoint_and_errors_replay(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="1")
    sid = market.server(host)
    c, h = market.client(renter), market.client(host)
    order = ok(c.post("/v1/create_order", json=order_body(sid)))
    cancel = {"id": order["order_id"]}
    first = c.post("/v1/cancel_order", json=cancel, headers={"Idempotency-Key": "c"})
    assert first.content == b'{"code":0}'
    # without the key a second cancel is refused; with it, the first answer comes back
    assert error(c.post("/v1/cancel_order", json=cancel)) == "order_not_active"
    assert c.post("/v1/cancel_order", json=cancel, headers={"Idempotency-Key": "c"}).content == (
        b'{"code":0}'
    )
    added = h.post("/v1/add_server", json={"name": "new"}, headers={"Idempotency-Key": "a"})
    again = h.post("/v1/add_server", json={"name": "new"}, headers={"Idempotency-Key": "a"})
    assert again.content == added.content and len(ok(added)["init_token"]) == 48
    # an error answer is an answer: replayed too, not acted on again
    missing = order_body(999)
    refused = c.post("/v1/create_order", json=missing, headers={"Idempotency-Key": "e"})
    assert error(refused) == "server-dont-exist"
    assert c.post("/v1/create_order", json=missing, headers={"Idempotency-Key": "e"}).content == (
        refused.content
    )


def test_a_key_whose_process_died_is_taken_over_and_old_keys_expire(market: Market) -> None:
    host, renter = market.user(), market.user(bitcoin="1")
    sid = market.server(host)
    uid = market.user_id(renter)
    c = market.client(renter)
    # a claim left running by a process that died before its transaction committed
    claim = keys.begin(market.db, uid, "dead", "create_order", "h", time.time() - 600, 86400, 120)
    assert claim.action == "run"
    digest = _hash_of(market, renter, sid)  # same request: the hash the API computes
    with market.db.write() as conn:
        conn.execute(
            update(idempotency_keys)
            .where(idempotency_keys.c.key == "dead")
            .values(request_hash=digest)
        )
    taken = c.post("/v1/create_order", json=order_body(sid), headers={"Idempotency-Key": "dead"})
    ok(taken)
    # the dead attempt, were it to finish now, may not commit: its key was taken over
    with pytest.raises(keys.KeyLost), market.db.write() as conn:
        keys.complete(conn, uid, "dead", claim.owner, 200, b"{}")
    assert count_orders(market) == 1
    # past the key's time the same key is a new request
    with market.db.write() as conn:
        conn.execute(update(idempotency_keys).values(created_at=time.time() - 86401))
    assert (
        error(c.post("/v1/create_order", json=order_body(sid), headers={"Idempotency-Key": "dead"}))
        == "server-already-rented"
    )


def _hash_of(market: Market, token: str, sid: int) -> str:
    """The request hash the server stores, read back from a throwaway key."""
    c = market.client(token)
    c.post("/v1/create_order", json=order_body(sid), headers={"Idempotency-Key": "probe"})
    with market.db.write() as conn:
        digest = conn.execute(
            select(idempotency_keys.c.request_hash).where(idempotency_keys.c.key == "probe")
        ).scalar_one()
        conn.execute(idempotency_keys.delete().where(idempotency_keys.c.key == "probe"))
        conn.execute(orders.delete())
    return str(digest)


@pytest.mark.slow
def test_concurrent_twins_on_two_processes_act_once(market: Market) -> None:
    host = market.user()
    renters = [market.user(bitcoin="1") for _ in range(4)]
    sids = [market.server(host, f"s{i}") for i in range(4)]
    ports = [free_port(), free_port()]
    procs = [serve(market, port) for port in ports]
    try:
        for round_, (renter, sid) in enumerate(zip(renters, sids, strict=True)):
            answers: list[httpx.Response] = []
            barrier = threading.Barrier(2)

            def send(
                port: int,
                renter: str = renter,
                sid: int = sid,
                key: str = f"twin-{round_}",
                barrier: threading.Barrier = barrier,
                answers: list[httpx.Response] = answers,
            ) -> None:
                barrier.wait()
                answers.append(
                    httpx.post(
                        f"http://127.0.0.1:{port}/v1/create_order",
                        json=order_body(sid),
                        headers={"auth": renter, "Idempotency-Key": key},
                        timeout=30,
                    )
                )

            threads = [threading.Thread(target=send, args=(p,)) for p in ports]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
            assert len(answers) == 2
            assert answers[0].content == answers[1].content, [a.text for a in answers]
            assert answers[0].json()["code"] == 0
            replayed = [a.headers.get("Idempotent-Replayed") for a in answers]
            assert sorted(replayed, key=str) == sorted([None, "true"], key=str)
    finally:
        for proc in procs:
            stop(proc)
    assert count_orders(market) == 4


@pytest.mark.parametrize("failure", ["crash", "internal"])
def test_an_internal_error_is_not_stored_and_a_retry_acts(
    market: Market, monkeypatch: pytest.MonkeyPatch, failure: str
) -> None:
    """A code 1 (an unexpected exception, or an InternalError raised as such) changed nothing
    and may pass: it is never replayed for 24 h."""
    from openclore.domain.errors import InternalError
    from openclore.market import orders as order_service

    host, renter = market.user(), market.user(bitcoin="1")
    sid = market.server(host)
    c = market.client(renter)
    real = order_service.create_order
    calls = []

    def failing_once(*args: object, **kwargs: object) -> int:
        calls.append(1)
        if len(calls) == 1:
            if failure == "internal":
                raise InternalError("the database went away")
            raise RuntimeError("the database went away")
        return real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(order_service, "create_order", failing_once)
    headers = {"Idempotency-Key": "after-a-crash"}
    first = c.post("/v1/create_order", json=order_body(sid), headers=headers)
    assert first.json()["code"] == 1 and count_orders(market) == 0
    again = c.post("/v1/create_order", json=order_body(sid), headers=headers)
    ok(again)
    assert "Idempotent-Replayed" not in again.headers and count_orders(market) == 1
    assert len(calls) == 2
    replay = c.post("/v1/create_order", json=order_body(sid), headers=headers)
    assert replay.content == again.content and replay.headers["Idempotent-Replayed"] == "true"


def test_the_query_string_is_part_of_the_request(market: Market) -> None:
    renter = market.user(bitcoin="1")
    c = market.client(renter)
    headers = {"Idempotency-Key": "q"}
    first = c.post("/v1/webhooks?x=1", json={"url": "http://127.0.0.1:9/a"}, headers=headers)
    ok(first)
    other = c.post("/v1/webhooks?x=2", json={"url": "http://127.0.0.1:9/a"}, headers=headers)
    assert other.json()["code"] == 2 and "Idempotency-Key" in other.json()["error"]
    same = c.post("/v1/webhooks?x=1", json={"url": "http://127.0.0.1:9/a"}, headers=headers)
    assert same.headers.get("Idempotent-Replayed") == "true"

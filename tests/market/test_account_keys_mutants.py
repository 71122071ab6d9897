"""Account SSH keys (market/account_keys.py) driven directly: each refusal's exact reason, the
bits of every accepted curve, RSA at its 2048-bit boundary, which comments are kept, the events
and audit entries of each change, and how an order's key and the account's keys are joined.

Written to kill mutants of `scripts/mutation account_keys` the HTTP tests (test_account_keys.py)
do not see."""

from __future__ import annotations

import json
import time
from typing import Any

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import select, update

from openclore.domain.errors import MarketError
from openclore.engine.notify import subscribe
from openclore.market.account_keys import (
    MAX_KEYS,
    MIN_RSA_BITS,
    SSH_KEY_ADD,
    SSH_KEY_ATTACH,
    SSH_KEY_DELETE,
    account_keys,
    add_key,
    attach_key,
    delete_key,
    joined_keys,
    list_keys,
    parse_key,
)
from openclore.market.accounts import create_user
from openclore.market.audit import Actor
from openclore.store.schema import audit_log, events, orders, ssh_keys

from support import Market, ok, order_body

pytestmark = pytest.mark.origin("mutant")

NOW = 1_000_000
OPENSSH = (serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)


def ed() -> str:
    return ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(*OPENSSH).decode()


def reason(text: str) -> str:
    with pytest.raises(MarketError) as refused:
        parse_key(text)
    assert refused.value.name == "invalid_ssh_key"
    return str(refused.value.extra["reason"])


def test_each_refusal_says_why() -> None:
    key = ed()
    assert reason("") == "expected exactly one public key line"
    assert reason(f"{key}\n{key}") == "expected exactly one public key line"
    assert reason("ssh-ed25519") == "expected 'type base64 [comment]'"
    assert reason(f"ssh-foo {key.split()[1]}") == "accepted: ed25519, ecdsa, rsa"
    assert reason("ssh-ed25519 AAAA!!") == "not an OpenSSH public key"
    # a blob of another type than its name says
    rsa_blob = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    rsa_line = rsa_blob.public_key().public_bytes(*OPENSSH).decode()
    assert reason(f"ssh-ed25519 {rsa_line.split()[1]}") == "not an OpenSSH public key"
    assert MIN_RSA_BITS == 2048
    short = rsa.generate_private_key(public_exponent=65537, key_size=2040)
    assert reason(short.public_key().public_bytes(*OPENSSH).decode()) == "RSA keys need 2048 bits"


def test_blank_lines_around_one_key_are_fine_and_the_bits_are_each_curves() -> None:
    key = ed()
    parsed = parse_key(f"\n\n  {key}  \n\n")
    assert (parsed.type, parsed.bits, parsed.line) == ("ssh-ed25519", 256, key)
    for curve, name, bits in [
        (ec.SECP256R1(), "ecdsa-sha2-nistp256", 256),
        (ec.SECP384R1(), "ecdsa-sha2-nistp384", 384),
        (ec.SECP521R1(), "ecdsa-sha2-nistp521", 521),
    ]:
        line = ec.generate_private_key(curve).public_key().public_bytes(*OPENSSH).decode()
        assert (parse_key(line).type, parse_key(line).bits) == (name, bits)
    exact = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    assert parse_key(exact.public_key().public_bytes(*OPENSSH).decode()).bits == 2048


def test_a_comment_is_kept_only_when_it_is_plain_text() -> None:
    key = ed()
    assert parse_key(f"{key} me@laptop").line == f"{key} me@laptop"
    assert parse_key(f"{key}  two words ").line == f"{key} two words"
    assert parse_key(f"{key} " + "c" * 200).line == f"{key} " + "c" * 200
    assert parse_key(f"{key} " + "c" * 201).line == key  # too long: dropped
    assert parse_key(f"{key} bad;comment").line == key
    assert parse_key(f"{key} $(rm -rf /)").line == key
    assert parse_key(f"{key} Aa0-=.@+/_").line == f"{key} Aa0-=.@+/_"


def person(market: Market, name: str) -> int:
    with market.db.write() as conn:
        return create_user(conn, name, NOW, market.settings)


def test_keys_are_limited_per_account_and_each_change_writes_its_entries(market: Market) -> None:
    alice, bob = person(market, "alice"), person(market, "bob")
    actor = Actor.user(alice, "10.0.0.1", "key:3:xy")
    with market.db.write() as conn:
        first = add_key(conn, alice, "laptop", ed() + " c", NOW, actor=actor)
        for i in range(MAX_KEYS - 2):
            add_key(conn, alice, f"k{i}", ed(), NOW)
        add_key(conn, bob, "bobs", ed(), NOW)  # another account's keys do not count
        add_key(conn, alice, "twentieth", ed(), NOW)
        with pytest.raises(MarketError) as over:
            add_key(conn, alice, "one more", ed(), NOW)
        assert (over.value.name, dict(over.value.extra)) == ("ssh_key_limit_reached", {"limit": 20})
        with pytest.raises(MarketError) as same:
            add_key(conn, alice, "again", first["public_key"], NOW)
        assert (same.value.name, dict(same.value.extra)) == (
            "ssh_key_exists",
            {"key_id": first["id"]},
        )
    with market.db.write() as conn:
        delete_key(conn, alice, first["id"], NOW + 9, actor=Actor.user(alice, "10.0.0.2"))
        with pytest.raises(MarketError) as gone:
            delete_key(conn, alice, first["id"], NOW + 9)
        assert (gone.value.name, dict(gone.value.extra)) == (
            "ssh_key_dont_exist",
            {"key_id": first["id"]},
        )
        assert len(list_keys(conn, alice)) == MAX_KEYS - 1
    fp = first["fingerprint"]
    with market.db.read() as conn:
        seen = [
            (r.type, r.created_at, json.loads(r.data))
            for r in conn.execute(
                select(events).where(events.c.user_id == alice).order_by(events.c.id)
            )
        ]
        audit = [
            (r.actor, r.action, r.target, r.detail, r.source)
            for r in conn.execute(
                select(audit_log).where(audit_log.c.target == f"ssh_key:{first['id']}")
            )
        ]

    def fields(data: dict[str, Any]) -> dict[str, Any]:
        return {k: data[k] for k in ("key_id", "name", "fingerprint") if k in data}

    assert (seen[0][0], seen[0][1], fields(seen[0][2])) == (
        "ssh_key.added",
        NOW,
        {"key_id": first["id"], "name": "laptop", "fingerprint": fp},
    )
    assert (seen[-1][0], seen[-1][1], fields(seen[-1][2])) == (
        "ssh_key.deleted",
        NOW + 9,
        {"key_id": first["id"], "fingerprint": fp},
    )
    assert audit == [
        (
            f"user:{alice}",
            SSH_KEY_ADD,
            f"ssh_key:{first['id']}",
            {"fingerprint": fp, "via": "key:3:xy"},
            "10.0.0.1",
        ),
        (
            f"user:{alice}",
            SSH_KEY_DELETE,
            f"ssh_key:{first['id']}",
            {"fingerprint": fp},
            "10.0.0.2",
        ),
    ]
    assert (SSH_KEY_ADD, SSH_KEY_DELETE) == ("ssh_key.add", "ssh_key.delete")


def test_the_accounts_keys_in_order_and_an_orders_key_joined_once(market: Market) -> None:
    alice = person(market, "alice")
    with market.db.write() as conn:
        assert account_keys(conn, alice) is None
        a, b = ed(), ed()
        add_key(conn, alice, "b", b, NOW)
        add_key(conn, alice, "a", a, NOW)
        assert account_keys(conn, alice) == f"{b}\n{a}"  # in the order they were added
    assert joined_keys(f" {a} \n\n", f"{b}\n{a}") == f"{a}\n{b}"
    assert joined_keys(None, f"{b}\n{b}") == b
    assert joined_keys("", "") == ""
    assert joined_keys(None, "") is None
    assert joined_keys(None, "\n \n") is None


def test_keys_are_listed_in_the_order_they_were_added_on_either_database(market: Market) -> None:
    """Listed by id: on PostgreSQL a row written again moves to the end of its table and index,
    so the first key, moved away and back, comes last unless the listing orders by id."""
    alice, bob = person(market, "alice"), person(market, "bob")
    with market.db.write() as conn:
        first = add_key(conn, alice, "first", ed(), NOW)
        second = add_key(conn, alice, "second", ed(), NOW)
        # to another account and back: written again, not in place (its user_id is indexed)
        moved = update(ssh_keys).where(ssh_keys.c.id == first["id"])
        conn.execute(moved.values(user_id=bob))
        conn.execute(moved.values(user_id=alice))
    with market.db.read() as conn:
        assert [k["id"] for k in list_keys(conn, alice)] == [first["id"], second["id"]]
        assert account_keys(conn, alice) == f"{first['public_key']}\n{second['public_key']}"


def test_attaching_a_key_to_a_live_order(market: Market) -> None:
    token = market.user(bitcoin="1")
    alice = market.user_id(token)
    sid = market.server(market.user())
    own, early, late = ed(), ed(), ed()
    with market.db.write() as conn:
        add_key(conn, alice, "early", early, NOW)
    oid = ok(market.client(token).post("/v1/create_order", json=order_body(sid, ssh_key=own)))[
        "order_id"
    ]
    with market.db.write() as conn:
        owned = add_key(conn, alice, "own", own, NOW)
        later = add_key(conn, alice, "late", late, NOW)
        with pytest.raises(MarketError) as missing:
            attach_key(conn, alice, oid, 999_999, NOW)
        assert (missing.value.name, dict(missing.value.extra)) == (
            "ssh_key_dont_exist",
            {"key_id": 999_999},
        )
        # the order's own key is there already
        assert attach_key(conn, alice, oid, owned["id"], NOW) is False
    woken: list[int] = []
    sub = subscribe(market.db.engine, sid, lambda: woken.append(sid))
    try:
        assert sub.wait_ready(5)
        with market.db.write() as conn:
            actor = Actor.user(alice, "10.0.0.3", "key:4:zz")
            assert attach_key(conn, alice, oid, later["id"], NOW, actor=actor) is True
        deadline = time.monotonic() + 5
        while not woken and time.monotonic() < deadline:
            time.sleep(0.02)
        assert woken, "the server's agent was not woken"
    finally:
        sub.close()
    with market.db.read() as conn:
        keys = conn.execute(select(orders.c.account_keys).where(orders.c.id == oid)).scalar()
        entry = conn.execute(
            select(audit_log.c.action, audit_log.c.target, audit_log.c.detail).where(
                audit_log.c.action == SSH_KEY_ATTACH
            )
        ).one()
    assert keys == f"{early}\n{late}"  # the account keys it had, and the new one
    assert tuple(entry) == (
        "ssh_key.attach",
        f"order:{oid}",
        {"fingerprint": later["fingerprint"], "via": "key:4:zz"},
    )

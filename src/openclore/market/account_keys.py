"""Account SSH keys (SPEC §8, renters' own things): public keys kept on the account that every
new order's container gets besides the order's own ``ssh_key``.

Keys are parsed with a real SSH key parser: ed25519, ECDSA and RSA of at least 2048 bits are
accepted; DSA, shorter RSA and anything else are refused (``invalid_ssh_key``). The fingerprint
is the one ``ssh-keygen -l`` prints: ``SHA256:`` and the unpadded base64 of the key blob's
SHA-256. An order copies its owner's keys when it is created (``orders.account_keys``), so a
later change never changes a running container.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from sqlalchemy import Connection, delete, func, insert, select, update

from openclore.domain.errors import MarketError
from openclore.engine.notify import notify_server
from openclore.engine.outbox import SSH_KEY_ADDED, SSH_KEY_DELETED, emit
from openclore.market.accounts import lock_user
from openclore.market.audit import SYSTEM, Actor, record_by
from openclore.market.keeping import _locked_order
from openclore.store.db import inserted_id
from openclore.store.schema import orders, ssh_keys

MAX_KEYS = 20
MIN_RSA_BITS = 2048
ACCEPTED = (
    "ssh-ed25519",
    "ssh-rsa",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
)
SSH_KEY_ADD = "ssh_key.add"
SSH_KEY_DELETE = "ssh_key.delete"
SSH_KEY_ATTACH = "ssh_key.attach"
# a comment kept after the key: the characters an order's ssh_key may use (SPEC §4)
COMMENT = re.compile(r"^[a-zA-Z0-9\-=.@+/_ ]{1,200}$")


@dataclass(frozen=True)
class ParsedKey:
    type: str
    bits: int
    fingerprint: str
    line: str  # canonical "type base64 [comment]"


def fingerprint(blob: bytes) -> str:
    """``ssh-keygen -l``'s SHA256 fingerprint of a key blob."""
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode()
    return "SHA256:" + digest.rstrip("=")


def parse_key(text: str) -> ParsedKey:
    """One OpenSSH public key line, checked; ``invalid_ssh_key`` (with a reason) otherwise."""
    lines = [line for line in text.strip().splitlines() if line.strip()]
    if len(lines) != 1:
        raise MarketError("invalid_ssh_key", reason="expected exactly one public key line")
    parts = lines[0].split(None, 2)
    if len(parts) < 2:
        raise MarketError("invalid_ssh_key", reason="expected 'type base64 [comment]'")
    if parts[0] not in ACCEPTED:
        raise MarketError("invalid_ssh_key", reason="accepted: ed25519, ecdsa, rsa")
    try:
        # the parser checks that the blob holds a key of the type the line names
        key = serialization.load_ssh_public_key(f"{parts[0]} {parts[1]}".encode())
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise MarketError("invalid_ssh_key", reason="not an OpenSSH public key") from None
    if isinstance(key, rsa.RSAPublicKey):
        bits = key.key_size
        if bits < MIN_RSA_BITS:
            raise MarketError("invalid_ssh_key", reason=f"RSA keys need {MIN_RSA_BITS} bits")
    elif isinstance(key, ec.EllipticCurvePublicKey):
        bits = key.curve.key_size
    else:  # of the ACCEPTED types, ssh-ed25519 is the one left
        assert isinstance(key, ed25519.Ed25519PublicKey)
        bits = 256
    canonical = key.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH)
    type_, b64 = canonical.decode().split(" ", 1)
    comment = parts[2].strip() if len(parts) > 2 else ""
    line = f"{type_} {b64} {comment}" if COMMENT.match(comment) else f"{type_} {b64}"
    return ParsedKey(type_, bits, fingerprint(base64.b64decode(b64)), line)


def key_view(row: Any) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "type": row.type,
        "bits": row.bits,
        "fingerprint": row.fingerprint,
        "public_key": row.public_key,
        "created_at": row.created_at,
    }


def add_key(
    conn: Connection, user_id: int, name: str, text: str, now: int, *, actor: Actor = SYSTEM
) -> dict[str, Any]:
    """Keep a public key on the account; returns its view."""
    parsed = parse_key(text)
    lock_user(conn, user_id)  # the limit and the duplicate check are counted under it
    same = conn.execute(
        select(ssh_keys.c.id).where(
            ssh_keys.c.user_id == user_id, ssh_keys.c.fingerprint == parsed.fingerprint
        )
    ).scalar()
    if same is not None:
        raise MarketError("ssh_key_exists", key_id=same)
    count = conn.execute(
        select(func.count()).select_from(ssh_keys).where(ssh_keys.c.user_id == user_id)
    ).scalar_one()
    if count >= MAX_KEYS:
        raise MarketError("ssh_key_limit_reached", limit=MAX_KEYS)
    key_id = inserted_id(
        conn.execute(
            insert(ssh_keys).values(
                user_id=user_id,
                name=name,
                type=parsed.type,
                bits=parsed.bits,
                fingerprint=parsed.fingerprint,
                public_key=parsed.line,
                created_at=now,
            )
        )
    )
    emit(
        conn, user_id, SSH_KEY_ADDED, now, key_id=key_id, name=name, fingerprint=parsed.fingerprint
    )
    record_by(conn, actor, SSH_KEY_ADD, f"ssh_key:{key_id}", {"fingerprint": parsed.fingerprint})
    row = conn.execute(select(ssh_keys).where(ssh_keys.c.id == key_id)).one()
    return key_view(row)


def list_keys(conn: Connection, user_id: int) -> list[dict[str, Any]]:
    rows = conn.execute(
        select(ssh_keys).where(ssh_keys.c.user_id == user_id).order_by(ssh_keys.c.id)
    )
    return [key_view(r) for r in rows]


def delete_key(
    conn: Connection, user_id: int, key_id: int, now: int, *, actor: Actor = SYSTEM
) -> None:
    """Remove a key from the account (orders created before keep it)."""
    row = conn.execute(
        select(ssh_keys).where(ssh_keys.c.id == key_id, ssh_keys.c.user_id == user_id)
    ).first()
    if row is None:
        raise MarketError("ssh_key_dont_exist", key_id=key_id)
    conn.execute(delete(ssh_keys).where(ssh_keys.c.id == key_id))
    emit(conn, user_id, SSH_KEY_DELETED, now, key_id=key_id, fingerprint=row.fingerprint)
    record_by(conn, actor, SSH_KEY_DELETE, f"ssh_key:{key_id}", {"fingerprint": row.fingerprint})


def account_keys(conn: Connection, user_id: int) -> str | None:
    """The account's keys as one authorized_keys text (None: no keys), for a new order."""
    lines = conn.execute(
        select(ssh_keys.c.public_key).where(ssh_keys.c.user_id == user_id).order_by(ssh_keys.c.id)
    ).scalars()
    text = "\n".join(lines)
    return text or None


def joined_keys(order_key: str | None, account: str | None) -> str | None:
    """An order's own ssh_key and its account's keys, one per line, each once. Without account
    keys the order's key is kept as it is, so that orders made before account keys keep their
    container's spec (an upgrade does not make their containers again)."""
    if not account:
        return order_key
    seen: list[str] = []
    for chunk in (order_key, account):
        for line in (chunk or "").splitlines():
            if line.strip() and line.strip() not in seen:
                seen.append(line.strip())
    return "\n".join(seen) or None


def attach_key(
    conn: Connection, user_id: int, order_id: int, key_id: int, now: int, *, actor: Actor = SYSTEM
) -> bool:
    """Add one of the account's keys to a live order made before it: its container is made
    again with the key (its files kept, as a restart does). False: the order had it already."""
    key = conn.execute(
        select(ssh_keys).where(ssh_keys.c.id == key_id, ssh_keys.c.user_id == user_id)
    ).first()
    if key is None:
        raise MarketError("ssh_key_dont_exist", key_id=key_id)
    order, server = _locked_order(conn, user_id, order_id, now)
    has = joined_keys(order["ssh_key"], order["account_keys"]) or ""
    if key.public_key in has.splitlines():
        return False
    keys = joined_keys(order["account_keys"], key.public_key)
    conn.execute(update(orders).where(orders.c.id == order_id).values(account_keys=keys))
    notify_server(conn, int(server["id"]))
    record_by(conn, actor, SSH_KEY_ATTACH, f"order:{order_id}", {"fingerprint": key.fingerprint})
    return True

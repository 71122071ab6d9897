"""Scoped API keys (SPEC §8): keys a renter makes for a bot or an AI agent that can do less than
the account.

A key has scopes from :data:`SCOPES`; each endpoint needs one (reads need ``read``), and a key
without it is refused with code 3 ``missing_scope``. Operator-issued tokens (``openclore admin
token``) have every scope. A key may expire (``expires_at``, market time) and may carry a
``spend_limit``: per currency, what the orders created with that key may be billed in one market
day (UTC), counting rent, fees, storage and creation fees as they are booked. With a limit set,
a currency the limit does not name cannot be spent with the key at all. Creating an order,
starting one or raising a bid with the key is refused once the day's limit is reached (or when the
order's own price per day is over it), and the engine stops the key's running orders at the
second the limit is reached (:func:`apply_spend_caps`, the stop timer's exact path).

A key never makes a stronger key: the scopes of a key it creates are a subset of its own, and its
limits are no higher (a limited key cannot make an unlimited one). A key revokes only keys whose
scopes are a subset of its own.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, func, insert, select, update

from openclore.domain.errors import InvalidInput, MarketError
from openclore.domain.money import AmountError, to_coins, to_units
from openclore.engine.spending import limit_of, spent_today
from openclore.market.accounts import hash_token, lock_user, new_token
from openclore.market.audit import Actor, record_by
from openclore.market.sessions import end_token_sessions
from openclore.store.db import inserted_id, tokens_changed
from openclore.store.schema import api_tokens

SCOPES = ("read", "rent", "host", "money", "account")
ALL_SCOPES = frozenset(SCOPES)
MAX_KEYS = 50  # live keys per user
API_KEY_CREATE = "api_key.create"
API_KEY_REVOKE = "api_key.revoke"


@dataclass(frozen=True)
class Key:
    """A live key as the request pipeline holds it."""

    id: int
    user_id: int
    prefix: str
    scopes: frozenset[str]
    expires_at: int | None
    spend_limit: tuple[tuple[str, int], ...] | None  # (currency, units per day), sorted

    def allows(self, scope: str) -> bool:
        return scope in self.scopes

    def expired(self, now: int) -> bool:
        return self.expires_at is not None and now >= self.expires_at

    def actor(self, source: str) -> Actor:
        return Actor.user(
            self.user_id, source, f"key:{self.id}:{self.prefix}", self.id, self.spend_limit
        )


def is_full(key: Key) -> bool:
    """Every scope, no spend limit, no expiry: what a console session may start from."""
    return key.scopes == ALL_SCOPES and key.spend_limit is None and key.expires_at is None


def _scopes_of(stored: str | None) -> frozenset[str]:
    return ALL_SCOPES if stored is None else frozenset(s for s in stored.split(",") if s)


def key_for_token(conn: Connection, token: str) -> Key | None:
    """The live key a token is, or None (unknown or revoked; an expired key is returned, the
    caller compares ``expires_at`` with its own clock)."""
    if not token or len(token) > 256:
        return None
    row = conn.execute(
        select(
            api_tokens.c.id,
            api_tokens.c.user_id,
            api_tokens.c.prefix,
            api_tokens.c.scopes,
            api_tokens.c.expires_at,
            api_tokens.c.spend_limit,
        ).where(api_tokens.c.token_hash == hash_token(token), api_tokens.c.revoked_at.is_(None))
    ).first()
    if row is None:
        return None
    return Key(
        id=int(row.id),
        user_id=int(row.user_id),
        prefix=str(row.prefix),
        scopes=_scopes_of(row.scopes),
        expires_at=None if row.expires_at is None else int(row.expires_at),
        spend_limit=limit_of(row.spend_limit),
    )


# ----------------------------------------------------------------------------- input


def parse_scopes(value: Any) -> frozenset[str]:
    """A list of scope names (or one comma-separated string), each known, at least one."""
    if isinstance(value, str):
        value = [s.strip() for s in value.split(",") if s.strip()]
    if not isinstance(value, list) or not value or not all(isinstance(s, str) for s in value):
        raise InvalidInput(f"scopes: a list of scopes from {', '.join(SCOPES)}")
    unknown = sorted(set(value) - ALL_SCOPES)
    if unknown:
        raise InvalidInput(f"scopes: unknown scope {unknown[0]!r} (known: {', '.join(SCOPES)})")
    return frozenset(value)


def parse_spend_limit(value: Any, currencies: Iterable[str]) -> tuple[tuple[str, int], ...] | None:
    """``{"currency": amount}`` (amounts in coins, numbers or decimal strings) per market day."""
    if value is None:
        return None
    if not isinstance(value, dict) or not value:
        raise InvalidInput('spend_limit: an object of amounts per currency, e.g. {"USD": "5"}')
    known = set(currencies)
    out: list[tuple[str, int]] = []
    for currency, amount in value.items():
        if currency not in known:
            raise InvalidInput(f"spend_limit: unknown currency {currency!r}")
        if isinstance(amount, bool) or not isinstance(amount, (int, float, str, Decimal)):
            raise InvalidInput(f"spend_limit.{currency}: an amount")
        try:
            units = to_units(str(amount))
        except AmountError as exc:
            raise InvalidInput(f"spend_limit.{currency}: {exc}") from None
        if units < 0:
            raise InvalidInput(f"spend_limit.{currency}: must not be negative")
        out.append((currency, units))
    return tuple(sorted(out))


# ----------------------------------------------------------------------------- use cases


def _stored_scopes(scopes: frozenset[str]) -> str | None:
    return None if scopes == ALL_SCOPES else ",".join(s for s in SCOPES if s in scopes)


def _within(
    limit: tuple[tuple[str, int], ...] | None, ceiling: tuple[tuple[str, int], ...] | None
) -> bool:
    """Whether a key with ``limit`` spends no more than one with ``ceiling`` may."""
    if ceiling is None:
        return True
    if limit is None:
        return False
    top = dict(ceiling)
    return all(c in top and v <= top[c] for c, v in limit)


def create_key(
    conn: Connection,
    user_id: int,
    *,
    name: str | None,
    scopes: frozenset[str],
    expires_at: int | None,
    spend_limit: tuple[tuple[str, int], ...] | None,
    now: int,
    creator: Key | None,
    actor: Actor,
) -> tuple[dict[str, Any], str]:
    """A new key (its row and its secret, shown this once)."""
    if expires_at is not None and expires_at <= now:
        raise InvalidInput("expires_at: must be in the future")
    if creator is not None:
        if not scopes <= creator.scopes:
            raise MarketError(
                "scope_not_held",
                scopes=sorted(scopes - creator.scopes),
                held=sorted(creator.scopes),
            )
        if not _within(spend_limit, creator.spend_limit):
            raise MarketError("spend_limit_not_held")
        if creator.expires_at is not None and (
            expires_at is None or expires_at > creator.expires_at
        ):
            expires_at = creator.expires_at  # never outlives the key that made it
    lock_user(conn, user_id)
    live = conn.execute(
        select(func.count())
        .select_from(api_tokens)
        .where(api_tokens.c.user_id == user_id, api_tokens.c.revoked_at.is_(None))
    ).scalar_one()
    if live >= MAX_KEYS:
        raise MarketError("api_key_limit_reached", limit=MAX_KEYS)
    secret = new_token()
    key_id = inserted_id(
        conn.execute(
            insert(api_tokens).values(
                user_id=user_id,
                token_hash=hash_token(secret),
                prefix=secret[:8],
                created_at=now,
                name=name,
                scopes=_stored_scopes(scopes),
                expires_at=expires_at,
                spend_limit=None if spend_limit is None else dict(spend_limit),
            )
        )
    )
    detail: dict[str, Any] = {"name": name, "scopes": sorted(scopes), "expires_at": expires_at}
    if spend_limit is not None:
        detail["spend_limit"] = {c: str(to_coins(v)) for c, v in spend_limit}
    record_by(conn, actor, API_KEY_CREATE, f"api_key:{key_id}", detail)
    row = _rows(conn, user_id, now, key_id=key_id)[0]
    return row, secret


def revoke_key(
    conn: Connection, user_id: int, key_id: int, now: int, revoker: Key | None, actor: Actor
) -> None:
    row = conn.execute(
        select(api_tokens.c.id, api_tokens.c.scopes).where(
            api_tokens.c.id == key_id,
            api_tokens.c.user_id == user_id,
            api_tokens.c.revoked_at.is_(None),
        )
    ).first()
    if row is None:
        raise MarketError("api_key_dont_exist")
    if revoker is not None and not _scopes_of(row.scopes) <= revoker.scopes:
        raise MarketError("scope_not_held", scopes=sorted(_scopes_of(row.scopes) - revoker.scopes))
    conn.execute(update(api_tokens).where(api_tokens.c.id == key_id).values(revoked_at=now))
    end_token_sessions(conn, [key_id])
    tokens_changed(conn)
    record_by(conn, actor, API_KEY_REVOKE, f"api_key:{key_id}")


def list_keys(conn: Connection, user_id: int, now: int) -> list[dict[str, Any]]:
    return _rows(conn, user_id, now)


def key_info(conn: Connection, key: Key, now: int) -> dict[str, Any]:
    return _rows(conn, key.user_id, now, key_id=key.id)[0]


def _rows(
    conn: Connection, user_id: int, now: int, key_id: int | None = None
) -> list[dict[str, Any]]:
    query = select(api_tokens).where(
        api_tokens.c.user_id == user_id, api_tokens.c.revoked_at.is_(None)
    )
    if key_id is not None:
        query = query.where(api_tokens.c.id == key_id)
    out = []
    for row in conn.execute(query.order_by(api_tokens.c.id)):
        limit = limit_of(row.spend_limit)
        item: dict[str, Any] = {
            "id": int(row.id),
            "name": row.name,
            "prefix": row.prefix,
            "scopes": [s for s in SCOPES if s in _scopes_of(row.scopes)],
            "created_at": int(row.created_at),
            "expires_at": row.expires_at,
            "expired": row.expires_at is not None and now >= row.expires_at,
            "spend_limit": None if limit is None else {c: to_coins(v) for c, v in limit},
        }
        if limit is not None:
            spent = spent_today(conn, int(row.id), now)
            item["spent_today"] = {c: to_coins(spent.get(c, 0)) for c, _ in limit}
        out.append(item)
    return out


# ----------------------------------------------------------------------------- spending


def check_spend(
    conn: Connection, actor: Actor, currency: str, per_day: int, now: int, upfront: int = 0
) -> None:
    """Refuse new spending with a limited key: ``per_day`` (an order's price per day) is more
    than it may spend in a day, or its limit for ``currency`` is reached today (``upfront``, a
    creation fee, would be spent at once)."""
    if actor.key_id is None or actor.spend_limit is None:
        return
    limit = dict(actor.spend_limit).get(currency, 0)
    if per_day > limit:
        raise MarketError("spend_limit_exceeded", currency=currency, limit=to_coins(limit))
    spent = spent_today(conn, actor.key_id, now).get(currency, 0)
    if spent >= limit or spent + upfront > limit:
        raise MarketError(
            "spend_limit_reached", currency=currency, limit=to_coins(limit), spent=to_coins(spent)
        )

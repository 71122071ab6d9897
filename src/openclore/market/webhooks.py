"""Webhooks and alerts: a user's receivers of market events, their delivery log, test pings,
and the runway threshold under which a ``balance.low`` event is sent."""

from __future__ import annotations

import secrets
from typing import Any

from sqlalchemy import Connection, delete, func, insert, select, update

from openclore.config import Settings
from openclore.domain.errors import InvalidInput, MarketError
from openclore.engine.outbox import EVENT_TYPES, emit_ping
from openclore.engine.webhooks import Policy, address_refusal, url_problem
from openclore.market.accounts import lock_user
from openclore.market.audit import Actor, record_by
from openclore.store.db import inserted_id
from openclore.store.schema import user_alerts, webhook_deliveries, webhooks

SECRET_PREFIX = "whsec_"


def policy(settings: Settings) -> Policy:
    return Policy(
        allow_private=settings.webhook_allow_private,
        allow_loopback=settings.webhook_allow_private or settings.sandbox_enabled,
        timeout=settings.webhook_timeout,
        lease=settings.webhook_lease,
        concurrency=settings.webhook_concurrency,
        user_concurrency=settings.webhook_user_concurrency,
        hook_concurrency=settings.webhook_hook_concurrency,
        retry_base=settings.webhook_retry_base,
        retry_max_delay=settings.webhook_retry_max_delay,
        retry_window=settings.webhook_retry_window,
    )


def check_url(url: str, settings: Settings) -> None:
    """Refuse a malformed URL (code 2) or one that resolves into the operator's network
    (``webhook_url_not_allowed``). Resolves the name: call it outside any transaction."""
    problem = url_problem(url)
    if problem is not None:
        raise InvalidInput(problem)
    refused = address_refusal(url, policy(settings))
    if refused is not None:
        raise MarketError("webhook_url_not_allowed", reason=refused)


def check_event_types(types: list[str] | None) -> list[str] | None:
    if types is None:
        return None
    unknown = [t for t in types if t not in EVENT_TYPES]
    if unknown:
        raise InvalidInput(
            f"events: unknown type {unknown[0][:40]!r}; known: {', '.join(EVENT_TYPES)}"
        )
    return sorted(set(types))


def create_webhook(
    conn: Connection,
    user_id: int,
    url: str,
    types: list[str] | None,
    settings: Settings,
    now: int,
    *,
    actor: Actor | None = None,
) -> dict[str, Any]:
    lock_user(conn, user_id)  # the webhook limit is counted under it
    count = conn.execute(
        select(func.count())
        .select_from(webhooks)
        .where(webhooks.c.user_id == user_id, webhooks.c.deleted_at.is_(None))
    ).scalar_one()
    if count >= settings.max_webhooks_per_user:
        raise MarketError("webhook_limit_reached", limit=settings.max_webhooks_per_user)
    secret = SECRET_PREFIX + secrets.token_hex(24)
    webhook_id = inserted_id(
        conn.execute(
            insert(webhooks).values(
                user_id=user_id, url=url, secret=secret, events=types, created_at=now
            )
        )
    )
    if actor is not None:
        record_by(
            conn, actor, "webhook.create", f"webhook:{webhook_id}", {"url": url, "events": types}
        )
    return {"id": webhook_id, "secret": secret, "url": url, "events": types}


def list_webhooks(conn: Connection, user_id: int) -> dict[str, Any]:
    rows = conn.execute(
        select(webhooks)
        .where(webhooks.c.user_id == user_id, webhooks.c.deleted_at.is_(None))
        .order_by(webhooks.c.id)
    )
    return {
        "webhooks": [
            {"id": r.id, "url": r.url, "events": r.events, "created_at": r.created_at} for r in rows
        ]
    }


def _own(conn: Connection, user_id: int, webhook_id: int) -> None:
    found = conn.execute(
        select(webhooks.c.id).where(
            webhooks.c.id == webhook_id,
            webhooks.c.user_id == user_id,
            webhooks.c.deleted_at.is_(None),
        )
    ).first()
    if found is None:
        raise MarketError("webhook_dont_exist")


def delete_webhook(
    conn: Connection, user_id: int, webhook_id: int, now: int, *, actor: Actor | None = None
) -> None:
    _own(conn, user_id, webhook_id)
    conn.execute(update(webhooks).where(webhooks.c.id == webhook_id).values(deleted_at=now))
    conn.execute(
        update(webhook_deliveries)
        .where(
            webhook_deliveries.c.webhook_id == webhook_id,
            webhook_deliveries.c.state == "pending",
        )
        .values(state="failed", last_error="webhook deleted")
    )
    if actor is not None:
        record_by(conn, actor, "webhook.delete", f"webhook:{webhook_id}")


def ping_webhook(
    conn: Connection, user_id: int, webhook_id: int, now: int, *, actor: Actor | None = None
) -> None:
    _own(conn, user_id, webhook_id)
    emit_ping(conn, user_id, webhook_id, now)
    if actor is not None:
        record_by(conn, actor, "webhook.ping", f"webhook:{webhook_id}")


def deliveries(conn: Connection, user_id: int, webhook_id: int, limit: int) -> dict[str, Any]:
    """The webhook's delivery log, newest first."""
    _own(conn, user_id, webhook_id)
    d = webhook_deliveries
    rows = conn.execute(
        select(d).where(d.c.webhook_id == webhook_id).order_by(d.c.id.desc()).limit(limit)
    )
    return {
        "deliveries": [
            {
                "id": r.id,
                "event_id": r.event_id,
                "state": r.state,
                "attempts": r.attempts,
                "last_status": r.last_status,
                "last_error": r.last_error,
                "last_attempt_at": r.last_attempt_at,
                "next_attempt_at": r.next_attempt_at if r.state == "pending" else None,
                "delivered_at": r.delivered_at,
                "created_at": r.created_at,
            }
            for r in rows
        ]
    }


def set_alerts(
    conn: Connection,
    user_id: int,
    low_balance_seconds: int | None,
    *,
    actor: Actor | None = None,
) -> None:
    conn.execute(delete(user_alerts).where(user_alerts.c.user_id == user_id))
    if actor is not None:
        detail = {"low_balance_seconds": low_balance_seconds}
        record_by(conn, actor, "alerts.set", f"user:{user_id}", detail)
    if low_balance_seconds is not None:
        conn.execute(
            insert(user_alerts).values(
                user_id=user_id, low_balance_seconds=low_balance_seconds, alerted=[]
            )
        )


def alerts(conn: Connection, user_id: int) -> dict[str, Any]:
    value = conn.execute(
        select(user_alerts.c.low_balance_seconds).where(user_alerts.c.user_id == user_id)
    ).scalar()
    return {"low_balance_seconds": value}

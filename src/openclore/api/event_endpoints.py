"""openclore's event extensions: the event stream and polling, webhooks, alerts.

``GET /v1/events`` is a server-sent-event stream of the caller's events (``id:`` on each, resumable
with ``Last-Event-ID``); ``GET /v1/events?after=ID`` answers the events after ``ID`` as JSON for
polling clients.

The stream reads the outbox after every commit that wrote events for its user (woken in this
process, or from any process through PostgreSQL's NOTIFY; a lost LISTEN connection wakes every
stream to read again). An idle stream reads nothing: on SQLite, where other processes cannot
notify, it looks once a second whether the database changed at all (``PRAGMA data_version``, no
table read) and reads only then. Every ``TOKEN_CHECK`` seconds the stream checks its token against
the in-memory token cache (which revocations invalidate in every process): a revoked token's
stream ends within seconds. A user has at most ``max_event_streams_per_user`` streams open at once
in one process; past it the request is refused with code 5.
"""

from __future__ import annotations

import asyncio
import contextlib
import weakref
from collections.abc import AsyncIterator, Callable
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.responses import Response, StreamingResponse

from openclore.api.state import AppState, Call
from openclore.api.state import caller_actor as _actor
from openclore.api.state import caller_id as _uid
from openclore.domain.errors import InvalidInput, RateLimited
from openclore.engine import notify as wake
from openclore.engine.outbox import Event, events_after, latest_event_id, user_wake_id
from openclore.market import inputs
from openclore.market import webhooks as webhook_service
from openclore.store.db import Database

MAX_PAGE = 1000
STREAM_BATCH = 500
POLL_INTERVAL = 1.0  # SQLite replicas have no NOTIFY: look at least this often
KEEPALIVE = 15.0
TOKEN_CHECK = 2.0  # seconds between two checks of a stream's token


def _int_query(call: Call, name: str, default: int | None, top: int) -> int | None:
    raw = call.request.query_params.get(name)
    if raw is None or raw == "":
        return default
    if not raw.isdigit() or int(raw) > top:
        raise InvalidInput(f"{name}: a whole number from 0 to {top}")
    return int(raw)


def _types(call: Call) -> list[str] | None:
    raw = call.request.query_params.get("types")
    if not raw:
        return None
    return webhook_service.check_event_types([t.strip() for t in raw.split(",") if t.strip()])


def events(state: AppState, call: Call) -> Response:
    uid = _uid(call)
    types = _types(call)
    after = _int_query(call, "after", None, 2**63 - 1)
    if after is not None:
        limit = _int_query(call, "limit", 100, MAX_PAGE) or 1
        with call.read() as conn:
            found = events_after(conn, uid, after, limit, types)
        last = found[-1].id if found else after
        body = '{"events":[' + ",".join(e.json for e in found) + f'],"last_id":{last},"code":0}}'
        return Response(body, media_type="application/json")
    resume = call.request.headers.get("last-event-id") or call.request.query_params.get(
        "last_event_id"
    )
    if resume is not None:
        if not resume.strip().isdigit():
            raise InvalidInput("Last-Event-ID: an event id")
        cursor = int(resume.strip())
    else:
        with call.read() as conn:
            cursor = latest_event_id(conn, uid)
    limit = state.settings.max_event_streams_per_user
    release = state.streams.take(uid, limit)
    if release is None:
        raise RateLimited(5.0, error="event_stream_limit_reached", limit=limit)
    token = (call.request.headers.get("auth") or "").strip()
    frames = stream(state.db, uid, cursor, types, lambda: _token_live(state, token, uid), release)
    weakref.finalize(frames, release)  # a stream never started still gives its slot back
    return StreamingResponse(
        frames,
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )


def _token_live(state: AppState, token: str, user_id: int) -> bool:
    """Whether the stream's token still belongs to its user: from memory while no token was
    revoked anywhere since it was last read (one indexed read otherwise)."""
    versions = state.db.freshness.versions()
    if state.callers.known_user(token, versions.auth) == user_id:
        return True
    with state.db.read() as conn:
        return state.callers.user(token, versions.auth, lambda: conn) == user_id


def _read(db: Database, user_id: int, cursor: int, types: list[str] | None) -> list[Event]:
    with db.read() as conn:
        return events_after(conn, user_id, cursor, STREAM_BATCH, types)


def sse_frame(event: Event) -> bytes:
    return f"id: {event.id}\nevent: {event.type}\ndata: {event.json}\n\n".encode()


async def stream(
    db: Database,
    user_id: int,
    cursor: int,
    types: list[str] | None,
    live: Callable[[], bool] = lambda: True,
    release: Callable[[], None] = lambda: None,
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    woken = asyncio.Event()
    subscription = wake.subscribe(
        db.engine, user_wake_id(user_id), lambda: wake.set_soon(loop, woken)
    )
    # on SQLite other processes cannot notify: a change of the file is the sign to read
    changed = db.freshness.data_version if db.is_sqlite else None
    try:
        # nothing committed after this point can be missed: the first read comes after it
        await run_in_threadpool(subscription.wait_ready, 5.0)
        yield b"retry: 1000\n\n"
        quiet = checked = 0.0
        must_read = True
        seen = changed() if changed is not None else 0
        while True:
            if must_read or checked >= TOKEN_CHECK:
                checked = 0.0
                if not await run_in_threadpool(live):  # revoked: nothing more is sent
                    yield b"event: revoked\ndata: {}\n\n"
                    return
            if must_read:
                woken.clear()
                batch = await run_in_threadpool(_read, db, user_id, cursor, types)
                for event in batch:
                    yield sse_frame(event)
                    cursor = event.id
                if len(batch) == STREAM_BATCH:
                    continue
                if batch:
                    quiet = 0.0
            try:
                await asyncio.wait_for(woken.wait(), POLL_INTERVAL)
                must_read = True
            except TimeoutError:
                quiet += POLL_INTERVAL
                checked += POLL_INTERVAL
                must_read = False
                if changed is not None:
                    now_seen = changed()
                    must_read, seen = now_seen != seen, now_seen
                if quiet >= KEEPALIVE:
                    quiet = 0.0
                    yield b": keepalive\n\n"
    finally:
        release()
        with contextlib.suppress(Exception):
            subscription.close()


def webhooks(state: AppState, call: Call) -> dict[str, Any]:
    """GET: the caller's webhooks. POST ``{url, events?}``: a new one → ``{id, secret}``."""
    uid = _uid(call)
    if call.request.method == "GET" or not call.body:
        with state.db.read() as conn:
            return webhook_service.list_webhooks(conn, uid)
    req = inputs.validate_body(inputs.CreateWebhookRequest, call.body)
    types = webhook_service.check_event_types(req.events)
    webhook_service.check_url(req.url, state.settings)
    result: dict[str, Any] = state.db_write(
        lambda conn: webhook_service.create_webhook(
            conn, uid, req.url, types, state.settings, call.now, actor=_actor(call)
        )
    )
    return result


def delete_webhook(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.WebhookIdRequest, call.body)
    actor = _actor(call)
    state.db_write(
        lambda conn: webhook_service.delete_webhook(conn, _uid(call), req.id, call.now, actor=actor)
    )
    return {}


def ping_webhook(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.WebhookIdRequest, call.body)
    actor = _actor(call)
    state.db_write(
        lambda conn: webhook_service.ping_webhook(conn, _uid(call), req.id, call.now, actor=actor)
    )
    return {}


def webhook_deliveries(state: AppState, call: Call) -> dict[str, Any]:
    body = dict(call.body)
    if "id" not in body:
        body["id"] = _int_query(call, "id", None, 2**63 - 1)
    req = inputs.validate_body(inputs.WebhookIdRequest, body)
    limit = _int_query(call, "limit", 50, MAX_PAGE) or 1
    with call.read() as conn:
        return webhook_service.deliveries(conn, _uid(call), req.id, limit)


def set_alerts(state: AppState, call: Call) -> dict[str, Any]:
    req = inputs.validate_body(inputs.SetAlertsRequest, call.body)
    actor = _actor(call)
    state.db_write(
        lambda conn: webhook_service.set_alerts(
            conn, _uid(call), req.low_balance_seconds, actor=actor
        )
    )
    return {}


def alerts(state: AppState, call: Call) -> dict[str, Any]:
    with call.read() as conn:
        return webhook_service.alerts(conn, _uid(call))

"""Self-service: the user's API keys (create with scopes, an expiry and a daily spend limit,
shown once; list with today's spend; revoke) and webhooks (create with
an event filter, list, delivery log, test ping, delete). Revoking and deleting ask first."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

from sqlalchemy import Connection
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from openclore.domain.errors import CloreError, InvalidInput
from openclore.engine.outbox import EVENT_TYPES
from openclore.market import accounts, api_keys, inputs, read_models
from openclore.market import webhooks as webhook_service
from openclore.web.common import actor
from openclore.web.context import Console
from openclore.web.messages import N_
from openclore.web.routing import POST, Route

KEYS = "/account/keys"
HOOKS = "/account/webhooks"
DELIVERIES = 50  # the newest deliveries a webhook's page shows
EVENTS = 100  # the newest events the events page shows


async def keys_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    now = c.state.now()
    keys = await c.db(lambda conn: api_keys.list_keys(conn, session.user_id, now))
    return c.render(
        request,
        "keys.html",
        session,
        keys=keys,
        scopes=api_keys.SCOPES,
    )


def _key_request(fields: dict[str, str]) -> dict[str, Any]:
    """The create form as create_api_key's body: without ``scoped`` (the one-button form of
    old) a key with every scope; days → ``expires_in``; one limit field per currency."""
    body: dict[str, Any] = {"scopes": list(api_keys.SCOPES)}
    if fields.get("scoped"):
        body["scopes"] = [s for s in api_keys.SCOPES if fields.get(f"scope_{s}")]
    if fields.get("name", "").strip():
        body["name"] = fields["name"].strip()
    days = fields.get("expires_days", "").strip()
    if days:
        if not days.isdigit() or not 0 < int(days) <= 3650:
            raise InvalidInput("expires_days: whole days, 1 to 3650")
        body["expires_in"] = int(days) * 86400
    limit = {
        name[len("limit_") :]: value.strip()
        for name, value in fields.items()
        if name.startswith("limit_") and value.strip()
    }
    if limit:
        body["spend_limit"] = limit
    return body


async def key_create(c: Console, request: Request) -> Response:
    """A new key with the scopes, expiry and daily limit asked for, shown on this page only
    (it is kept as a hash)."""
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    now = c.state.now()
    settings = c.state.settings
    try:
        req = inputs.validate_body(inputs.CreateApiKeyRequest, _key_request(fields))
        scopes = api_keys.parse_scopes(req.scopes)
        limit = api_keys.parse_spend_limit(req.spend_limit, settings.currencies)
        made = await c.db(
            lambda conn: api_keys.create_key(
                conn,
                session.user_id,
                name=req.name,
                scopes=scopes,
                expires_at=None if req.expires_in is None else now + req.expires_in,
                spend_limit=limit,
                now=now,
                creator=None,
                actor=actor(request, session),
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, KEYS, exc)
    return c.render(request, "secret.html", session, kind="key", secret=made[1], back=KEYS)


async def key_revoke_confirm(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    prefix = request.path_params["prefix"]
    return c.render(
        request,
        "confirm.html",
        session,
        title=N_("Revoke this API key?"),
        text=N_("Programs using it stop working at once; console sessions started with it end."),
        subject=prefix + "…",
        action=f"{KEYS}/{prefix}/revoke",
        button=N_("Revoke"),
        back=KEYS,
        fields=[],
    )


async def key_revoke(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    await c.form(request, session)
    prefix = request.path_params["prefix"]
    now = c.state.now()
    try:
        await c.db(
            lambda conn: accounts.revoke_own_token(conn, actor(request, session), prefix, now),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, KEYS, exc)
    return c.redirect(request, KEYS, c.t(request, "API key revoked."))


async def hooks_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)

    def run(conn: Connection) -> Any:
        found = webhook_service.list_webhooks(conn, session.user_id)["webhooks"]
        return found, webhook_service.alerts(conn, session.user_id)["low_balance_seconds"]

    hooks, low = await c.db(run)
    hours = "" if low is None else f"{low / 3600:g}"
    return c.render(
        request, "webhooks.html", session, hooks=hooks, event_types=EVENT_TYPES, hours=hours
    )


async def alerts_save(c: Console, request: Request) -> Response:
    """The low-balance alert (``balance.low`` when a wallet's runway drops under it): the API's
    ``set_alerts``; empty switches it off."""
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    raw = fields.get("hours", "").strip()
    try:
        seconds: Any = None
        if raw:
            try:
                seconds = int(Decimal(raw) * 3600)
            except (InvalidOperation, ValueError):
                seconds = raw  # refused by the validation, as the API refuses it
        req = inputs.validate_body(inputs.SetAlertsRequest, {"low_balance_seconds": seconds})
        await c.db(
            lambda conn: webhook_service.set_alerts(
                conn, session.user_id, req.low_balance_seconds, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, HOOKS, exc)
    return c.redirect(request, HOOKS, c.t(request, "Alert saved."))


async def hook_create(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    await c.form(request, session)  # the CSRF check (the event types are a list)
    form = await request.form()
    url = str(form.get("url", "")).strip()
    chosen = [str(v) for v in form.getlist("events") if isinstance(v, str)]
    now = c.state.now()
    settings = c.settings
    try:
        req = inputs.validate_body(
            inputs.CreateWebhookRequest, {"url": url, "events": chosen or None}
        )
        types = webhook_service.check_event_types(req.events)
        await run_in_threadpool(webhook_service.check_url, req.url, settings)  # resolves
        created = await c.db(
            lambda conn: webhook_service.create_webhook(
                conn, session.user_id, req.url, types, settings, now, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, HOOKS, exc)
    return c.render(
        request,
        "secret.html",
        session,
        kind="webhook",
        secret=created["secret"],
        back=f"{HOOKS}/{created['id']}",
    )


async def hook_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    hook_id = int(request.path_params["hook_id"])

    def run(conn: Connection) -> Any:
        log = webhook_service.deliveries(conn, session.user_id, hook_id, DELIVERIES)
        listed = webhook_service.list_webhooks(conn, session.user_id)["webhooks"]
        return next(h for h in listed if h["id"] == hook_id), log["deliveries"]

    try:
        hook, log = await c.db(run)
    except CloreError as exc:
        return c.failed(request, HOOKS, exc)
    return c.render(request, "webhook.html", session, hook=hook, deliveries=log)


async def hook_ping(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    await c.form(request, session)
    hook_id = int(request.path_params["hook_id"])
    now = c.state.now()
    back = f"{HOOKS}/{hook_id}"
    try:
        await c.db(
            lambda conn: webhook_service.ping_webhook(
                conn, session.user_id, hook_id, now, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, HOOKS, exc)
    return c.redirect(request, back, c.t(request, "Test event sent; see the delivery log."))


async def hook_delete_confirm(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    hook_id = int(request.path_params["hook_id"])
    return c.render(
        request,
        "confirm.html",
        session,
        title=N_("Delete this webhook?"),
        text=N_("No more events are sent to it; deliveries still waiting are dropped."),
        subject=f"#{hook_id}",
        action=f"{HOOKS}/{hook_id}/delete",
        button=N_("Delete"),
        back=f"{HOOKS}/{hook_id}",
        fields=[],
    )


async def hook_delete(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    await c.form(request, session)
    hook_id = int(request.path_params["hook_id"])
    now = c.state.now()
    try:
        await c.db(
            lambda conn: webhook_service.delete_webhook(
                conn, session.user_id, hook_id, now, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, HOOKS, exc)
    return c.redirect(request, HOOKS, c.t(request, "Webhook deleted."))


async def events_page(c: Console, request: Request) -> Response:
    """The user's newest events: what ``openclore watch`` and ``/v1/events`` show."""
    session = await c.signed_in(request)
    found = await c.db(lambda conn: read_models.recent_events(conn, session.user_id, EVENTS))
    return c.render(request, "events.html", session, events=found, limit=EVENTS)


ROUTES = [
    Route("/account/events", events_page),
    Route(KEYS, keys_page),
    Route(KEYS, key_create, POST),
    Route(KEYS + "/{prefix:str}/revoke", key_revoke_confirm),
    Route(KEYS + "/{prefix:str}/revoke", key_revoke, POST),
    Route(HOOKS, hooks_page),
    Route(HOOKS, hook_create, POST),
    Route("/account/alerts", alerts_save, POST),
    Route(HOOKS + "/{hook_id:int}", hook_page),
    Route(HOOKS + "/{hook_id:int}/ping", hook_ping, POST),
    Route(HOOKS + "/{hook_id:int}/delete", hook_delete_confirm),
    Route(HOOKS + "/{hook_id:int}/delete", hook_delete, POST),
]

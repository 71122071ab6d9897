"""Renters' own things (SPEC §8) in the console: the account's SSH keys (add, list, delete),
templates (yours and the public ones, searchable; create; delete) and standing orders (place,
list with their fills, cancel). Deleting and cancelling ask first. The server page's rent form
starts from a template (:mod:`.renter`)."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response

from openclore.domain.errors import CloreError, InvalidInput
from openclore.market import account_keys, inputs
from openclore.market import standing as standing_service
from openclore.market import templates as template_service
from openclore.web.common import actor, kv_lines, price_input
from openclore.web.context import Console
from openclore.web.messages import N_
from openclore.web.routing import POST, Route

SSH_KEYS = "/account/ssh-keys"
TEMPLATES = "/account/templates"
STANDING = "/account/standing"
# the marketplace filters the standing-order form offers
STANDING_QUERY = ("gpu", "min_gpus", "min_vram", "country", "min_reliability")


async def _write_action(
    c: Console, request: Request, back: str, param: str, use_case: Any, done: str
) -> Response:
    """A confirmed form that changes one of the user's things: the CSRF-checked form, the
    use case ``use_case(conn, user_id, id, now, actor=…)`` in a write, then back to ``back``
    with ``done`` (or the refusal in the registry's words)."""
    session = await c.signed_in(request)
    await c.form(request, session)
    item = int(request.path_params[param])
    now = c.state.now()
    try:
        await c.db(
            lambda conn: use_case(conn, session.user_id, item, now, actor=actor(request, session)),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, back, exc)
    return c.redirect(request, back, c.t(request, done))


async def ssh_keys_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    keys = await c.db(lambda conn: account_keys.list_keys(conn, session.user_id))
    return c.render(request, "ssh_keys.html", session, keys=keys)


async def ssh_key_add(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    now = c.state.now()
    text = fields.get("public_key", "").strip()
    name = fields.get("name", "").strip() or (text.split()[2] if len(text.split()) > 2 else "")
    try:
        req = inputs.validate_body(
            inputs.AddSshKeyRequest, {"name": name[:64] or "key", "public_key": text}
        )
        await c.db(
            lambda conn: account_keys.add_key(
                conn, session.user_id, req.name, req.public_key, now, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, SSH_KEYS, exc)
    return c.redirect(request, SSH_KEYS, c.t(request, "SSH key added."))


async def ssh_key_delete_confirm(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    key_id = int(request.path_params["key_id"])
    keys = await c.db(lambda conn: account_keys.list_keys(conn, session.user_id))
    found = next((k for k in keys if k["id"] == key_id), None)
    if found is None:
        return c.redirect(request, SSH_KEYS, c.t(request, "No such SSH key."), ok=False)
    return c.render(
        request,
        "confirm.html",
        session,
        title=N_("Delete this SSH key?"),
        text=N_("New orders will not get it; orders created before keep it."),
        subject=f"{found['name']} ({found['fingerprint']})",
        action=f"{SSH_KEYS}/{key_id}/delete",
        button=N_("Delete"),
        back=SSH_KEYS,
        fields=[],
    )


async def ssh_key_delete(c: Console, request: Request) -> Response:
    return await _write_action(
        c, request, SSH_KEYS, "key_id", account_keys.delete_key, "SSH key deleted."
    )


async def templates_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    q = request.query_params.get("q", "").strip()[:64]
    found = await c.db(
        lambda conn: template_service.list_templates(conn, session.user_id, q or None)
    )
    return c.render(request, "templates.html", session, templates=found, q=q)


def template_body(fields: dict[str, str]) -> dict[str, Any]:
    """The create form as create_template's body (ports ``22:tcp`` and env ``NAME=value`` one
    per line, as the rent form takes them)."""
    body: dict[str, Any] = {
        "name": fields.get("name", "").strip(),
        "image": fields.get("image", "").strip(),
        "ports": kv_lines(fields.get("ports", ""), ":") or None,
        "env": kv_lines(fields.get("env", ""), "=") or None,
        "public": bool(fields.get("public")),
    }
    for key in ("command", "jupyter_token", "readme"):
        if fields.get(key, "").strip():
            body[key] = fields[key].strip()
    disk = fields.get("disk_gb", "").strip()
    if disk:
        body["disk_gb"] = int(disk) if disk.isdigit() and len(disk) < 9 else disk
    return body


async def template_create(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    now = c.state.now()
    try:
        req = inputs.validate_body(inputs.CreateTemplateRequest, template_body(fields))
        await c.db(
            lambda conn: template_service.create_template(
                conn, session.user_id, req, now, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, TEMPLATES, exc)
    return c.redirect(request, TEMPLATES, c.t(request, "Template created."))


async def template_delete_confirm(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    template_id = int(request.path_params["template_id"])
    found = await c.db(lambda conn: template_service.list_templates(conn, session.user_id))
    mine = next((t for t in found if t["id"] == template_id and t["mine"]), None)
    if mine is None:
        return c.redirect(request, TEMPLATES, c.t(request, "No such template."), ok=False)
    return c.render(
        request,
        "confirm.html",
        session,
        title=N_("Delete this template?"),
        text=N_("Orders made from it keep their settings."),
        subject=f"{mine['name']} ({mine['image']})",
        action=f"{TEMPLATES}/{template_id}/delete",
        button=N_("Delete"),
        back=TEMPLATES,
        fields=[],
    )


async def template_delete(c: Console, request: Request) -> Response:
    return await _write_action(
        c, request, TEMPLATES, "template_id", template_service.delete_template, "Template deleted."
    )


async def standing_page(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    now = c.state.now()

    def run(conn: Any) -> Any:
        placed = standing_service.list_standing_orders(conn, session.user_id, now)
        usable = template_service.list_templates(conn, session.user_id)
        return placed, usable

    placed, usable = await c.db(run)
    return c.render(
        request,
        "standing.html",
        session,
        placed=placed,
        templates=usable,
        filters=STANDING_QUERY,
    )


def standing_body(fields: dict[str, str]) -> dict[str, Any]:
    """The place form as create_standing_order's body: the filters as the marketplace takes
    them, a template or an image with ports, what is not a number left for the validation."""
    body: dict[str, Any] = {
        "query": {k: fields[k].strip() for k in STANDING_QUERY if fields.get(k, "").strip()},
        "max_price_per_day": fields.get("max_price_per_day", "").strip(),
        "currency": fields.get("currency", "").strip(),
        "type": "spot" if fields.get("type") == "spot" else "on-demand",
    }
    for name in ("count", "gpu_count", "template_id"):
        raw = fields.get(name, "").strip()
        if raw:
            body[name] = int(raw) if raw.isdigit() and len(raw) < 10 else raw
    hours = fields.get("expires_hours", "").strip()
    if hours:
        body["expires_in_hours"] = hours
    if "template_id" not in body:
        body["image"] = fields.get("image", "").strip()
        body["ports"] = kv_lines(fields.get("ports", ""), ":") or None
    if fields.get("env", "").strip():
        body["env"] = kv_lines(fields["env"], "=")
    return body


async def standing_place(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    fields = await c.form(request, session)
    now = c.state.now()
    settings = c.settings
    body = standing_body(fields)
    hours = body.pop("expires_in_hours", None)
    try:
        body["max_price_per_day"] = price_input(body["max_price_per_day"])
        if hours is not None:
            if not hours.isdigit() or not 0 < int(hours) <= 24 * 365:
                raise InvalidInput("expires_hours: whole hours, 1 to 8760")
            body["expires_at"] = now + int(hours) * 3600
        req = inputs.validate_body(inputs.CreateStandingOrderRequest, body)
        placed = await c.db(
            lambda conn: standing_service.create_standing_order(
                conn, session.user_id, req, body, settings, now, actor=actor(request, session)
            ),
            write=True,
        )
    except CloreError as exc:
        return c.failed(request, STANDING, exc)
    if placed["order_ids"]:
        message = c.t(request, "Standing order placed; it rented a server at once.")
    else:
        message = c.t(request, "Standing order placed; it rents as soon as a server matches.")
    return c.redirect(request, STANDING, message)


async def standing_cancel_confirm(c: Console, request: Request) -> Response:
    session = await c.signed_in(request)
    standing_id = int(request.path_params["standing_id"])
    return c.render(
        request,
        "confirm.html",
        session,
        title=N_("Cancel this standing order?"),
        text=N_("It rents nothing more; the orders it made run on."),
        subject=f"#{standing_id}",
        action=f"{STANDING}/{standing_id}/cancel",
        button=N_("Cancel standing order"),
        back=STANDING,
        fields=[],
    )


async def standing_cancel(c: Console, request: Request) -> Response:
    return await _write_action(
        c,
        request,
        STANDING,
        "standing_id",
        standing_service.cancel_standing_order,
        "Standing order cancelled.",
    )


ROUTES = [
    Route(SSH_KEYS, ssh_keys_page),
    Route(SSH_KEYS, ssh_key_add, POST),
    Route(SSH_KEYS + "/{key_id:int}/delete", ssh_key_delete_confirm),
    Route(SSH_KEYS + "/{key_id:int}/delete", ssh_key_delete, POST),
    Route(TEMPLATES, templates_page),
    Route(TEMPLATES, template_create, POST),
    Route(TEMPLATES + "/{template_id:int}/delete", template_delete_confirm),
    Route(TEMPLATES + "/{template_id:int}/delete", template_delete, POST),
    Route(STANDING, standing_page),
    Route(STANDING, standing_place, POST),
    Route(STANDING + "/{standing_id:int}/cancel", standing_cancel_confirm),
    Route(STANDING + "/{standing_id:int}/cancel", standing_cancel, POST),
]

"""Templates (SPEC §8, renters' own things): an image and its settings that ``create_order``
starts from (``template_id``). A template is its owner's, or public: listed to everyone and
usable by anyone; only its owner deletes it. The fields an order gives override the template's.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, delete, func, insert, or_, select

from openclore.domain.errors import MarketError
from openclore.engine.outbox import TEMPLATE_CREATED, TEMPLATE_DELETED, emit
from openclore.market.accounts import lock_user
from openclore.market.audit import SYSTEM, Actor, record_by
from openclore.market.inputs import CreateOrderRequest, CreateTemplateRequest
from openclore.store.db import inserted_id
from openclore.store.schema import templates

MAX_TEMPLATES = 100
MAX_QUERY = 64
TEMPLATE_CREATE = "template.create"
TEMPLATE_DELETE = "template.delete"
# the order fields a template gives (an order's own value wins)
TEMPLATE_FIELDS = ("image", "command", "env", "ports", "jupyter_token", "disk_gb")


def template_view(row: Any, user_id: int | None = None) -> dict[str, Any]:
    return {
        "id": row.id,
        "name": row.name,
        "image": row.image,
        "command": row.command,
        "env": dict(row.env) if row.env else None,
        "ports": dict(row.ports) if row.ports else None,
        "jupyter_token": row.jupyter_token,
        "disk_gb": row.disk_gb,
        "public": bool(row.public),
        "readme": row.readme,
        "owner": row.user_id,
        "mine": row.user_id == user_id,
        "created_at": row.created_at,
    }


def create_template(
    conn: Connection, user_id: int, req: CreateTemplateRequest, now: int, *, actor: Actor = SYSTEM
) -> dict[str, Any]:
    """A new template of ``user_id``'s; returns its view."""
    lock_user(conn, user_id)
    count = conn.execute(
        select(func.count()).select_from(templates).where(templates.c.user_id == user_id)
    ).scalar_one()
    if count >= MAX_TEMPLATES:
        raise MarketError("template_limit_reached", limit=MAX_TEMPLATES)
    template_id = inserted_id(
        conn.execute(
            insert(templates).values(
                user_id=user_id,
                name=req.name,
                image=req.image,
                command=req.command or None,
                env=req.env or None,
                ports=req.ports or None,
                jupyter_token=req.jupyter_token or None,
                disk_gb=req.disk_gb,
                public=req.public,
                readme=req.readme or None,
                created_at=now,
            )
        )
    )
    emit(
        conn,
        user_id,
        TEMPLATE_CREATED,
        now,
        template_id=template_id,
        name=req.name,
        public=req.public,
    )
    record_by(conn, actor, TEMPLATE_CREATE, f"template:{template_id}", {"public": req.public})
    row = conn.execute(select(templates).where(templates.c.id == template_id)).one()
    return template_view(row, user_id)


def list_templates(conn: Connection, user_id: int, q: str | None = None) -> list[dict[str, Any]]:
    """The user's templates and the public ones (``q``: a case-insensitive part of the name)."""
    query = select(templates).where(
        or_(templates.c.user_id == user_id, templates.c.public.is_(True))
    )
    if q:
        query = query.where(
            func.lower(templates.c.name).contains(q[:MAX_QUERY].lower(), autoescape=True)
        )
    rows = conn.execute(query.order_by(templates.c.id))
    return [template_view(r, user_id) for r in rows]


def usable_template(conn: Connection, user_id: int, template_id: int) -> Any:
    """A template ``user_id`` may start an order from (theirs or public)."""
    row = conn.execute(select(templates).where(templates.c.id == template_id)).first()
    if row is None or (row.user_id != user_id and not row.public):
        raise MarketError("template_dont_exist", template_id=template_id)
    return row


def delete_template(
    conn: Connection, user_id: int, template_id: int, now: int, *, actor: Actor = SYSTEM
) -> None:
    """Delete one of the user's templates (orders made from it keep their settings)."""
    row = usable_template(conn, user_id, template_id)
    if row.user_id != user_id:
        raise MarketError("not_your_template", template_id=template_id)
    conn.execute(delete(templates).where(templates.c.id == template_id))
    emit(conn, user_id, TEMPLATE_DELETED, now, template_id=template_id)
    record_by(conn, actor, TEMPLATE_DELETE, f"template:{template_id}")


def apply_template(conn: Connection, user_id: int, req: CreateOrderRequest) -> CreateOrderRequest:
    """``req`` with the template's values where the order gave none (no template: ``req``)."""
    if req.template_id is None:
        return req
    row = usable_template(conn, user_id, req.template_id)
    update: dict[str, Any] = {}
    for field in TEMPLATE_FIELDS:
        mine = getattr(req, field)
        theirs = getattr(row, field)
        if mine in (None, "") and theirs not in (None, "", {}):
            update[field] = dict(theirs) if isinstance(theirs, dict) else theirs
    return req.model_copy(update=update) if update else req

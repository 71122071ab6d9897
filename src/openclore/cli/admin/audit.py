"""``openclore admin audit``: the audit log."""

from __future__ import annotations

import time
from typing import Annotated

import typer
from rich.table import Table

from openclore.cli.admin.common import console
from openclore.cli.database import DatabaseOpt, with_db
from openclore.cli.output import fail


def _since(value: str) -> int:
    """``--since``: unix seconds, an ISO date/time (UTC unless it says), or an age (30m, 2h, 7d)."""
    from datetime import UTC, datetime

    text = value.strip()
    if text.isdigit():
        return int(text)
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    if len(text) > 1 and text[-1] in units and text[:-1].isdigit():
        return int(time.time()) - int(text[:-1]) * units[text[-1]]
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since: not a time: {value!r} (unix seconds, 2026-11-27T05:00, or 30m/2h/7d)")
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return int(moment.timestamp())


def admin_audit(
    user: Annotated[
        str | None, typer.Option("--user", help="Only entries about this user (id or name)")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="From this time: unix seconds, ISO time, or 30m/2h/7d ago"),
    ] = None,
    limit: Annotated[int, typer.Option("--limit", min=1, help="At most this many (newest)")] = 100,
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line")] = False,
    database_url: DatabaseOpt = None,
) -> None:
    """Show the audit log: admin commands, token changes, settings and price changes, sign-ins."""
    import json
    from datetime import UTC, datetime

    from openclore.market.accounts import UnknownUser, find_user
    from openclore.market.audit import entries

    _, db = with_db(database_url)
    start = _since(since) if since else None
    try:
        with db.read() as conn:
            user_id = find_user(conn, user) if user else None
            found = entries(conn, user_id=user_id, since=start, limit=limit)
    except UnknownUser as exc:
        fail(str(exc))
    if as_json:
        for e in found:
            print(json.dumps(e.__dict__, ensure_ascii=False))
        return
    table = Table(title=f"audit log ({len(found)} entries)")
    for column in ("when (UTC)", "actor", "action", "target", "source", "detail"):
        table.add_column(column)
    for e in found:
        when = datetime.fromtimestamp(e.at, UTC).strftime("%Y-%m-%d %H:%M:%S")
        detail = json.dumps(e.detail, ensure_ascii=False, sort_keys=True)
        table.add_row(when, e.actor, e.action, e.target, e.source, detail)
    console.print(table)

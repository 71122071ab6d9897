"""Market events for host agents: "the desired containers of server N may have changed".

:func:`notify_server` is called inside the transaction that made the change; subscribers hear of
it only once that transaction commits (PostgreSQL delivers ``pg_notify`` at commit to every
process listening, so an agent connected to any API replica hears of an order created on another).
"""

from __future__ import annotations

from sqlalchemy import Connection, text

CHANNEL = "openclore_servers"


def notify_server(conn: Connection, server_id: int) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_notify(:channel, :payload)"), {"channel": CHANNEL, "payload": str(server_id)})
    conn.info.setdefault("openclore_notify", set()).add(server_id)

"""An order's container output, fetched from the host's agent on request (``order_logs``).

The API process that takes the request may not be the one holding the agent's connection (more
workers, more replicas): the question goes into ``agent_requests`` and wakes the server's channel
wherever it is (the same notification as a changed desired set); that channel asks the agent and
writes the answer into the row, which the API process reads.
"""

from __future__ import annotations

import re
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from openclore.domain.errors import InvalidInput, MarketError
from openclore.engine.notify import notify_server
from openclore.store.db import inserted_id
from openclore.store.schema import agent_requests, orders, servers

MAX_TAIL = 1000
DEFAULT_TAIL = 200
MAX_LINE = 2000  # characters kept of one line
MAX_BYTES = 256 * 1024  # of one answer
ASK_SECONDS = 30  # an agent connected later than this no longer answers an old question
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def ask_logs(
    conn: Connection, user_id: int, order_id: int, tail: int, now: int, market_now: int
) -> int | list[str]:
    """Record the question for the agent of the order's server (the owner's orders only).
    Returns the request id to wait on, or, for a demo server (no agent), its simulated output."""
    if not 1 <= tail <= MAX_TAIL:
        raise InvalidInput(f"tail: from 1 to {MAX_TAIL} lines")
    row = conn.execute(
        select(
            orders.c.server_id,
            orders.c.expired,
            orders.c.image,
            orders.c.ports,
            orders.c.ct,
            servers.c.online,
            servers.c.simulated,
        )
        .join(servers, servers.c.id == orders.c.server_id)
        .where(orders.c.id == order_id, orders.c.user_id == user_id)
    ).first()
    if row is None:
        raise MarketError("order_dont_exist")
    if row.expired:
        raise MarketError("order_not_active")
    if row.simulated:
        return simulated_output(order_id, row.image, row.ports or {}, row.ct, market_now, tail)
    if not row.online:
        raise MarketError("server-offline")
    # old questions are dropped here, lazily
    conn.execute(delete(agent_requests).where(agent_requests.c.created_at < now - 3600))
    request_id = inserted_id(
        conn.execute(
            insert(agent_requests).values(
                server_id=row.server_id, order_id=order_id, kind="logs", tail=tail, created_at=now
            )
        )
    )
    notify_server(conn, row.server_id)
    return request_id


def answer_of(conn: Connection, request_id: int) -> list[str] | None:
    row = conn.execute(
        select(agent_requests.c.answer).where(
            agent_requests.c.id == request_id, agent_requests.c.answered_at.is_not(None)
        )
    ).first()
    if row is None:
        return None
    lines = (row.answer or {}).get("lines")
    return [str(line) for line in lines] if isinstance(lines, list) else []


def open_questions(conn: Connection, server_id: int, now: int, after: int) -> list[dict[str, Any]]:
    """Unanswered questions for this server (newer than ``after``, the last id already sent)."""
    rows = conn.execute(
        select(agent_requests)
        .where(
            agent_requests.c.server_id == server_id,
            agent_requests.c.answered_at.is_(None),
            agent_requests.c.created_at >= now - ASK_SECONDS,
            agent_requests.c.id > after,
        )
        .order_by(agent_requests.c.id)
        .limit(16)
    ).all()
    return [{"type": "logs", "req": r.id, "order_id": r.order_id, "tail": r.tail} for r in rows]


def record_answer(conn: Connection, server_id: int, message: dict[str, Any], now: int) -> None:
    """An agent's answer, for a question put to its own server only, cleaned and bounded."""
    request_id = message.get("req")
    lines = message.get("lines")
    if not isinstance(request_id, int) or not isinstance(lines, list):
        return
    kept: list[str] = []
    size = 0
    for line in reversed(lines[-MAX_TAIL:]):  # the newest lines are the ones worth keeping
        text = _CONTROL.sub(" ", str(line))[:MAX_LINE]
        size += len(text.encode()) + 1
        if size > MAX_BYTES:
            break
        kept.append(text)
    kept.reverse()
    conn.execute(
        update(agent_requests)
        .where(
            agent_requests.c.id == request_id,
            agent_requests.c.server_id == server_id,
            agent_requests.c.answered_at.is_(None),
        )
        .values(answered_at=now, answer={"lines": kept})
    )


def simulated_output(
    order_id: int, image: str, ports: dict[str, str], created: int, now: int, tail: int
) -> list[str]:
    """What a demo server's container would have printed: its start, its ports, a line per
    minute it has run (market time)."""
    lines = [f"[simulated] order {order_id}: container started from {image}"]
    for port, kind in sorted(ports.items()):
        if port == "22":
            lines.append("Server listening on 0.0.0.0 port 22.")
        elif kind == "http":
            lines.append(f"[simulated] http server listening on 0.0.0.0:{port}")
        else:
            lines.append(f"[simulated] listening on 0.0.0.0:{port}")
    minutes = max(0, now - created) // 60
    for minute in range(max(0, minutes - tail), minutes):
        lines.append(f"[simulated] up {minute + 1} min, load 0.{(minute * 37) % 100:02d}")
    return lines[-tail:]

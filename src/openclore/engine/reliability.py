"""Reliability from the agents' heartbeats: online stretches recorded, the 30-day fraction
recomputed by the tick (the formula and its prior: :mod:`openclore.domain.reliability`).

A stretch opens when a server comes online (``servers.online_since``), stays open while heartbeats
arrive within the agent timeout, and closes at the last heartbeat when the engine marks the server
offline (or the server is removed): closed stretches are rows of ``online_intervals``. Simulated
(demo) servers have no agent and keep the reliability their world gives them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from openclore.domain.reliability import WINDOW_SECONDS, overlap, reliability
from openclore.store.db import get_meta, set_meta
from openclore.store.schema import online_intervals, servers

RELIABILITY_AT = "reliability_at"


def came_online(row: Mapping[str, Any], now: int) -> dict[str, Any]:
    """The values a server row takes when its agent comes online: a stretch opens."""
    first = row["first_online_at"]
    return {"online_since": now, "first_online_at": now if first is None else first}


def close_stretch(conn: Connection, row: Mapping[str, Any], now: int) -> None:
    """Record the server's open stretch (``online_since`` .. its last heartbeat) as closed."""
    start = row["online_since"]
    if start is None:
        return
    end = row["last_seen"] if row["last_seen"] is not None else now
    end = max(int(start), min(int(end), now))
    conn.execute(
        insert(online_intervals).values(server_id=row["id"], started_at=start, ended_at=end)
    )
    conn.execute(update(servers).where(servers.c.id == row["id"]).values(online_since=None))


def compute(conn: Connection, now: int) -> dict[int, float]:
    """``{server id: reliability}`` for every live server that has an agent."""
    window_start = now - WINDOW_SECONDS
    rows = conn.execute(
        select(
            servers.c.id,
            servers.c.online,
            servers.c.online_since,
            servers.c.first_online_at,
        ).where(servers.c.removed_at.is_(None), servers.c.simulated.is_(False))
    ).all()
    online: dict[int, int] = {r.id: 0 for r in rows}
    for i in conn.execute(
        select(
            online_intervals.c.server_id, online_intervals.c.started_at, online_intervals.c.ended_at
        ).where(online_intervals.c.ended_at > window_start)
    ):
        if i.server_id in online:
            online[i.server_id] += overlap(i.started_at, i.ended_at, window_start, now)
    out: dict[int, float] = {}
    for r in rows:
        seconds = online[r.id]
        if r.online and r.online_since is not None:
            seconds += overlap(r.online_since, now, window_start, now)
        first = r.first_online_at
        observed = 0 if first is None else now - max(int(first), window_start)
        out[r.id] = reliability(seconds, observed)
    return out


def reliability_due(conn: Connection, now: int, interval: int) -> bool:
    """Whether the last recomputation is ``interval`` seconds old (or the clock went back)."""
    last = get_meta(conn, RELIABILITY_AT, -1)
    return interval <= 0 or last < 0 or last > now or now - last >= interval


def recompute(conn: Connection, now: int, interval: int = 0) -> int:
    """Store every agent server's reliability as of ``now`` (at most once per ``interval``
    seconds across all processes); prune stretches older than the window. Returns how many
    servers' value changed."""
    if not reliability_due(conn, now, interval):
        return 0
    set_meta(conn, RELIABILITY_AT, now)
    conn.execute(delete(online_intervals).where(online_intervals.c.ended_at < now - WINDOW_SECONDS))
    current = {
        int(r.id): float(r.reliability)
        for r in conn.execute(
            select(servers.c.id, servers.c.reliability).where(
                servers.c.removed_at.is_(None), servers.c.simulated.is_(False)
            )
        )
    }
    changed = 0
    for server_id, value in compute(conn, now).items():
        if current.get(server_id) != value:
            conn.execute(update(servers).where(servers.c.id == server_id).values(reliability=value))
            changed += 1
    return changed

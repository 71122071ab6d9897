"""Figures about the whole market, read at once for monitoring (``/metrics``)."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, case, func, select

from openclore.store.schema import accounts, orders


@dataclass(frozen=True)
class MarketFigures:
    # (state, kind) → count; state: running | waiting | ended, kind: on-demand | spot
    orders: dict[tuple[str, str], int]
    # (currency, account kind) → sum of balances; the kinds of one currency sum to zero
    balances: dict[tuple[str, str], int]


def market_figures(conn: Connection) -> MarketFigures:
    state = case(
        (orders.c.expired.is_(True), "ended"),
        (orders.c.running.is_(True), "running"),
        else_="waiting",
    )
    by_state: dict[tuple[str, str], int] = {}
    for row in conn.execute(
        select(state.label("state"), orders.c.spot, func.count().label("n")).group_by(
            state, orders.c.spot
        )
    ):
        by_state[(str(row.state), "spot" if row.spot else "on-demand")] = int(row.n)
    balances = {
        (str(r.currency), str(r.kind)): int(r.total or 0)
        for r in conn.execute(
            select(
                accounts.c.currency, accounts.c.kind, func.sum(accounts.c.balance).label("total")
            ).group_by(accounts.c.currency, accounts.c.kind)
        )
    }
    return MarketFigures(orders=by_state, balances=balances)

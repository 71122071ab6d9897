"""Exchange rates (USD per coin) and the prices derived from them.

The operator sets rates with the ``OPENCLORE_USD_RATES`` setting and, at run time, with
``openclore admin rates set`` (stored in the database, so every replica sees them at once; a
stored rate overrides the setting for its currency). They are used for:

- marketplace ``price.usd``: what a server's prices are worth in USD;
- spot_marketplace ``market.currency_rates_in_usd``;
- ``autoprice``: a host who sets ``autoprice {"<currency>": "usd"}`` and ``usd_pricing
  {"<currency>": {"on_demand": D, "spot": S}}`` (USD per day) has that currency's prices follow
  the rate: price = USD price / rate (rounded to the nearest unit, at least one unit), computed
  when the host sends the settings and again whenever a rate changes.
"""

from __future__ import annotations

from collections.abc import Mapping
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection, delete, insert, select, update

from openclore.config import Settings
from openclore.domain.money import Coins, to_coins, to_units
from openclore.domain.usd import rate_units, units_for_usd, usd_of
from openclore.engine.billing import lock_server, resolve_server
from openclore.store.schema import server_prices, servers, usd_rates

# marketplace price.usd: per-currency keys for the currencies live Clore names there
_SHORT = {"bitcoin": "btc", "CLORE-Blockchain": "clore"}


def current_rates(conn: Connection, settings: Settings) -> dict[str, int]:
    """``{currency: nano-USD per coin}``: the setting's rates, overridden by stored ones."""
    rates = {name: rate_units(value) for name, value in settings.usd_rates.items()}
    for row in conn.execute(select(usd_rates.c.currency, usd_rates.c.rate)):
        rates[row.currency] = int(row.rate)
    return rates


def stored_rates(conn: Connection) -> dict[str, tuple[int, int]]:
    """``{currency: (rate, updated_at)}`` as set with ``admin rates set``."""
    return {
        r.currency: (int(r.rate), int(r.updated_at))
        for r in conn.execute(select(usd_rates).order_by(usd_rates.c.currency))
    }


def set_rates(
    conn: Connection, rates: Mapping[str, int], settings: Settings, now: int
) -> list[int]:
    """Store rates (nano-USD per coin); servers priced from USD follow. Returns their ids."""
    for currency, rate in rates.items():
        if currency not in settings.currencies:
            raise ValueError(f"unknown currency {currency!r} (currencies: {settings.currencies})")
        updated = conn.execute(
            update(usd_rates)
            .where(usd_rates.c.currency == currency)
            .values(rate=rate, updated_at=now)
        ).rowcount
        if not updated:
            conn.execute(insert(usd_rates).values(currency=currency, rate=rate, updated_at=now))
    repriced = reprice_all(conn, settings, now)
    return repriced


def clear_rate(conn: Connection, currency: str, settings: Settings, now: int) -> bool:
    """Forget a stored rate (the setting's, if any, applies again)."""
    gone = conn.execute(delete(usd_rates).where(usd_rates.c.currency == currency)).rowcount
    if gone:
        reprice_all(conn, settings, now)
    return bool(gone)


def autoprice_targets(
    usd_pricing: Any, autoprice: Any, rates: Mapping[str, int]
) -> dict[str, tuple[int | None, int | None]]:
    """``{currency: (on_demand units, spot units)}`` for the currencies priced from USD that
    have a rate (``None``: that side has no USD price)."""
    out: dict[str, tuple[int | None, int | None]] = {}
    if not isinstance(autoprice, dict) or not isinstance(usd_pricing, dict):
        return out
    for currency, mode in autoprice.items():
        usd = usd_pricing.get(currency)
        if mode != "usd" or currency not in rates or not isinstance(usd, dict):
            continue
        sides: list[int | None] = []
        for kind in ("on_demand", "spot"):
            value = usd.get(kind)
            if value is None or Decimal(str(value)) <= 0:
                sides.append(None)
            else:
                sides.append(units_for_usd(to_units(Decimal(str(value))), rates[currency]))
        out[currency] = (sides[0], sides[1])
    return out


def apply_autoprice(
    conn: Connection, server_id: int, usd_pricing: Any, autoprice: Any, rates: Mapping[str, int]
) -> bool:
    """Write a server's USD-derived prices; True when any price changed. Caller holds the lock."""
    changed = False
    targets = autoprice_targets(usd_pricing, autoprice, rates)
    for currency, (on_demand, spot) in targets.items():
        row = conn.execute(
            select(server_prices).where(
                server_prices.c.server_id == server_id, server_prices.c.currency == currency
            )
        ).first()
        new_od = on_demand if on_demand is not None else (row.on_demand if row else 0)
        new_spot = spot if spot is not None else (row.spot if row else 0)
        if row is None:
            conn.execute(
                insert(server_prices).values(
                    server_id=server_id, currency=currency, on_demand=new_od, spot=new_spot
                )
            )
            changed = True
        elif (row.on_demand, row.spot) != (new_od, new_spot):
            conn.execute(
                update(server_prices)
                .where(server_prices.c.server_id == server_id, server_prices.c.currency == currency)
                .values(on_demand=new_od, spot=new_spot)
            )
            changed = True
    return changed


def reprice_all(conn: Connection, settings: Settings, now: int) -> list[int]:
    """Re-derive the prices of every server priced from USD (after a rate changed)."""
    rates = current_rates(conn, settings)
    ids = [
        int(i)
        for i in conn.execute(
            select(servers.c.id)
            .where(servers.c.removed_at.is_(None), servers.c.autoprice.is_not(None))
            .order_by(servers.c.id)
        ).scalars()
    ]
    repriced = []
    for server_id in ids:
        row = lock_server(conn, server_id)
        if row is None:
            continue
        if apply_autoprice(conn, server_id, row["usd_pricing"], row["autoprice"], rates):
            resolve_server(conn, server_id, now)
            repriced.append(server_id)
    return repriced


def usd_block(
    prices: Mapping[str, tuple[int, int]], rates: Mapping[str, int]
) -> dict[str, Coins] | None:
    """marketplace ``price.usd``: the USD worth of a server's prices in each currency that has a
    rate. ``on_demand_usd`` / ``spot_usd`` (``spot`` too, as live clients read it) are the lowest
    over its currencies; ``on_demand_btc``, ``on_demand_clore``, ``spot_btc``, ``spot_clore`` the
    worth of its bitcoin and CLORE prices. ``None`` when nothing has a rate."""
    sides: dict[str, dict[str, int]] = {"on_demand": {}, "spot": {}}
    for currency, (on_demand, spot) in prices.items():
        rate = rates.get(currency)
        if rate is None:
            continue
        if on_demand > 0:
            sides["on_demand"][currency] = usd_of(on_demand, rate)
        if spot > 0:
            sides["spot"][currency] = usd_of(spot, rate)
    out: dict[str, Coins] = {}
    for side, values in sides.items():
        if not values:
            continue
        out[f"{side}_usd"] = to_coins(min(values.values()))
        if side == "spot":
            out["spot"] = to_coins(min(values.values()))
        for currency, short in _SHORT.items():
            if currency in values:
                out[f"{side}_{short}"] = to_coins(values[currency])
    return out or None


def rates_in_usd(rates: Mapping[str, int], currencies: list[str]) -> dict[str, Coins]:
    """spot_marketplace ``currency_rates_in_usd``: the rate of every currency that has one."""
    return {c: to_coins(rates[c]) for c in currencies if c in rates}

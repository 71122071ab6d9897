"""Vast.ai's offer search over the marketplace listing (docs/vast-compat.md): the query
(``{field: {op: value}}``, ``order``, ``type``, ``limit``), the offers and their USD prices.

One offer per server and GPU count: a server rented whole has one offer (all of its GPUs); a
server with ``partial_gpu_rental`` has one per count from its ``min_gpus`` to all of them. An
offer's id is ``server id × 100 + GPU count`` (:data:`OFFER_STRIDE`), so it names the server and
the slots without any state. Prices are USD per hour: the per-day price in the offer's currency
(the cheapest of the server's currencies that has an exchange rate) × the rate ÷ 24. A server none
of whose currencies has a rate is not offered. Pure functions: no database.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from openclore.domain.errors import InvalidInput
from openclore.domain.money import Coins
from openclore.domain.slots import slot_minimum, slot_price
from openclore.domain.specs import clean_gpu_array
from openclore.domain.usd import NANO, units_for_usd, usd_of

OFFER_STRIDE = 100  # offer id = server id * OFFER_STRIDE + GPU count (a server has at most 64)
DEFAULT_LIMIT = 64  # offers in one answer when the query names no limit (as Vast)
MAX_LIMIT = 1000
OPS = ("eq", "neq", "gt", "gte", "lt", "lte", "in", "notin")
# query keys that are not filters
NOT_FILTERS = {"order", "type", "limit", "allocated_storage", "disable_bundling", "select_cols"}
VAST_PORTS = 5  # openclore publishes at most five ports per order

# ------------------------------------------------------------------------------------- the query


@dataclass
class OfferQuery:
    filters: dict[str, dict[str, Any]] = field(default_factory=dict)
    order: list[tuple[str, bool]] = field(default_factory=list)  # (field, descending)
    bid: bool = False  # type=bid: interruptible prices
    limit: int = DEFAULT_LIMIT
    storage_gb: float = 5.0


def parse_filters(raw: Any, what: str = "query") -> dict[str, dict[str, Any]]:
    """``{field: {op: value}}`` (a bare value means ``eq``), checked; clear errors otherwise."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise InvalidInput(f"{what}: expected an object of {{field: {{op: value}}}}")
    out: dict[str, dict[str, Any]] = {}
    for name, cond in raw.items():
        if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z0-9_]{1,64}", name):
            raise InvalidInput(f"{what}: invalid field name {str(name)[:32]!r}")
        if not isinstance(cond, dict):
            cond = {"eq": cond}
        for op, value in cond.items():
            if op not in OPS:
                raise InvalidInput(
                    f"{what}: unknown operator {str(op)[:16]!r} for {name} "
                    f"(one of {', '.join(OPS)})"
                )
            if op in ("in", "notin") and not isinstance(value, list):
                raise InvalidInput(f"{what}: {name} {op} needs a list")
        out[name] = dict(cond)
    return out


def parse_offer_query(body: Mapping[str, Any]) -> OfferQuery:
    """The body of ``POST /bundles/`` (or the ``q`` of ``PUT /search/asks/``)."""
    q = OfferQuery()
    kind = body.get("type", "on-demand")
    if kind in ("bid", "interruptible"):
        q.bid = True
    elif kind not in (None, "on-demand", "ask", "reserved"):
        raise InvalidInput(f"type: expected on-demand or bid, got {str(kind)[:32]!r}")
    limit = body.get("limit")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int | float | Decimal | str):
            raise InvalidInput("limit: expected a number")
        try:
            q.limit = max(1, min(MAX_LIMIT, int(float(limit))))
        except ValueError:
            raise InvalidInput("limit: expected a number") from None
    storage = body.get("allocated_storage")
    if storage is not None:
        q.storage_gb = number(storage, "allocated_storage")
    order = body.get("order")
    if order is not None:
        if not isinstance(order, list):
            raise InvalidInput("order: expected a list of [field, 'asc'|'desc']")
        for item in order:
            if isinstance(item, str):
                item = [item.strip("-+"), "desc" if item.endswith("-") else "asc"]
            if (
                not isinstance(item, list)
                or not item
                or not isinstance(item[0], str)
                or (len(item) > 1 and item[1] not in ("asc", "desc"))
            ):
                raise InvalidInput("order: expected a list of [field, 'asc'|'desc']")
            q.order.append((item[0], len(item) > 1 and item[1] == "desc"))
    q.filters = parse_filters({k: v for k, v in body.items() if k not in NOT_FILTERS})
    return q


def number(value: Any, what: str) -> float:
    if isinstance(value, bool):
        raise InvalidInput(f"{what}: expected a number")
    try:
        out = float(value)
    except (TypeError, ValueError):
        raise InvalidInput(f"{what}: expected a number, got {str(value)[:32]!r}") from None
    if not math.isfinite(out):
        raise InvalidInput(f"{what}: expected a finite number")
    return out


def _coerce(value: Any, like: Any) -> Any:
    """A query value (the CLI sends numbers and booleans as text) as the type of ``like``."""
    if isinstance(like, bool):
        if isinstance(value, str):
            return value.strip().lower() in ("true", "1", "yes")
        return bool(value)
    if isinstance(like, int | float):
        if isinstance(value, bool):
            return float(value)
        try:
            return float(value)
        except (TypeError, ValueError):
            return None
    if isinstance(like, str):
        return None if value is None else str(value).strip().lower()
    return value


def _holds(actual: Any, op: str, wanted: Any) -> bool:
    if op in ("in", "notin"):
        found = any(_holds(actual, "eq", w) for w in wanted)
        return found if op == "in" else not found
    if wanted is None or actual is None:
        same = wanted is None and actual is None
        if op == "eq":
            return same
        if op == "neq":
            return not same
        return False
    value = _coerce(wanted, actual)
    mine = actual.lower() if isinstance(actual, str) else actual
    if value is None:
        return op == "neq"
    if op == "eq":
        return bool(mine == value)
    if op == "neq":
        return bool(mine != value)
    try:
        if op == "gt":
            return bool(mine > value)
        if op == "gte":
            return bool(mine >= value)
        if op == "lt":
            return bool(mine < value)
        return bool(mine <= value)
    except TypeError:
        return False


def matches(row: Mapping[str, Any], filters: Mapping[str, Mapping[str, Any]]) -> bool:
    """Whether ``row`` meets every condition on a field it has (others are not ours: ignored)."""
    for name, cond in filters.items():
        if name not in row:
            continue
        for op, wanted in cond.items():
            if not _holds(row[name], op, wanted):
                return False
    return True


def sort_rows(rows: list[dict[str, Any]], order: Sequence[tuple[str, bool]]) -> None:
    """Sort in place by each (field, descending), last key first; missing values go last."""
    for name, descending in reversed(order):
        present = [r for r in rows if isinstance(r.get(name), int | float | str)]
        missing = [r for r in rows if not isinstance(r.get(name), int | float | str)]
        try:
            present.sort(key=lambda r: r[name], reverse=descending)
        except TypeError:
            present.sort(key=lambda r: str(r[name]), reverse=descending)
        rows[:] = present + missing


# ------------------------------------------------------------------------------------- prices


def usd_per_hour(units_per_day: int, rate: int) -> float:
    """A per-day amount of a coin as (float) USD per hour, as Vast shows prices."""
    return usd_of(units_per_day, rate) / NANO / 24


def units_per_day(usd_hour: Decimal, rate: int) -> int:
    """A USD-per-hour bid as a per-day amount of the coin (nearest unit, at least one)."""
    nano_day = int((usd_hour * 24 * NANO).to_integral_value())
    return units_for_usd(max(0, nano_day), rate)


def _units(prices: Mapping[str, Any], currency: str) -> int:
    value = prices.get(currency)
    return value.units if isinstance(value, Coins) else 0


def pick_currency(item: Mapping[str, Any], rates: Mapping[str, int], bid: bool) -> str | None:
    """The currency an offer is priced (and rented) in: the cheapest in USD of those the server
    takes that have a rate (on demand, or the minimum bid for ``bid``); None without one."""
    price = item.get("price") or {}
    side = price.get("spot" if bid else "on_demand") or {}
    best: tuple[int, str] | None = None
    for currency, value in side.items():
        rate = rates.get(currency)
        if rate is None or not isinstance(value, Coins) or value.units <= 0:
            continue
        usd = usd_of(value.units, rate)
        if best is None or usd < best[0]:
            best = (usd, currency)
    return None if best is None else best[1]


# ------------------------------------------------------------------------------------- offers


def short_gpu_name(name: str) -> str:
    """``NVIDIA GeForce RTX 3090`` → ``RTX 3090``, as Vast names GPUs."""
    for prefix in ("NVIDIA ", "GeForce "):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name


def threads_of(specs: Mapping[str, Any]) -> int | None:
    found = re.findall(r"\d+", str(specs.get("cpus") or ""))
    return int(found[-1]) if found else None


def _disk_gb(item: Mapping[str, Any], specs: Mapping[str, Any]) -> float | None:
    storage = item.get("storage") or {}
    if storage.get("disk_gb") is not None:
        return float(storage["disk_gb"])
    found = re.search(r"(\d+(?:\.\d+)?)\s*(TB|GB)", str(specs.get("disk") or ""), re.I)
    if found is None:
        return None
    return float(found.group(1)) * (1000 if found.group(2).upper() == "TB" else 1)


def _cuda(value: Any) -> float | None:
    try:
        return float(str(value).split()[0])
    except (ValueError, IndexError):
        return None


def server_facts(item: Mapping[str, Any]) -> dict[str, Any]:
    """The hardware fields of a listed server, in Vast's names and units (RAM in MB)."""
    specs = item.get("specs") or {}
    gpus = clean_gpu_array(item.get("gpu_array"))
    net = specs.get("net") or {}
    gpuram = specs.get("gpuram")
    pcie = specs.get("pcie_rev")
    return {
        "machine_id": item["id"],
        "host_id": item.get("owner"),
        "gpu_name": short_gpu_name(gpus[0]) if gpus else None,
        "gpu_ram": None if gpuram is None else round(float(gpuram) * 1000),  # MB, an int as Vast
        "cpu_name": specs.get("cpu"),
        "cpu_ram": None if specs.get("ram") is None else round(float(specs["ram"]) * 1000),
        "mobo_name": specs.get("mb"),
        "disk_name": specs.get("disk"),
        "disk_bw": specs.get("disk_speed"),
        "inet_up": net.get("up"),
        "inet_down": net.get("down"),
        "geolocation": net.get("cc"),
        "cuda_max_good": _cuda(item.get("cuda_version") or specs.get("cuda_version")),
        "driver_version": specs.get("nvidia_driver"),
        "pci_gen": pcie,
        "reliability": item.get("reliability"),
        "reliability2": item.get("reliability"),
        "verified": True,
        "verification": "verified",
        "external": False,
    }


def server_offers(
    item: Mapping[str, Any], rates: Mapping[str, int], q: OfferQuery, now: int
) -> list[dict[str, Any]]:
    """The offers of one listed server (one per GPU count it rents out)."""
    currency = pick_currency(item, rates, q.bid)
    if currency is None:
        return []
    rate = rates[currency]
    price = item.get("price") or {}
    on_demand = _units(price.get("on_demand") or {}, currency)
    spot = _units(price.get("spot") or {}, currency)
    if q.bid and spot <= 0:
        return []
    if not q.bid and on_demand <= 0:
        return []
    specs = item.get("specs") or {}
    n = len(clean_gpu_array(item.get("gpu_array")))
    partial = item.get("partial_gpu_rental") or {}
    free = len(partial.get("free_indices") or [])
    counts = [n]
    if partial.get("enabled") and n > 1:
        counts = list(range(max(1, int(partial.get("min_gpus") or 1)), n + 1))
    storage_units = _units((item.get("storage") or {}).get("price_per_gb_day") or {}, currency)
    storage_month = usd_of(storage_units, rate) / NANO * 30
    disk = _disk_gb(item, specs)
    threads = threads_of(specs)
    facts = server_facts(item)
    out = []
    for k in counts:
        share = 1.0 if n == 0 else k / n
        per_day = on_demand if k == n else slot_price(on_demand, k, n)
        least = spot if k == n else slot_minimum(spot, k, n) if spot else 0
        base = usd_per_hour(least if q.bid else per_day, rate)
        free_enough = free >= k if n else not item.get("rented")
        offer = dict(facts)
        offer.update(
            {
                "id": item["id"] * OFFER_STRIDE + k,
                "ask_contract_id": item["id"] * OFFER_STRIDE + k,
                "bundle_id": item["id"] * OFFER_STRIDE + k,
                "num_gpus": k,
                "gpu_frac": share,
                "gpu_total_ram": None if facts["gpu_ram"] is None else facts["gpu_ram"] * k,
                "cpu_cores": threads,
                "cpu_cores_effective": None if threads is None else threads * share,
                "disk_space": None if disk is None else (disk if k == n else disk * share),
                "dph_base": base,
                "dph_total": base,
                "min_bid": usd_per_hour(least, rate) if least else None,
                "storage_cost": storage_month,
                "inet_up_cost": 0.0,
                "inet_down_cost": 0.0,
                "duration": float(item.get("mrl") or 0) * 3600,
                "end_date": now + int(item.get("mrl") or 0) * 3600,
                "direct_port_count": VAST_PORTS,
                "rentable": True if q.bid else free_enough,
                "rented": not free_enough,
                "is_bid": q.bid,
                "score": round((facts["reliability"] or 0) * k, 4),
                # Vast's price breakdown (SkyPilot's catalog fetcher reads totalHour); a disk
                # is billed only while stopped here, so a running hour is the GPU price
                "search": {
                    "gpuCostPerHour": base,
                    "diskHour": 0.0,
                    "totalHour": base,
                    "discountTotalHour": 0.0,
                    "discountedTotalPerHour": base,
                },
                "hosting_type": 0,
                "currency": currency,  # openclore: the coin it is rented in
            }
        )
        out.append(offer)
    return out


def search_offers(
    listing: Sequence[Mapping[str, Any]], rates: Mapping[str, int], q: OfferQuery, now: int
) -> list[dict[str, Any]]:
    """``POST /bundles/``: the offers matching ``q``, in its order, at most its limit."""
    found = [
        offer
        for item in listing
        for offer in server_offers(item, rates, q, now)
        if matches(offer, q.filters)
    ]
    sort_rows(found, q.order or [("score", True)])
    return found[: q.limit]


def split_offer_id(offer_id: int) -> tuple[int, int]:
    """Offer id → (server id, GPU count)."""
    return offer_id // OFFER_STRIDE, offer_id % OFFER_STRIDE

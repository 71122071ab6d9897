"""The marketplace query: filter, sort and page the listing on the server (an extension).

``GET /v1/marketplace`` without parameters sends the cached listing untouched; with any of the
parameters below it answers only the matching servers. The query runs over the listing the
process already holds (one list per market version, see ``api.market_cache``), with each
server's search fields extracted once per version into a :class:`SearchIndex`, so a query over
10,000 servers is a pass over plain tuples, never a database round trip. The web console and the
CLI use the same query.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any

from openclore.domain.errors import InvalidInput
from openclore.domain.money import MAX_UNITS, Coins, to_units
from openclore.domain.specs import GPU_TEXT
from openclore.domain.specs import gpu_count as reported_gpus

PARAMS = (
    "gpu",
    "min_gpus",
    "free_gpus",
    "min_vram",
    "max_price",
    "currency",
    "country",
    "min_reliability",
    "available",
    "sort",
    "limit",
    "offset",
)
SORTS = ("id", "price", "gpus", "vram", "reliability")
MAX_LIMIT = 10_000
_NO_PRICE = MAX_UNITS + 1  # sorts after every real price


@dataclass(frozen=True)
class MarketQuery:
    """A validated marketplace query. Prices are per day, in units of ``currency``."""

    gpu: str | None = None
    min_gpus: int | None = None
    free_gpus: int | None = None  # this many GPUs can be rented now (per GPU or whole)
    min_vram: float | None = None
    max_price: int | None = None
    currency: str | None = None  # only servers that accept it
    price_currency: str = "bitcoin"  # the currency of max_price and of the price sort
    country: str | None = None
    min_reliability: float | None = None
    available: bool = False
    sort: str = "id"
    limit: int | None = None
    offset: int = 0


@dataclass(frozen=True)
class Entry:
    """One server's search fields, extracted once per listing version."""

    gpu_text: str  # lower-case GPU names
    gpus: int
    vram: float
    country: str
    reliability: float
    rented: bool
    free: int  # the most GPUs one renter can take now: the free ones per GPU, else all or none
    on_demand: dict[str, int]  # currency -> units per day
    coins: frozenset[str]


@dataclass(frozen=True)
class SearchIndex:
    entries: list[Entry]


@dataclass(frozen=True)
class SearchResult:
    positions: list[int]  # positions in the listing, in answer order
    total: int  # matches before limit/offset


def gpu_count(server: Mapping[str, Any]) -> int:
    return reported_gpus(server.get("gpu_array"), server.get("specs"))


def free_gpus(server: Mapping[str, Any]) -> int:
    """How many GPUs one renter can take now (SPEC §8): the free ones of a server rented per GPU
    (0 below its ``min_gpus``), else every GPU of a server no order holds, else none."""
    partial = server.get("partial_gpu_rental") or {}
    free = len(partial.get("free_indices") or [])
    if partial.get("enabled"):
        return free if free >= int(partial.get("min_gpus") or 1) else 0
    n = gpu_count(server)
    return n if free == n and not server.get("rented") else 0


def gpu_name(server: Mapping[str, Any]) -> str:
    gpu_array = server.get("gpu_array") or []
    if gpu_array:
        return str(gpu_array[0])
    gpu = str((server.get("specs") or {}).get("gpu") or "")
    match = GPU_TEXT.match(gpu)
    return match.group(2) if match else gpu


def country_of(server: Mapping[str, Any]) -> str:
    net = (server.get("specs") or {}).get("net") or {}
    return str(net.get("cc") or "") if isinstance(net, dict) else ""


def _units(value: Any) -> int:
    if isinstance(value, Coins):
        return value.units
    return to_units(value)


def build_index(listing: Sequence[Mapping[str, Any]]) -> SearchIndex:
    entries = []
    for server in listing:
        specs = server.get("specs") or {}
        names = " ".join(str(n) for n in server.get("gpu_array") or [])
        price = server.get("price") or {}
        vram = specs.get("gpuram")
        entries.append(
            Entry(
                gpu_text=(names + " " + str(specs.get("gpu") or "")).lower(),
                gpus=gpu_count(server),
                vram=float(vram) if isinstance(vram, int | float) else 0.0,
                country=country_of(server).upper(),
                reliability=float(server.get("reliability") or 0.0),
                rented=bool(server.get("rented")),
                free=free_gpus(server),
                on_demand={c: _units(p) for c, p in (price.get("on_demand") or {}).items()},
                coins=frozenset(server.get("allowed_coins") or []),
            )
        )
    return SearchIndex(entries)


def has_query(params: Mapping[str, str]) -> bool:
    """Whether a request asks for a query (else the cached listing is sent as it is)."""
    return any(name in params for name in PARAMS)


def _int(params: Mapping[str, str], name: str, low: int, high: int) -> int | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = int(raw)
    except ValueError:
        raise InvalidInput(f"{name}: must be an integer") from None
    if not low <= value <= high:
        raise InvalidInput(f"{name}: must be from {low} to {high}")
    return value


def _float(params: Mapping[str, str], name: str, high: float) -> float | None:
    raw = params.get(name)
    if raw is None or raw == "":
        return None
    try:
        value = float(raw)
    except ValueError:
        raise InvalidInput(f"{name}: must be a number") from None
    if not 0 <= value <= high:  # also refuses nan
        raise InvalidInput(f"{name}: must be from 0 to {high:g}")
    return value


def _bool(params: Mapping[str, str], name: str) -> bool:
    raw = (params.get(name) or "").lower()
    if raw in ("", "false", "0", "no"):
        return False
    if raw in ("true", "1", "yes", "on"):
        return True
    raise InvalidInput(f"{name}: must be true or false")


def parse_query(
    params: Mapping[str, str], currencies: Sequence[str], default_currency: str
) -> MarketQuery:
    """A query from request parameters; bad values are ``InvalidInput`` (code 2)."""
    for name in PARAMS:
        if len(params.get(name) or "") > 128:
            raise InvalidInput(f"{name}: too long")
    currency = params.get("currency") or None
    if currency is not None and currency not in currencies:
        raise InvalidInput(f"currency: one of {', '.join(currencies)}")
    max_price: int | None = None
    raw_price = params.get("max_price")
    if raw_price:
        try:
            dec = Decimal(raw_price)
            if not dec.is_finite() or dec < 0:
                raise InvalidOperation
            max_price = to_units(dec)
        except (InvalidOperation, ValueError):
            raise InvalidInput("max_price: must be a non-negative number") from None
    sort = params.get("sort") or "id"
    if sort not in SORTS:
        raise InvalidInput(f"sort: one of {', '.join(SORTS)}")
    country = (params.get("country") or "").strip().upper() or None
    gpu = (params.get("gpu") or "").strip().lower() or None
    return MarketQuery(
        gpu=gpu,
        min_gpus=_int(params, "min_gpus", 0, 1024),
        free_gpus=_int(params, "free_gpus", 0, 1024),
        min_vram=_float(params, "min_vram", 100_000),
        max_price=max_price,
        currency=currency,
        price_currency=currency or default_currency,
        country=country,
        min_reliability=_float(params, "min_reliability", 1),
        available=_bool(params, "available"),
        sort=sort,
        limit=_int(params, "limit", 0, MAX_LIMIT),
        offset=_int(params, "offset", 0, 10**9) or 0,
    )


def _matches(e: Entry, q: MarketQuery) -> bool:
    if q.gpu is not None and q.gpu not in e.gpu_text:
        return False
    if q.min_gpus is not None and e.gpus < q.min_gpus:
        return False
    if q.free_gpus is not None and e.free < q.free_gpus:
        return False
    if q.min_vram is not None and e.vram < q.min_vram:
        return False
    if q.currency is not None and q.currency not in e.coins:
        return False
    if q.max_price is not None:
        price = e.on_demand.get(q.price_currency)
        if price is None or price > q.max_price:
            return False
    if q.country is not None and e.country != q.country:
        return False
    if q.min_reliability is not None and e.reliability < q.min_reliability:
        return False
    return not (q.available and e.rented)


def search(index: SearchIndex, q: MarketQuery) -> SearchResult:
    """The positions of the matching servers, sorted (price ascending, servers without an
    on-demand price in the currency last; gpus, vram and reliability descending; ties and the
    default by id, i.e. listing order) and paged."""
    entries = index.entries
    found = [i for i, e in enumerate(entries) if _matches(e, q)]
    if q.sort == "price":
        currency = q.price_currency
        found.sort(key=lambda i: entries[i].on_demand.get(currency, _NO_PRICE))
    elif q.sort == "gpus":
        found.sort(key=lambda i: -entries[i].gpus)
    elif q.sort == "vram":
        found.sort(key=lambda i: -entries[i].vram)
    elif q.sort == "reliability":
        found.sort(key=lambda i: -entries[i].reliability)
    total = len(found)
    end = None if q.limit is None else q.offset + q.limit
    return SearchResult(found[q.offset : end], total)

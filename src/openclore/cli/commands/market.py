"""``openclore market``, ``spot`` and ``fees``: what is for rent, its order book, its fees."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Any

import typer

from openclore.cli.commands.common import Ctx, client_command, parse_decimal
from openclore.cli.output import (
    Column,
    call,
    emit_json,
    fail,
    fmt,
    fmt_any,
    out,
    print_table,
    short_gpu,
)
from openclore.client import MarketServer


class SortKey(StrEnum):
    price = "price"
    gpus = "gpus"
    vram = "vram"
    reliability = "reliability"


@dataclass(frozen=True)
class Search:
    """``market``'s filters. openclore applies them on the server (:meth:`query`, the query
    extension); a market that ignores the query (Clore.ai) sends everything, and the same filters
    then choose here (:meth:`matches`)."""

    gpu: str | None
    gpus: int | None
    vram: float | None
    ram: float | None
    max_price: Decimal | None
    per_hour: bool
    currency: str
    country: str | None
    min_reliability: float | None
    available_only: bool
    sort: SortKey
    limit: int | None

    @property
    def divisor(self) -> Decimal:
        return Decimal(24) if self.per_hour else Decimal(1)

    def query(self) -> dict[str, str | int | float | bool]:
        query: dict[str, str | int | float | bool] = {
            "currency": self.currency,
            "sort": self.sort.value,
        }
        if self.gpu:
            query["gpu"] = self.gpu
        if self.gpus is not None:
            query["min_gpus"] = self.gpus
        if self.vram is not None:
            query["min_vram"] = self.vram
        if self.max_price is not None:
            query["max_price"] = str(self.max_price * self.divisor)
        if self.country:
            query["country"] = self.country
        if self.min_reliability is not None:
            query["min_reliability"] = self.min_reliability
        if self.available_only:
            query["available"] = True
        if self.limit is not None and self.ram is None:  # --ram is chosen here, after the page
            query["limit"] = max(0, self.limit)
        return query

    def price(self, s: MarketServer) -> Decimal | None:
        p = s.on_demand_price(self.currency)
        return None if p is None else p / self.divisor

    def matches(self, s: MarketServer) -> bool:
        p = self.price(s)
        specs = s.specs
        named = " ".join(s.gpu_array) + " " + ((specs.gpu or "") if specs else "")
        return not (
            (p is None and self.currency not in s.allowed_coins)
            or (self.gpu and self.gpu.lower() not in named.lower())
            or (self.gpus is not None and s.gpu_count < self.gpus)
            or (self.vram is not None and (specs is None or (specs.gpuram or 0) < self.vram))
            or (self.ram is not None and (specs is None or (specs.ram or 0) < self.ram))
            or (self.max_price is not None and (p is None or p > self.max_price))
            or (self.country and (s.country or "").upper() != self.country.upper())
            or (self.min_reliability is not None and (s.reliability or 0) < self.min_reliability)
            or (self.available_only and s.rented)
        )

    def choose(self, servers: list[MarketServer]) -> list[MarketServer]:
        keys: dict[SortKey, Callable[[MarketServer], Any]] = {
            SortKey.price: lambda s: (self.price(s) is None, self.price(s) or 0, s.id),
            SortKey.gpus: lambda s: (-s.gpu_count, s.id),
            SortKey.vram: lambda s: (-((s.specs.gpuram or 0) if s.specs else 0), s.id),
            SortKey.reliability: lambda s: (-(s.reliability or 0), s.id),
        }
        chosen = sorted(filter(self.matches, servers), key=keys[self.sort])
        return chosen if self.limit is None else chosen[: max(0, self.limit)]

    def row(self, s: MarketServer) -> list[str]:
        digits = 4 if self.per_hour else 10
        spot = s.spot_price(self.currency)
        specs = s.specs
        return [
            str(s.id),
            f"{s.gpu_count}x {short_gpu(s.gpu_name)}" if s.gpu_count else (s.gpu_name or "-"),
            f"{specs.gpuram:g} GB" if specs and specs.gpuram else "-",
            (specs.cpus or "-") if specs else "-",
            f"{specs.ram:.0f} GB" if specs and specs.ram else "-",
            s.country or "-",
            f"{s.reliability:.3f}" if s.reliability is not None else "-",
            fmt(self.price(s), digits),
            fmt(None if spot is None else spot / self.divisor, digits),
            "yes" if s.rented else "",
        ]


MARKET_COLUMNS = [
    Column("id", 0, "right"),
    Column("gpu", 0, fold=True),
    Column("vram", 3, "right"),
    Column("cpu", 8, "right"),
    Column("ram", 6, "right"),
    Column("cc", 5),
    Column("rel.", 7, "right"),
    Column("on-demand", 0, "right"),
    Column("spot min", 2, "right"),
    Column("rented", 1),
]


@client_command
def market(
    c: Ctx,
    gpu: Annotated[
        str | None, typer.Option(help="GPU model contains this (case-insensitive).")
    ] = None,
    gpus: Annotated[int | None, typer.Option(help="At least this many GPUs.")] = None,
    vram: Annotated[
        float | None, typer.Option(help="At least this much memory per GPU, GB.")
    ] = None,
    ram: Annotated[float | None, typer.Option(help="At least this much system memory, GB.")] = None,
    max_price: Annotated[
        str | None, typer.Option(help="Highest on-demand price per day (per hour with --per-hour).")
    ] = None,
    per_hour: Annotated[bool, typer.Option("--per-hour", help="Prices per hour.")] = False,
    currency: Annotated[
        str, typer.Option(help="Show and filter prices in this currency.")
    ] = "bitcoin",
    country: Annotated[str | None, typer.Option(help="Country code, e.g. CZ.")] = None,
    min_reliability: Annotated[float | None, typer.Option(help="Reliability 0–1.")] = None,
    available_only: Annotated[
        bool, typer.Option("--available-only", help="Hide servers that are rented now.")
    ] = False,
    sort: Annotated[
        SortKey,
        typer.Option(
            metavar="KEY",
            help="Sort by price (ascending), gpus, vram or reliability (descending).",
        ),
    ] = SortKey.price,
    limit: Annotated[int | None, typer.Option(help="Show at most this many.")] = None,
) -> None:
    """Servers for rent, filtered and sorted (prices per day unless --per-hour)."""
    search = Search(
        gpu=gpu,
        gpus=gpus,
        vram=vram,
        ram=ram,
        max_price=parse_decimal(max_price, "--max-price") if max_price is not None else None,
        per_hour=per_hour,
        currency=currency,
        country=country,
        min_reliability=min_reliability,
        available_only=available_only,
        sort=sort,
        limit=limit,
    )
    with c.session(need_key=False) as client:
        listing = call("loading the marketplace…", lambda: client.marketplace(**search.query()))
    chosen = search.choose(listing.servers)
    if c.json:
        emit_json(chosen)
        return
    if not chosen:  # a search that finds nothing says so, and a script can tell from the status
        fail("no servers match (try fewer filters, or `openclore market` for all)")
    unit = "hour" if per_hour else "day"
    matched = listing.total if listing.total is not None else len(listing.servers)
    print_table(
        f"{len(chosen)} of {matched} servers, {currency} per {unit}",
        MARKET_COLUMNS,
        [search.row(s) for s in chosen],
    )


@client_command
def spot(c: Ctx, server: Annotated[int, typer.Argument(help="Server id.")]) -> None:
    """The spot order book of SERVER (highest bid runs)."""
    with c.session(need_key=False) as client:
        book = call("loading the order book…", lambda: client.spot_marketplace(server))
    if c.json:
        emit_json(book)
        return
    if not book.exists or book.market is None:
        fail(f"server {server} has no spot market (unknown or not public)")
    srv = book.market.server
    mins = ", ".join(f"{fmt(v)} {k}" for k, v in srv.min_pricing.items()) or "-"
    hours = f"{srv.mrl // 3600} h" if srv.mrl is not None else "-"
    out.print(
        f"server {server}: minimum bid {mins} per day; max rental {hours}; "
        f"{'online' if srv.online else 'offline'}, {srv.visibility or '-'}"
    )
    print_table(
        f"{len(book.offers)} offer(s), highest first",
        [
            Column("offer", 0, "right"),
            Column("bid/day", 0, "right"),
            Column("currency", 1),
            Column("active", 0),
            Column("mine", 2),
        ],
        [
            [
                str(o.offer_id),
                fmt(o.bid),
                o.currency or "-",
                "yes" if o.active else "",
                "yes" if o.my else "",
            ]
            for o in sorted(book.offers, key=lambda o: (-o.bid, o.offer_id))
        ],
    )


@client_command
def fees(c: Ctx) -> None:
    """The market's fees: percent of spend and the creation fee, per currency."""
    with c.session(need_key=False) as client:
        found = call("loading fees…", client.renter_fees)
    if c.json:
        emit_json(found)
        return
    coins = sorted(found.creation_fees.get("on_demand", {}))
    print_table(
        "fees",
        [
            Column("currency", 0),
            Column("on-demand %", 0, "right"),
            Column("on-demand creation", 1, "right"),
            Column("spot %", 0, "right"),
            Column("spot creation", 1, "right"),
        ],
        [
            [
                coin,
                fmt_any(found.fee_percent("on_demand", coin)),
                fmt(found.creation_fees.get("on_demand", {}).get(coin)),
                fmt_any(found.fee_percent("spot", coin)),
                fmt(found.creation_fees.get("spot", {}).get(coin)),
            ]
            for coin in coins
        ],
    )

"""The MCP tools over one market and one API key, and the scope each needs.

Every tool is an ``async`` method of :class:`MarketTools`; its parameters (with their
descriptions) are its JSON input schema. Money crosses the protocol as exact decimal strings
(``"0.00001"``), never as JSON floats: prices the agent passes are validated as such, and every
amount the market answers is written out in full (no exponent).

Scopes (SPEC §8): ``read`` lists and looks, ``rent`` rents, stops, starts and cancels, ``account``
creates templates. :data:`TOOL_SCOPES` names each tool's scope; :func:`allowed_tools` is what a
key with given scopes is offered.
"""

from __future__ import annotations

import contextlib
from collections.abc import Awaitable, Callable, Iterator, Mapping
from dataclasses import dataclass
from decimal import Decimal
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, Field

from openclore.client import (
    ApiKey,
    AsyncClient,
    CloreConnectionError,
    CloreError,
    InvalidToken,
    MarketError,
    MarketServer,
    MissingScope,
    Order,
    Template,
)
from openclore.domain.errors import REGISTRY

T = TypeVar("T")

SCOPES = ("read", "rent", "host", "money", "account")
"""Every scope a key may have (SPEC §8); operator-issued tokens have all five."""

# tool → the scope it needs
TOOL_SCOPES: dict[str, str] = {
    "search_offers": "read",
    "order_status": "read",
    "order_logs": "read",
    "wallet": "read",
    "list_templates": "read",
    "rent_server": "rent",
    "stop_order": "rent",
    "start_order": "rent",
    "cancel_order": "rent",
    "create_template": "rent",  # as the API's create_template
}

DECIMAL_PATTERN = r"^[0-9]+(\.[0-9]+)?$"  # an amount the agent passes: "0.00001", never a float


def allowed_tools(scopes: frozenset[str] | set[str]) -> list[str]:
    """The tools a key with ``scopes`` is offered, in the order they are listed."""
    return [name for name, scope in TOOL_SCOPES.items() if scope in scopes]


@dataclass(frozen=True)
class KeyInfo:
    """The key the server runs with: its scopes, and the agent's budget (its spend limit per
    currency per market day, UTC; None: no limit). ``reported`` is False when the market has no
    ``GET /v1/api_key`` (a market without scoped keys): then the key is taken to have every
    scope, and the market still refuses what the key may not do."""

    scopes: frozenset[str]
    name: str | None = None
    key_id: int | None = None
    expires_at: int | None = None
    spend_limit: dict[str, Decimal] | None = None
    reported: bool = True

    @classmethod
    def from_api(cls, key: ApiKey) -> KeyInfo:
        return cls(
            scopes=frozenset(key.scopes),
            name=key.name,
            key_id=key.id,
            expires_at=key.expires_at,
            spend_limit=dict(key.spend_limit) if key.spend_limit is not None else None,
        )

    def budget(self, key: ApiKey | None) -> dict[str, Any]:
        """The key as the wallet shows it: scopes, name, expiry, and the budget: the daily
        spend limit with what the key's orders were billed today (``key``: the market's answer
        now; None where the market does not report keys)."""
        out: dict[str, Any] = {"scopes": [s for s in SCOPES if s in self.scopes]}
        if key is not None:
            out["scopes"] = [s for s in SCOPES if s in key.scopes]
            out["name"] = key.name
            out["expires_at"] = key.expires_at
            out["spend_limit_per_day"] = plain(key.spend_limit)
            if key.spend_limit is not None:
                spent = key.spent_today or {}
                out["spent_today"] = plain(spent)
                out["left_today"] = {
                    c: money(max(limit - spent.get(c, Decimal(0)), Decimal(0)))
                    for c, limit in key.spend_limit.items()
                }
        else:
            out["spend_limit_per_day"] = None
            out["note"] = "the market does not report key scopes; every tool is offered"
        return {k: v for k, v in out.items() if v is not None or k == "spend_limit_per_day"}

    @classmethod
    def unreported(cls) -> KeyInfo:
        return cls(scopes=frozenset(SCOPES), reported=False)


# ----------------------------------------------------------------------------- output shapes


def money(value: Decimal | None) -> str | None:
    """An amount as an exact decimal string without exponent (``1E-8`` → ``"0.00000001"``)."""
    if value is None:
        return None
    return format(abs(value) if value.is_zero() else value, "f")  # never "-0"


def plain(value: Any) -> Any:
    """A JSON value with every Decimal an exact string (models dumped, nested)."""
    if isinstance(value, BaseModel):
        value = value.model_dump(exclude_none=True)
    if isinstance(value, Decimal):
        return money(value)
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return value


SIMULATED = (
    "A demo server of the sandbox market: its addresses are published, but no container runs "
    "behind them and nothing answers."
)


def connection(order: Order) -> dict[str, Any]:
    """How to reach an order: the SSH command, each published TCP port as host:port and the
    HTTP URL, once its host has published them (empty before). A demo server's order says it is
    simulated: its addresses are published, but nothing answers on them."""
    out: dict[str, Any] = {}
    if order.simulated:
        out["simulated"] = SIMULATED
    ssh = order.ssh_command()
    if ssh:
        out["ssh"] = ssh
    if order.host:
        tcp = {str(c): f"{order.host}:{p}" for c, p in sorted(order.ports.items())}
        if tcp:
            out["tcp"] = tcp
    if order.http_pub:
        out["http"] = {"port": order.http_port, "url": order.http_pub}
    elif order.http_port:
        out["http"] = {"port": order.http_port, "url": None}
    return out


def order_view(order: Order) -> dict[str, Any]:
    state = order.state or ("ended" if order.expired else "running" if order.running else None)
    view: dict[str, Any] = {
        "id": order.id,
        "server_id": order.si,
        "type": order.type,
        "state": state,
        "image": order.image,
        "currency": order.currency,
        "price_per_day": money(order.price),
        "spent": money(order.spend),
        "created_at": order.ct,
        "max_rental_seconds": order.mrl,
        "gpu_count": order.gpu_count,
        "gpu_names": order.gpu_array or None,
        "gpu_indices": order.gpus,
        "disk_gb": order.disk_gb,
        "storage_per_day": money(order.storage_per_day),
        "stop_reason": order.stop_reason,
        "stop_at": order.stop_at,
        "template_id": order.template_id,
        "error": order.error,
        "connection": connection(order),
    }
    return {k: v for k, v in view.items() if v is not None}


def offer_view(server: MarketServer) -> dict[str, Any]:
    specs = server.specs
    partial = server.partial_gpu_rental
    view: dict[str, Any] = {
        "id": server.id,
        "gpu_count": server.gpu_count,
        "gpu": server.gpu_name,
        "vram_gb_per_gpu": specs.gpuram if specs else None,
        "cpu": specs.cpu if specs else None,
        "ram_gb": specs.ram if specs else None,
        "country": server.country,
        "reliability": server.reliability,
        "rented": server.rented,
        "currencies": server.allowed_coins or None,
        "on_demand_per_day": plain(server.price.on_demand) or None,
        "spot_min_per_day": plain(server.price.spot) or None,
        "usd_per_day": money(server.price.usd.on_demand_usd) if server.price.usd else None,
        "max_rental_hours": server.mrl,
        "cuda": server.cuda_version,
    }
    if partial is not None and partial.enabled:
        per_gpu = {
            "min_gpus": partial.min_gpus,
            "free_gpus": len(partial.free_indices),
            "on_demand_per_gpu_day": plain(partial.price_per_gpu.on_demand) or None,
        }
        view["per_gpu"] = {k: v for k, v in per_gpu.items() if v is not None}
    if server.storage is not None:
        view["storage"] = plain(server.storage)
    return {k: v for k, v in view.items() if v is not None}


def template_view(template: Template) -> dict[str, Any]:
    return plain(template)  # type: ignore[no-any-return]


# ----------------------------------------------------------------------------- errors


class ToolFailure(Exception):
    """A market's refusal or an unreachable market, as one sentence the agent can act on."""


def explain(exc: CloreError) -> str:
    if isinstance(exc, MarketError):
        kind = REGISTRY.get(exc.name)
        text = kind.message if kind is not None else "The market refused this."
        extra = ", ".join(f"{k}: {plain(v)}" for k, v in exc.extra.items())
        return f"{text} ({exc.name}{'; ' + extra if extra else ''})"
    if isinstance(exc, MissingScope):
        return f"This API key lacks the scope this needs: {exc.scope} (missing_scope)."
    if isinstance(exc, InvalidToken):
        return "The market refused the API key (invalid, revoked or expired token)."
    if isinstance(exc, CloreConnectionError):
        return f"The market did not answer: {exc.message}"
    return exc.message  # never empty: the error's name where it has no text


@contextlib.contextmanager
def refusals() -> Iterator[None]:
    try:
        yield
    except CloreError as exc:
        raise ToolFailure(explain(exc)) from exc


async def _call(step: Callable[[], Awaitable[T]]) -> T:
    with refusals():
        return await step()


# ----------------------------------------------------------------------------- the tools

Sort = Literal["id", "price", "gpus", "vram", "reliability"]
OrderKind = Literal["on-demand", "spot"]


class MarketTools:
    """The tools, bound to one client (one market, one key)."""

    def __init__(self, client: AsyncClient, key: KeyInfo) -> None:
        self.client = client
        self.key = key

    async def search_offers(
        self,
        gpu: Annotated[
            str | None, Field(description='GPU model contains this, any case (e.g. "4090").')
        ] = None,
        min_gpus: Annotated[int | None, Field(ge=1, description="At least this many GPUs.")] = None,
        free_gpus: Annotated[
            int | None,
            Field(ge=1, description="This many GPUs can be rented now (whole or per-GPU)."),
        ] = None,
        min_vram_gb: Annotated[
            int | None, Field(ge=1, description="At least this much memory per GPU, GB.")
        ] = None,
        max_price: Annotated[
            str | None,
            Field(
                pattern=DECIMAL_PATTERN,
                description="On-demand price per day at most this (exact decimal string), in "
                "`currency`.",
            ),
        ] = None,
        currency: Annotated[
            str | None,
            Field(description='Only servers that accept this currency (e.g. "bitcoin").'),
        ] = None,
        country: Annotated[
            str | None, Field(description='ISO country code of the server, e.g. "CZ".')
        ] = None,
        min_reliability: Annotated[
            float | None, Field(ge=0, le=1, description="Reliability from 0 to 1.")
        ] = None,
        available_only: Annotated[bool, Field(description="Only servers nobody rents now.")] = True,
        sort: Annotated[
            Sort, Field(description="price: cheapest first; gpus/vram/reliability: most first.")
        ] = "price",
        limit: Annotated[int, Field(ge=1, le=100, description="At most this many offers.")] = 20,
    ) -> dict[str, Any]:
        """Search the marketplace for GPU servers to rent. Prices are per day, in whole coins of
        each currency, as exact decimal strings. Rent one with rent_server(server_id=id)."""
        query: dict[str, str | int | float | bool] = {"sort": sort, "limit": limit}
        for name, value in (
            ("gpu", gpu),
            ("min_gpus", min_gpus),
            ("free_gpus", free_gpus),
            ("min_vram", min_vram_gb),
            ("max_price", max_price),
            ("currency", currency),
            ("country", country),
            ("min_reliability", min_reliability),
        ):
            if value is not None:
                query[name] = value
        if available_only:
            query["available"] = True
        market = await _call(lambda: self.client.marketplace(**query))
        own = set(market.my_servers)
        offers = [offer_view(s) for s in market.servers if s.id not in own][:limit]
        return {"total": market.total, "offers": offers}

    async def rent_server(
        self,
        server_id: Annotated[int, Field(description="The offer's id from search_offers.")],
        image: Annotated[
            str | None,
            Field(description='Docker image, e.g. "cloreai/ubuntu20.04-jupyter".'),
        ] = None,
        type: Annotated[
            OrderKind,
            Field(description="on-demand: a fixed price; spot: a bid (`price`), may be outbid."),
        ] = "on-demand",
        price: Annotated[
            str | None,
            Field(
                pattern=DECIMAL_PATTERN,
                description="Exact decimal string per day. spot: the bid (required). on-demand: "
                "the price you expect; the market refuses (price_changed) if it differs.",
            ),
        ] = None,
        currency: Annotated[
            str, Field(description="The currency to pay in (see wallet).")
        ] = "bitcoin",
        ports: Annotated[
            dict[str, Literal["tcp", "http"]] | None,
            Field(description='Container ports to publish: {"22": "tcp", "8888": "http"}.'),
        ] = None,
        env: Annotated[
            dict[str, str] | None, Field(description="Environment variables of the container.")
        ] = None,
        template_id: Annotated[
            int | None,
            Field(description="Start from this template (list_templates); given fields win."),
        ] = None,
        gpu_count: Annotated[
            int | None,
            Field(ge=1, description="Rent only this many GPUs (servers that rent per GPU)."),
        ] = None,
        command: Annotated[
            str | None, Field(description="Command the container runs after start.")
        ] = None,
        ssh_key: Annotated[
            str | None, Field(description="An SSH public key to log in with.")
        ] = None,
        wait_seconds: Annotated[
            int,
            Field(
                ge=0,
                le=300,
                description="Wait up to this long for the order to be reachable (running and, "
                "with port 22, SSH answering) before answering; 0: answer at once.",
            ),
        ] = 0,
    ) -> dict[str, Any]:
        """Rent a server: creates an order and returns it. Money moves: the order is billed per
        second at its price until cancelled. Once running, order_status shows how to connect."""
        if type == "spot" and price is None:
            raise ToolFailure("A spot order needs `price`: the bid per day.")
        if image is None and template_id is None:
            raise ToolFailure("Give an `image` or a `template_id`.")
        amount = Decimal(price) if price is not None else None
        if ports is None and template_id is None:
            ports = {"22": "tcp"}
        order = await _call(
            lambda: self.client.create_order(
                server_id,
                image,
                template_id=template_id,
                type=type,
                currency=currency,
                spot_price=amount if type == "spot" else None,
                required_price=amount if type == "on-demand" else None,
                ports=ports,
                env=env,
                gpu_count=gpu_count,
                command=command,
                ssh_key=ssh_key,
            )
        )
        if wait_seconds:
            try:
                order = await self.client.wait_for_order(order.id, timeout=wait_seconds)
            except TimeoutError:
                note = f"not reachable yet after {wait_seconds} s: poll order_status"
                return {"order": order_view(order), "note": note}
            except (LookupError, CloreError) as exc:
                return {"order": order_view(order), "note": f"while waiting: {exc}"}
        return {"order": order_view(order)}

    async def order_status(
        self,
        order_id: Annotated[
            int | None, Field(description="One order; leave out for all your live orders.")
        ] = None,
        include_ended: Annotated[bool, Field(description="Add ended orders too.")] = False,
    ) -> dict[str, Any]:
        """Your orders with their state and connection info: the SSH command, published TCP
        ports (host:port) and the HTTP URL, once the host has published them."""
        orders = await _call(
            lambda: self.client.my_orders(return_completed=include_ended or order_id is not None)
        )
        if order_id is not None:
            found = [o for o in orders if o.id == order_id]
            if not found:
                raise ToolFailure(f"Order {order_id} is not one of yours.")
            return {"order": order_view(found[0])}
        return {"orders": [order_view(o) for o in orders]}

    async def order_logs(
        self,
        order_id: Annotated[int, Field(description="Your order's id.")],
        tail: Annotated[int, Field(ge=1, le=1000, description="Lines from the end.")] = 200,
    ) -> dict[str, Any]:
        """The last lines of your order's container output, fetched from its host."""
        lines = await _call(lambda: self.client.order_logs(order_id, tail))
        return {"order_id": order_id, "lines": lines}

    async def stop_order(
        self, order_id: Annotated[int, Field(description="Your running order's id.")]
    ) -> dict[str, Any]:
        """Stop an order: its GPUs are freed and its disk kept; it then pays storage only
        (storage_per_day). start_order runs it again."""
        order = await _call(lambda: self.client.stop_order(order_id))
        return {"order": order_view(order)}

    async def start_order(
        self, order_id: Annotated[int, Field(description="Your stopped order's id.")]
    ) -> dict[str, Any]:
        """Start a stopped order again on its server (refused, and it stays stopped, when its
        GPUs are taken: gpus_not_free)."""
        order = await _call(lambda: self.client.start_order(order_id))
        return {"order": order_view(order)}

    async def cancel_order(
        self,
        order_id: Annotated[int, Field(description="Your order's id.")],
        issue: Annotated[
            str | None, Field(description="What went wrong, if anything (reported to the host).")
        ] = None,
    ) -> dict[str, Any]:
        """End an order for good: its container and disk are deleted and billing stops."""
        await _call(lambda: self.client.cancel_order(order_id, issue=issue))
        return {"order_id": order_id, "cancelled": True}

    async def wallet(self) -> dict[str, Any]:
        """Your balances per currency with what your orders burn per day and the runway (how
        long the balance lasts at that rate), and this key's budget: its daily spend limit per
        currency, what its orders were billed today and what is left."""
        wallets = await _call(self.client.wallets)
        out: list[dict[str, Any]] = []
        for w in wallets:
            row: dict[str, Any] = {
                "currency": w.name,
                "balance": money(w.balance),
                "burn_per_day": money(w.burn_per_day),
                "runway_seconds": w.runway_seconds,
                "deposit_address": w.deposit,
            }
            if w.runway_seconds is not None:
                row["runway_days"] = money(
                    (Decimal(w.runway_seconds) / 86400).quantize(Decimal("0.01"))
                )
            out.append({k: v for k, v in row.items() if v is not None})
        now = await _call(self.client.current_api_key) if self.key.reported else None
        return {"wallets": out, "key": self.key.budget(now)}

    async def list_templates(
        self, q: Annotated[str | None, Field(description="Names contain this (any case).")] = None
    ) -> dict[str, Any]:
        """Your templates and the public ones: an image and its settings that rent_server
        (template_id=) starts from."""
        found = await _call(lambda: self.client.templates(q))
        return {"templates": [template_view(t) for t in found]}

    async def create_template(
        self,
        name: Annotated[str, Field(min_length=1, max_length=64, description="Its name.")],
        image: Annotated[str, Field(description="Docker image.")],
        command: Annotated[str | None, Field(description="Command run after start.")] = None,
        env: Annotated[dict[str, str] | None, Field(description="Environment variables.")] = None,
        ports: Annotated[
            dict[str, Literal["tcp", "http"]] | None,
            Field(description='Ports to publish: {"22": "tcp"}.'),
        ] = None,
        disk_gb: Annotated[int | None, Field(ge=0, description="Disk kept when stopped.")] = None,
        public: Annotated[bool, Field(description="List it to every renter.")] = False,
        readme: Annotated[str | None, Field(description="What it is for.")] = None,
    ) -> dict[str, Any]:
        """Save an image and its settings as a template to rent from later."""
        template = await _call(
            lambda: self.client.create_template(
                name,
                image,
                command=command,
                env=env,
                ports=ports,
                disk_gb=disk_gb,
                public=public,
                readme=readme,
            )
        )
        return {"template": template_view(template)}

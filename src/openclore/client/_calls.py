"""What both clients share: one description per endpoint, response decoding, retry rules."""

from __future__ import annotations

import email.utils
import secrets
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Generic, Literal, TypeVar

import httpx

from openclore.client import _exactjson
from openclore.client._errors import (
    CloreConnectionError,
    CloreError,
    InternalError,
    UnexpectedResponse,
    error_for,
)
from openclore.client._models import (
    AddedServer,
    ApiKey,
    ApiKeyResponse,
    ApiKeysResponse,
    CancelOrdersResponse,
    CreatedApiKey,
    CreateOrderResponse,
    CreateVolumeResponse,
    Event,
    EventPage,
    Gigaspot,
    GigaspotCreated,
    GigaspotEdited,
    Marketplace,
    MarketplaceResponse,
    MyOrdersResponse,
    MyServer,
    MyServersResponse,
    Order,
    OrderLogsResponse,
    OrderResponse,
    RenterFees,
    ServerConfig,
    ServerConfigResponse,
    SpotMarketplace,
    SpotMarketplaceResponse,
    SshKey,
    SshKeyResponse,
    SshKeysResponse,
    Statement,
    StatementResponse,
    Template,
    TemplateResponse,
    TemplatesResponse,
    TransactionsPage,
    Volume,
    VolumesResponse,
    Wallet,
    WalletsResponse,
    Webhook,
    Withdrawal,
    WithdrawalsResponse,
    WithdrawResponse,
)

T = TypeVar("T")

DEFAULT_BASE_URL = "https://api.clore.ai"
USER_AGENT = "openclore-sdk/0.1"
Amount = Decimal | int | float | str
"""A price or amount: pass a Decimal or a string for exactness; floats are taken by their repr."""
OrderType = Literal["on-demand", "spot"]


@dataclass(frozen=True)
class ApiCall(Generic[T]):
    """One request: where it goes, what it sends, how to read the answer, how safe a retry is."""

    method: Literal["GET", "POST"]
    path: str
    parse: Callable[[dict[str, Any]], T]
    body: dict[str, Any] | None = None
    params: dict[str, str] | None = None
    idempotent: bool = True  # repeating it cannot change anything twice
    create_order: bool = False
    idempotency_key: str | None = None  # sent as Idempotency-Key: the server acts once per key


def normalize_base_url(base_url: str) -> str:
    url = base_url.rstrip("/")
    # accept the clore-ai SDK's convention of a base URL that ends in /v1
    if url.endswith("/v1"):
        url = url[:-3]
    return url


def decimal(value: Amount, name: str = "amount") -> Decimal:
    if isinstance(value, bool):
        raise TypeError(f"{name}: expected a number, got a bool")
    try:
        if isinstance(value, Decimal):
            out = value
        elif isinstance(value, float):
            out = Decimal(repr(value))
        else:
            out = Decimal(value)
    except InvalidOperation:
        raise ValueError(f"{name}: not a number: {value!r}") from None
    if not out.is_finite():
        raise ValueError(f"{name}: not a finite number: {value!r}")
    return out


def headers(api_key: str | None, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    out = {"User-Agent": USER_AGENT, "Accept": "application/json"}
    if api_key:
        out["auth"] = api_key
    if extra:
        out.update(extra)
    return out


def encode(call: ApiCall[Any]) -> bytes | None:
    return None if call.body is None else _exactjson.dumps(call.body).encode("utf-8")


def retry_after(response: httpx.Response) -> float | None:
    raw = response.headers.get("Retry-After")
    if raw is None:
        return None
    try:
        return max(0.0, float(raw))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(raw)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def decode(response: httpx.Response) -> dict[str, Any]:
    """The decoded body of a code-0 response; any other code raises its :class:`CloreError`."""
    try:
        body = _exactjson.loads(response.content)
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("code"), int):
        text = response.text[:200].strip().replace("\n", " ")
        exc_type = InternalError if response.status_code >= 500 else UnexpectedResponse
        raise exc_type(
            f"HTTP {response.status_code} from {response.request.url}: not a Clore response"
            + (f" ({text})" if text else ""),
            status_code=response.status_code,
        )
    if body["code"] != 0:
        raise error_for(body, response.status_code, retry_after(response))
    return body


def connection_error(exc: Exception, url: str) -> CloreConnectionError:
    hopeless = isinstance(exc, httpx.UnsupportedProtocol | httpx.InvalidURL)
    sent = not hopeless and not isinstance(
        exc, httpx.ConnectError | httpx.ConnectTimeout | httpx.PoolTimeout
    )
    detail = str(exc) or type(exc).__name__
    return CloreConnectionError(f"cannot reach {url}: {detail}", sent=sent, retryable=not hopeless)


@dataclass
class RetryPolicy:
    max_retries: int = 3
    retry_rate_limited: bool = True
    backoff_base: float = 0.5
    keyed_retries: bool = True  # the server honours Idempotency-Key: keyed calls are safe again

    def backoff(self, attempt: int) -> float:
        """Seconds before retry number ``attempt`` after a network or internal error."""
        return float(min(8.0, self.backoff_base * 2 ** (attempt - 1)))

    def transport(self, call: ApiCall[Any], error: CloreConnectionError, attempt: int) -> bool:
        if not error.retryable or attempt >= self.max_retries:
            return False
        return self._safe(call) or not error.sent

    def _safe(self, call: ApiCall[Any]) -> bool:
        return call.idempotent or (self.keyed_retries and call.idempotency_key is not None)

    def rate_limited(self, attempt: int) -> bool:
        # a code-5 answer means the server refused before doing anything: always safe
        return self.retry_rate_limited and attempt < self.max_retries

    def failed(self, call: ApiCall[Any], error: CloreError, attempt: int) -> bool:
        return isinstance(error, InternalError) and self._safe(call) and attempt < self.max_retries


# ----------------------------------------------------------------------------- endpoints


def wallets() -> ApiCall[list[Wallet]]:
    return ApiCall("GET", "/v1/wallets", lambda b: WalletsResponse.model_validate(b).wallets)


def my_servers() -> ApiCall[list[MyServer]]:
    return ApiCall("GET", "/v1/my_servers", lambda b: MyServersResponse.model_validate(b).servers)


def server_config(server_name: str) -> ApiCall[ServerConfig]:
    # Clore documents a GET with a JSON body
    return ApiCall(
        "GET",
        "/v1/server_config",
        lambda b: ServerConfigResponse.model_validate(b).config,
        body={"server_name": server_name},
    )


def marketplace(query: dict[str, str] | None = None) -> ApiCall[Marketplace]:
    """``query``: openclore's server-side filters (gpu, min_gpus, min_vram, max_price, currency,
    country, min_reliability, available, sort, limit, offset); a market without the extension
    (Clore.ai) ignores them and sends every server."""

    def parse(body: dict[str, Any]) -> Marketplace:
        parsed = MarketplaceResponse.model_validate(body)
        return Marketplace.model_validate(parsed.model_dump(exclude={"code"}))

    return ApiCall("GET", "/v1/marketplace", parse, params=query or None)


def my_orders(return_completed: bool = False) -> ApiCall[list[Order]]:
    return ApiCall(
        "GET",
        "/v1/my_orders",
        lambda b: MyOrdersResponse.model_validate(b).orders,
        params={"return_completed": "true" if return_completed else "false"},
    )


def order_logs(order_id: int, tail: int = 200) -> ApiCall[list[str]]:
    return ApiCall(
        "GET",
        "/v1/order_logs",
        lambda b: OrderLogsResponse.model_validate(b).logs,
        params={"id": str(int(order_id)), "tail": str(int(tail))},
    )


def spot_marketplace(server_id: int) -> ApiCall[SpotMarketplace]:
    def parse(body: dict[str, Any]) -> SpotMarketplace:
        parsed = SpotMarketplaceResponse.model_validate(body)
        return SpotMarketplace.model_validate(parsed.model_dump(exclude={"code"}))

    return ApiCall("GET", "/v1/spot_marketplace", parse, params={"market": str(int(server_id))})


def _none(_body: dict[str, Any]) -> None:
    return None


def set_server_settings(
    name: str,
    *,
    availability: bool | None = None,
    mrl: int | None = None,
    on_demand: Amount | None = None,
    spot: Amount | None = None,
    currency: str | None = None,
    visibility: Literal["public", "hidden"] | None = None,
    enabled: Mapping[str, bool] | None = None,
    usd_pricing: Mapping[str, Mapping[str, Amount]] | None = None,
    autoprice: Mapping[str, Literal["usd", False]] | None = None,
    disk_gb: int | None = None,
    storage_price: Amount | None = None,
) -> ApiCall[None]:
    body: dict[str, Any] = {"name": name}
    for coin, on in (enabled or {}).items():
        body[f"enabled-{coin}"] = bool(on)
    if usd_pricing is not None:
        body["usd_pricing"] = {
            coin: {kind: decimal(v, f"usd_pricing.{coin}.{kind}") for kind, v in sides.items()}
            for coin, sides in usd_pricing.items()
        }
    if autoprice is not None:
        body["autoprice"] = dict(autoprice)
    if availability is not None:
        body["availability"] = availability
    if visibility is not None:
        body["visibility"] = visibility
    if mrl is not None:
        body["mrl"] = int(mrl)
    prefix = f"{currency}_" if currency else ""
    if on_demand is not None:
        body[prefix + "on_demand"] = decimal(on_demand, "on_demand")
    if spot is not None:
        body[prefix + "spot"] = decimal(spot, "spot")
    # openclore: the disk each rental gets (0: none) and its price per GB per day (SPEC §8)
    if disk_gb is not None:
        body["disk_gb"] = int(disk_gb)
    if storage_price is not None:
        key = f"{currency}_storage" if currency else "storage_price"
        body[key] = decimal(storage_price, "storage_price")
    return ApiCall("POST", "/v1/set_server_settings", _none, body=body)


def set_spot_price(order_id: int, price: Amount) -> ApiCall[None]:
    body = {"order_id": int(order_id), "desired_price": decimal(price, "price")}
    return ApiCall("POST", "/v1/set_spot_price", _none, body=body)


def cancel_order(
    order_id: int, issue: str | None = None, rating: int | None = None
) -> ApiCall[None]:
    body: dict[str, Any] = {"id": int(order_id)}
    if issue:
        body["issue"] = issue
    if rating is not None:
        body["rating"] = int(rating)
    return ApiCall("POST", "/v1/cancel_order", _none, body=body, idempotent=False)


def cancel_orders(order_ids: Iterable[int]) -> ApiCall[CancelOrdersResponse]:
    body = {"order_ids": [int(i) for i in order_ids]}
    return ApiCall(
        "POST",
        "/v1/cancel_orders",
        CancelOrdersResponse.model_validate,
        body=body,
        idempotent=False,
    )


def renter_fees() -> ApiCall[RenterFees]:
    return ApiCall("GET", "/v1/renter_fees", RenterFees.model_validate)


def poh_balance() -> ApiCall[dict[str, Any]]:
    return ApiCall("GET", "/v1/poh_balance", dict)


def get_gigaspot() -> ApiCall[Gigaspot]:
    return ApiCall("GET", "/v1/get_gigaspot", Gigaspot.model_validate)


GpuSettings = Mapping[str, float | int]
"""One GPU's GigaSPOT settings: ``pl`` (W), ``core_lock``/``mem_lock`` (MHz), offsets."""


def create_gigaspot_orders(bids: Iterable[Mapping[str, Any]]) -> ApiCall[GigaspotCreated]:
    """``bids``: ``{renting_server, price, image, currency, oc: [GpuSettings…], env?}``."""
    orders = []
    for bid in bids:
        item = dict(bid)
        item["price"] = decimal(item["price"], "price")
        item.setdefault("currency", "bitcoin")
        item["oc"] = [dict(g) for g in item.get("oc") or []]
        orders.append(item)
    return ApiCall(
        "POST",
        "/v1/create_gigaspot_orders",
        GigaspotCreated.model_validate,
        body={"orders": orders},
        idempotent=False,
        create_order=True,
    )


def edit_gigaspot_orders(edits: Iterable[Mapping[str, Any]]) -> ApiCall[GigaspotEdited]:
    """``edits``: ``{order_id, price, oc: [GpuSettings…]}``."""
    orders = [
        {
            "order_id": int(e["order_id"]),
            "price": decimal(e["price"], "price"),
            "oc": [dict(g) for g in e.get("oc") or []],
        }
        for e in edits
    ]
    return ApiCall(
        "POST", "/v1/edit_gigaspot_orders", GigaspotEdited.model_validate, body={"orders": orders}
    )


def order_fields(
    image: str | None,
    template_id: int | None,
    ports: Mapping[int, str] | Mapping[str, str] | None,
    env: Mapping[str, str] | None,
    **texts: str | None,
) -> dict[str, Any]:
    """The container fields of ``create_order`` (and of a standing order's fills): what is
    given, ports keyed by text, empty texts left out."""
    body: dict[str, Any] = {}
    if image is not None:
        body["image"] = image
    if template_id is not None:  # openclore: its image and settings, unless given here
        body["template_id"] = int(template_id)
    if ports:
        body["ports"] = {str(port): proto for port, proto in ports.items()}
    if env:
        body["env"] = dict(env)
    body.update({key: value for key, value in texts.items() if value})
    return body


def create_order(
    server_id: int,
    image: str | None = None,
    *,
    template_id: int | None = None,
    type: OrderType = "on-demand",
    currency: str = "bitcoin",
    spot_price: Amount | None = None,
    ports: Mapping[int, str] | Mapping[str, str] | None = None,
    env: Mapping[str, str] | None = None,
    jupyter_token: str | None = None,
    ssh_key: str | None = None,
    ssh_password: str | None = None,
    command: str | None = None,
    required_price: Amount | None = None,
    autossh_entrypoint: bool | None = None,
    dockerhub_auth: str | None = None,
    gpu_count: int | None = None,
    gpus: Sequence[int] | None = None,
    disk_gb: int | None = None,
    volumes: Mapping[int, str] | Mapping[str, str] | None = None,
    stop_after: int | None = None,
    terminate_after: int | None = None,
) -> ApiCall[CreateOrderResponse]:
    if type not in ("on-demand", "spot"):
        raise ValueError("type must be 'on-demand' or 'spot'")
    if type == "spot" and spot_price is None:
        raise ValueError("a spot order needs spot_price (the bid per day)")
    if image is None and template_id is None:
        raise ValueError("an order needs an image, or a template_id to take it from")
    body: dict[str, Any] = {"currency": currency, "renting_server": int(server_id), "type": type}
    body.update(
        order_fields(
            image,
            template_id,
            ports,
            env,
            jupyter_token=jupyter_token,
            ssh_key=ssh_key,
            ssh_password=ssh_password,
            command=command,
            dockerhub_auth=dockerhub_auth,
        )
    )
    if type == "spot" and spot_price is not None:
        body["spotprice"] = decimal(spot_price, "spot_price")
    if required_price is not None:
        body["required_price"] = decimal(required_price, "required_price")
    if autossh_entrypoint is not None:
        body["autossh_entrypoint"] = autossh_entrypoint
    # openclore: some of a server's GPUs (SPEC §8); neither: the whole server
    if gpu_count is not None:
        body["gpu_count"] = int(gpu_count)
    if gpus is not None:
        body["gpus"] = [int(i) for i in gpus]
    # openclore: keeping work (SPEC §8)
    if disk_gb is not None:
        body["disk_gb"] = int(disk_gb)
    if volumes:
        body["volumes"] = {str(int(vid)): path for vid, path in volumes.items()}
    if stop_after is not None:
        body["stop_after"] = int(stop_after)
    if terminate_after is not None:
        body["terminate_after"] = int(terminate_after)
    return ApiCall(
        "POST",
        "/v1/create_order",
        CreateOrderResponse.model_validate,
        body=body,
        idempotent=False,
        create_order=True,
        # one key for this order and all its retries: the server rents once per key
        idempotency_key=new_idempotency_key(),
    )


# ------------------------------------------------------- keeping work (openclore, SPEC §8)


def _keyed(path: str, parse: Callable[[dict[str, Any]], T], body: dict[str, Any]) -> ApiCall[T]:
    """A call that changes something once: sent with its own Idempotency-Key, so that a retry
    after a lost answer gets the first answer instead of acting (or failing) twice."""
    return ApiCall(
        "POST", path, parse, body=body, idempotent=False, idempotency_key=new_idempotency_key()
    )


def _order(body: dict[str, Any]) -> Order:
    return OrderResponse.model_validate(body).order


def stop_order(order_id: int) -> ApiCall[Order]:
    return _keyed("/v1/stop_order", _order, {"id": int(order_id)})


def start_order(order_id: int) -> ApiCall[Order]:
    return _keyed("/v1/start_order", _order, {"id": int(order_id)})


def restart_order(order_id: int) -> ApiCall[int]:
    return _keyed("/v1/restart_order", lambda b: int(b["restart"]), {"id": int(order_id)})


def reset_order(order_id: int) -> ApiCall[int]:
    return _keyed("/v1/reset_order", lambda b: int(b["generation"]), {"id": int(order_id)})


def extend_order(order_id: int, hours: int) -> ApiCall[int]:
    body = {"id": int(order_id), "hours": int(hours)}
    return _keyed("/v1/extend_order", lambda b: int(b["mrl"]), body)


def create_volume(
    server_id: int, size_gb: int, name: str, currency: str | None = None
) -> ApiCall[Volume]:
    body: dict[str, Any] = {"server_id": int(server_id), "size_gb": int(size_gb), "name": name}
    if currency:
        body["currency"] = currency
    return _keyed(
        "/v1/create_volume", lambda b: CreateVolumeResponse.model_validate(b).volume, body
    )


def volumes(include_ended: bool = False) -> ApiCall[list[Volume]]:
    return ApiCall(
        "GET",
        "/v1/volumes",
        lambda b: VolumesResponse.model_validate(b).volumes,
        params={"include_ended": "true" if include_ended else "false"},
    )


def delete_volume(volume_id: int) -> ApiCall[None]:
    return _keyed("/v1/delete_volume", _none, {"id": int(volume_id)})


def new_idempotency_key() -> str:
    return "oc-" + secrets.token_urlsafe(24)


def add_server(name: str) -> ApiCall[AddedServer]:
    return ApiCall(
        "POST", "/v1/add_server", AddedServer.model_validate, body={"name": name}, idempotent=False
    )


def events_after(
    after: int, limit: int = 100, types: Iterable[str] | None = None
) -> ApiCall[EventPage]:
    params = {"after": str(int(after)), "limit": str(int(limit))}
    if types:
        params["types"] = ",".join(types)
    return ApiCall("GET", "/v1/events", EventPage.model_validate, params=params)


def create_webhook(url: str, events: Iterable[str] | None = None) -> ApiCall[Webhook]:
    body: dict[str, Any] = {"url": url}
    if events is not None:
        body["events"] = list(events)
    return ApiCall(
        "POST",
        "/v1/webhooks",
        Webhook.model_validate,
        body=body,
        idempotent=False,
        idempotency_key=new_idempotency_key(),
    )


def webhooks() -> ApiCall[list[Webhook]]:
    return ApiCall(
        "GET", "/v1/webhooks", lambda b: [Webhook.model_validate(w) for w in b["webhooks"]]
    )


def delete_webhook(webhook_id: int) -> ApiCall[None]:
    return ApiCall("POST", "/v1/delete_webhook", _none, body={"id": int(webhook_id)})


def ping_webhook(webhook_id: int) -> ApiCall[None]:
    return ApiCall(
        "POST", "/v1/ping_webhook", _none, body={"id": int(webhook_id)}, idempotent=False
    )


def parse_sse_event(lines: list[str]) -> Event | None:
    """One server-sent-event frame's ``data:`` lines → the event (None for comments/retry)."""
    data = "\n".join(line[5:].lstrip(" ") for line in lines if line.startswith("data:"))
    if not data:
        return None
    return Event.model_validate(_exactjson.loads(data))


def transactions(
    *,
    currency: str | None = None,
    since: int | None = None,
    until: int | None = None,
    limit: int | None = None,
    cursor: str | None = None,
) -> ApiCall[TransactionsPage]:
    params = {
        name: str(value)
        for name, value in (
            ("currency", currency),
            ("since", since),
            ("until", until),
            ("limit", limit),
            ("cursor", cursor),
        )
        if value is not None
    }
    return ApiCall("GET", "/v1/transactions", TransactionsPage.model_validate, params=params)


def statement(month: str | None = None, currency: str | None = None) -> ApiCall[Statement]:
    params = {k: v for k, v in (("month", month), ("currency", currency)) if v is not None}
    return ApiCall(
        "GET",
        "/v1/statement",
        lambda b: StatementResponse.model_validate(b).statement,
        params=params,
    )


def withdraw(currency: str, amount: Amount, address: str) -> ApiCall[Withdrawal]:
    body = {"currency": currency, "amount": decimal(amount, "amount"), "address": address}
    return ApiCall(
        "POST",
        "/v1/withdraw",
        lambda b: WithdrawResponse.model_validate(b).withdrawal,
        body=body,
        idempotent=False,
    )


def withdrawals() -> ApiCall[list[Withdrawal]]:
    return ApiCall(
        "GET", "/v1/withdrawals", lambda b: WithdrawalsResponse.model_validate(b).withdrawals
    )


def sandbox_advance_time(seconds: int) -> ApiCall[int]:
    return ApiCall(
        "POST",
        "/sandbox/advance_time",
        lambda b: int(b["now"]),
        body={"seconds": int(seconds)},
        idempotent=False,
    )


def sandbox_deposit(currency: str, amount: Amount) -> ApiCall[None]:
    body = {"currency": currency, "amount": decimal(amount, "amount")}
    return ApiCall("POST", "/sandbox/deposit", _none, body=body, idempotent=False)


# ----------------------------------------------------------------- create_order's fallback

CLOCK_SKEW = 300.0  # seconds of disagreement between our clock and the server's we tolerate


def pick_new_order(
    orders: Iterable[Order],
    *,
    server_id: int,
    spot: bool,
    started: float,
    image: str | None = None,
    currency: str | None = None,
    known_ids: set[int] | None = None,
) -> Order | None:
    """Best effort: the order ``create_order`` just made, found by server, type and creation time.

    A market keeps at most one live on-demand order per server and one live spot order per user
    per server, so the live order of this type on this server is normally the one. When several
    match (a server that breaks that rule), the newest created since ``started`` wins.
    """
    candidates = [
        o
        for o in orders
        if o.si == server_id
        and o.spot == spot
        and not o.expired
        and (known_ids is None or o.id not in known_ids)
        and (image is None or o.image in (None, image))
        and (currency is None or o.currency in (None, currency))
    ]
    if not candidates:
        return None
    recent = [o for o in candidates if o.ct is None or o.ct >= started - CLOCK_SKEW]
    pool = recent or candidates
    return max(pool, key=lambda o: (o.ct or 0, o.id))


# ------------------------------------------- renters' own things (openclore, SPEC §8)


def add_ssh_key(name: str, public_key: str) -> ApiCall[SshKey]:
    body = {"name": name, "public_key": public_key}
    return _keyed("/v1/add_ssh_key", lambda b: SshKeyResponse.model_validate(b).key, body)


def ssh_keys() -> ApiCall[list[SshKey]]:
    return ApiCall("GET", "/v1/ssh_keys", lambda b: SshKeysResponse.model_validate(b).keys)


def delete_ssh_key(key_id: int) -> ApiCall[None]:
    return _keyed("/v1/delete_ssh_key", _none, {"id": int(key_id)})


def attach_ssh_key(order_id: int, key_id: int) -> ApiCall[bool]:
    body = {"order_id": int(order_id), "key_id": int(key_id)}
    return _keyed("/v1/attach_ssh_key", lambda b: bool(b["attached"]), body)


def create_template(
    name: str,
    image: str,
    *,
    command: str | None = None,
    env: Mapping[str, str] | None = None,
    ports: Mapping[int, str] | Mapping[str, str] | None = None,
    jupyter_token: str | None = None,
    disk_gb: int | None = None,
    public: bool = False,
    readme: str | None = None,
) -> ApiCall[Template]:
    body: dict[str, Any] = {"name": name, "image": image, "public": bool(public)}
    if command:
        body["command"] = command
    if env:
        body["env"] = dict(env)
    if ports:
        body["ports"] = {str(port): proto for port, proto in ports.items()}
    if jupyter_token:
        body["jupyter_token"] = jupyter_token
    if disk_gb is not None:
        body["disk_gb"] = int(disk_gb)
    if readme:
        body["readme"] = readme
    parse = lambda b: TemplateResponse.model_validate(b).template  # noqa: E731
    return _keyed("/v1/create_template", parse, body)


def templates(q: str | None = None) -> ApiCall[list[Template]]:
    return ApiCall(
        "GET",
        "/v1/templates",
        lambda b: TemplatesResponse.model_validate(b).templates,
        params={"q": q} if q else None,
    )


def delete_template(template_id: int) -> ApiCall[None]:
    return _keyed("/v1/delete_template", _none, {"id": int(template_id)})


def create_api_key(
    scopes: Sequence[str],
    *,
    name: str | None = None,
    expires_at: int | None = None,
    expires_in: int | None = None,
    spend_limit: Mapping[str, Amount] | None = None,
) -> ApiCall[CreatedApiKey]:
    body: dict[str, Any] = {"scopes": list(scopes)}
    if name is not None:
        body["name"] = name
    if expires_at is not None:
        body["expires_at"] = int(expires_at)
    if expires_in is not None:
        body["expires_in"] = int(expires_in)
    if spend_limit is not None:
        body["spend_limit"] = {c: str(v) for c, v in spend_limit.items()}
    # no Idempotency-Key: the market never stores an answer holding a secret (nor retries it)
    return ApiCall(
        "POST", "/v1/create_api_key", CreatedApiKey.model_validate, body=body, idempotent=False
    )


def api_keys() -> ApiCall[list[ApiKey]]:
    return ApiCall("GET", "/v1/api_keys", lambda b: ApiKeysResponse.model_validate(b).keys)


def api_key() -> ApiCall[ApiKey]:
    return ApiCall("GET", "/v1/api_key", lambda b: ApiKeyResponse.model_validate(b).key)


def revoke_api_key(key_id: int) -> ApiCall[None]:
    return _keyed("/v1/revoke_api_key", _none, {"id": int(key_id)})

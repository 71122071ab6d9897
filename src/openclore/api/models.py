"""Response shapes of the Clore API v1, as documented in the OpenAPI schema (the request bodies
are the market's: :mod:`openclore.market.inputs`)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

# ---------------------------------------------------------------- response shapes (docs only)

CoinMap = dict[str, float]


class Envelope(BaseModel):
    code: int = Field(description="0 OK, 1 internal, 2 input, 3 token, 4 endpoint, 5 rate, 6 error")


class ErrorEnvelope(Envelope):
    error: str | None = Field(None, description="error name (code 6) or what is wrong (code 2)")
    max_step: float | None = Field(None, description="exceeded_max_step: lowest price allowed now")
    time_to_lowering: int | None = Field(
        None, description="can_lower_every_600_seconds: seconds until the next lowering"
    )


class Net(BaseModel):
    up: float | None = None
    down: float | None = None
    cc: str | None = None


class Specs(BaseModel):
    model_config = ConfigDict(extra="allow")
    mb: str | None = None
    cpu: str | None = None
    cpus: str | None = Field(None, description="cores/threads")
    ram: float | None = Field(None, description="GB")
    disk: str | None = None
    disk_speed: float | None = Field(None, description="MB/s")
    gpu: str | None = Field(None, description='"Nx NAME"')
    gpuram: float | None = Field(None, description="GB")
    net: Net | None = None


class Wallet(BaseModel):
    name: str
    deposit: str
    balance: float
    withdrawal_fee: float
    burn_per_day: float | None = Field(
        None, description="openclore: what your running orders cost per day in this currency"
    )
    runway_seconds: int | None = Field(
        None, description="openclore: how long the balance lasts at that rate (null: no burn)"
    )


class WalletsResponse(Envelope):
    wallets: list[Wallet]


class MyServer(BaseModel):
    id: int
    name: str
    connected: bool
    visibility: Literal["public", "hidden"]
    pricing: CoinMap = Field(description="on-demand price per day, per currency")
    online: bool
    min_spot_pricing: CoinMap = Field(description="minimum spot price per day, per currency")
    init_token: str | None = Field(None, description="until the agent registers")
    specs: Specs | None = None
    not_listed: Literal["no_gpu"] | None = Field(
        None,
        description="openclore: why the marketplace leaves this server out whatever its "
        "settings (no_gpu: its agent reports no GPU); absent when nothing does",
    )


class MyServersResponse(Envelope):
    servers: list[MyServer]
    limit: int


class BackgroundJob(BaseModel):
    image: str | None
    command: str
    env: dict[str, str] = Field(description="an object, {} when empty (live Clore's type)")
    times_updated: int


class UsdSides(BaseModel):
    on_demand: float | None = None
    spot: float | None = None


class ServerConfig(BaseModel):
    name: str
    connected: bool
    visibility: str
    pricing: CoinMap
    spot_pricing: CoinMap
    mrl: int = Field(description="hours")
    online: bool
    initialized: bool
    id: int
    rental_status: int = Field(description="0 not rented, 1 spot, 2 on-demand")
    specs: Specs | None
    background_job: BackgroundJob
    allowed_coins: list[str] = Field(description="currencies the server accepts now")
    gpu_array: list[str]
    usd_pricing: dict[str, UsdSides] = Field(description="USD per day, per currency")
    autoprice: dict[str, Literal["usd"] | bool] = Field(
        description='"usd": that currency\'s prices follow usd_pricing at the exchange rate'
    )


class ServerConfigResponse(Envelope):
    config: ServerConfig
    creation_completed: bool


class UsdPrice(BaseModel):
    """What the prices are worth in USD at the operator's exchange rates (absent without)."""

    on_demand_usd: float | None = Field(None, description="lowest over the currencies")
    spot_usd: float | None = Field(None, description="lowest minimum spot price")
    spot: float | None = Field(None, description="= spot_usd (the name live clients read)")
    on_demand_btc: float | None = None
    on_demand_clore: float | None = None
    spot_btc: float | None = None
    spot_clore: float | None = None


class MarketPrice(BaseModel):
    on_demand: CoinMap
    spot: CoinMap
    usd: UsdPrice | None = None
    original_usd: dict[str, UsdSides] | None = Field(None, description="the host's USD prices")


class Rating(BaseModel):
    avg: float
    cnt: int


class StorageOffer(BaseModel):
    """openclore (SPEC §8): the disk each rental gets and what storage costs per GB per day."""

    disk_gb: int
    price_per_gb_day: dict[str, float] = Field(description="per currency, coins")


class MarketServer(BaseModel):
    id: int
    owner: int
    mrl: int = Field(description="hours")
    price: MarketPrice
    rented: bool
    specs: Specs | None
    allowed_coins: list[str]
    gpu_array: list[str]
    reliability: float = Field(description="online fraction of 30 days, prior 0.9")
    rating: Rating
    cuda_version: str = Field(description='"" when unknown')
    online: bool
    storage: StorageOffer | None = Field(None, description="openclore: absent when none offered")


class MarketplaceResponse(Envelope):
    servers: list[MarketServer]
    my_servers: list[int]
    total: int | None = Field(
        None, description="openclore query extension: matches before limit/offset"
    )


class Order(BaseModel):
    id: int
    fee: float = Field(description="platform fee, percent")
    creation_fee: float
    price: float = Field(description="per day")
    mrl: int = Field(description="seconds")
    image: str
    currency: str
    spend: float
    ct: int = Field(description="creation time, unix seconds")
    p: int | None = None
    specs: Specs | None
    si: int = Field(description="server id")
    pub_cluster: list[str] | None = None
    tcp_ports: list[str] = Field(description='"container:public"')
    http_port: str | None = None
    http_pub: str | None = Field(
        None, description="URL of the http port through the access gateway (live Clore field)"
    )
    spot: bool | None = None
    expired: bool | None = None
    simulated: bool | None = Field(
        None, description="openclore: a demo server's order (no host: its ports are not served)"
    )
    online: bool | None = Field(None, description="the server's agent is online")
    cuda_version: str | None = None
    reliability: float | None = None
    rating: Rating | None = None
    gpu_array: list[str] | None = None
    owner: int | None = None
    my_past_rating: int | None = Field(None, description="your cancel_order rating")
    oc: list[dict[str, float]] | None = Field(None, description="GigaSPOT GPU settings")
    oc_failed: bool | None = Field(None, description="the agent could not apply oc")


class OrderLogsResponse(Envelope):
    logs: list[str] = Field(description="the container's output, oldest line first")


class MyOrdersResponse(Envelope):
    orders: list[Order]
    limit: int


class SpotOffer(BaseModel):
    offer_id: int
    bid: float
    active: bool
    my: bool
    currency: str


class SpotServer(BaseModel):
    min_pricing: CoinMap
    mrl: int = Field(description="seconds")
    visibility: str
    online: bool


class SpotMarket(BaseModel):
    currency_rates_in_usd: CoinMap = Field(description="USD per coin, where a rate is set")
    offers: list[SpotOffer]
    server: SpotServer


class SpotMarketplaceResponse(Envelope):
    market: SpotMarket | None = None
    exists: bool


class CreateOrderResponse(Envelope):
    order_id: int
    order: Order


class AddServerResponse(Envelope):
    id: int
    init_token: str


class Event(BaseModel):
    id: int = Field(description="grows in commit order: dedupe and resume on it")
    type: str = Field(
        description="order.created, order.running, order.outbid, order.paused, "
        "order.failed, order.ended, balance.low, server.online, server.offline, "
        "deposit.credited, webhook.ping"
    )
    time: int = Field(description="unix seconds (the market's clock) of the change")
    data: dict[str, Any]


class EventsResponse(Envelope):
    events: list[Event]
    last_id: int = Field(description="pass as ?after= for the next page")


class WebhookCreated(Envelope):
    id: int
    secret: str = Field(description="HMAC-SHA256 signing secret; shown only here")
    url: str
    events: list[str] | None


class WebhookInfo(BaseModel):
    id: int
    url: str
    events: list[str] | None
    created_at: int


class WebhooksResponse(Envelope):
    webhooks: list[WebhookInfo]


class Delivery(BaseModel):
    id: int
    event_id: int | None
    state: Literal["pending", "delivered", "failed"]
    attempts: int
    last_status: int | None
    last_error: str | None
    last_attempt_at: float | None
    next_attempt_at: float | None
    delivered_at: float | None
    created_at: float


class DeliveriesResponse(Envelope):
    deliveries: list[Delivery]


class AlertsResponse(Envelope):
    low_balance_seconds: int | None


class CancelResult(BaseModel):
    id: int
    cancelled: bool
    error: str | None = None


class CancelOrdersResponse(Envelope):
    failed_to_cancel: list[str] = Field(description="ids (as strings) not cancelled")
    results: list[CancelResult] = Field(description="per order, in the order sent")


class FeeBase(BaseModel):
    base: CoinMap = Field(description="platform fee, percent of spend")


class RenterFees(BaseModel):
    on_demand: FeeBase
    spot: FeeBase


class CreationFees(BaseModel):
    on_demand: CoinMap
    spot: CoinMap


class PohConfig(BaseModel):
    max_reduction_percent: float
    max_poh_amount: float


class RenterFeesResponse(Envelope):
    renter_fees: RenterFees
    creation_fees: CreationFees
    poh_config: PohConfig = Field(description="no Proof of Holding in openclore: zeros")
    poh_balance: float


class PohBalanceResponse(Envelope):
    items: list[dict[str, Any]] = Field(description="always empty: no Proof of Holding")
    balance: dict[str, Any]
    count: int


class GigaspotBid(BaseModel):
    owner: int
    id: int
    active: bool
    to_cache: bool
    cached: bool
    price: float
    currency: str
    pl: float = Field(description="sum of the bid's power limits (W)")


class GigaspotGpu(BaseModel):
    model: str
    pl: list[float] = Field(description="[min, max] W; [0, 0] unknown")
    core_lock: list[float]
    mem_lock: list[float]
    core_offset: list[float]
    mem_offset: list[float]


class GigaspotServer(BaseModel):
    bids: list[GigaspotBid]
    on_demand_rented: bool
    online: bool
    cpu: str
    cores: int
    threads: int
    ram: float
    gpus: list[GigaspotGpu]
    working_properly: bool
    cuda: str
    max_rental_length: int = Field(description="seconds")
    cc: str
    host: int
    reliability: float
    min_bid: float
    min_bids: CoinMap
    energy_price: float


class GetGigaspotResponse(Envelope):
    my_user_id: int
    v1_snapshot_url: str = Field(description="the snapshot alone, fetched without a token")
    creation_fees: CoinMap
    snapshot: dict[str, GigaspotServer]


class GigaspotCreated(BaseModel):
    server: int
    order_id: int
    oc_error: str | None = None


class CreateGigaspotOrdersResponse(Envelope):
    failed_to_oc_servers: list[int] = Field(description="bid placed, GPU settings not taken")
    failed_to_rent_servers: list[int]
    too_low_bids_servers: list[int]
    orders: list[GigaspotCreated]


class EditGigaspotOrdersResponse(Envelope):
    success_to_update_ids: list[int]
    failed_to_update_ids: list[int]
    too_low_bid_ids: list[int]
    failed_to_oc_ids: list[int] = Field(description="updated, GPU settings not taken")


# ---------------------------------------------------------------- money in and out (extensions)


class Transaction(BaseModel):
    id: int = Field(description="the ledger transfer's id (entries are in this order)")
    time: int = Field(description="unix seconds")
    currency: str
    kind: str = Field(
        description="deposit, creation_fee, spend, fee, earning, withdrawal, withdrawal_fee, "
        "withdrawal_back, refund, adjustment"
    )
    amount: float = Field(description="signed: positive credits the wallet")
    balance: float = Field(description="the wallet's balance after this entry")
    order_id: int | None
    memo: str | None = Field(description="the reason (refunds, adjustments, withdrawals)")
    by: str | None = Field(description="who booked it, where a person or a provider did")


class TransactionsResponse(Envelope):
    transactions: list[Transaction]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class Statement(BaseModel):
    model_config = ConfigDict(populate_by_name=True)
    user: str
    currency: str
    month: str = Field(description="YYYY-MM (UTC)")
    from_: int = Field(alias="from", description="first second of the month")
    until: int = Field(description="first second of the next month")
    opening_balance: float
    closing_balance: float = Field(description="opening_balance + the sum of totals")
    totals: dict[str, float] = Field(description="signed totals by kind")
    orders: list[dict[str, Any]] = Field(description="per order: totals by kind and total")
    entries: list[Transaction] = Field(description="every entry but the rental ticks")
    entry_count: int


class StatementResponse(Envelope):
    statement: Statement


class Withdrawal(BaseModel):
    id: int
    currency: str
    amount: float = Field(description="what the address receives")
    fee: float = Field(description="taken from the wallet on top of the amount")
    address: str
    state: Literal["pending", "approved", "rejected"]
    created_at: int
    decided_at: int | None
    txid: str | None = Field(description="the payout's transaction id (approved)")
    reason: str | None = Field(description="why it was rejected")


class WithdrawResponse(Envelope):
    withdrawal: Withdrawal


class WithdrawalsResponse(Envelope):
    withdrawals: list[Withdrawal]


class PaymentDepositResponse(Envelope):
    credited: bool = Field(description="false: this external_id was credited before (a replay)")
    external_id: str
    user_id: int
    currency: str
    amount: float

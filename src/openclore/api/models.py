"""Response shapes of the Clore API v1, as documented in the OpenAPI schema (the request bodies
are the market's: :mod:`openclore.market.requests`)."""

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


class MyServersResponse(Envelope):
    servers: list[MyServer]
    limit: int


class BackgroundJob(BaseModel):
    image: str | None
    command: str
    env: list[Any] | dict[str, str]
    times_updated: int


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


class ServerConfigResponse(Envelope):
    config: ServerConfig
    creation_completed: bool


class MarketPrice(BaseModel):
    on_demand: CoinMap
    spot: CoinMap


class Rating(BaseModel):
    avg: float
    cnt: int


class MarketServer(BaseModel):
    id: int
    owner: int
    mrl: int = Field(description="hours")
    price: MarketPrice
    rented: bool
    specs: Specs | None
    allowed_coins: list[str]
    gpu_array: list[str]
    reliability: float
    rating: Rating


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

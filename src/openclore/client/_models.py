"""Typed views of the Clore API v1 responses (SPEC §5), as openclore and Clore send them.

Units: every price is **per day** in whole coins of its currency; an order's ``mrl`` is in
**seconds**, a server's ``mrl`` (``ServerConfig``/``MarketServer``) in **hours**, and the spot
market's ``server.mrl`` in seconds. Money (prices, balances, fees, spend) is
:class:`~decimal.Decimal`, parsed from the JSON text without going through float. Every model
keeps fields it does not know (``model_extra``), so a newer server never breaks an older SDK.
"""

from __future__ import annotations

import re
from decimal import Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

CoinMap = dict[str, Decimal]
"""Price or balance per currency name (``{"bitcoin": Decimal("0.00001")}``)."""


class CloreModel(BaseModel):
    model_config = ConfigDict(extra="allow", populate_by_name=True)


class Net(CloreModel):
    up: float | None = Field(None, description="upload, Mbit/s")
    down: float | None = Field(None, description="download, Mbit/s")
    cc: str | None = Field(None, description="ISO country code")


class Specs(CloreModel):
    """What the host agent measured."""

    mb: str | None = None
    cpu: str | None = None
    cpus: str | None = Field(None, description='"cores/threads"')
    ram: float | None = Field(None, description="GB")
    disk: str | None = None
    disk_speed: float | None = Field(None, description="MB/s")
    gpu: str | None = Field(None, description='"Nx NAME"')
    gpuram: float | None = Field(None, description="GB per GPU")
    net: Net | None = None


class Wallet(CloreModel):
    name: str = Field(description="currency: bitcoin, CLORE-Blockchain, USD-Blockchain, …")
    deposit: str | None = Field(None, description="deposit address")
    balance: Decimal | None = None
    withdrawal_fee: Decimal | None = None
    burn_per_day: Decimal | None = Field(
        None, description="openclore: what your running orders cost per day in this currency"
    )
    runway_seconds: int | None = Field(
        None, description="openclore: how long the balance lasts at that rate (None: no burn)"
    )


class MyServer(CloreModel):
    """A server you host (``my_servers``). ``id`` is absent in the seed's example."""

    id: int | None = None
    name: str
    connected: bool = Field(description="the agent registered once (for good)")
    visibility: str = Field(description="public | hidden")
    pricing: CoinMap = Field(default_factory=dict, description="on-demand price per day")
    online: bool = False
    min_spot_pricing: CoinMap = Field(default_factory=dict, description="minimum spot bid per day")
    init_token: str | None = Field(None, description="until the agent registers")
    specs: Specs | None = None
    not_listed: str | None = Field(
        None, description="openclore: why the marketplace leaves it out (no_gpu: no GPU)"
    )


class BackgroundJob(CloreModel):
    image: str | None = None
    command: str | None = None
    env: dict[str, Any] | list[Any] = Field(default_factory=dict)
    times_updated: int | None = None


class ServerConfig(CloreModel):
    name: str
    connected: bool
    visibility: str
    pricing: CoinMap = Field(default_factory=dict, description="on-demand price per day")
    spot_pricing: CoinMap = Field(default_factory=dict, description="minimum spot bid per day")
    mrl: int = Field(description="max rental length, hours")
    online: bool
    initialized: bool | None = None
    id: int
    rental_status: int = Field(0, description="0 not rented, 1 spot, 2 on-demand")
    specs: Specs | None = None
    background_job: BackgroundJob | None = None
    allowed_coins: list[str] = Field(default_factory=list)
    usd_pricing: dict[str, dict[str, Decimal]] = Field(
        default_factory=dict, description="USD per day per currency: {on_demand, spot}"
    )
    autoprice: dict[str, str | bool] = Field(
        default_factory=dict, description='"usd": the currency follows usd_pricing'
    )
    disk_gb: int | None = Field(None, description="openclore: the disk each rental gets (0: none)")
    storage_pricing: CoinMap = Field(
        default_factory=dict, description="openclore: storage price per GB per day"
    )


class UsdPrice(CloreModel):
    """What a server's prices are worth in USD at the market's exchange rates."""

    on_demand_usd: Decimal | None = Field(None, description="lowest over its currencies")
    spot_usd: Decimal | None = None
    on_demand_btc: Decimal | None = None
    on_demand_clore: Decimal | None = None
    spot_btc: Decimal | None = None
    spot_clore: Decimal | None = None


class MarketPrice(CloreModel):
    on_demand: CoinMap = Field(default_factory=dict, description="per day")
    spot: CoinMap = Field(default_factory=dict, description="minimum spot bid per day")
    usd: UsdPrice | None = Field(None, description="absent when the market sets no rates")


class Rating(CloreModel):
    avg: float | None = None
    cnt: int | None = None


_GPU_COUNT = re.compile(r"^\s*(\d+)\s*x\s*(.*)$")


class PartialGpuRental(CloreModel):
    """openclore: whether renters may take some of a server's GPUs, and which are free."""

    enabled: bool = False
    min_gpus: int = 1
    free_indices: list[int] = Field(default_factory=list, description="GPUs no order holds")
    price_per_gpu: MarketPrice = Field(default_factory=MarketPrice, description="per GPU per day")


class StorageOffer(CloreModel):
    """openclore: the disk each rental gets and its storage price per GB per day."""

    disk_gb: int
    price_per_gb_day: dict[str, Decimal] = Field(default_factory=dict)


class MarketServer(CloreModel):
    """A listing in ``marketplace``."""

    id: int
    owner: int | None = None
    mrl: int | None = Field(None, description="max rental length, hours")
    price: MarketPrice = Field(default_factory=MarketPrice)
    rented: bool = False
    specs: Specs | None = None
    allowed_coins: list[str] = Field(default_factory=list)
    gpu_array: list[str] = Field(default_factory=list, description="one name per GPU")
    reliability: float | None = Field(None, description="0–1")
    rating: Rating | None = None
    cuda_version: str | None = None
    online: bool | None = None
    partial_gpu_rental: PartialGpuRental | None = Field(None, description="openclore: per GPU")
    storage: StorageOffer | None = Field(None, description="openclore: disk and storage price")

    @property
    def gpu_count(self) -> int:
        if self.gpu_array:
            return len(self.gpu_array)
        match = _GPU_COUNT.match(self.specs.gpu or "") if self.specs else None
        return int(match.group(1)) if match else 0

    @property
    def gpu_name(self) -> str:
        if self.gpu_array:
            return self.gpu_array[0]
        gpu = (self.specs.gpu or "") if self.specs else ""
        match = _GPU_COUNT.match(gpu)
        return match.group(2) if match else gpu

    @property
    def country(self) -> str | None:
        return self.specs.net.cc if self.specs and self.specs.net else None

    def on_demand_price(self, currency: str = "bitcoin") -> Decimal | None:
        """On-demand price per day in ``currency``, or None when not offered in it."""
        return self.price.on_demand.get(currency)

    def spot_price(self, currency: str = "bitcoin") -> Decimal | None:
        """Minimum spot bid per day in ``currency``."""
        return self.price.spot.get(currency)


class Marketplace(CloreModel):
    servers: list[MarketServer] = Field(default_factory=list)
    my_servers: list[int] = Field(default_factory=list, description="ids of your own servers")
    total: int | None = Field(None, description="matches before limit/offset (openclore query)")


_TCP_PORT = re.compile(r"^\s*(\d+)\s*:\s*(\d+)\s*$")


class OrderVolume(CloreModel):
    """openclore: a volume an order mounts, and where in its container."""

    id: int
    path: str


class Order(CloreModel):
    """An order or spot offer (``my_orders``; ``create_order``'s ``order``)."""

    id: int
    fee: Decimal | None = Field(None, description="platform fee, percent")
    creation_fee: Decimal | None = None
    price: Decimal | None = Field(None, description="per day")
    mrl: int | None = Field(None, description="max rental length, seconds")
    image: str | None = None
    currency: str | None = None
    spend: Decimal | None = None
    ct: int | None = Field(None, description="creation time, unix seconds")
    p: int | None = Field(None, description="proxy cluster id")
    specs: Specs | None = None
    si: int | None = Field(None, description="server id")
    pub_cluster: list[str] = Field(default_factory=list, description="public hostnames")
    tcp_ports: list[str] = Field(default_factory=list, description='"container:public"')
    http_port: str | None = Field(None, description="container port behind the HTTP proxy")
    http_pub: str | None = Field(None, description="URL of the http port (live Clore field)")
    spot: bool = False
    expired: bool = False
    online: bool | None = Field(None, description="the server's agent is online")
    cuda_version: str | None = None
    reliability: float | None = None
    rating: Rating | None = None
    gpu_array: list[str] = Field(default_factory=list)
    my_past_rating: int | None = Field(None, description="your rating of this order")
    # openclore extensions (absent on Clore):
    oc: list[dict[str, float]] | None = Field(None, description="GigaSPOT GPU settings")
    oc_failed: bool | None = Field(None, description="the host could not apply oc")
    running: bool | None = Field(None, description="openclore: the container runs now")
    state: str | None = Field(
        None,
        description="openclore: running (or what its container does while it holds its GPUs: "
        "pulling, starting, crash_loop…), stopped, waiting, paused or ended",
    )
    container_state: str | None = Field(None, description="openclore: as the host's agent said")
    error: str | None = Field(None, description="openclore: why its container cannot run")
    simulated: bool | None = Field(None, description="openclore: a demo server's order")
    gpus: list[int] | None = Field(None, description="openclore: the GPU indices it holds")
    gpu_count: int | None = Field(None, description="openclore: how many GPUs it rents")
    # keeping work (openclore, SPEC §8):
    disk_gb: int | None = Field(None, description="the disk it keeps while stopped, GB")
    storage_per_day: Decimal | None = Field(None, description="what it pays per day stopped")
    storage_spend: Decimal | None = Field(None, description="storage paid so far")
    stop_reason: str | None = Field(None, description="while stopped: user, timer or preempted")
    volumes: list[OrderVolume] = Field(default_factory=list, description="volumes it mounts")
    stop_at: int | None = Field(None, description="when its stop_after timer stops it, unix s")
    restarts: int | None = Field(None, description="restart_order calls so far")
    resets: int | None = Field(None, description="reset_order calls so far")
    template_id: int | None = Field(None, description="openclore: the template it started from")
    image_digest: str | None = Field(
        None, description="openclore: the image its container was created from (repo@sha256:…)"
    )

    @property
    def stopped(self) -> bool:
        """openclore: it holds no GPU and keeps its disk (``start_order`` runs it again)."""
        return self.state == "stopped"

    @property
    def type(self) -> Literal["spot", "on-demand"]:
        return "spot" if self.spot else "on-demand"

    @property
    def ports(self) -> dict[int, int]:
        """Published TCP ports, container port → public port."""
        out: dict[int, int] = {}
        for item in self.tcp_ports:
            match = _TCP_PORT.match(item)
            if match:
                out[int(match.group(1))] = int(match.group(2))
        return out

    @property
    def host(self) -> str | None:
        """The first public hostname, where published ports are reached."""
        return self.pub_cluster[0] if self.pub_cluster else None

    @property
    def ssh_port(self) -> int | None:
        return self.ports.get(22)

    def ssh_command(self, user: str = "root") -> str | None:
        """``ssh -p PORT root@HOST`` once port 22 is published, else None."""
        if self.host is None or self.ssh_port is None:
            return None
        return f"ssh -p {self.ssh_port} {user}@{self.host}"


class SpotOffer(CloreModel):
    offer_id: int = Field(description="the spot order's id")
    bid: Decimal = Field(description="per day")
    active: bool = Field(description="this offer runs now")
    my: bool = False
    currency: str | None = None


class SpotServer(CloreModel):
    min_pricing: CoinMap = Field(default_factory=dict, description="minimum bid per day")
    mrl: int | None = Field(None, description="max rental length, seconds")
    visibility: str | None = None
    online: bool | None = None


class SpotMarket(CloreModel):
    currency_rates_in_usd: CoinMap = Field(default_factory=dict, description="USD per coin")
    offers: list[SpotOffer] = Field(default_factory=list)
    server: SpotServer = Field(default_factory=SpotServer)


class SpotMarketplace(CloreModel):
    """``spot_marketplace``: ``exists`` is False (and ``market`` None) for an unknown server."""

    exists: bool
    market: SpotMarket | None = None

    @property
    def offers(self) -> list[SpotOffer]:
        return self.market.offers if self.market else []


class Volume(CloreModel):
    """openclore: a renter's volume (SPEC §8): storage on one server that outlives every order,
    billed ``price_per_day`` from creation to deletion; orders on its server mount it."""

    id: int
    name: str
    server_id: int
    size_gb: int
    currency: str
    price_per_day: Decimal = Field(description="size_gb × the host's storage price per GB")
    state: Literal["creating", "ready", "gone", "ended", "deleted"] | str = Field(
        description="creating (its host's agent makes it), ready, gone (the host lost it), "
        "ended (the server left, or the balance ran out), deleted"
    )
    created_at: int
    ended_at: int | None = None
    spend: Decimal = Field(Decimal(0), description="paid so far")
    quota: bool | None = Field(None, description="the host enforces size_gb (None: not known)")
    mounted_by: list[int] = Field(default_factory=list, description="live orders mounting it")
    error: str | None = Field(None, description="what the host's agent said went wrong")


class AddedServer(CloreModel):
    """openclore extension ``add_server``: the new server's id and its agent's init token."""

    id: int
    init_token: str


# ----------------------------------------------------------------- whole response bodies


class Envelope(CloreModel):
    code: int


class Transaction(CloreModel):
    """One ledger entry of yours (``transactions``): signed amount, balance after it."""

    id: int
    time: int = Field(description="unix seconds")
    currency: str
    kind: str = Field(
        description="deposit, creation_fee, spend, fee, earning, withdrawal, withdrawal_fee, "
        "withdrawal_back, refund, adjustment"
    )
    amount: Decimal = Field(description="positive credits your wallet, negative debits it")
    balance: Decimal = Field(description="the wallet's balance after this entry")
    order_id: int | None = None
    memo: str | None = Field(None, description="why (refunds, adjustments, withdrawals)")
    by: str | None = Field(None, description="who booked it, where a person or provider did")


class TransactionsPage(Envelope):
    transactions: list[Transaction] = Field(default_factory=list)
    next_cursor: str | None = Field(None, description="pass as cursor for the next page")


class Withdrawal(CloreModel):
    id: int
    currency: str
    amount: Decimal = Field(description="what the address receives")
    fee: Decimal = Field(description="taken from the wallet on top of the amount")
    address: str
    state: Literal["pending", "approved", "rejected"] | str
    created_at: int
    decided_at: int | None = None
    txid: str | None = Field(None, description="the payout's transaction id, once approved")
    reason: str | None = Field(None, description="why it was rejected")


class WithdrawResponse(Envelope):
    withdrawal: Withdrawal


class WithdrawalsResponse(Envelope):
    withdrawals: list[Withdrawal] = Field(default_factory=list)


class Statement(CloreModel):
    """A month's statement of one currency: opening + Σ totals = closing."""

    user: str
    currency: str
    month: str
    from_: int = Field(alias="from")
    until: int
    opening_balance: Decimal
    closing_balance: Decimal
    totals: dict[str, Decimal] = Field(default_factory=dict, description="signed, by kind")
    orders: list[dict[str, Any]] = Field(
        default_factory=list, description="per order: signed totals by kind and ``total``"
    )
    entries: list[Transaction] = Field(
        default_factory=list, description="every entry that is not a rental tick"
    )
    entry_count: int = 0


class StatementResponse(Envelope):
    statement: Statement


class WalletsResponse(Envelope):
    wallets: list[Wallet] = Field(default_factory=list)


class MyServersResponse(Envelope):
    servers: list[MyServer] = Field(default_factory=list)
    limit: int | None = Field(None, description="how many servers you may have")


class ServerConfigResponse(Envelope):
    config: ServerConfig
    creation_completed: bool | None = None


class MarketplaceResponse(Envelope, Marketplace):
    pass


class OrderLogsResponse(Envelope):
    logs: list[str] = Field(default_factory=list)


class MyOrdersResponse(Envelope):
    orders: list[Order] = Field(default_factory=list)
    limit: int | None = Field(None, description="max active orders")


class SpotMarketplaceResponse(Envelope, SpotMarketplace):
    pass


class OrderResponse(Envelope):
    """openclore ``stop_order`` / ``start_order``: the order as it is now."""

    order: Order


class VolumesResponse(Envelope):
    volumes: list[Volume] = Field(default_factory=list)


class CreateVolumeResponse(Envelope):
    volume_id: int
    volume: Volume


class SshKey(CloreModel):
    """openclore: an SSH public key on the account (SPEC §8); every new order's container gets
    it besides the order's own ``ssh_key``."""

    id: int
    name: str
    type: str = Field(description="ssh-ed25519, ecdsa-sha2-nistp256…, ssh-rsa")
    bits: int
    fingerprint: str = Field(description="as ssh-keygen -l prints it: SHA256:…")
    public_key: str = Field("", description="the key line as kept")
    created_at: int


class Template(CloreModel):
    """openclore: an image and its settings ``create_order(template_id=…)`` starts from; the
    order's own fields override them. Public templates are listed to everyone."""

    id: int
    name: str
    image: str
    command: str | None = None
    env: dict[str, str] | None = None
    ports: dict[str, str] | None = None
    jupyter_token: str | None = None
    disk_gb: int | None = None
    public: bool = False
    readme: str | None = None
    owner: int | None = None
    mine: bool = False
    created_at: int = 0


class ApiKey(CloreModel):
    """openclore: an API key of the account (SPEC §8 scopes), never with its secret."""

    id: int
    name: str | None = None
    prefix: str = Field("", description="the secret's first 8 characters")
    scopes: list[str] = Field(default_factory=list, description="read, rent, host, money, account")
    created_at: int = 0
    expires_at: int | None = None
    expired: bool = False
    spend_limit: CoinMap | None = Field(
        None, description="what its orders may be billed per market day (UTC), per currency"
    )
    spent_today: CoinMap | None = None


class CreatedApiKey(CloreModel):
    """A new key and its secret, which the market shows this once."""

    key: ApiKey
    secret: str


class ApiKeyResponse(Envelope):
    key: ApiKey


class ApiKeysResponse(Envelope):
    keys: list[ApiKey] = Field(default_factory=list)


class StandingOrder(CloreModel):
    """openclore: a standing order (SPEC §8): the market rents up to ``count`` servers (or
    ``gpu_count`` GPUs each) matching ``query`` at or below ``max_price_per_day`` as soon as
    they appear, earlier standing orders first. ``state``: open, filled, cancelled, expired;
    ``order_ids``: the ordinary orders its fills made; ``last_error``: why the last attempt
    could not fill it (``not_enough_balance``…)."""

    id: int
    state: str
    query: dict[str, str] = Field(default_factory=dict)
    max_price_per_day: Decimal
    currency: str
    gpu_count: int | None = None
    type: str = "on-demand"
    template_id: int | None = None
    order: dict[str, Any] = Field(default_factory=dict)
    count: int = 1
    filled: int = 0
    order_ids: list[int] = Field(default_factory=list)
    expires_at: int | None = None
    created_at: int = 0
    ended_at: int | None = None
    last_error: str | None = None


class StandingOrderResponse(Envelope):
    standing_order: StandingOrder


class StandingOrdersResponse(Envelope):
    standing_orders: list[StandingOrder] = Field(default_factory=list)


class SshKeyResponse(Envelope):
    key: SshKey


class SshKeysResponse(Envelope):
    keys: list[SshKey] = Field(default_factory=list)


class TemplateResponse(Envelope):
    template: Template


class TemplatesResponse(Envelope):
    templates: list[Template] = Field(default_factory=list)


class CreateOrderResponse(Envelope):
    """openclore adds ``order_id`` and ``order``; Clore sends ``{"code":0}`` alone."""

    order_id: int | None = None
    order: Order | None = None


class Event(CloreModel):
    """One market event (openclore): ``order.created``, ``order.running``, ``order.outbid``,
    ``order.paused``, ``order.failed``, ``order.ended``, ``balance.low``, ``server.online``,
    ``server.offline``, ``deposit.credited``, ``withdrawal.requested``, ``withdrawal.approved``,
    ``withdrawal.rejected``, ``balance.adjusted``, ``webhook.ping``, ``order.stopped``,
    ``order.restarted``, ``order.reset``, ``order.extended``, ``volume.created``,
    ``volume.ready``, ``volume.gone``, ``volume.deleted``, ``volume.ended``, ``ssh_key.added``,
    ``ssh_key.deleted``, ``template.created``, ``template.deleted``. ``id`` grows in
    commit order: dedupe and resume on it."""

    id: int
    type: str
    time: int = Field(description="unix seconds (the market's clock) of the change")
    data: dict[str, Any] = Field(default_factory=dict)


class EventPage(CloreModel):
    events: list[Event]
    last_id: int = Field(description="pass as ``after`` to get the next page")


class Webhook(CloreModel):
    id: int
    url: str
    events: list[str] | None = Field(None, description="event types sent; None: all")
    secret: str | None = Field(None, description="signing secret, shown once at creation")
    created_at: int | None = None


class CancelResult(CloreModel):
    id: int
    cancelled: bool
    error: str | None = None


class CancelOrdersResponse(Envelope):
    failed_to_cancel: list[str] = Field(default_factory=list)
    results: list[CancelResult] = Field(default_factory=list, description="openclore: per order")


class RenterFees(CloreModel):
    """renter_fees: ``renter_fees.{on_demand,spot}.base`` (percent) and ``creation_fees``."""

    renter_fees: dict[str, dict[str, CoinMap]] = Field(default_factory=dict)
    creation_fees: dict[str, CoinMap] = Field(default_factory=dict)
    poh_config: dict[str, Decimal] = Field(default_factory=dict)
    poh_balance: Decimal = Decimal(0)

    def fee_percent(self, kind: str = "on_demand", currency: str = "bitcoin") -> Decimal | None:
        return self.renter_fees.get(kind, {}).get("base", {}).get(currency)


class GigaspotBid(CloreModel):
    owner: int | None = None
    id: int
    active: bool = False
    price: Decimal
    currency: str | None = None
    pl: float | None = None


class GigaspotGpu(CloreModel):
    model: str = ""
    pl: list[float] = Field(default_factory=list, description="[min, max] W")
    core_lock: list[float] = Field(default_factory=list)
    mem_lock: list[float] = Field(default_factory=list)
    core_offset: list[float] = Field(default_factory=list)
    mem_offset: list[float] = Field(default_factory=list)


class GigaspotServer(CloreModel):
    bids: list[GigaspotBid] = Field(default_factory=list)
    on_demand_rented: bool = False
    online: bool = False
    gpus: list[GigaspotGpu] = Field(default_factory=list)
    cuda: str | None = None
    max_rental_length: int | None = Field(None, description="seconds")
    cc: str | None = None
    host: int | None = None
    reliability: float | None = None
    min_bid: Decimal | None = None


class Gigaspot(CloreModel):
    my_user_id: int | None = None
    v1_snapshot_url: str | None = None
    creation_fees: CoinMap = Field(default_factory=dict)
    snapshot: dict[str, GigaspotServer] = Field(
        default_factory=dict, description="server id (text) → server; openclore sends it inline"
    )


class GigaspotCreated(CloreModel):
    failed_to_oc_servers: list[int] = Field(default_factory=list)
    failed_to_rent_servers: list[int] = Field(default_factory=list)
    too_low_bids_servers: list[int] = Field(default_factory=list)
    orders: list[dict[str, Any]] = Field(default_factory=list, description="openclore: made")


class GigaspotEdited(CloreModel):
    success_to_update_ids: list[int] = Field(default_factory=list)
    failed_to_update_ids: list[int] = Field(default_factory=list)
    too_low_bid_ids: list[int] = Field(default_factory=list)
    failed_to_oc_ids: list[int] = Field(default_factory=list)

"""The one settings object. Every value can be set with an ``OPENCLORE_<NAME>`` variable."""

from __future__ import annotations

import json
from decimal import Decimal, InvalidOperation
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

DEFAULT_CURRENCIES = ["bitcoin", "CLORE-Blockchain", "USD-Blockchain"]
MAX_RATE = Decimal(10) ** 9
# the built-in address secret: every installation keeping it derives the same deposit addresses
DEFAULT_ADDRESS_SECRET = "openclore-deposit-addresses"


def parse_rates(raw: Any) -> dict[str, Decimal]:
    """Exchange rates, dollars per coin, as the setting and ``admin rates set`` spell them: a
    JSON object ``{"bitcoin": 60000}``, the text ``bitcoin=60000,CLORE-Blockchain=0.05`` or a
    mapping. Each must be a positive, finite number of dollars (at most 10⁹, nine decimals)."""
    if raw is None:
        return {}
    if isinstance(raw, str):
        text = raw.strip()
        if text.startswith("{"):
            try:
                raw = json.loads(text, parse_float=Decimal)
            except ValueError as exc:
                raise ValueError(f"not a JSON object: {exc}") from None
        else:
            pairs: dict[str, Any] = {}
            for part in filter(None, (p.strip() for p in text.split(","))):
                name, sep, value = part.partition("=")
                if not sep or not name.strip():
                    raise ValueError(f"expected currency=rate, got {part[:40]!r}")
                pairs[name.strip()] = value.strip()
            raw = pairs
    if not isinstance(raw, dict):
        raise ValueError("rates must be an object of currency -> dollars per coin")
    out: dict[str, Decimal] = {}
    for name, value in raw.items():
        if not isinstance(name, str) or not 1 <= len(name) <= 32:
            raise ValueError("a currency name is 1 to 32 characters")
        try:
            if isinstance(value, bool):
                raise InvalidOperation
            rate = value if isinstance(value, Decimal) else Decimal(str(value))
        except InvalidOperation:
            raise ValueError(f"{name}: not a number") from None
        if not rate.is_finite() or rate <= 0 or rate > MAX_RATE or rate != round(rate, 9):
            raise ValueError(f"{name}: a rate is a positive number of dollars, nine decimals")
        out[name] = rate
    return out


class Settings(BaseSettings):
    """openclore settings (``OPENCLORE_*`` environment variables or CLI options)."""

    model_config = SettingsConfigDict(env_prefix="OPENCLORE_", extra="ignore")

    database_url: str = Field(
        "sqlite:///openclore.sqlite",
        description="SQLAlchemy URL: sqlite:///path.sqlite (embedded) or postgresql://user@host/db",
    )
    database_direct_url: str | None = Field(
        None,
        description="PostgreSQL behind a transaction pooler (PgBouncer, pool_mode=transaction): "
        "database_url names the pooler, this URL the database itself, for what a pooler cannot "
        "carry (LISTEN, session locks, migrations); set, it also turns prepared statements off "
        "on database_url. See docs/operations.md",
    )
    host: str = Field("127.0.0.1", description="Address the API server binds to")
    port: int = Field(8000, description="Port the API server listens on")
    workers: int = Field(1, ge=1, description="Number of API worker processes")
    demo: bool = Field(False, description="Seed and serve the demo world (implies sandbox)")
    sandbox: bool = Field(False, description="Enable the /sandbox/ time-travel extension endpoints")

    currencies: list[str] = Field(
        default_factory=lambda: list(DEFAULT_CURRENCIES), description="Wallet currencies"
    )
    default_currency: str = Field(
        "bitcoin", description="Currency of the plain on_demand/spot keys in set_server_settings"
    )
    withdrawal_fee: dict[str, Decimal] = Field(
        default_factory=lambda: {
            "bitcoin": Decimal("0.0001"),
            "CLORE-Blockchain": Decimal("1"),
            "USD-Blockchain": Decimal("1"),
        },
        description="Withdrawal fee shown in wallets, per currency (whole coins)",
    )
    withdrawal_daily_limit: dict[str, Decimal] = Field(
        default_factory=dict,
        description="Most a user may withdraw per currency in any 24 hours (whole coins; "
        "a currency not named has no limit)",
    )
    payments_webhook_secret: str = Field(
        "",
        description="Shared secret of the signed deposit webhook POST /payments/deposit "
        "(empty: the webhook is off)",
    )
    payments_webhook_tolerance: int = Field(
        300, ge=1, description="Seconds a deposit webhook's signature timestamp may be off"
    )
    fee_on_demand: Decimal = Field(Decimal("5"), description="Platform fee on on-demand spend, %")
    fee_spot: Decimal = Field(Decimal("2.5"), description="Platform fee on spot spend, %")
    creation_fee_on_demand: dict[str, Decimal] = Field(
        default_factory=lambda: {
            "bitcoin": Decimal("0.0000003"),
            "CLORE-Blockchain": Decimal("0.5"),
            "USD-Blockchain": Decimal("0.01"),
        },
        description="One-off fee charged when an on-demand order is created, per currency",
    )
    creation_fee_spot: dict[str, Decimal] = Field(
        default_factory=lambda: {
            "bitcoin": Decimal("0.0000001"),
            "CLORE-Blockchain": Decimal("0.2"),
            "USD-Blockchain": Decimal("0.005"),
        },
        description="One-off fee charged when a spot order is created, per currency",
    )
    usd_rates: Annotated[dict[str, Decimal], NoDecode] = Field(
        default_factory=dict,
        description=(
            "Exchange rates, dollars per coin: JSON or bitcoin=60000,CLORE-Blockchain=0.05 "
            "(rates set with 'openclore admin rates set' override them); none: no USD prices"
        ),
    )
    reliability_interval: int = Field(
        600, ge=0, description="Seconds between two recomputations of servers' reliability"
    )
    runway_seconds: int = Field(
        3600, ge=0, description="create_order needs creation fee + this many seconds of the price"
    )
    max_servers_per_user: int = Field(16, ge=0, description="'limit' in my_servers")
    max_active_orders: int = Field(13, ge=0, description="'limit' in my_orders")
    max_server_mrl_hours: int = Field(8760, ge=1, description="Largest server mrl (hours)")
    spot_lowering_interval: int = Field(
        600, ge=0, description="Seconds between two lowerings of one spot bid"
    )
    spot_starvation_seconds: int = Field(
        3600,
        ge=0,
        description="A spot bid waiting for GPU slots this long keeps lower bids off the free"
        " slots it needs (SPEC §8)",
    )

    rate_limit_interval: float = Field(
        1.0, ge=0, description="Seconds between requests per API token; 0 switches limits off"
    )
    create_order_interval: float = Field(
        5.0, ge=0, description="Seconds between create_order calls per API token; 0 = off"
    )
    rate_limit_tolerance: float = Field(
        0.1, ge=0, description="Jitter tolerated on the intervals above (seconds)"
    )
    rate_limit_local: bool = Field(
        True,
        description="Decide rate limits in memory while this process is the only one serving "
        "the database (exact either way; off: every request writes its limit to the database)",
    )
    http_status: Literal["clore", "rest"] = Field(
        "clore", description="'clore': HTTP 200 for codes 2/3/4/6; 'rest': 4xx mapping"
    )
    max_body_bytes: int = Field(65536, ge=1024, description="Largest request body accepted")
    header_timeout: float = Field(
        10.0, gt=0, description="Seconds a client may take to send a request's headers"
    )
    keep_alive_timeout: int = Field(
        5, ge=1, description="Seconds an idle keep-alive connection stays open"
    )
    max_connections: int = Field(
        10000,
        ge=16,
        description="Open connections (agents included) per process; more get HTTP 503",
    )
    max_connections_per_client: int = Field(
        0,
        ge=0,
        description="Open HTTP connections one client address may hold per process (agents' "
        "WebSockets not counted); more are answered HTTP 503 and closed at once. 0 = no cap "
        "(behind a proxy every client has the proxy's address)",
    )
    log_format: Literal["text", "json"] = Field(
        "text", description="'json': one JSON object per log line (with the request id)"
    )
    log_level: str = Field("info", description="Log level of the server's logs")
    metrics_token: str | None = Field(
        None, description="/metrics requires 'Authorization: Bearer <token>' (unset: see below)"
    )
    metrics_public: bool = Field(
        False,
        description="Serve /metrics to anyone when no metrics_token is set (it shows wallet "
        "totals and orders); otherwise /metrics without a token is refused (403)",
    )

    tick_interval: float = Field(
        5.0, ge=0, description="Seconds between engine ticks (billing, expiry); 0 = no ticker"
    )
    agent_timeout: int = Field(
        60, ge=1, description="Seconds without a heartbeat before a server goes offline"
    )
    public_url: str | None = Field(
        None,
        description="The market's address as hosts and renters reach it (https://market.example;"
        " default: the address a console page was asked at)",
    )
    public_hostnames: list[str] = Field(
        default_factory=list,
        description="pub_cluster for servers whose agent reports no public hostname",
    )
    connect_probe_private: bool = Field(
        False,
        description="The console's Connect panel probes renters' SSH endpoints at private "
        "addresses too (a market on a LAN); by default only public ones, the market's own names "
        "(public_hostnames, gateway_name) and, in a sandbox, the loopback",
    )
    gateway: bool = Field(
        True,
        description="Run the embedded access gateway in `serve` (one process per gateway name "
        "serves it, whatever the number of workers or replicas)",
    )
    gateway_name: str = Field(
        "localhost", description="The gateway's public name: the pub_cluster renters connect to"
    )
    gateway_bind: str = Field(
        "127.0.0.1", description="Address the gateway's public ports (tcp, http, ssh) listen on"
    )
    gateway_ssh_port: int = Field(2222, ge=1, le=65535, description="Port agents tunnel to")
    gateway_ssh_address: str | None = Field(
        None, description="host:port agents dial [default: gateway_name:gateway_ssh_port]"
    )
    gateway_port_range: str = Field(
        "20000-20999", description="Public tcp ports of rentals on the gateway (lo-hi)"
    )
    gateway_http_port: int = Field(
        8080, ge=0, le=65535, description="Port of the gateway's HTTP(S) router (0: none)"
    )
    http_domain: str = Field(
        "localhost", description="http ports are served at <order>-<port>.<http_domain>"
    )
    gateway_http_url: str | None = Field(
        None,
        description="URL template of http ports ({order}, {port}) [default: from the scheme, "
        "http_domain and gateway_http_port]; e.g. https://{order}-{port}.gpu.example.com "
        "behind Caddy",
    )
    gateway_tls_cert: str | None = Field(
        None, description="PEM certificate chain (wildcard for *.http_domain): serve HTTPS"
    )
    gateway_tls_key: str | None = Field(None, description="PEM private key of gateway_tls_cert")
    gateway_max_conns_per_order: int = Field(
        256, ge=1, description="Open connections to one order through the gateway"
    )
    gateway_max_conns: int = Field(
        8192, ge=1, description="Open public connections through the gateway in all"
    )
    gateway_max_conns_per_client_order: int = Field(
        32,
        ge=1,
        description="Open connections from one client address to one order (below the "
        "per-order cap: one address cannot take an order's connections from its renter)",
    )
    gateway_max_conns_per_client: int = Field(
        256,
        ge=1,
        description="Open connections from one client address through the gateway in all "
        "(HTTP connections count from their accept, before their request head)",
    )
    gateway_idle_timeout: float = Field(
        900.0, gt=0, description="Seconds a connection through the gateway may stay silent"
    )
    proxy_cluster: int = Field(1, description="'p' (proxy cluster id) shown in my_orders")
    address_secret: str = Field(
        DEFAULT_ADDRESS_SECRET,
        description="Secret mixed into generated deposit addresses: set it per installation "
        "(`serve` refuses the default outside sandbox/demo mode)",
    )

    webhook_delivery: bool = Field(
        True, description="Deliver webhooks from this process (`serve`); safe on every replica"
    )
    webhook_allow_private: bool = Field(
        False,
        description="Allow webhook URLs resolving to loopback, private, link-local or CGNAT "
        "addresses (the operator's own network); sandbox/demo mode allows loopback only",
    )
    webhook_timeout: float = Field(
        10.0,
        gt=0,
        description="Seconds one delivery attempt may take in all (connecting, sending, the "
        "answer's headers); only the answer's first 4 KiB are read",
    )
    webhook_concurrency: int = Field(
        64, ge=1, description="Webhook deliveries in flight at once in one process"
    )
    webhook_user_concurrency: int = Field(
        8, ge=1, description="Of those, at most this many for one user (a fair share)"
    )
    webhook_hook_concurrency: int = Field(
        4, ge=1, description="Of those, at most this many for one webhook"
    )
    webhook_lease: float = Field(
        60.0,
        gt=0,
        description="Seconds a claimed delivery stays with one process before "
        "another may retry it (a process that died mid-delivery)",
    )
    webhook_retry_base: float = Field(
        10.0, gt=0, description="First retry delay (seconds); doubles per failed attempt"
    )
    webhook_retry_max_delay: float = Field(
        21600.0, gt=0, description="Longest delay between two attempts (seconds)"
    )
    webhook_retry_window: float = Field(
        259200.0, ge=86400, description="Seconds a delivery is retried before it fails for good"
    )
    max_webhooks_per_user: int = Field(10, ge=0, description="Webhooks one user may register")
    max_event_streams_per_user: int = Field(
        10, ge=1, description="Event streams (GET /v1/events) one user may hold open per process"
    )
    event_retention_days: int = Field(
        30,
        ge=0,
        description="Days events and finished webhook deliveries are kept (0: forever); "
        "pending deliveries are kept until they finish",
    )
    idempotency_ttl: int = Field(
        86400, ge=60, description="Seconds an Idempotency-Key's answer is kept for replay"
    )

    @field_validator("currencies")
    @classmethod
    def _currencies_not_empty(cls, value: list[str]) -> list[str]:
        if not value:
            raise ValueError("at least one currency is required")
        return value

    @field_validator("usd_rates", mode="before")
    @classmethod
    def _parse_usd_rates(cls, value: Any) -> dict[str, Decimal]:
        return parse_rates(value)

    @field_validator("gateway_port_range")
    @classmethod
    def _port_range(cls, value: str) -> str:
        lo, _, hi = value.partition("-")
        if not (lo.strip().isdigit() and hi.strip().isdigit()):
            raise ValueError("a port range is lo-hi, e.g. 20000-20999")
        if not 1 <= int(lo) <= int(hi) <= 65535:
            raise ValueError("a port range is lo-hi within 1-65535")
        return f"{int(lo)}-{int(hi)}"

    @property
    def gateway_ports(self) -> tuple[int, int]:
        lo, _, hi = self.gateway_port_range.partition("-")
        return int(lo), int(hi)

    @property
    def gateway_address(self) -> str:
        return self.gateway_ssh_address or f"{self.gateway_name}:{self.gateway_ssh_port}"

    @property
    def gateway_url_template(self) -> str | None:
        if self.gateway_http_url:
            return self.gateway_http_url
        if not self.gateway_http_port:
            return None
        scheme = "https" if self.gateway_tls_cert else "http"
        default = 443 if scheme == "https" else 80
        port = "" if self.gateway_http_port == default else f":{self.gateway_http_port}"
        return f"{scheme}://{{order}}-{{port}}.{self.http_domain}{port}"

    @property
    def sandbox_enabled(self) -> bool:
        return self.sandbox or self.demo

    def address_secret_problem(self) -> str | None:
        """Why this market may not serve with its address secret (None: it may). Outside the
        sandbox the built-in default would give this market the deposit addresses of every
        other installation that kept it."""
        if self.sandbox_enabled:
            return None
        if not self.address_secret.strip() or self.address_secret == DEFAULT_ADDRESS_SECRET:
            return (
                "OPENCLORE_ADDRESS_SECRET is not set (or is the built-in default, which every "
                "installation shares: their deposit addresses would be the same as yours). Set "
                "it to a random value of this installation, e.g. OPENCLORE_ADDRESS_SECRET=$("
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'), and keep it "
                "(each wallet's address is derived from it). Sandbox/demo mode needs none."
            )
        return None

    def is_sqlite(self) -> bool:
        return self.database_url.startswith("sqlite")

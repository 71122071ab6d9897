"""Request bodies (validated) and response shapes (documented in OpenAPI).

Request models use strict scalar types: a string where a number belongs is code 2, not a guess.
Prices are ``Decimal`` so no float ever touches money.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictInt,
    StrictStr,
    ValidationError,
    field_validator,
    model_validator,
)

from openclore.domain.errors import InvalidInput

# SPEC §4: jupyter_token, ssh_key and ssh_password may only use these characters.
STARRED_FIELD = re.compile(r"^[a-zA-Z0-9\s\-=.@+/]+$")
IMAGE_REF = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$")
ENV_NAME = re.compile(r"^[^=\x00]+$")
# A price (per day) or an amount in one request. At most a million coins a day keeps
# price × the longest rental in seconds inside 64-bit integers, in SQL as in Python.
MAX_COINS = Decimal(1_000_000)
MAX_ID = 2**31 - 1

Price = Annotated[Decimal, Field(ge=0, le=MAX_COINS)]
PositivePrice = Annotated[Decimal, Field(gt=0, le=MAX_COINS)]
Id = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]

ORDER_TYPES = {"on-demand": False, "on_demand": False, "按需": False, "spot": True, "现货": True}


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def validate_body(model: type[Request], body: dict[str, Any]) -> Any:
    """Validate a parsed body; any problem becomes code 2 with a readable message."""
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False)[:5]:
            where = ".".join(str(p) for p in err["loc"]) or "body"
            problems.append(f"{where}: {err['msg']}")
        raise InvalidInput("; ".join(problems)) from None


class ServerNameRequest(Request):
    server_name: StrictStr = Field(min_length=1, max_length=128)


class CancelOrderRequest(Request):
    id: Id
    issue: StrictStr | None = None


class SetSpotPriceRequest(Request):
    order_id: Id
    desired_price: PositivePrice


class AddServerRequest(Request):
    name: StrictStr = Field(min_length=1, max_length=128)


class SetServerSettingsRequest(Request):
    """``name`` picks the server; every other field is optional and only what is sent changes."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: StrictStr = Field(min_length=1, max_length=128)
    availability: StrictBool | None = None
    visibility: Literal["public", "hidden"] | None = None
    mrl: Annotated[StrictInt, Field(ge=1)] | None = None
    on_demand: Price | None = None
    spot: Price | None = None

    def per_currency(self, currencies: list[str]) -> dict[str, dict[str, Decimal]]:
        """Per-currency keys such as ``bitcoin_on_demand`` or ``CLORE-Blockchain_spot``."""
        out: dict[str, dict[str, Decimal]] = {}
        for key, value in (self.model_extra or {}).items():
            for currency in currencies:
                for kind in ("on_demand", "spot"):
                    if key == f"{currency}_{kind}":
                        out.setdefault(currency, {})[kind] = _price(key, value)
        return out


def _price(key: str, value: Any) -> Decimal:
    if isinstance(value, bool) or not isinstance(value, int | Decimal | float):
        raise InvalidInput(f"{key}: must be a number")
    dec = Decimal(str(value)) if not isinstance(value, Decimal) else value
    if not dec.is_finite() or dec < 0 or dec > MAX_COINS:
        raise InvalidInput(f"{key}: must be a price between 0 and {MAX_COINS}")
    return dec


class CreateOrderRequest(Request):
    currency: StrictStr = Field(min_length=1, max_length=32)
    image: StrictStr = Field(min_length=1, max_length=512)
    renting_server: Id
    type: StrictStr
    spotprice: PositivePrice | None = None
    ports: dict[str, StrictStr] | None = None
    env: dict[str, StrictStr] | None = None
    jupyter_token: StrictStr | None = Field(None, max_length=32)
    ssh_key: StrictStr | None = Field(None, max_length=3072)
    ssh_password: StrictStr | None = Field(None, max_length=32)
    command: StrictStr | None = Field(None, max_length=16384)
    required_price: Price | None = None
    autossh_entrypoint: StrictBool | None = None

    @field_validator("image")
    @classmethod
    def _image(cls, value: str) -> str:
        if not IMAGE_REF.match(value):
            raise ValueError("not a valid Docker image reference")
        return value

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value not in ORDER_TYPES:
            raise ValueError("must be 'on-demand' or 'spot'")
        return value

    @field_validator("ports")
    @classmethod
    def _ports(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > 5:
            raise ValueError("at most 5 ports")
        for port, proto in value.items():
            if not port.isdigit() or not 1 <= int(port) <= 65535:
                raise ValueError(f"port {port[:16]!r} is not a number from 1 to 65535")
            if proto not in ("tcp", "http"):
                raise ValueError(f"port {port}: protocol must be 'tcp' or 'http'")
        if sum(1 for proto in value.values() if proto == "http") > 1:
            raise ValueError("at most one http port")
        return {str(int(port)): proto for port, proto in value.items()}

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        for name, val in value.items():
            if not 1 <= len(name) <= 128 or not ENV_NAME.match(name):
                raise ValueError(f"variable name {name[:32]!r}: 1 to 128 characters, no '='")
            if len(val) > 1536 or "\x00" in val:
                raise ValueError(f"variable {name[:32]!r}: value longer than 1536 characters")
        if len(json.dumps(value, ensure_ascii=False, separators=(",", ":"))) > 12000:
            raise ValueError("more than 12000 characters when serialized")
        return value

    @field_validator("jupyter_token", "ssh_key", "ssh_password")
    @classmethod
    def _starred(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        if not STARRED_FIELD.match(value):
            raise ValueError("only letters, digits, whitespace and - = . @ + / are allowed")
        return value

    @model_validator(mode="after")
    def _spot_needs_price(self) -> CreateOrderRequest:
        if self.is_spot and self.spotprice is None:
            raise ValueError("spotprice is required for a spot order")
        return self

    @property
    def is_spot(self) -> bool:
        return ORDER_TYPES[self.type]


class SandboxAdvanceRequest(Request):
    seconds: Annotated[StrictInt, Field(ge=0, le=10 * 365 * 86400)]


class SandboxDepositRequest(Request):
    currency: StrictStr = Field(min_length=1, max_length=32)
    amount: PositivePrice


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
    spot: bool | None = None
    expired: bool | None = None


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

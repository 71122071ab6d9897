"""Request bodies of the market's use cases, validated.

Request models use strict scalar types: a string where a number belongs is code 2, not a guess.
Prices are ``Decimal`` so no float ever touches money.
"""

from __future__ import annotations

import json
import re
from decimal import Decimal
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
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
from openclore.domain.specs import UNSAFE_TEXT
from openclore.domain.text import check_text

# SPEC §4: jupyter_token, ssh_key and ssh_password may only use these characters.
STARRED_FIELD = re.compile(r"^[a-zA-Z0-9\s\-=.@+/]+$")
IMAGE_REF = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9._/:@-]*$")
ENV_NAME = re.compile(r"^[^=\x00]+$")
# A price (per day) or an amount in one request. At most a million coins a day keeps
# price × the longest rental in seconds inside 64-bit integers, in SQL as in Python.
MAX_COINS = Decimal(1_000_000)
MAX_ID = 2**31 - 1
MAX_GPUS = 64  # GPU slots on one server: more than any machine has
MAX_DISK_GB = 1_000_000  # a petabyte: more than any host offers one rental
MAX_TIMER = 10 * 365 * 86400  # stop_after / terminate_after, seconds
MOUNT_PATH = re.compile(r"^/[A-Za-z0-9_./-]{1,255}$")


def _json_number(value: Any) -> Any:
    """Money is a JSON number: a string such as " 2e-3 " or a boolean is not an amount."""
    if isinstance(value, bool) or not isinstance(value, int | float | Decimal):
        raise ValueError("must be a number")
    return value


def _printable(value: str) -> str:
    """Names are shown in terminals and pages: no control or direction-override characters."""
    if UNSAFE_TEXT.search(value):
        raise ValueError("control characters are not allowed")
    return value


Price = Annotated[Decimal, BeforeValidator(_json_number), Field(ge=0, le=MAX_COINS)]
PositivePrice = Annotated[Decimal, BeforeValidator(_json_number), Field(gt=0, le=MAX_COINS)]
Id = Annotated[StrictInt, Field(ge=0, le=MAX_ID)]
Name = Annotated[StrictStr, Field(min_length=1, max_length=128), AfterValidator(_printable)]

ORDER_TYPES = {"on-demand": False, "on_demand": False, "按需": False, "spot": True, "现货": True}


class Request(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


def validate_body(model: type[Request], body: dict[str, Any]) -> Any:
    """Validate a parsed body; any problem becomes code 2 with a readable message."""
    check_text(body)
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        problems = []
        for err in exc.errors(include_url=False)[:5]:
            where = ".".join(str(p) for p in err["loc"]) or "body"
            # a validator's own sentence, without pydantic's "Value error, " in front of it
            message = str(err["msg"]).removeprefix("Value error, ")
            problems.append(f"{where}: {message}")
        raise InvalidInput("; ".join(problems)) from None


class ServerNameRequest(Request):
    server_name: Name


Rating = Annotated[StrictInt, Field(ge=1, le=5)]


class CancelOrderRequest(Request):
    id: Id
    issue: StrictStr | None = None
    rating: Rating | None = None


class CancelOrdersRequest(Request):
    order_ids: Annotated[list[Id], Field(min_length=1, max_length=100)]


class SetSpotPriceRequest(Request):
    order_id: Id
    desired_price: PositivePrice


class OrderIdRequest(Request):
    """stop_order, start_order, restart_order, reset_order."""

    id: Id


class ExtendOrderRequest(Request):
    id: Id
    hours: Annotated[StrictInt, Field(ge=1, le=24 * 365)]


class CreateVolumeRequest(Request):
    server_id: Id
    size_gb: Annotated[StrictInt, Field(ge=1, le=MAX_DISK_GB)]
    name: StrictStr = Field(min_length=1, max_length=64)
    currency: StrictStr | None = Field(None, min_length=1, max_length=32)


class AddServerRequest(Request):
    name: Name


class SetServerSettingsRequest(Request):
    """``name`` picks the server; every other field is optional and only what is sent changes."""

    model_config = ConfigDict(extra="allow", frozen=True)

    name: Name
    availability: StrictBool | None = None
    visibility: Literal["public", "hidden"] | None = None
    mrl: Annotated[StrictInt, Field(ge=1)] | None = None
    on_demand: Price | None = None
    spot: Price | None = None
    # live Clore: USD prices per currency, and which currencies follow them ("usd") or not
    usd_pricing: dict[StrictStr, dict[Literal["on_demand", "spot"], Price | None]] | None = None
    autoprice: dict[StrictStr, Literal["usd", False]] | None = None
    # per-GPU rentals (SPEC §8): renters may take some of the GPUs, at least min_gpus of them
    partial_gpu_rental: StrictBool | None = None
    min_gpus: Annotated[StrictInt, Field(ge=1, le=MAX_GPUS)] | None = None
    # storage (SPEC §8): the disk each rental gets (0: none offered) and its price per GB per
    # day in the server's default currency (per currency: "<currency>_storage")
    disk_gb: Annotated[StrictInt, Field(ge=0, le=MAX_DISK_GB)] | None = None
    storage_price: Price | None = None

    def enabled(self, currencies: list[str]) -> dict[str, bool]:
        """``enabled-<currency>`` keys: whether the server accepts that currency."""
        out: dict[str, bool] = {}
        for key, value in (self.model_extra or {}).items():
            if key.startswith("enabled-"):
                currency = key[len("enabled-") :]
                if currency not in currencies:
                    raise InvalidInput(f"{key[:48]}: unknown currency")
                if not isinstance(value, bool):
                    raise InvalidInput(f"{key}: must be true or false")
                out[currency] = value
        return out

    def per_currency(self, currencies: list[str]) -> dict[str, dict[str, Decimal]]:
        """Per-currency keys such as ``bitcoin_on_demand`` or ``CLORE-Blockchain_spot``."""
        out: dict[str, dict[str, Decimal]] = {}
        for key, value in (self.model_extra or {}).items():
            for currency in currencies:
                for kind in ("on_demand", "spot", "storage"):
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
    # required unless template_id is given (the template's image is used then)
    image: StrictStr | None = Field(None, min_length=1, max_length=512)
    template_id: Id | None = None
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
    # registry credentials for this pull only ("user:password" or "user:token")
    dockerhub_auth: StrictStr | None = Field(None, max_length=2048)
    # GPU slots (SPEC §8): how many of a partial server's GPUs, or exactly which (NVML indices);
    # neither: the whole server, as every Clore client asks
    gpu_count: Annotated[StrictInt, Field(ge=1, le=MAX_GPUS)] | None = None
    gpus: (
        Annotated[list[Annotated[StrictInt, Field(ge=0, lt=MAX_GPUS)]], Field(min_length=1)] | None
    ) = None

    # keeping work (SPEC §8): the disk it gets (up to the host's offer), volumes of the same
    # server to mount ({"<volume id>": "/path"}), and timers in seconds from creation
    disk_gb: Annotated[StrictInt, Field(ge=1, le=MAX_DISK_GB)] | None = None
    volumes: dict[StrictStr, StrictStr] | None = None
    stop_after: Annotated[StrictInt, Field(ge=1, le=MAX_TIMER)] | None = None
    terminate_after: Annotated[StrictInt, Field(ge=1, le=MAX_TIMER)] | None = None

    @field_validator("volumes")
    @classmethod
    def _volumes(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if not value:
            return None
        paths: set[str] = set()
        for key, path in value.items():
            if not key.isdigit() or len(key) > 12:
                raise ValueError(f"volume {key[:16]!r}: a volume id")
            if not MOUNT_PATH.match(path) or "/../" in path + "/" or path.rstrip("/") == "":
                raise ValueError(f"volume {key}: an absolute path such as /workspace")
            if path.rstrip("/") in paths:
                raise ValueError(f"volume {key}: two volumes at {path}")
            paths.add(path.rstrip("/"))
        return value

    @field_validator("gpus")
    @classmethod
    def _gpus(cls, value: list[int] | None) -> list[int] | None:
        if value is not None and len(set(value)) != len(value):
            raise ValueError("each GPU index once")
        return None if value is None else sorted(value)

    @field_validator("dockerhub_auth")
    @classmethod
    def _registry_auth(cls, value: str | None) -> str | None:
        if value in (None, ""):
            return None
        assert value is not None
        user, sep, secret = value.partition(":")
        if not sep or not user or not secret or UNSAFE_TEXT.search(value):
            raise ValueError("expected 'username:password' (or 'username:token')")
        return value

    @field_validator("image")
    @classmethod
    def _image(cls, value: str | None) -> str | None:
        if value is not None and not IMAGE_REF.match(value):
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
        return check_env(value)

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
        if self.image is None and self.template_id is None:
            raise ValueError("image is required unless template_id is given")
        if self.is_spot and self.spotprice is None:
            raise ValueError("spotprice is required for a spot order")
        if self.gpus is not None and self.gpu_count not in (None, len(self.gpus)):
            raise ValueError("gpu_count and gpus disagree: send one of them")
        return self

    @property
    def slots_asked(self) -> int | None:
        """How many GPUs the order asks for (None: the whole server)."""
        return len(self.gpus) if self.gpus is not None else self.gpu_count

    @property
    def is_spot(self) -> bool:
        return ORDER_TYPES[self.type]


def check_env(value: dict[str, str] | None) -> dict[str, str] | None:
    """An order's env (SPEC §4): names ≤ 128, values ≤ 1536, ≤ 12000 characters serialized."""
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


class GpuSettings(Request):
    """GigaSPOT per-GPU settings, in the order of the server's GPUs: power limit (watts) and
    optional clock offsets / locks (MHz). The agent checks them against what NVML allows."""

    pl: Annotated[StrictInt | float, BeforeValidator(_json_number), Field(gt=0, le=2000)]
    core_offset: Annotated[StrictInt, Field(ge=-5000, le=5000)] | None = None
    mem_offset: Annotated[StrictInt, Field(ge=-10000, le=10000)] | None = None
    core_lock: Annotated[StrictInt, Field(ge=0, le=10000)] | None = None
    mem_lock: Annotated[StrictInt, Field(ge=0, le=40000)] | None = None

    def to_stored(self) -> dict[str, Any]:
        return {k: v for k, v in self.model_dump().items() if v is not None}


GpuSettingsList = Annotated[list[GpuSettings], Field(max_length=64)]


class GigaspotOrder(Request):
    currency: StrictStr = Field(min_length=1, max_length=32)
    # required unless template_id is given (the template's image is used then)
    image: StrictStr | None = Field(None, min_length=1, max_length=512)
    template_id: Id | None = None
    renting_server: Id
    price: PositivePrice
    oc: GpuSettingsList = Field(default_factory=list)
    env: dict[str, StrictStr] | None = None

    _image = field_validator("image")(CreateOrderRequest._image.__func__)  # type: ignore[attr-defined]

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_env(value)


class GigaspotEdit(Request):
    order_id: Id
    price: PositivePrice
    oc: GpuSettingsList = Field(default_factory=list)


class CreateGigaspotOrdersRequest(Request):
    orders: Annotated[list[GigaspotOrder], Field(min_length=1, max_length=100)]


class EditGigaspotOrdersRequest(Request):
    orders: Annotated[list[GigaspotEdit], Field(min_length=1, max_length=100)]


class SandboxAdvanceRequest(Request):
    seconds: Annotated[StrictInt, Field(ge=0, le=10 * 365 * 86400)]


class SandboxDepositRequest(Request):
    currency: StrictStr = Field(min_length=1, max_length=32)
    amount: PositivePrice


class CreateWebhookRequest(Request):
    url: StrictStr = Field(min_length=1, max_length=2048)
    events: list[StrictStr] | None = Field(None, max_length=32)


class WebhookIdRequest(Request):
    id: Id


class SetAlertsRequest(Request):
    """``low_balance_seconds``: a ``balance.low`` event when a wallet's runway drops under it;
    null switches the alert off."""

    low_balance_seconds: Annotated[StrictInt, Field(ge=1, le=10 * 365 * 86400)] | None


class WithdrawRequest(Request):
    currency: StrictStr = Field(min_length=1, max_length=32)
    amount: PositivePrice = Field(description="whole coins the address receives (fee on top)")
    address: StrictStr = Field(min_length=1, max_length=128)


def _amount_text(value: Any) -> Any:
    """Providers send amounts as JSON numbers or as decimal strings ("0.0015"): both are exact."""
    if isinstance(value, str):
        text = value.strip()
        if not re.fullmatch(r"\d{1,16}(\.\d{1,18})?", text):
            raise ValueError("must be a decimal number")
        return Decimal(text)
    return _json_number(value)


ProviderAmount = Annotated[Decimal, BeforeValidator(_amount_text), Field(gt=0, le=MAX_COINS)]
EXTERNAL_ID = re.compile(r"^[\x21-\x7e]{1,100}$")


class PaymentDepositRequest(Request):
    """A payment provider's deposit notification (``POST /payments/deposit``)."""

    external_id: StrictStr = Field(
        description="the provider's unique id of this payment (1–100 printable ASCII characters)"
    )
    currency: StrictStr = Field(min_length=1, max_length=32)
    amount: ProviderAmount = Field(description="whole coins, a JSON number or a decimal string")
    user: StrictStr | StrictInt | None = Field(None, description="user name or id")
    address: StrictStr | None = Field(
        None, max_length=128, description="or the user's deposit address"
    )

    @field_validator("external_id")
    @classmethod
    def _external_id(cls, value: str) -> str:
        if not EXTERNAL_ID.match(value):
            raise ValueError("1-100 printable ASCII characters, no spaces")
        return value

    @model_validator(mode="after")
    def _one_recipient(self) -> PaymentDepositRequest:
        if (self.user is None) == (self.address is None):
            raise ValueError("give exactly one of user and address")
        return self


class AddSshKeyRequest(Request):
    name: Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_printable)]
    public_key: StrictStr = Field(min_length=1, max_length=16384)


class CreateApiKeyRequest(Request):
    """create_api_key: scopes are checked by market.api_keys (names, and what the caller holds),
    spend_limit's amounts as any other amount."""

    name: (
        Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_printable)] | None
    ) = None
    scopes: list[StrictStr] | StrictStr
    expires_at: Annotated[StrictInt, Field(ge=0, le=2**62)] | None = None
    expires_in: Annotated[StrictInt, Field(ge=1, le=2**40)] | None = None  # seconds from now
    spend_limit: dict[StrictStr, Any] | None = None  # amounts: checked by parse_spend_limit

    @model_validator(mode="after")
    def _one_expiry(self) -> CreateApiKeyRequest:
        if self.expires_at is not None and self.expires_in is not None:
            raise ValueError("give expires_at or expires_in, not both")
        return self


class AttachSshKeyRequest(Request):
    order_id: Id
    key_id: Id


class CreateTemplateRequest(Request):
    """A template's fields are validated like create_order's."""

    name: Annotated[StrictStr, Field(min_length=1, max_length=64), AfterValidator(_printable)]
    image: StrictStr = Field(min_length=1, max_length=512)
    command: StrictStr | None = Field(None, max_length=16384)
    env: dict[str, StrictStr] | None = None
    ports: dict[str, StrictStr] | None = None
    jupyter_token: StrictStr | None = Field(None, max_length=32)
    disk_gb: Annotated[StrictInt, Field(ge=1, le=MAX_DISK_GB)] | None = None
    public: StrictBool = False
    readme: StrictStr | None = Field(None, max_length=20000)

    _image = field_validator("image")(CreateOrderRequest._image.__func__)  # type: ignore[attr-defined]
    _ports = field_validator("ports")(CreateOrderRequest._ports.__func__)  # type: ignore[attr-defined]
    _token = field_validator("jupyter_token")(CreateOrderRequest._starred.__func__)  # type: ignore[attr-defined]

    @field_validator("env")
    @classmethod
    def _env(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        return check_env(value)


# the create_order fields a standing order keeps for its fills (renting_server, the price and the
# GPU indices are the engine's to choose; volumes belong to one server)
STANDING_ORDER_FIELDS = (
    "image",
    "template_id",
    "ports",
    "env",
    "jupyter_token",
    "ssh_key",
    "ssh_password",
    "command",
    "autossh_entrypoint",
    "dockerhub_auth",
    "disk_gb",
    "stop_after",
    "terminate_after",
)
QueryValue = StrictStr | StrictInt | float | StrictBool


class CreateStandingOrderRequest(Request):
    """create_standing_order (SPEC §8): what to rent (marketplace filters), up to which price per
    day, how many, until when; the order fields are create_order's (checked as it checks them)."""

    query: dict[StrictStr, QueryValue] = Field(default_factory=dict)
    max_price_per_day: PositivePrice
    currency: StrictStr = Field(min_length=1, max_length=32)
    gpu_count: Annotated[StrictInt, Field(ge=1, le=MAX_GPUS)] | None = None
    type: StrictStr = "on-demand"
    count: Annotated[StrictInt, Field(ge=1, le=100)] = 1
    expires_at: Annotated[StrictInt, Field(ge=0, le=2**62)] | None = None

    @field_validator("type")
    @classmethod
    def _type(cls, value: str) -> str:
        if value not in ORDER_TYPES:
            raise ValueError("must be 'on-demand' or 'spot'")
        return value

    @property
    def is_spot(self) -> bool:
        return ORDER_TYPES[self.type]


def fill_request(
    fields: dict[str, Any],
    server_id: int,
    currency: str,
    spot: bool,
    gpu_count: int | None,
    price: Decimal | None,
) -> CreateOrderRequest:
    """A standing order's fill as a create_order request, validated as create_order validates
    one (InvalidInput: code 2)."""
    body: dict[str, Any] = {
        **{k: v for k, v in fields.items() if k in STANDING_ORDER_FIELDS},
        "renting_server": server_id,
        "currency": currency,
        "type": "spot" if spot else "on-demand",
    }
    if gpu_count is not None:
        body["gpu_count"] = gpu_count
    if spot:
        body["spotprice"] = price if price is not None else Decimal(1)
    result: CreateOrderRequest = validate_body(CreateOrderRequest, body)
    return result
